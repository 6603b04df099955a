import numpy as np
import pytest

from epochgraph.errors import EpochgraphError
from epochgraph.training.data import balanced_indices, load_data


def test_embedded_fashion_mnist_subsets_are_balanced_disjoint_and_seeded():
    a = load_data(train_size=500, val_size=200, test_size=100, seed=3)
    b = load_data(train_size=500, val_size=200, test_size=100, seed=3)
    c = load_data(train_size=500, val_size=200, test_size=100, seed=4)
    assert a.x_train.shape == (500, 1, 28, 28) and a.x_val.shape == (200, 1, 28, 28)
    assert a.y_train.bincount().tolist() == [50] * 10
    assert a.y_val.bincount().tolist() == [20] * 10
    assert a.num_classes == 10
    assert np.array_equal(a.x_train.numpy(), b.x_train.numpy())
    assert not np.array_equal(a.x_train.numpy(), c.x_train.numpy())
    # no validation image is also a training image
    train_rows = {r.tobytes() for r in a.x_train.numpy()}
    assert not any(r.tobytes() in train_rows for r in a.x_val.numpy())
    assert abs(float(a.x_train.mean())) < 1e-4 and abs(float(a.x_train.std()) - 1) < 1e-3


def test_padding_to_32_and_channel_conversion():
    s = load_data(train_size=50, val_size=20, test_size=20, image_size=32, in_channels=3)
    assert s.x_train.shape == (50, 3, 32, 32)
    assert s.in_channels == 3 and s.image_size == 32


def test_balanced_indices_excludes_and_fills_small_classes():
    labels = np.array([0] * 3 + [1] * 50)
    idx = balanced_indices(labels, 10, np.random.default_rng(0), exclude=np.array([0]))
    assert len(idx) == 10 and len(set(idx)) == 10 and 0 not in idx
    assert (labels[idx] == 0).sum() == 2  # class 0 gives all it has left, class 1 the rest


def test_missing_dataset_names_the_file_and_the_fix(tmp_path):
    with pytest.raises(EpochgraphError, match="apt-get install dataset-fashion-mnist"):
        load_data(root=str(tmp_path))


def test_unknown_dataset_lists_choices():
    with pytest.raises(EpochgraphError, match="unknown dataset 'svhn'; valid choices: cifar10, fashion_mnist, mnist"):
        load_data("svhn")


def test_corrupt_idx_file_is_reported(tmp_path):
    for stem in ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte",
                 "t10k-labels-idx1-ubyte"):
        (tmp_path / stem).write_bytes(b"\x00\x00\x08\x03\x00\x00\x00\x05")
    with pytest.raises(EpochgraphError, match="truncated"):
        load_data(root=str(tmp_path))


def _write_idx(folder, n: int, fill: int) -> None:
    """A tiny dataset in IDX files: ``n`` 2x2 images of value ``fill`` per split, labels 0..9 in turn."""
    images = bytes([0, 0, 8, 3]) + n.to_bytes(4, "big") + (2).to_bytes(4, "big") * 2 + bytes([fill]) * (4 * n)
    labels = bytes([0, 0, 8, 1]) + n.to_bytes(4, "big") + bytes(i % 10 for i in range(n))
    for prefix in ("train", "t10k"):
        (folder / f"{prefix}-images-idx3-ubyte").write_bytes(images)
        (folder / f"{prefix}-labels-idx1-ubyte").write_bytes(labels)


def test_the_files_are_read_once_per_process_and_again_when_they_change(tmp_path, monkeypatch):
    import os

    from epochgraph.training import data

    _write_idx(tmp_path, 40, fill=7)
    reads = []
    real_open = open
    monkeypatch.setattr(data, "open", lambda path, mode="r": reads.append(path) or real_open(path, mode),
                        raising=False)
    first = load_data(root=str(tmp_path), train_size=20, val_size=10, test_size=10)
    second = load_data(root=str(tmp_path), train_size=20, val_size=10, test_size=10)
    assert len(reads) == 4  # the second load (a sweep's next trial) read nothing
    assert np.array_equal(first.x_train.numpy(), second.x_train.numpy())
    _write_idx(tmp_path, 50, fill=9)  # a changed dataset (size and time) is read again
    os.utime(tmp_path / "train-images-idx3-ubyte", ns=(1, 1))
    third = load_data(root=str(tmp_path), train_size=20, val_size=10, test_size=10)
    assert len(reads) == 8 and len(third.y_test) == 10
    assert data._read_idx(tmp_path / "train-images-idx3-ubyte").shape == (50, 2, 2)
    assert not data._read_idx(tmp_path / "train-images-idx3-ubyte").flags.writeable  # shared: never changed in place
