"""Entry points: ``epochgraph-train``, ``epochgraph-compare``, ``epochgraph-worker``, the graph stage of a logged
run (``python -m epochgraph.cli.graph_stage``) and the ways into the results (``python -m epochgraph.cli.browse``)."""

__all__: list[str] = []
