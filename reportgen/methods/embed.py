"""Feature-space views of a layer: 2-D embeddings, held-out k-NN accuracy, nearest neighbours.

Every function here raises `reportgen.methods.degenerate.DegenerateError` (a ValueError) for features that are
not finite, and all but `embed_pca` (whose own eigensolver returns zeros) for features that are constant over the
points, before scikit-learn sees them.

t-SNE: van der Maaten & Hinton, "Visualizing Data using t-SNE" (JMLR 2008),
https://www.jmlr.org/papers/v9/vandermaaten08a.html . The k-NN probe of representation quality follows Wu et al.
(2018), https://arxiv.org/abs/1805.01978 .

torch and scikit-learn are imported inside the functions: `embed_layers` starts worker processes that import this
module, and they should not pay for torch.
"""

from __future__ import annotations

import os
from typing import Any, Mapping, Sequence

import numpy as np

from .degenerate import require_usable

__all__ = ["embed_pca", "embed_tsne", "knn_accuracy", "nearest_neighbours", "embed_layers"]

# t-SNE cost grows with the dimension only through the neighbour search; 50 PCA components keep the structure that
# matters and are the customary pre-reduction (van der Maaten & Hinton 2008, section 5)
TSNE_PCA_DIM = 50


def _features(x: Any) -> np.ndarray:
    if hasattr(x, "detach"):  # a torch tensor, without importing torch
        x = x.detach().cpu().numpy()
    a = np.asarray(x)
    if a.ndim != 2:
        a = a.reshape(a.shape[0], -1)  # (N, C, H, W) maps are flattened per image
    return np.ascontiguousarray(a, dtype=np.float32)


def embed_pca(features: Any, n: int = 2) -> np.ndarray:
    """Projection onto the first ``n`` principal components.

    Args:
        features: (N, D) array or tensor ((N, ...) is flattened).
        n: number of components; at most min(N, D).

    Returns:
        (N, n) float32, centred; component signs fixed so each component's largest loading is positive
        (deterministic, scikit-learn's convention). Exact, no seed: the top eigenvectors of the smaller of the
        (D, D) scatter matrix and the (N, N) Gram matrix, in float64. A full SVD of a (1000, 4096) layer costs
        seconds; this costs one matrix product and a partial symmetric eigensolve, with the same result. BLAS runs
        on one thread: the result does not depend on the machine, and a busy machine does not stall OpenBLAS
        (measured: a 784x784 partial eigensolve took 17 s on 2 threads of a loaded 2-core box, 0.1 s on one).
    """
    from threadpoolctl import threadpool_limits

    x = _features(features).astype(np.float64)
    require_usable(x, constant_ok=True)  # zero variance gives zero components here, with no division
    n = min(n, *x.shape)
    if n == 0:
        return np.zeros((x.shape[0], 0), dtype=np.float32)
    with threadpool_limits(limits=1):
        return _pca_project(x, n)


def _pca_project(x: np.ndarray, n: int) -> np.ndarray:
    from scipy.linalg import eigh

    x -= x.mean(axis=0)
    rows, dims = x.shape
    if dims <= rows:
        _, vecs = eigh(x.T @ x, subset_by_index=[dims - n, dims - 1], driver="evx")
        comps = vecs[:, ::-1].T  # (n, D), unit rows, largest variance first
    else:
        vals, vecs = eigh(x @ x.T, subset_by_index=[rows - n, rows - 1], driver="evx")
        u, sv = vecs[:, ::-1], np.sqrt(np.clip(vals[::-1], 0.0, None))
        # v = X^T u / s; a zero singular value (no variance left) gives a zero component
        comps = np.divide((x.T @ u), sv, out=np.zeros((dims, n)), where=sv > 1e-12 * max(sv.max(), 1e-300)).T
    biggest = np.abs(comps).argmax(axis=1)
    signs = np.sign(comps[np.arange(n), biggest])
    comps *= np.where(signs == 0, 1.0, signs)[:, None]
    return (x @ comps.T).astype(np.float32)


def _pca_reduce(x: np.ndarray, dim: int, seed: int) -> np.ndarray:
    from sklearn.decomposition import PCA

    if x.shape[1] <= dim or x.shape[0] <= dim:
        return x
    return PCA(n_components=dim, svd_solver="randomized", random_state=seed).fit_transform(x).astype(np.float32)


def embed_tsne(features: Any, perplexity: float = 30.0, seed: int = 0, *, n_jobs: int | None = None) -> np.ndarray:
    """2-D t-SNE embedding (scikit-learn, Barnes-Hut, ``init="pca"``, ``learning_rate="auto"``).

    Args:
        features: (N, D) ((N, ...) is flattened). When D > 50 it is first PCA-reduced to 50 dimensions: standard
            practice that makes the neighbour search much cheaper and removes noise dimensions.
        perplexity: effective neighbourhood size; clipped to (N - 1) / 3 so small sets stay valid.
        seed: random state of the PCA reduction and of t-SNE; same features + seed = same embedding.
        n_jobs: scikit-learn's ``n_jobs`` for the neighbour search (None = 1); it does not change the result.

    Returns:
        (N, 2) float32. Fewer than 3 points get an all-zero embedding.

    Runs with BLAS and OpenMP held to one thread: scikit-learn's t-SNE result depends on the thread count (the
    gradient sums change order), so this keeps same features + seed = same embedding on any machine, and in
    `embed_layers`' worker processes. Parallelism comes from embedding several layers at once instead.
    """
    from sklearn.manifold import TSNE
    from threadpoolctl import threadpool_limits

    x = _features(features)
    n_points = x.shape[0]
    if n_points < 3:
        return np.zeros((n_points, 2), dtype=np.float32)
    require_usable(x)
    with threadpool_limits(limits=1):
        x = _pca_reduce(x, TSNE_PCA_DIM, seed)
        perplexity = float(min(perplexity, (n_points - 1) / 3))
        tsne = TSNE(
            n_components=2, perplexity=perplexity, init="pca", learning_rate="auto", random_state=seed, n_jobs=n_jobs
        )
        return tsne.fit_transform(x).astype(np.float32)


def knn_accuracy(features: Any, labels: Any, k: int = 5, holdout: float = 0.3, seed: int = 0) -> float:
    """Held-out k-nearest-neighbour accuracy: how well a layer's features separate the classes.

    A seeded stratified split keeps ``holdout`` of the points for scoring (unstratified when some class is too rare
    to be split); a Euclidean k-NN classifier (majority vote) is fitted on the rest.

    Returns:
        accuracy in [0, 1] on the held-out points.
    """
    from sklearn.model_selection import train_test_split
    from sklearn.neighbors import KNeighborsClassifier

    x = _features(features)
    require_usable(x)
    y = np.asarray(labels.detach().cpu() if hasattr(labels, "detach") else labels).reshape(-1)
    if y.shape[0] != x.shape[0]:
        raise ValueError(f"{x.shape[0]} feature rows but {y.shape[0]} labels")
    try:
        x_fit, x_test, y_fit, y_test = train_test_split(x, y, test_size=holdout, random_state=seed, stratify=y)
    except ValueError:  # a class with a single member, or fewer test slots than classes
        x_fit, x_test, y_fit, y_test = train_test_split(x, y, test_size=holdout, random_state=seed)
    clf = KNeighborsClassifier(n_neighbors=min(k, len(y_fit))).fit(x_fit, y_fit)
    return float(clf.score(x_test, y_test))


def nearest_neighbours(
    features: Any,
    queries_idx: Sequence[int] | Any,
    k: int = 6,
    exclude_self: bool = True,
    *,
    chunk: int = 4096,
) -> np.ndarray:
    """The ``k`` nearest points (Euclidean, float64) of each query point.

    Args:
        features: (N, D) ((N, ...) is flattened).
        queries_idx: (Q,) indices into features.
        k: neighbours per query; clipped to the points available.
        exclude_self: leave the query point itself out (by index, so exact duplicates of it still count).
        chunk: rows per block of the distance matrix, so memory stays O(chunk^2) whatever N and Q are.

    Returns:
        (Q, k) int64 indices, nearest first; equal distances go to the lower index.
    """
    import torch

    x = _features(features)
    require_usable(x)
    x = torch.from_numpy(x).double()
    q_idx = torch.as_tensor(np.asarray(queries_idx, dtype=np.int64).reshape(-1))
    n_points = x.shape[0]
    k = max(0, min(k, n_points - (1 if exclude_self else 0)))
    result = torch.empty((q_idx.shape[0], k), dtype=torch.long)
    for q0 in range(0, q_idx.shape[0], chunk):
        qi = q_idx[q0 : q0 + chunk]
        best_d = torch.empty((qi.shape[0], 0), dtype=torch.float64)
        best_i = torch.empty((qi.shape[0], 0), dtype=torch.long)
        for p0 in range(0, n_points, chunk):
            d = torch.cdist(x[qi], x[p0 : p0 + chunk])
            idx = torch.arange(p0, p0 + d.shape[1]).expand_as(d)
            if exclude_self:
                d = d.masked_fill(idx == qi[:, None], float("inf"))
            # the kept candidates precede this block and have lower indices, so a stable sort breaks ties by index
            cand_d, cand_i = torch.cat([best_d, d], dim=1), torch.cat([best_i, idx], dim=1)
            cand_d, order = torch.sort(cand_d, dim=1, stable=True)
            best_d, best_i = cand_d[:, :k], cand_i.gather(1, order)[:, :k]
        result[q0 : q0 + chunk] = best_i
    return result.numpy()


def _tsne_job(args: tuple[np.ndarray, float, int]) -> np.ndarray:
    features, perplexity, seed = args
    return embed_tsne(features, perplexity, seed)


def _cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def _processes_pay_off(workers: int, total_points: int) -> bool:
    """Worker start-up costs about 1.5 CPU-seconds each (Python, numpy, scikit-learn imports), against about
    2.5 CPU-seconds of t-SNE per 1000 points; and extra processes only help when a core is idle."""
    if workers < 2 or total_points < PARALLEL_MIN_POINTS:
        return False
    try:
        load = os.getloadavg()[0]  # includes this process
    except (AttributeError, OSError):
        load = 0.0
    return load < _cores() - 0.5


def embed_layers(
    features_by_layer: Mapping[str, Any],
    perplexity: float = 30.0,
    seed: int = 0,
    n_jobs: int = 2,
    *,
    parallel: bool | None = None,
) -> dict[str, np.ndarray]:
    """`embed_tsne` of several layers' features, in up to ``n_jobs`` worker processes.

    Each layer is embedded exactly as `embed_tsne` would do it alone (same seed, single-threaded), so the result is
    the same whether it runs in parallel or not; only the time differs.

    Args:
        features_by_layer: {layer: (N, D) features}; layers may have different N and D.
        perplexity, seed: as in `embed_tsne`.
        n_jobs: most worker processes.
        parallel: None decides by the work at hand: processes when there are at least two layers, at least
            ``PARALLEL_MIN_POINTS`` points in all, and an idle core (1-minute load average below the cores);
            True always starts workers (when n_jobs > 1 and there are two layers), False never does.

    Returns:
        {layer: (N, 2) float32}, in the order of ``features_by_layer``.
    """
    names = list(features_by_layer)
    jobs = [(_features(features_by_layer[name]), perplexity, seed) for name in names]
    total_points = sum(job[0].shape[0] for job in jobs)
    if parallel is None:
        workers = min(n_jobs, len(jobs), _cores())
        parallel = _processes_pay_off(workers, total_points)
    else:
        workers = min(n_jobs, len(jobs))
        parallel = parallel and workers > 1
    if parallel:
        import multiprocessing as mp
        from concurrent.futures import ProcessPoolExecutor
        from concurrent.futures.process import BrokenProcessPool

        try:
            # spawn, not fork: forking a process that has started OpenMP / torch threads can deadlock
            with ProcessPoolExecutor(max_workers=workers, mp_context=mp.get_context("spawn")) as pool:
                return dict(zip(names, pool.map(_tsne_job, jobs)))
        except (BrokenProcessPool, OSError):
            # workers that cannot start (a __main__ read from stdin, no semaphores): the same result, in this process
            pass
    return {name: _tsne_job(job) for name, job in zip(names, jobs)}


# total points (over all layers) below which worker start-up eats the gain; see benchmarks/bench_embed.py
PARALLEL_MIN_POINTS = 1500
