"""Node centralities of a rolled graph (paper S2): weighted degree and eigenvector centrality.

Both come in two forms that must agree: on a `graph_tool.Graph` (the reference) and on the plain
`EdgeArrays` (the fast path, no graph object).

**Eigenvector centrality on k-partite graphs.** A chain of layers is bipartite, so the adjacency
spectrum is symmetric (+lambda, -lambda) and plain power iteration (what graph-tool's ``eigenvector()``
does) oscillates and never converges. We take the eigenvector of the largest *algebraic* eigenvalue
with Lanczos (``scipy.sparse.linalg.eigsh(which="LA")``), which is unaffected by the -lambda twin.
Normalisation: unit L2 norm, sign chosen so the entries sum to a positive value (the Perron vector
of a connected graph is then entrywise >= 0). A graph without any positive weight gets the uniform
vector 1/sqrt(n).
"""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp
from scipy.sparse.linalg import ArpackError, ArpackNoConvergence, LinearOperator, eigsh

from epochgraph.rolled_graph import BlockGraph, EdgeArrays

CENTRALITIES = ("degree", "eigenvector")


def weighted_degree(g) -> np.ndarray:
    """Sum of the weights of the edges at every vertex (graph-tool).

    On an undirected graph graph-tool's "out" degree counts every incident edge; its "total" degree
    map returns uninitialised memory there (seen with graph-tool 2.45), so it is not used.
    """
    kind = "total" if g.is_directed() else "out"
    return np.array(g.degree_property_map(kind, weight=g.edge_properties["weight"]).a, dtype=float)


def weighted_degree_arrays(edges: EdgeArrays) -> np.ndarray:
    """Weighted degree from the edge arrays (same values as `weighted_degree`)."""
    n = edges.num_nodes
    return (np.bincount(edges.src, weights=edges.weight, minlength=n)
            + np.bincount(edges.dst, weights=edges.weight, minlength=n))


def adjacency_arrays(edges: EdgeArrays) -> sp.csr_matrix:
    """Symmetric weighted adjacency matrix (self-loops, if any, counted once)."""
    n = edges.num_nodes
    off = edges.src != edges.dst
    rows = np.concatenate([edges.src, edges.dst[off]])
    cols = np.concatenate([edges.dst, edges.src[off]])
    vals = np.concatenate([edges.weight, edges.weight[off]])
    return sp.csr_matrix((vals, (rows, cols)), shape=(n, n))


DENSE_MAX_NODES = 400  # below this a dense symmetric solver is as fast as Lanczos, and never fails


def _lanczos(adj, n: int) -> np.ndarray:
    """Lanczos (ARPACK) from a deterministic start; a second, seeded random start if ARPACK breaks down
    (the uniform start can lie in an invariant subspace), and the dense solver as the last resort."""
    starts = [np.ones(n) / np.sqrt(n), np.random.default_rng(0).random(n) + 0.5]
    for v0 in starts:
        try:
            _, vecs = eigsh(adj, k=1, which="LA", v0=v0, tol=1e-10, maxiter=20 * n)
            return vecs[:, 0]
        except (ArpackNoConvergence, ArpackError):
            continue
    return np.linalg.eigh(adj @ np.eye(n))[1][:, -1]


def leading_eigenvector(adj: sp.spmatrix | LinearOperator, has_edges: bool | None = None) -> np.ndarray:
    """Unit-norm, positive-sum eigenvector of the largest algebraic eigenvalue of symmetric ``adj``."""
    n = adj.shape[0]
    if n == 0:
        return np.zeros(0)
    if has_edges is None:
        has_edges = adj.nnz > 0 and bool(np.any(adj.data > 0))
    if not has_edges:
        return np.full(n, 1 / np.sqrt(n))
    if n <= DENSE_MAX_NODES:
        dense = adj @ np.eye(n)
        x = np.linalg.eigh(dense / np.abs(dense).max())[1][:, -1]
    else:
        x = _lanczos(adj, n)
    x = x / np.linalg.norm(x)
    return -x if x.sum() < 0 else x


def eigenvector_centrality(g) -> np.ndarray:
    """Eigenvector centrality of a graph-tool graph (on graph-tool's weighted adjacency)."""
    from graph_tool.spectral import adjacency

    adj = sp.csr_matrix(adjacency(g, weight=g.edge_properties["weight"]))
    return leading_eigenvector(adj)


def eigenvector_centrality_arrays(edges: EdgeArrays) -> np.ndarray:
    """Eigenvector centrality from the edge arrays (same values as `eigenvector_centrality`)."""
    return leading_eigenvector(adjacency_arrays(edges))


def weighted_degree_blocks(graph: BlockGraph) -> np.ndarray:
    """Weighted degree from the dense blocks (same values as `weighted_degree`)."""
    return graph.degree()


def eigenvector_centrality_blocks(graph: BlockGraph) -> np.ndarray:
    """Eigenvector centrality by Lanczos on block matrix-vector products (no sparse matrix built)."""
    n = graph.num_nodes
    op = LinearOperator((n, n), matvec=graph.matvec, rmatvec=graph.matvec, dtype=np.float64)
    has_edges = any(m.size and float(m.max()) > 0 for _, _, m in graph.blocks)
    return leading_eigenvector(op, has_edges=has_edges)
