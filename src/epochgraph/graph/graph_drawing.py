"""Pictures of the graph stage: the rolled graph of an epoch, and how the centralities moved.

* `draw_rolled_graph`: the rolled graph drawn with graph-tool's cairo drawing, like Fig. 1 of the
  paper: one column per layer (node group, in forward order), each layer's nodes spread down its
  column, its name and node count under it; edge width grows with the weight and opacity with its
  square (so that the many middling edges of a dense layer do not hide its strongest ones), node colour
  is the eigenvector centrality. A layer of more than ``max_nodes`` nodes is drawn with an even sample of
  them (the same nodes at every epoch) on a grey band that stands for the whole layer, its label saying
  how many are drawn: 120 nodes in one column merge into a solid bar. A graph with more than
  ``max_edges`` edges between the drawn nodes is drawn with its strongest edges only, shared out between
  the connections so that small layers keep all theirs (a global cut would keep only the layer with the
  largest weights). Widths and opacities are relative to the strongest edge of the same connection
  (all its edges, drawn or not): BatchNorm folding and layer sizes put the layers' weights on scales
  orders of magnitude apart, and one global scale would leave most layers invisible; the legend shows
  the scale. The node colour scale is ``vmax`` when given: a run's pictures pass the one of their first
  picture (`GraphDrawing.vmax`), so that one colour means one value at every epoch.
* `CentralityDistributions`: per layer, the quantiles of each centrality at every epoch, and one
  matplotlib figure of how they moved over the run, each layer named in its legend.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from epochgraph.graph.topology import Topology

MAX_DRAWN_EDGES = 3000
MAX_DRAWN_NODES = 40  # per layer: about 18 pixels apart in a column of the default picture
PICTURE_SIZE = (1200, 800)  # pixels
# text and legends at 1.5 times their natural size: MLflow's artifact viewer shows the picture about 800 pixels
# wide, where the legend's 16-pixel text reads at about 11 pixels
_TEXT_SCALE = 1.5
_MARGIN = {"left": 40, "right": round(255 * _TEXT_SCALE), "top": round(78 * _TEXT_SCALE),
           "bottom": round(110 * _TEXT_SCALE)}
_EDGE_RGB = (0.12, 0.14, 0.22)
_TEXT_RGB = (0.1, 0.1, 0.1)
_BAND_RGBA = (0.55, 0.58, 0.66, 0.16)
LEGEND_STRENGTHS = (1.0, 0.7, 0.4)
QUANTILES = (0.1, 0.25, 0.5, 0.75, 0.9)

# One connection's weights for drawing: (src offset, dst offset, weights). ``weights`` is the
# ``[|dst|, |src|]`` matrix, or for an identity shortcut the ``[n]`` diagonal (edge i -> i).
ConnectionWeights = tuple[int, int, np.ndarray]


def edge_pen(strength: np.ndarray | float) -> tuple[np.ndarray | float, np.ndarray | float]:
    """``(line width in pixels, opacity)`` of an edge of ``strength`` (its weight over the strongest
    weight of its connection, in [0, 1]); the legend draws its samples with the same rule."""
    return 0.2 + 1.8 * strength, 0.03 + 0.6 * strength ** 2


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


def strongest_edges(connections: Sequence[ConnectionWeights], max_edges: int = MAX_DRAWN_EDGES,
                    tops: Sequence[float] | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(src, dst, strength)`` of the edges to draw: all of them up to ``max_edges``, else the strongest
    of every connection (see the module docstring); strength is the weight over the strongest weight
    of its connection (``tops``, by default the largest of the weights given), in [0, 1]."""
    sizes = [w.size for _, _, w in connections]
    budgets = sizes if sum(sizes) <= max_edges else _edge_budgets(sizes, max_edges)
    srcs, dsts, strengths = [], [], []
    for i, ((s_off, d_off, w), k) in enumerate(zip(connections, budgets)):
        if k == 0:
            continue
        flat = np.abs(np.asarray(w, dtype=np.float64).reshape(-1))
        chosen = np.arange(flat.size) if k >= flat.size else np.argpartition(flat, flat.size - k)[flat.size - k:]
        if w.ndim == 1:  # identity shortcut: edge i -> i
            rows = cols = chosen
        else:
            rows, cols = np.divmod(chosen, w.shape[1])
        top = flat.max() if tops is None else tops[i]
        srcs.append(s_off + cols)
        dsts.append(d_off + rows)
        strengths.append(np.clip(flat[chosen] / top, 0.0, 1.0) if top > 0 else np.zeros(len(chosen)))
    if not srcs:
        return np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros(0)
    return np.concatenate(srcs), np.concatenate(dsts), np.concatenate(strengths)


def drawn_nodes(topology: Topology, max_nodes: int = MAX_DRAWN_NODES) -> np.ndarray:
    """Indices (in topology order) of the nodes drawn: every node of a layer of up to ``max_nodes``,
    else ``max_nodes`` of them evenly spread over the layer (its first and last included)."""
    if max_nodes < 2:
        raise ValueError(f"max_nodes={max_nodes} must be at least 2 (the first and last node of a layer)")
    out, start = [], 0
    for n in topology.groups.values():
        chosen = np.arange(n) if n <= max_nodes else np.unique(np.round(np.linspace(0, n - 1, max_nodes)).astype(int))
        out.append(start + chosen)
        start += n
    return np.concatenate(out)


def _sampled_connections(topology: Topology, connections: Sequence[ConnectionWeights], drawn: np.ndarray
                         ) -> tuple[list[ConnectionWeights], list[float]]:
    """The connections between the ``drawn`` nodes, their offsets in the drawn nodes' numbering, and the
    strongest weight of each whole connection (the scale of its edges)."""
    mask = np.zeros(topology.num_nodes, bool)
    mask[drawn] = True
    compact = np.cumsum(mask) - 1  # a drawn node's index among the drawn nodes
    out, tops = [], []
    for s_off, d_off, w in connections:
        w = np.asarray(w)
        n_src = w.shape[-1]
        n_dst = w.shape[0]
        cols = np.flatnonzero(mask[s_off:s_off + n_src])
        rows = np.flatnonzero(mask[d_off:d_off + n_dst])
        # drawn nodes of one layer are numbered consecutively, so a connection stays one block
        sub = w[cols] if w.ndim == 1 else w[np.ix_(rows, cols)]  # identity: equal layers, the same sample
        if sub.size == 0:
            continue
        out.append((int(compact[s_off + cols[0]]), int(compact[d_off + rows[0]]), sub))
        tops.append(float(np.abs(w).max()) if w.size else 0.0)
    return out, tops


def layered_positions(topology: Topology, size: tuple[int, int] = PICTURE_SIZE,
                      drawn: np.ndarray | None = None) -> np.ndarray:
    """``[n, 2]`` pixel positions of the ``drawn`` nodes (default: all): one column per node group (layer),
    its drawn nodes spread down the column."""
    width, height = size
    plot_w = width - _MARGIN["left"] - _MARGIN["right"]
    plot_h = height - _MARGIN["top"] - _MARGIN["bottom"]
    columns = max(1, len(topology.groups) - 1)
    if drawn is None:
        drawn = np.arange(topology.num_nodes)
    bounds = np.cumsum([0, *topology.groups.values()])
    layer = np.searchsorted(bounds, drawn, side="right") - 1
    xy = np.zeros((len(drawn), 2))
    for col in range(len(topology.groups)):
        at = np.flatnonzero(layer == col)
        xy[at, 0] = _MARGIN["left"] + plot_w * col / columns
        xy[at, 1] = _MARGIN["top"] + plot_h * (np.arange(len(at)) + 0.5) / max(1, len(at))
    return xy


def _column_x(topology: Topology, size: tuple[int, int]) -> np.ndarray:
    plot_w = size[0] - _MARGIN["left"] - _MARGIN["right"]
    return _MARGIN["left"] + plot_w * np.arange(len(topology.groups)) / max(1, len(topology.groups) - 1)


def epoch_title(run_name: str, epoch: int, val_acc: float | None = None) -> str:
    """The title of a run's picture of ``epoch``: ``trial-027 · epoch 3 · val_acc 0.8123``."""
    parts = [run_name, f"epoch {epoch}"]
    if val_acc is not None and math.isfinite(val_acc):
        parts.append(f"val_acc {val_acc:.4f}")
    return " · ".join(p for p in parts if p)


@dataclass
class GraphDrawing:
    """What `draw_rolled_graph` drew: ``vmax`` is the top of its colour scale (pass it to the run's next
    pictures to keep their colours comparable); ``above_scale`` counts the drawn nodes whose value is
    beyond it (drawn in the top colour)."""

    path: Path
    title: str
    subtitle: str
    value_name: str
    vmax: float
    scale_note: str
    edges: int
    nodes: int
    above_scale: int
    layer_labels: list[tuple[str, str]] = field(default_factory=list)  # (layer name, node count line)
    edge_legend: list[str] = field(default_factory=list)


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
                      path: str | Path, *, title: str = "", subtitle: str = "",
                      value_name: str = "eigenvector centrality", vmax: float | None = None,
                      scale_note: str = "", max_edges: int = MAX_DRAWN_EDGES, max_nodes: int = MAX_DRAWN_NODES,
                      size: tuple[int, int] = PICTURE_SIZE) -> GraphDrawing:
    """Draw the rolled graph to the PNG file ``path`` (see the module docstring). ``node_values`` colours
    the nodes on a square-root scale from 0 to ``vmax`` (default: the largest value drawn), so that the
    small values of the layers far from the dominant one still show; ``scale_note`` says where the scale
    comes from (e.g. ``fixed at epoch 1``)."""
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
    if vmax is not None and not (math.isfinite(vmax) and vmax > 0):
        raise ValueError(f"vmax={vmax} must be a positive number (the top of the colour scale)")
    drawn = drawn_nodes(topology, max_nodes)
    sampled, tops = _sampled_connections(topology, connections, drawn)
    src, dst, strength = strongest_edges(sampled, max_edges, tops)

    g = graph_tool.Graph(directed=False)
    g.add_vertex(len(drawn))
    strength_map = g.new_edge_property("double")
    g.add_edge_list(np.column_stack([src, dst, strength]), eprops=[strength_map])
    pos = g.new_vertex_property("vector<double>")
    pos.set_2d_array(layered_positions(topology, size, drawn).T.copy())
    cmap = colormaps["viridis"]
    shown = np.abs(np.nan_to_num(values[drawn]))
    if vmax is None:
        vmax = float(shown.max()) if shown.size and shown.max() > 0 else 1.0
    norm = PowerNorm(0.5, vmin=0.0, vmax=vmax)
    fill = g.new_vertex_property("vector<double>")
    fill.set_2d_array(cmap(norm(np.clip(shown, 0, vmax))).T.copy())
    edge_color = g.new_edge_property("vector<double>")
    pen_width, opacity = edge_pen(strength)
    edge_color.set_2d_array(np.vstack([np.tile(np.array(_EDGE_RGB)[:, None], len(strength)), opacity]))
    pen = g.new_edge_property("double")
    pen.a[:] = pen_width
    plot_h = height - _MARGIN["top"] - _MARGIN["bottom"]
    node_size = float(np.clip(0.8 * plot_h / min(max_nodes, max(topology.groups.values())), 1.5, 12.0))

    surface = cairo.ImageSurface(cairo.FORMAT_ARGB32, width, height)
    cr = cairo.Context(surface)
    cr.set_source_rgb(1, 1, 1)
    cr.paint()
    _sample_bands(cr, topology, size, max_nodes, node_size)
    # strong edges are drawn last, on top of the weak ones
    cairo_draw(g, pos, cr, vprops={"size": node_size, "fill_color": fill, "pen_width": 0.0},
               eprops={"color": edge_color, "pen_width": pen}, eorder=strength_map)
    drawing = GraphDrawing(path=Path(path), title=title, subtitle=subtitle, value_name=value_name, vmax=vmax,
                           scale_note=scale_note, edges=len(src), nodes=len(drawn),
                           above_scale=int((shown > vmax * (1 + 1e-12)).sum()))
    _annotate(cr, topology, size, drawing, cmap, max_nodes)
    surface.write_to_png(str(path))
    return drawing


def _layer_labels(topology: Topology, max_nodes: int) -> list[tuple[str, str]]:
    return [(name, f"{n} node{'s' if n > 1 else ''}" if n <= max_nodes else f"{max_nodes} of {n} drawn")
            for name, n in topology.groups.items()]


def _sample_bands(cr, topology: Topology, size: tuple[int, int], max_nodes: int, node_size: float) -> None:
    """A grey band behind each column drawn with a sample of its nodes: the band is the whole layer."""
    plot_h = size[1] - _MARGIN["top"] - _MARGIN["bottom"]
    for x, n in zip(_column_x(topology, size), topology.groups.values()):
        if n > max_nodes:
            cr.set_source_rgba(*_BAND_RGBA)
            half = max(6.0, node_size)
            cr.rectangle(x - half, _MARGIN["top"] - half, 2 * half, plot_h + 2 * half)
            cr.fill()


def _fit_labels(cr, labels: Sequence[str], spacing: float) -> tuple[float, int]:
    """Font size (13 down to 9, times `_TEXT_SCALE`) and rows (1 to 3, alternate columns on alternate rows) so
    that the labels of neighbouring columns do not overlap."""
    widest = 0.0
    sizes = [size * _TEXT_SCALE for size in (13, 12, 11, 10, 9)]
    for font in sizes:
        cr.set_font_size(font)
        widest = max(cr.text_extents(text)[4] for text in labels)
        if widest <= 0.92 * spacing:
            return font, 1
    return sizes[-1], min(3, math.ceil(widest / (0.92 * spacing)))


def _annotate(cr, topology: Topology, size: tuple[int, int], drawing: GraphDrawing, cmap, max_nodes: int) -> None:
    """Title and subtitle, the layer names (horizontal, under their columns), the colour bar and the
    edge-weight legend; fills in the labels of ``drawing``."""
    import cairo

    width, height = size
    k = _TEXT_SCALE
    cr.set_source_rgb(*_TEXT_RGB)
    cr.save()  # the title block and the legends are drawn at their natural size, scaled by k
    cr.translate(_MARGIN["left"], 0)
    cr.scale(k, k)
    cr.select_font_face("sans-serif", cairo.FONT_SLANT_NORMAL, cairo.FONT_WEIGHT_BOLD)
    cr.set_font_size(18)
    cr.move_to(0, 32)
    cr.show_text(drawing.title)
    cr.select_font_face("sans-serif", cairo.FONT_SLANT_NORMAL, cairo.FONT_WEIGHT_NORMAL)
    cr.set_font_size(13)
    cr.move_to(0, 54)
    cr.show_text(drawing.subtitle)
    cr.restore()

    labels = _layer_labels(topology, max_nodes)
    drawing.layer_labels = labels
    xs = _column_x(topology, size)
    spacing = float(xs[1] - xs[0]) if len(xs) > 1 else float(width)
    font, rows = _fit_labels(cr, [t for pair in labels for t in pair], spacing)
    top = height - _MARGIN["bottom"] + 22 * k
    for i, ((name, count), x) in enumerate(zip(labels, xs)):
        y = top + (i % rows) * (2.4 * font + 4)
        for j, (text, bold) in enumerate(((name, True), (count, False))):
            cr.select_font_face("sans-serif", cairo.FONT_SLANT_NORMAL,
                                cairo.FONT_WEIGHT_BOLD if bold else cairo.FONT_WEIGHT_NORMAL)
            cr.set_font_size(font if bold else font - 1)
            w = cr.text_extents(text)[4]
            # centred under the column, kept inside the picture
            cr.move_to(min(max(x - w / 2, 4), width - w - 4), y + j * (font + 3))
            cr.set_source_rgb(*(_TEXT_RGB if bold else (0.35, 0.35, 0.38)))
            cr.show_text(text)

    # colour bar: square-root scale, as the nodes; in the legend's own units (natural size, scaled by k)
    cr.save()
    cr.translate(width - 240 * k, 0)  # the legend's natural width: the plot's right margin leaves a gap before it
    cr.scale(k, k)
    top = _MARGIN["top"] / k
    cr.select_font_face("sans-serif", cairo.FONT_SLANT_NORMAL, cairo.FONT_WEIGHT_NORMAL)
    x0, y0, bar_w, bar_h = 70, top + 62, 18, 180
    cr.set_source_rgb(*_TEXT_RGB)
    cr.set_font_size(13)
    cr.move_to(x0 - 40, top + 8)
    cr.show_text(drawing.value_name)
    cr.set_font_size(11)
    for i, line in enumerate(("square-root scale" + ("," if drawing.scale_note else ""), drawing.scale_note)):
        cr.move_to(x0 - 40, top + 24 + 14 * i)
        cr.show_text(line)
    steps = 96
    for i in range(steps):
        cr.set_source_rgba(*cmap(1 - i / (steps - 1)))
        cr.rectangle(x0, y0 + bar_h * i / steps, bar_w, bar_h / steps + 1)
        cr.fill()
    cr.set_source_rgb(*_TEXT_RGB)
    cr.set_font_size(11)
    for frac in (1.0, 0.25, 0.0):  # value at a square-root position: vmax, a quarter of it (half-way), 0
        y = y0 + bar_h * (1 - math.sqrt(frac))
        cr.move_to(x0 + bar_w, y)
        cr.line_to(x0 + bar_w + 4, y)
        cr.set_line_width(1)
        cr.stroke()
        cr.move_to(x0 + bar_w + 7, y + 4)
        cr.show_text(f"{frac * drawing.vmax:.3g}" + (" or more" if frac == 1.0 and drawing.above_scale else ""))
    if drawing.above_scale:
        cr.move_to(x0 - 40, y0 + bar_h + 22)
        cr.show_text(f"{drawing.above_scale} nodes above the scale")

    # edge-weight legend: samples drawn with the edges' own width and opacity
    ly = y0 + bar_h + 60
    cr.set_font_size(13)
    cr.move_to(x0 - 40, ly)
    cr.show_text("edge weight")
    cr.set_font_size(11)
    for i, line in enumerate(("relative to the strongest", "edge of its layer pair")):
        cr.move_to(x0 - 40, ly + 18 + 14 * i)
        cr.show_text(line)
    drawing.edge_legend = []
    for i, s in enumerate(LEGEND_STRENGTHS):
        y = ly + 60 + 22 * i
        pen_width, opacity = edge_pen(s)
        cr.set_source_rgba(*_EDGE_RGB, opacity)
        cr.set_line_width(pen_width)
        cr.move_to(x0 - 40, y)
        cr.line_to(x0 + 20, y)
        cr.stroke()
        label = f"{s:.0%} of the strongest"
        drawing.edge_legend.append(label)
        cr.set_source_rgb(*_TEXT_RGB)
        cr.move_to(x0 + 28, y + 4)
        cr.show_text(label)
    cr.move_to(x0 - 40, ly + 60 + 22 * len(LEGEND_STRENGTHS) + 6)
    cr.set_source_rgb(0.35, 0.35, 0.38)
    cr.show_text(f"{drawing.edges} edges, {drawing.nodes} nodes drawn")
    cr.restore()


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

    def plot(self, path: str | Path, title: str = ""):
        """One row per centrality: per layer, the median over the epochs (colour = depth) and the band
        between the quartiles; a log scale where every median is positive. A legend beside the rows names
        each layer. Returns the matplotlib ``Figure`` (saved to ``path``)."""
        from matplotlib import colormaps
        from matplotlib.colors import Normalize
        from matplotlib.figure import Figure
        from matplotlib.ticker import MaxNLocator

        if not self.epochs:
            raise ValueError("no epoch recorded: nothing to plot")
        names = list(self.quantiles)
        fig = Figure(figsize=(10, 3.6 * len(names)), layout="constrained")
        axes = fig.subplots(len(names), 1, squeeze=False, sharex=True)[:, 0]
        # up to 10 layers, one distinct colour each; more, a colour ramp in forward order
        depth = Normalize(0, max(1, len(self.layers) - 1))
        ramp = colormaps["viridis"]
        palette = colormaps["tab10"]
        epochs = np.array(self.epochs)
        order = np.argsort(epochs)
        for ax, name in zip(axes, names):
            q = np.stack(self.quantiles[name])[order]  # [epochs, layers, quantiles]
            for layer in range(q.shape[1]):
                colour = palette(layer) if len(self.layers) <= 10 else ramp(depth(layer))
                ax.plot(epochs[order], q[:, layer, 2], color=colour, lw=1.4, marker="o" if len(epochs) < 12 else None,
                        ms=3.5, label=self.layers[layer])
                ax.fill_between(epochs[order], q[:, layer, 1], q[:, layer, 3], color=colour, alpha=0.12, lw=0)
            if np.all(q[:, :, 1:4] > 0):
                ax.set_yscale("log")
            ax.set_ylabel(f"{name} centrality\n(median, quartile band)")
            ax.grid(alpha=0.3)
        axes[-1].set_xlabel("epoch")
        axes[-1].xaxis.set_major_locator(MaxNLocator(integer=True))
        handles, labels = axes[0].get_legend_handles_labels()
        fig.legend(handles, labels, loc="outside right upper", title="layer (forward order)", fontsize="small",
                   ncols=1 + (len(labels) - 1) // 24)
        if title:
            fig.suptitle(title)
        fig.savefig(str(path), dpi=110)
        return fig
