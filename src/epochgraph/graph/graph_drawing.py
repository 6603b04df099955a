"""Pictures of the graph stage: the rolled graph of an epoch, and how the centralities moved.

* `draw_rolled_graph`: the rolled graph drawn with graph-tool's cairo drawing, like Fig. 1 of the
  paper: one column per layer (node group, in forward order), each layer's nodes spread down its
  column; edge width grows with the weight and opacity with its square (so that the many middling
  edges of a dense layer do not hide its strongest ones), node colour is the eigenvector centrality.
  A graph with more than ``max_edges`` edges is drawn with its strongest edges only, shared out
  between the connections so that small layers keep all theirs (a global cut would keep only the
  layer with the largest weights). Widths and opacities are relative to the strongest edge of the
  same connection: BatchNorm folding and layer sizes put the layers' weights on scales orders of
  magnitude apart, and one global scale would leave most layers invisible.
* `CentralityDistributions`: per layer, the quantiles of each centrality at every epoch, and one
  matplotlib figure of how they moved over the run.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

from epochgraph.graph.topology import Topology

MAX_DRAWN_EDGES = 3000
PICTURE_SIZE = (1400, 900)  # pixels
_MARGIN = {"left": 30, "right": 150, "top": 50, "bottom": 120}
_EDGE_RGB = (0.12, 0.14, 0.22)
QUANTILES = (0.1, 0.25, 0.5, 0.75, 0.9)

# One connection's weights for drawing: (src offset, dst offset, weights). ``weights`` is the
# ``[|dst|, |src|]`` matrix, or for an identity shortcut the ``[n]`` diagonal (edge i -> i).
ConnectionWeights = tuple[int, int, np.ndarray]


def _edge_budgets(sizes: Sequence[int], max_edges: int) -> list[int]:
    """Share ``max_edges`` between connections of ``sizes`` edges: small ones keep every edge, the rest
    split what is left evenly (water-filling)."""
    budgets = [0] * len(sizes)
    left, open_ = max_edges, len(sizes)
    for i in sorted(range(len(sizes)), key=lambda i: sizes[i]):
        budgets[i] = min(sizes[i], left // open_)
        left -= budgets[i]
        open_ -= 1
    return budgets


def strongest_edges(connections: Sequence[ConnectionWeights],
                    max_edges: int = MAX_DRAWN_EDGES) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(src, dst, strength)`` of the edges to draw: all of them up to ``max_edges``, else the strongest
    of every connection (see the module docstring); strength is the weight over the strongest weight
    of its connection, in [0, 1]."""
    sizes = [w.size for _, _, w in connections]
    budgets = sizes if sum(sizes) <= max_edges else _edge_budgets(sizes, max_edges)
    srcs, dsts, strengths = [], [], []
    for (s_off, d_off, w), k in zip(connections, budgets):
        if k == 0:
            continue
        flat = np.abs(np.asarray(w, dtype=np.float64).reshape(-1))
        chosen = np.arange(flat.size) if k >= flat.size else np.argpartition(flat, flat.size - k)[flat.size - k:]
        if w.ndim == 1:  # identity shortcut: edge i -> i
            rows = cols = chosen
        else:
            rows, cols = np.divmod(chosen, w.shape[1])
        top = flat.max()
        srcs.append(s_off + cols)
        dsts.append(d_off + rows)
        strengths.append(flat[chosen] / top if top > 0 else np.zeros(len(chosen)))
    if not srcs:
        return np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros(0)
    return np.concatenate(srcs), np.concatenate(dsts), np.concatenate(strengths)


def layered_positions(topology: Topology, size: tuple[int, int] = PICTURE_SIZE) -> np.ndarray:
    """``[n, 2]`` pixel positions: one column per node group (layer), its nodes spread down the column."""
    width, height = size
    plot_w = width - _MARGIN["left"] - _MARGIN["right"]
    plot_h = height - _MARGIN["top"] - _MARGIN["bottom"]
    columns = max(1, len(topology.groups) - 1)
    xy = np.zeros((topology.num_nodes, 2))
    start = 0
    for col, n in enumerate(topology.groups.values()):
        xy[start:start + n, 0] = _MARGIN["left"] + plot_w * col / columns
        xy[start:start + n, 1] = _MARGIN["top"] + plot_h * (np.arange(n) + 0.5) / n
        start += n
    return xy


# graph_tool.draw imports its GTK windows as well and, without PyGObject (``gi``), warns "Error importing
# Gtk module: ...; GTK+ drawing will not work." We draw on cairo surfaces only, so exactly that warning
# is dropped; any other (cairo or graph-tool's cairo library missing) still shows.
GTK_WARNING = r"Error importing Gtk module"


def graph_tool_cairo_draw():
    """graph-tool's ``cairo_draw`` (drawing onto a cairo context), imported without the GTK warning."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=GTK_WARNING, category=RuntimeWarning)
        from graph_tool.draw import cairo_draw
    return cairo_draw


def draw_rolled_graph(topology: Topology, connections: Sequence[ConnectionWeights], node_values: np.ndarray,
                      path: str | Path, *, title: str = "", value_name: str = "eigenvector centrality",
                      max_edges: int = MAX_DRAWN_EDGES, size: tuple[int, int] = PICTURE_SIZE) -> int:
    """Draw the rolled graph to the PNG file ``path`` (see the module docstring); returns how many edges
    were drawn. ``node_values`` colours the nodes (square-root scale, so the small values of the
    layers far from the dominant one still show)."""
    import cairo
    import graph_tool
    from matplotlib import colormaps
    from matplotlib.colors import PowerNorm

    cairo_draw = graph_tool_cairo_draw()
    width, height = size
    n = topology.num_nodes
    values = np.asarray(node_values, dtype=np.float64)
    if values.shape != (n,):
        raise ValueError(f"node_values has shape {values.shape}; the rolled graph has {n} nodes")
    src, dst, strength = strongest_edges(connections, max_edges)

    g = graph_tool.Graph(directed=False)
    g.add_vertex(n)
    strength_map = g.new_edge_property("double")
    g.add_edge_list(np.column_stack([src, dst, strength]), eprops=[strength_map])
    pos = g.new_vertex_property("vector<double>")
    pos.set_2d_array(layered_positions(topology, size).T.copy())
    cmap = colormaps["viridis"]
    finite = values[np.isfinite(values)]
    vmax = float(np.abs(finite).max()) if finite.size and np.abs(finite).max() > 0 else 1.0
    norm = PowerNorm(0.5, vmin=0.0, vmax=vmax)
    fill = g.new_vertex_property("vector<double>")
    fill.set_2d_array(cmap(norm(np.clip(np.nan_to_num(np.abs(values)), 0, vmax))).T.copy())
    edge_color = g.new_edge_property("vector<double>")
    edge_color.set_2d_array(np.vstack([np.tile(np.array(_EDGE_RGB)[:, None], len(strength)),
                                       0.03 + 0.6 * strength ** 2]))
    pen = g.new_edge_property("double")
    pen.a[:] = 0.2 + 1.8 * strength
    largest_group = max(topology.groups.values())
    plot_h = height - _MARGIN["top"] - _MARGIN["bottom"]
    node_size = float(np.clip(0.8 * plot_h / largest_group, 1.5, 12.0))

    surface = cairo.ImageSurface(cairo.FORMAT_ARGB32, width, height)
    cr = cairo.Context(surface)
    cr.set_source_rgb(1, 1, 1)
    cr.paint()
    # strong edges are drawn last, on top of the weak ones
    cairo_draw(g, pos, cr, vprops={"size": node_size, "fill_color": fill, "pen_width": 0.0},
               eprops={"color": edge_color, "pen_width": pen}, eorder=strength_map)
    _annotate(cr, topology, size, title, value_name, vmax, cmap)
    surface.write_to_png(str(path))
    return len(src)


def _annotate(cr, topology: Topology, size: tuple[int, int], title: str, value_name: str, vmax: float,
              cmap) -> None:
    """Title, the layer names under their columns, and the colour bar."""
    import cairo

    width, height = size
    cr.set_source_rgb(0.1, 0.1, 0.1)
    cr.select_font_face("sans-serif", cairo.FONT_SLANT_NORMAL, cairo.FONT_WEIGHT_NORMAL)
    cr.set_font_size(16)
    cr.move_to(_MARGIN["left"], 30)
    cr.show_text(title)
    cr.set_font_size(10)
    xs = layered_positions(topology, size)[np.cumsum([0, *topology.groups.values()])[:-1], 0]
    for name, x in zip(topology.groups, xs):
        cr.save()
        cr.move_to(x + 3, height - _MARGIN["bottom"] + 12)
        cr.rotate(math.pi / 2)
        cr.show_text(name)
        cr.restore()
    # colour bar: square-root scale, as the nodes
    x0, y0, bar_w, bar_h = width - _MARGIN["right"] + 40, _MARGIN["top"] + 20, 16, 300
    steps = 64
    for i in range(steps):
        cr.set_source_rgba(*cmap(1 - i / (steps - 1)))
        cr.rectangle(x0, y0 + bar_h * i / steps, bar_w, bar_h / steps + 1)
        cr.fill()
    cr.set_source_rgb(0.1, 0.1, 0.1)
    cr.move_to(x0 + bar_w + 4, y0 + 8)
    cr.show_text(f"{vmax:.3g}")
    cr.move_to(x0 + bar_w + 4, y0 + bar_h)
    cr.show_text("0")
    for i, line in enumerate((value_name, "(sqrt scale)")):
        cr.move_to(x0 - 20, y0 - 22 + 11 * i)
        cr.show_text(line)


class CentralityDistributions:
    """Per layer (node group), the quantiles `QUANTILES` of each centrality at every recorded epoch.

    >>> from epochgraph.graph.topology import TopologyBuilder
    >>> t = TopologyBuilder(2); _ = t.add("fc", 3, "linear", "fc.weight")
    >>> dist = CentralityDistributions(t.build())
    >>> dist.add(1, {"degree": np.array([1.0, 2.0, 3.0, 4.0, 5.0])})
    >>> dist.quantiles["degree"][0][:, 2].tolist()  # the median of each layer at epoch 1
    [1.5, 4.0]
    """

    def __init__(self, topology: Topology) -> None:
        self.layers = list(topology.groups)
        self._bounds = np.cumsum([0, *topology.groups.values()])
        self.epochs: list[int] = []
        self.quantiles: dict[str, list[np.ndarray]] = {}  # centrality -> per epoch [layers, quantiles]

    def add(self, epoch: int, vectors: Mapping[str, np.ndarray]) -> None:
        """Record the centrality vectors of ``epoch`` (one value per node, in topology order)."""
        if not vectors:
            return
        self.epochs.append(epoch)
        for name, values in vectors.items():
            per_layer = np.array([np.quantile(values[a:b], QUANTILES)
                                  for a, b in zip(self._bounds[:-1], self._bounds[1:])])
            self.quantiles.setdefault(name, []).append(per_layer)

    def plot(self, path: str | Path, title: str = "") -> None:
        """One row per centrality: per layer, the median over the epochs (colour = depth) and the
        band between the quartiles; a log scale where every median is positive."""
        from matplotlib.cm import ScalarMappable
        from matplotlib.colors import Normalize
        from matplotlib.figure import Figure
        from matplotlib.ticker import MaxNLocator

        if not self.epochs:
            raise ValueError("no epoch recorded: nothing to plot")
        names = list(self.quantiles)
        fig = Figure(figsize=(9, 3.6 * len(names)), layout="constrained")
        axes = fig.subplots(len(names), 1, squeeze=False)[:, 0]
        depth = Normalize(0, max(1, len(self.layers) - 1))
        cmap = "viridis"
        epochs = np.array(self.epochs)
        order = np.argsort(epochs)
        for ax, name in zip(axes, names):
            q = np.stack(self.quantiles[name])[order]  # [epochs, layers, quantiles]
            for layer in range(q.shape[1]):
                colour = ScalarMappable(depth, cmap).to_rgba(layer)
                ax.plot(epochs[order], q[:, layer, 2], color=colour, lw=1.2, marker="o" if len(epochs) < 12 else None,
                        ms=3)
                ax.fill_between(epochs[order], q[:, layer, 1], q[:, layer, 3], color=colour, alpha=0.12, lw=0)
            if np.all(q[:, :, 1:4] > 0):
                ax.set_yscale("log")
            ax.set_ylabel(f"{name} centrality\n(median, quartile band)")
            ax.grid(alpha=0.3)
        axes[-1].set_xlabel("epoch")
        axes[-1].xaxis.set_major_locator(MaxNLocator(integer=True))
        bar = fig.colorbar(ScalarMappable(depth, cmap), ax=list(axes), ticks=[0, len(self.layers) - 1])
        bar.ax.set_yticklabels([self.layers[0], self.layers[-1]])
        bar.set_label("layer (forward order)")
        if title:
            fig.suptitle(title)
        fig.savefig(str(path), dpi=110)
