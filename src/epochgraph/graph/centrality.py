"""Node centralities of a rolled graph (paper S2): weighted degree and eigenvector centrality.

Each comes in forms that agree to rounding: on a `graph_tool.Graph` (the reference), on a run's
`PersistentRolledGraph` (the same graph-tool computations, with the adjacency matrix kept between
epochs: the training's default), on the plain `EdgeArrays` (a scipy CSR adjacency, no graph object)
and on a `BlockGraph` (dense blocks). All return a float64 numpy array indexed by vertex.

**Weighted degree**: the sum of the weights of the edges at a vertex.

**Eigenvector centrality on k-partite graphs.** A chain of layers is bipartite, so the adjacency
spectrum is symmetric (+lambda, -lambda) and plain power iteration (what graph-tool's ``eigenvector()``
does) oscillates and never converges. We take the eigenvector of the largest *algebraic* eigenvalue
of the symmetric weighted adjacency, which is unaffected by the -lambda twin: a dense symmetric
solver up to `DENSE_MAX_NODES` vertices, Lanczos (``scipy.sparse.linalg.eigsh(which="LA", k=1)``)
from the fixed start vector 1/sqrt(n) above, so the result is deterministic.

Normalisation: unit L2 norm, sign chosen so the entries sum to a positive value (the Perron vector
of a connected graph is then entrywise >= 0), as ``networkx.eigenvector_centrality_numpy`` after
dividing by its norm. Defined results for degenerate graphs:

* no edge with positive weight (empty or all-zero graph): the uniform vector 1/sqrt(n);
* disconnected graph: the leading eigenvector, which is zero outside the component(s) with the
  largest spectral radius; when several components tie for it, the normalised projection of the
  all-ones vector onto that eigenspace (the dense solver computes exactly this; Lanczos started from
  the all-ones vector converges to it, since its Krylov space holds only that direction of the
  eigenspace).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import scipy.linalg
import scipy.sparse as sp
from scipy.sparse.linalg import ArpackError, ArpackNoConvergence, LinearOperator, eigsh

from epochgraph.graph.rolled_graph import BlockGraph, EdgeArrays, PersistentRolledGraph

if TYPE_CHECKING:
    import graph_tool

CENTRALITIES = ("degree", "eigenvector")
DENSE_MAX_NODES = 400  # below this a dense symmetric solver is as fast as Lanczos, and never fails
_TIE_RTOL = 1e-9  # eigenvalues this close (relative to the largest |weight|) count as one


def weighted_degree(g: graph_tool.Graph) -> np.ndarray:
    """Sum of the ``weight`` edge property at every vertex (graph-tool's weighted total degree)."""
    pmap = g.degree_property_map("total", weight=g.edge_properties["weight"])
    # keep ``pmap`` alive while copying: ``pmap.a`` is a view into the property map's own storage
    return np.array(pmap.a, dtype=np.float64, copy=True)


def weighted_degree_persistent(graph: PersistentRolledGraph) -> np.ndarray:
    """Weighted degree of a run's persistent graph: graph-tool's weighted total degree of its current
    ``weight`` property."""
    return weighted_degree(graph.graph)


def weighted_degree_arrays(edges: EdgeArrays) -> np.ndarray:
    """Weighted degree from the edge arrays (same values as `weighted_degree`)."""
    n = edges.num_nodes
    return (np.bincount(edges.src, weights=edges.weight, minlength=n)
            + np.bincount(edges.dst, weights=edges.weight, minlength=n))


def weighted_degree_blocks(graph: BlockGraph) -> np.ndarray:
    """Weighted degree from the dense blocks (same values as `weighted_degree`)."""
    return graph.degree()


def adjacency_arrays(edges: EdgeArrays) -> sp.csr_matrix:
    """Symmetric weighted adjacency matrix in CSR form (a self-loop, if any, counted once)."""
    n = edges.num_nodes
    off = edges.src != edges.dst
    rows = np.concatenate([edges.src, edges.dst[off]])
    cols = np.concatenate([edges.dst, edges.src[off]])
    vals = np.concatenate([edges.weight, edges.weight[off]])
    return sp.csr_matrix((vals, (rows, cols)), shape=(n, n))


def _dense_leading(dense: np.ndarray) -> np.ndarray:
    """Leading eigenvector of a dense symmetric matrix; a tied leading eigenvalue gives the projection
    of the all-ones vector onto its eigenspace."""
    n = dense.shape[0]
    dense = dense / np.abs(dense).max()
    # the top two eigenpairs only (MRRR): 4x faster than the full spectrum; ties need the full one
    vals, vecs = scipy.linalg.eigh(dense, subset_by_index=[max(0, n - 2), n - 1], driver="evr")
    if n == 1 or vals[-1] - vals[-2] > _TIE_RTOL:
        return vecs[:, -1]
    vals, vecs = np.linalg.eigh(dense)
    basis = vecs[:, vals >= vals[-1] - _TIE_RTOL]
    x = basis @ (basis.T @ np.ones(n))
    return x if np.linalg.norm(x) > 1e-12 else basis[:, -1]


def _as_dense(adj: sp.spmatrix | LinearOperator) -> np.ndarray:
    return adj.toarray() if sp.issparse(adj) else adj @ np.eye(adj.shape[0])


def _lanczos(adj: sp.spmatrix | LinearOperator, n: int) -> np.ndarray:
    """Lanczos (ARPACK) from the all-ones start; a second, seeded random start if ARPACK breaks down
    (the all-ones start can lie in an invariant subspace), and the dense solver as the last resort."""
    starts = [np.ones(n) / np.sqrt(n), np.random.default_rng(0).random(n) + 0.5]
    for v0 in starts:
        try:
            _, vecs = eigsh(adj, k=1, which="LA", v0=v0, tol=1e-10, maxiter=20 * n)
            return vecs[:, 0]
        except (ArpackNoConvergence, ArpackError):
            continue
    return _dense_leading(_as_dense(adj))


def leading_eigenvector(adj: sp.spmatrix | LinearOperator, has_edges: bool | None = None) -> np.ndarray:
    """Unit-norm, positive-sum eigenvector of the largest algebraic eigenvalue of symmetric ``adj``
    (the normalisation and degenerate cases of the module docstring)."""
    n = adj.shape[0]
    if n == 0:
        return np.zeros(0)
    if has_edges is None:
        has_edges = adj.nnz > 0 and bool(np.any(adj.data > 0))
    if not has_edges:
        return np.full(n, 1 / np.sqrt(n))
    x = _dense_leading(_as_dense(adj)) if n <= DENSE_MAX_NODES else _lanczos(adj, n)
    x = x / np.linalg.norm(x)
    return -x if x.sum() < 0 else x


def eigenvector_centrality(g: graph_tool.Graph) -> np.ndarray:
    """Eigenvector centrality of a graph-tool graph, on ``graph_tool.spectral.adjacency`` of its
    ``weight`` edge property (a scipy CSR matrix in graph-tool 2.45)."""
    from graph_tool.spectral import adjacency

    adj = sp.csr_matrix(adjacency(g, weight=g.edge_properties["weight"]))
    return leading_eigenvector(adj)


def eigenvector_centrality_persistent(graph: PersistentRolledGraph) -> np.ndarray:
    """Eigenvector centrality of a run's persistent graph, on its kept graph-tool adjacency matrix (the
    same matrix, entry for entry, as `eigenvector_centrality` builds from scratch)."""
    return leading_eigenvector(graph.adjacency())


def eigenvector_centrality_arrays(edges: EdgeArrays) -> np.ndarray:
    """Eigenvector centrality from the edge arrays (same values as `eigenvector_centrality`)."""
    return leading_eigenvector(adjacency_arrays(edges))


def eigenvector_centrality_blocks(graph: BlockGraph) -> np.ndarray:
    """Eigenvector centrality by Lanczos on block matrix-vector products (no sparse matrix built)."""
    n = graph.num_nodes
    op = LinearOperator((n, n), matvec=graph.matvec, rmatvec=graph.matvec, dtype=np.float64)
    has_edges = any(m.size and float(m.max()) > 0 for _, _, m in graph.blocks)
    return leading_eigenvector(op, has_edges=has_edges)
