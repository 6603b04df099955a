import pytest
import torch

from epochgraph.errors import EpochgraphError
from epochgraph.graph.tracing import topology_of
from epochgraph.models import ZOO, build_model


@pytest.mark.parametrize("name", sorted(ZOO))
@pytest.mark.parametrize("channels", [1, 3])
@pytest.mark.parametrize("size", [28, 32])
def test_forward_shape_and_topology(name, channels, size):
    model = build_model(name, in_channels=channels, image_size=size, num_classes=10, width=0.25)
    out = model(torch.randn(2, channels, size, size))
    assert out.shape == (2, 10)
    topo = topology_of(model)
    sd = model.state_dict()
    assert topo.groups["input"] == channels
    for c in topo.connections:
        if c.weight is None:
            assert c.kind == "identity"
            continue
        w = sd[c.weight]
        assert w.shape[0] == topo.groups[c.dst]
        assert w.shape[1] == topo.groups[c.src] * c.spatial
    # the last group is the classifier's output
    assert list(topo.groups.values())[-1] == 10


def test_width_multiplier_scales_channels():
    small = build_model("resnet20", in_channels=3, image_size=32, width=0.5)
    full = build_model("resnet20", in_channels=3, image_size=32, width=1.0)
    assert topology_of(small).groups["conv1"] == 8 and topology_of(full).groups["conv1"] == 16
    assert sum(p.numel() for p in small.parameters()) < sum(p.numel() for p in full.parameters())


def test_resnet_depths_have_6n_plus_2_layers():
    for depth, blocks in ((20, 9), (32, 15), (44, 21)):
        model = build_model(f"resnet{depth}", in_channels=3, image_size=32)
        convs = sum(isinstance(m, torch.nn.Conv2d) and m.kernel_size == (3, 3) for m in model.modules())
        assert len(model.blocks) == blocks and convs + 1 == depth  # + the final linear layer


@pytest.mark.parametrize("kwargs, match", [
    ({"name": "nope"}, "unknown model 'nope'"),
    ({"name": "lenet", "width": -1}, "model.width=-1"),
    ({"name": "vgg", "depth": 12}, "VGG depth 12"),
    ({"name": "resnet20", "dropout": 1.5}, "model.dropout=1.5"),
])
def test_bad_model_arguments_name_the_value(kwargs, match):
    name = kwargs.pop("name")
    with pytest.raises(EpochgraphError, match=match):
        build_model(name, in_channels=1, image_size=28, **kwargs)
