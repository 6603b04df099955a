"""Datasets: Fashion-MNIST from Debian's `dataset-fashion-mnist` (the embedded default, no download),
and MNIST / Fashion-MNIST / CIFAR-10 through torchvision for users with internet.

Everything is loaded into memory as tensors (these datasets are small) so that batching is cheap and
exactly reproducible from a seed. ``train_size`` / ``val_size`` draw seeded, class-balanced subsets of
the training split, disjoint from each other; the test split is never used for validation.
"""

from __future__ import annotations

import functools
import gzip
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from epochgraph.errors import EpochgraphError, choice_error

DEBIAN_FASHION_MNIST = "/usr/share/datasets/fashion-mnist"
SOURCES = ("debian", "torchvision")
NAMES = ("fashion_mnist", "mnist", "cifar10")


@dataclass
class Splits:
    """Normalised image tensors ``[N, C, H, W]`` (float32) and integer labels for each split."""

    x_train: torch.Tensor
    y_train: torch.Tensor
    x_val: torch.Tensor
    y_val: torch.Tensor
    x_test: torch.Tensor
    y_test: torch.Tensor
    num_classes: int

    @property
    def in_channels(self) -> int:
        return int(self.x_train.shape[1])

    @property
    def image_size(self) -> int:
        return int(self.x_train.shape[-1])


def _read_idx(path: Path) -> np.ndarray:
    """Read an IDX file (gzip or plain), as in LeCun's MNIST format: once per process for each version of the
    file (its size and modification time), since a sweep's trials all load the same files (a read-only array)."""
    stat = path.stat()
    return _read_idx_file(str(path.resolve()), stat.st_size, stat.st_mtime_ns)


@functools.lru_cache(maxsize=8)
def _read_idx_file(name: str, size: int, mtime_ns: int) -> np.ndarray:
    path = Path(name)
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as f:
        data = f.read()
    if len(data) < 4 or data[0] != 0 or data[1] != 0 or data[2] != 0x08:
        raise EpochgraphError(f"{path} is not an unsigned-byte IDX file; reinstall the dataset")
    ndim = data[3]
    shape = tuple(int.from_bytes(data[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim))
    header = 4 + 4 * ndim
    arr = np.frombuffer(data[header:] if len(data) > header else b"", dtype=np.uint8)
    if len(data) < header or arr.size != int(np.prod(shape)):
        raise EpochgraphError(f"{path} is truncated ({arr.size} values, header says {shape}); reinstall it")
    return arr.reshape(shape)


def _load_idx_dir(root: Path) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    names = {
        "x_train": "train-images-idx3-ubyte", "y_train": "train-labels-idx1-ubyte",
        "x_test": "t10k-images-idx3-ubyte", "y_test": "t10k-labels-idx1-ubyte",
    }
    out = {}
    for key, stem in names.items():
        candidates = [root / f"{stem}.gz", root / stem]
        path = next((p for p in candidates if p.exists()), None)
        if path is None:
            raise EpochgraphError(
                f"dataset file {candidates[0]} is missing; install it with "
                f"'apt-get install dataset-fashion-mnist' (or 'make setup'), or set data.root to a folder "
                f"with the IDX files, or use data.source=torchvision data.download=true"
            )
        out[key] = _read_idx(path)
    return out["x_train"], out["y_train"], out["x_test"], out["y_test"]


def _load_torchvision(name: str, root: str, download: bool) -> tuple[np.ndarray, ...]:
    import torchvision.datasets as tvd

    cls = {"fashion_mnist": tvd.FashionMNIST, "mnist": tvd.MNIST, "cifar10": tvd.CIFAR10}[name]
    try:
        train = cls(root, train=True, download=download)
        test = cls(root, train=False, download=download)
    except RuntimeError as err:  # torchvision: "Dataset not found. You can use download=True ..."
        raise EpochgraphError(
            f"{name} not found under data.root={root!r}; set data.download=true (needs internet) "
            f"or point data.root at a copy ({err})"
        ) from None
    except OSError as err:
        raise EpochgraphError(f"could not download {name} into {root!r}: {err}; "
                              f"use the embedded default data=fashion_mnist data.source=debian") from None

    def arrays(ds) -> tuple[np.ndarray, np.ndarray]:
        x = np.asarray(ds.data)
        y = np.asarray(ds.targets)
        return x, y

    return (*arrays(train), *arrays(test))


def balanced_indices(labels: np.ndarray, size: int, rng: np.random.Generator,
                     exclude: np.ndarray | None = None) -> np.ndarray:
    """``size`` indices with the classes as equal as possible, drawn without replacement by ``rng``."""
    classes = np.unique(labels)
    available = np.ones(len(labels), dtype=bool)
    if exclude is not None:
        available[exclude] = False
    per_class = [rng.permutation(np.flatnonzero((labels == c) & available)) for c in classes]
    if size > sum(len(p) for p in per_class):
        raise EpochgraphError(f"asked for {size} images but only {sum(len(p) for p in per_class)} remain; "
                              f"lower data.train_size / data.val_size")
    quota = np.full(len(classes), size // len(classes))
    quota[: size % len(classes)] += 1
    # classes smaller than their quota hand the rest to the others
    take = np.minimum(quota, [len(p) for p in per_class])
    while take.sum() < size:
        room = np.array([len(p) for p in per_class]) - take
        take[np.argmax(room)] += 1
    idx = np.concatenate([p[:k] for p, k in zip(per_class, take)])
    return np.sort(idx)


def _to_tensor(x: np.ndarray, image_size: int) -> torch.Tensor:
    t = torch.from_numpy(np.ascontiguousarray(x)).float().div_(255.0)
    if t.ndim == 3:  # N, H, W
        t = t.unsqueeze(1)
    elif t.shape[-1] in (1, 3):  # N, H, W, C (CIFAR)
        t = t.permute(0, 3, 1, 2).contiguous()
    size = t.shape[-1]
    if size != image_size:
        if image_size > size:
            pad = image_size - size
            t = F.pad(t, (pad // 2, pad - pad // 2, pad // 2, pad - pad // 2))
        else:
            t = F.interpolate(t, size=(image_size, image_size), mode="bilinear", align_corners=False)
    return t


def load_data(name: str = "fashion_mnist", *, source: str = "debian", root: str = DEBIAN_FASHION_MNIST,
              download: bool = False, train_size: int = 10000, val_size: int = 2000,
              test_size: int | None = None, image_size: int | None = None,
              in_channels: int | None = None, seed: int = 0, **_: object) -> Splits:
    """Load dataset ``name`` and draw seeded, class-balanced train / validation / test subsets.

    ``image_size`` pads (28 -> 32) or resizes the images; ``None`` keeps the native size.
    ``in_channels`` converts grey to RGB (repeated) or RGB to grey (mean); ``None`` keeps it. Images are
    standardised with the mean and std of the drawn training subset.
    """
    if name not in NAMES:
        raise choice_error("dataset", name, NAMES, key="data")
    if source not in SOURCES:
        raise choice_error("data source", source, SOURCES, key="data.source")
    for key, value in (("data.train_size", train_size), ("data.val_size", val_size)):
        if int(value) < 10:
            raise EpochgraphError(f"{key}={value} is too small; use at least 10 (one image per class)")
    if source == "debian":
        if name != "fashion_mnist":
            raise EpochgraphError(f"data.source=debian only ships fashion_mnist, not {name!r}; "
                                  f"use data.source=torchvision data.download=true for {name}")
        x_tr, y_tr, x_te, y_te = _load_idx_dir(Path(root))
    else:
        x_tr, y_tr, x_te, y_te = _load_torchvision(name, root, download)

    rng = np.random.default_rng(seed)
    tr = balanced_indices(y_tr, int(train_size), rng)
    va = balanced_indices(y_tr, int(val_size), rng, exclude=tr)
    te = np.arange(len(y_te)) if test_size is None else balanced_indices(y_te, int(test_size), rng)
    size = int(image_size) if image_size else int(x_tr.shape[1])

    if in_channels not in (None, 1, 3):
        raise EpochgraphError(f"data.in_channels={in_channels} is not supported; use 1 or 3")

    def to_tensor(x: np.ndarray) -> torch.Tensor:
        t = _to_tensor(x, size)
        if in_channels is not None and t.shape[1] != in_channels:
            t = t.repeat(1, in_channels, 1, 1) if in_channels == 3 else t.mean(dim=1, keepdim=True)
        return t

    x_train = to_tensor(x_tr[tr])
    mean = x_train.mean(dim=(0, 2, 3), keepdim=True)
    std = x_train.std(dim=(0, 2, 3), keepdim=True).clamp_min(1e-6)

    def norm(x: np.ndarray) -> torch.Tensor:
        return (to_tensor(x) - mean) / std

    def labels(y: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(np.asarray(y, dtype=np.int64))

    return Splits(
        x_train=(x_train - mean) / std, y_train=labels(y_tr[tr]),
        x_val=norm(x_tr[va]), y_val=labels(y_tr[va]),
        x_test=norm(x_te[te]), y_test=labels(y_te[te]),
        num_classes=int(max(y_tr.max(), y_te.max()) + 1),
    )
