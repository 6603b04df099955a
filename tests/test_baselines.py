import numpy as np
import pytest
import torch
from torch import nn

from epochgraph.baselines import OverBudget, b_what, b_wl, b_wprime, unrolled_degree, unrolled_size
from epochgraph.models import build_model
from epochgraph.signature import aggregate


class Tiny(nn.Module):
    def __init__(self, pool: bool):
        super().__init__()
        torch.manual_seed(0)
        self.conv = nn.Conv2d(1, 2, 3, padding=1)
        self.pool = nn.MaxPool2d(2) if pool else nn.Identity()
        self.fc = nn.Linear(2 * (4 if pool else 16), 3)

    def forward(self, x):
        return self.fc(torch.flatten(self.pool(self.conv(x)), 1))


def _explicit_degree(model: Tiny, pool: bool) -> np.ndarray:
    """Build the unrolled graph edge by edge (4x4 input) and sum the weights at every node."""
    k = model.conv.weight.detach().abs().numpy()
    side = 2 if pool else 4
    n_in, n_mid = 16, 2 * side * side
    deg = np.zeros(n_in + n_mid + 3)
    for o in range(2):
        for y in range(4):
            for x in range(4):
                mid = n_in + o * side * side + (y // 2 if pool else y) * side + (x // 2 if pool else x)
                for dy in range(3):
                    for dx in range(3):
                        yy, xx = y + dy - 1, x + dx - 1
                        if 0 <= yy < 4 and 0 <= xx < 4:
                            deg[yy * 4 + xx] += k[o, 0, dy, dx]
                            deg[mid] += k[o, 0, dy, dx]
    w = model.fc.weight.detach().abs().numpy()
    deg[n_in:n_in + n_mid] += w.sum(0)
    deg[n_in + n_mid:] += w.sum(1)
    return deg


@pytest.mark.parametrize("pool", [False, True])
def test_unrolled_degree_matches_an_explicit_construction(pool):
    model = Tiny(pool)
    got = unrolled_degree(model, 1, 4)
    assert np.allclose(got, _explicit_degree(model, pool))


def test_unrolled_over_budget_is_reported_not_built():
    model = build_model("lenet", in_channels=1, image_size=28)
    nodes, edges = unrolled_size(model, 1, 28)
    assert nodes > 2000 and edges > 400_000
    with pytest.raises(OverBudget, match=r"over memory budget: needs \d+ MB, budget 1 MB"):
        unrolled_degree(model, 1, 28, max_bytes=2**20)


def test_last_layer_baselines():
    model = build_model("lenet", in_channels=1, image_size=28)
    topo, sd = model.topology(), model.state_dict()
    flat = np.concatenate([sd["fc3.weight"].double().reshape(-1).numpy(), sd["fc3.bias"].double().numpy()])
    assert np.array_equal(b_wl(topo, sd), flat)
    what = b_what(topo, sd)
    assert np.allclose(what, [flat.mean(), flat.var(), flat.min(), *np.percentile(flat, [25, 50, 75]), flat.max()])
    assert np.allclose(b_wprime(topo, sd), aggregate(flat))
