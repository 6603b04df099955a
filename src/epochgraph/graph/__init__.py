"""The rolled graph of a network and its centrality signature (paper S1-S3): topology, rolled graph,
centralities, signatures, the paper's weight baselines, drawing, and the graph stage of a training."""

from epochgraph._lazy import lazy_exports

_EXPORTS = {
    "Topology": "epochgraph.graph.topology",
    "TopologyBuilder": "epochgraph.graph.topology",
    "PersistentRolledGraph": "epochgraph.graph.rolled_graph",
    "weighted_degree": "epochgraph.graph.centrality",
    "eigenvector_centrality": "epochgraph.graph.centrality",
    "CENTRALITIES": "epochgraph.graph.centrality",
    "graph_signature": "epochgraph.graph.signature",
    "snapshot_signature": "epochgraph.graph.signature",
    "SignatureEngine": "epochgraph.graph.signature",
    "TemporalSignature": "epochgraph.graph.signature",
    "GraphStage": "epochgraph.graph.graph_stage",
    "GraphPictures": "epochgraph.graph.graph_stage",
    "draw_rolled_graph": "epochgraph.graph.graph_drawing",
}
__all__ = sorted(_EXPORTS)
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
