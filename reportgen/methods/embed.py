"""Feature-space views of a layer: 2-D embeddings, held-out k-NN accuracy, nearest neighbours.

Every function here that takes features (not the t-SNE internals `tsne_dense`, `perplexity_conditionals`) raises
`reportgen.methods.degenerate.DegenerateError` (a ValueError) for features that are not finite, and all but
`embed_pca` (whose own eigensolver returns zeros) for features that are constant over the points, before
scikit-learn or the t-SNE sees them.

t-SNE: van der Maaten & Hinton, "Visualizing Data using t-SNE" (JMLR 2008),
https://www.jmlr.org/papers/v9/vandermaaten08a.html . The k-NN probe of representation quality follows Wu et al.
(2018), https://arxiv.org/abs/1805.01978 .

torch and scikit-learn are imported inside the functions, so importing this module stays cheap (`embed_layers`'
worker processes for large layers import it).
"""

from __future__ import annotations

import math
import os
from typing import Any, Mapping, Sequence

import numpy as np

from .degenerate import require_usable

__all__ = ["embed_pca", "embed_tsne", "knn_accuracy", "holdout_split", "nearest_neighbours", "embed_layers",
           "tsne_dense", "perplexity_conditionals"]

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
    """2-D t-SNE embedding: exact dense t-SNE for up to `DENSE_MAX_POINTS` points, scikit-learn's Barnes-Hut above.

    Args:
        features: (N, D) ((N, ...) is flattened). When D > 50 it is first PCA-reduced to 50 dimensions: standard
            practice that makes the neighbour search much cheaper and removes noise dimensions.
        perplexity: effective neighbourhood size; clipped to (N - 1) / 3 so small sets stay valid.
        seed: random state of scikit-learn's path (N > `DENSE_MAX_POINTS`: randomized PCA and t-SNE). The dense
            path draws no random numbers (exact PCA, exact neighbours, PCA initialisation), so it ignores the seed.
        n_jobs: scikit-learn's ``n_jobs`` for the neighbour search of its path (None = 1); it does not change the
            result.

    Returns:
        (N, 2) float32. Fewer than 3 points get an all-zero embedding.

    Both paths run with torch, BLAS and OpenMP held to one thread: a parallel sum changes its order with the thread
    count (scikit-learn's t-SNE result does), so this keeps same features + seed = same embedding on any machine.
    Parallelism comes from embedding several layers at once instead (`embed_layers`). The dense path is described
    in `tsne_dense`.
    """
    x = _features(features)
    n_points = x.shape[0]
    if n_points < 3:
        return np.zeros((n_points, 2), dtype=np.float32)
    require_usable(x)
    with _one_thread():
        if n_points <= DENSE_MAX_POINTS:
            return tsne_dense(x, perplexity)
        return _tsne_sklearn(x, perplexity, seed, n_jobs)


def _tsne_sklearn(x: np.ndarray, perplexity: float, seed: int, n_jobs: int | None) -> np.ndarray:
    from sklearn.manifold import TSNE

    x = _pca_reduce(x, TSNE_PCA_DIM, seed)
    perplexity = float(min(perplexity, (x.shape[0] - 1) / 3))
    tsne = TSNE(n_components=2, perplexity=perplexity, init="pca", learning_rate="auto", random_state=seed,
                n_jobs=n_jobs)
    return tsne.fit_transform(x).astype(np.float32)


class _one_thread:
    """torch, BLAS and OpenMP on one thread inside, the previous settings restored after (also after an error).

    torch's thread count is process-wide: worker threads started inside (`embed_layers`) inherit the 1, so every
    torch operation of the dense t-SNE runs serially in the thread that calls it.
    """

    def __enter__(self) -> "_one_thread":
        import torch
        from threadpoolctl import threadpool_limits

        self._torch = torch.get_num_threads()
        self._limits = threadpool_limits(limits=1)
        torch.set_num_threads(1)
        return self

    def __exit__(self, *exc: object) -> None:
        import torch

        try:
            torch.set_num_threads(self._torch)
        finally:
            self._limits.restore_original_limits()


# Exact dense t-SNE (N <= DENSE_MAX_POINTS). The schedule is scikit-learn's (early exaggeration 12 with momentum
# 0.5, then momentum 0.8; delta-bar-delta gains, min gain 0.01; learning rate max(N / 12 / 4, 50); PCA initialisation
# with standard deviation 1e-4) with 300 iterations instead of 1,000 (100 instead of 250 exaggerated). Measured
# trustworthiness (10 neighbours, 1,000 points, perplexity 30) minus scikit-learn's on the raw features: -0.0028 to
# -0.0023 on the 6 layers of `benchmarks/bench_peers.py --rows tsne`, -0.0019 to +0.031 on 7 layers of the zoo's
# shapes-cnn (the PCA pre-reduction helps its 2,048- and 4,096-dim conv layers), -0.0014 to +0.0004 on 5 layers
# of lenet-digits (450 points); the full 1,000 iterations changed the benchmark layers by under 0.0004. (Measured
# before the float32 PCA and the blocked iteration; those moved shapes-cnn's trustworthiness by -0.005 to +0.004.)
TSNE_EARLY_ITERS = 100
TSNE_ITERS = 300
EARLY_EXAGGERATION = 12.0
# Up to this many points the dense t-SNE runs; larger sets go to scikit-learn's Barnes-Hut. The dense repulsion
# costs N^2 per iteration against Barnes-Hut's N log N: measured single-threaded CPU time on seeded 256-dim clusters,
# dense / scikit-learn (1,000 iterations, same PCA-50) = 0.27 at N = 1,000, 0.43 at 2,000, 0.67 at 3,000 (same
# trustworthiness to 0.002); by N^2 growth it would be about even near 4,000, and the dense matrices (float64 (N, N)
# while the affinities are built) would weigh 0.4 GB at 5,000.
DENSE_MAX_POINTS = 3000


def tsne_dense(x: np.ndarray, perplexity: float = 30.0, iters: int = TSNE_ITERS,
               early_iters: int = TSNE_EARLY_ITERS) -> np.ndarray:
    """Exact t-SNE (van der Maaten & Hinton 2008) with sparse input affinities, on the thread that calls it.

    Input affinities as Barnes-Hut t-SNE (van der Maaten 2014, https://jmlr.org/papers/v15/vandermaaten14a.html):
    each point's 3 * perplexity + 1 nearest neighbours (exact, Euclidean, in the first 50 principal components when
    D > 50), Gaussian conditionals calibrated to the perplexity (`perplexity_conditionals`), symmetrized and
    normalized to sum 1. The map is optimized with the exact gradient: the Student-t affinities of all N x N pairs
    are computed at each iteration (a dense (N, N) float32 matrix: 4 MB at N = 1,000), no tree and no
    approximation. At N = 1,000 an iteration costs about as much CPU as one of scikit-learn's Barnes-Hut (measured:
    1.6 s for 300 iterations and the affinities vs 5.9 s for its 1,000, both on one core, before the iteration was
    swept in cache-sized blocks, which made it about a fifth cheaper: `benchmarks/bench_embed.py`); the time is saved by
    the fewer iterations (`TSNE_ITERS`) and by embedding the layers in parallel threads (`embed_layers`). Every
    operation runs serially in a fixed order, so the result does not depend on the thread count (call it under
    `_one_thread`, as `embed_tsne` and `embed_layers` do).

    Args:
        x: (N, D) float32, finite, N >= 3.
        perplexity: clipped to (N - 1) / 3.
        iters, early_iters: iterations in all, and of them with early exaggeration.

    Returns:
        (N, 2) float32.
    """
    import torch

    return _tsne_dense_and_pca(x, perplexity, iters, early_iters)[0]


def _tsne_dense_and_pca(x: np.ndarray, perplexity: float = 30.0, iters: int = TSNE_ITERS,
                        early_iters: int = TSNE_EARLY_ITERS) -> tuple[np.ndarray, np.ndarray]:
    """`tsne_dense` (N, 2) and the (N, 2) float32 projection on the first two principal components that its PCA
    start comes from: `embed_pca`'s numbers (the same components and signs, from the one eigendecomposition)."""
    import torch

    n_points = x.shape[0]
    perplexity = float(min(perplexity, (n_points - 1) / 3))
    p, init, pca = _tsne_inputs(x, perplexity)
    lr = max(n_points / EARLY_EXAGGERATION / 4, 50.0)  # scikit-learn's learning_rate="auto"
    with torch.no_grad():
        return _tsne_optimize(p, init, lr, iters, early_iters).numpy(), pca


def _pca_scores(x: np.ndarray, dim: int) -> tuple[Any, Any]:
    """(N, min(dim, N, D)) float64 principal-component scores of x (torch), and the (D, 2) loadings of the first
    two (unnormalized when D > N: only their signs are used). Exact: eigenvectors of the smaller of the scatter and
    Gram matrices (`_top_eigh`: float64-accurate).

    The scatter / Gram matrix itself is summed in float32 from the features centred in float64 (numpy's ``a @ a.T``
    is BLAS ``ssyrk``: half the products of a general matrix product, each at twice the float64 rate; measured
    0.07 s against torch's float64 product's 0.30 s for a (1000, 4096) layer on one core). Its entries are
    then off by about 1e-7 of the largest, float32 rounding of data that is float32 to begin with: on the default
    build's 7 layers the first two components (the PCA panel) moved by at most 5.3e-8 of their range
    (`benchmarks/bench_embed.py --features`). Scores and loadings are then taken from the float64 features."""
    import torch

    x = torch.from_numpy(x).double()
    x -= x.mean(dim=0)
    rows, dims = x.shape
    m = min(dim, rows, dims)
    single = x.numpy().astype(np.float32)
    if dims <= rows:
        _, vecs = _top_eigh(torch.from_numpy(single.T @ single), m)
        vecs = vecs.flip(1)
        return x @ vecs, vecs[:, :2]
    vals, vecs = _top_eigh(torch.from_numpy(single @ single.T), m)
    u, sv = vecs.flip(1), vals.flip(0).clamp(min=0.0).sqrt()
    return u * sv, x.T @ u[:, :2]


def _top_eigh(g: Any, m: int) -> tuple[Any, Any]:
    """The m largest eigenvalues (m,) and eigenvectors (K, m) of a symmetric (K, K) float32 torch matrix, float64,
    in ascending order (as torch.linalg.eigh).

    A float32 eigensolve, then one subspace-iteration step and a Rayleigh-Ritz solve in float64 on the m vectors it
    found: half the time of a float64 eigensolve (0.15-0.23 s against 0.32-0.39 s for 4 of the default build's
    1000 x 1000 Gram matrices on one core), and close to it: on those layers the scores on the first two components
    differed from the float64 eigensolve's by at most 4e-9 of the first component's largest score, those on all 50
    by 7e-6, the eigenvalues by 4e-10 (relative)."""
    import torch

    _, vecs = torch.linalg.eigh(g)
    g = g.double()
    basis, _ = torch.linalg.qr(g @ vecs[:, -m:].double())
    vals, small = torch.linalg.eigh(basis.T @ g @ basis)
    return vals, basis @ small


def perplexity_conditionals(d2: Any, perplexity: float, steps: int = 100, tol: float = 1e-5) -> Any:
    """Gaussian neighbour probabilities p(j|i) whose entropy is log(perplexity), all rows at once.

    The bisection on the precision beta of scikit-learn's ``_binary_search_perplexity`` (start 1, double or halve
    until bracketed, then bisect; stop at |H - log(perplexity)| <= tol), vectorized over the rows.

    Args:
        d2: (M, K) float64 torch tensor of squared distances to each row's K neighbours.
        perplexity: > 0.

    Returns:
        (M, K) float64 rows summing to 1.
    """
    import torch

    d = d2 - d2.min(dim=1, keepdim=True).values  # a shift per row changes no p(j|i) and avoids exp underflow
    target = float(np.log(perplexity))
    beta = torch.ones(d.shape[0], dtype=torch.float64)
    lo = torch.full_like(beta, -np.inf)
    hi = torch.full_like(beta, np.inf)
    for _ in range(steps):
        p = torch.exp(-d * beta[:, None])
        total = p.sum(dim=1)
        entropy = torch.log(total) + beta * (d * p).sum(dim=1) / total
        diff = entropy - target
        if bool((diff.abs() <= tol).all()):
            break
        done = diff.abs() <= tol
        up = diff > 0  # too flat: raise the precision
        lo = torch.where(up & ~done, beta, lo)
        hi = torch.where(~up & ~done, beta, hi)
        raised = torch.where(torch.isinf(hi), beta * 2, (beta + hi) / 2)
        lowered = torch.where(torch.isinf(lo), beta / 2, (beta + lo) / 2)
        beta = torch.where(done, beta, torch.where(up, raised, lowered))
    p = torch.exp(-d * beta[:, None])
    return p / p.sum(dim=1, keepdim=True)


def _tsne_inputs(x: np.ndarray, perplexity: float) -> tuple[Any, Any, np.ndarray]:
    """The symmetric input affinities P, dense (N, N) float32 summing to 1, the (N, 2) float32 PCA start, and the
    unscaled projection on the first two components (N, 2) float32 numpy (`embed_pca`'s result)."""
    import torch

    n_points = x.shape[0]
    scores, loadings = _pca_scores(x, TSNE_PCA_DIM)
    # scikit-learn's init="pca": the first two components, signs fixed (largest loading positive), scaled so the
    # first has standard deviation 1e-4
    biggest = loadings.abs().argmax(dim=0)
    signs = torch.sign(loadings[biggest, torch.arange(loadings.shape[1])])
    init = scores[:, :2] * torch.where(signs == 0, 1.0, signs)
    if init.shape[1] < 2:
        init = torch.nn.functional.pad(init, (0, 2 - init.shape[1]))
    pca = init.float().numpy()
    spread = float(init[:, 0].std(correction=0))
    init = init / (spread if spread > 0 else 1.0) * 1e-4
    z = scores
    sq = (z * z).sum(dim=1)
    d2 = (sq[:, None] + sq[None, :] - 2.0 * (z @ z.T)).clamp_(min=0.0)
    d2.fill_diagonal_(np.inf)
    k = min(n_points - 1, int(3.0 * perplexity + 1))
    near_d2, near = torch.topk(d2, k, dim=1, largest=False, sorted=True)
    cond = perplexity_conditionals(near_d2, perplexity)
    p = torch.zeros((n_points, n_points), dtype=torch.float64)
    p.scatter_(1, near, cond)
    p = p + p.T
    p /= p.sum()
    return p.float(), init.float(), pca


# rows of the (N, N) matrices that one pass of `_tsne_optimize` handles at a time: 256 x 1,000 float32 is 1 MB,
# about one core's L2 cache, so the six passes over a block read it from there (measured on the default build's
# layers, one core: 3.5 ms per iteration at 256 rows, 4.2 at 128, 4.7 at 512 and 4.7 over whole matrices)
TSNE_BLOCK_ROWS = 256


def _tsne_optimize(p: Any, y: Any, lr: float, iters: int, early_iters: int) -> Any:
    """Gradient descent on KL(P || Q) with momentum and gains, as scikit-learn's ``_gradient_descent``.

    p: (N, N) float32 symmetric, zero diagonal; y: (N, 2) float32 start. Returns the (N, 2) float32 map.

    Gradient of point i: 4 sum_j (x p_ij - q_ij) w_ij (y_i - y_j) with w_ij = 1 / (1 + |y_i - y_j|^2),
    q_ij = w_ij / Z, Z = sum_{k != l} w_kl, x the exaggeration. With A = P o W and R = W o W (o: elementwise) it
    is 4 (x (rowsum(A) y_i - (A y)_i) - (rowsum(R) y_i - (R y)_i) / Z): the attraction and the repulsion are
    summed apart, so that one sweep over blocks of `TSNE_BLOCK_ROWS` rows gives them and Z together, each block
    made and used while it is in cache. Per block: W's denominators in one rank-3 product added to a broadcast
    column (torch.addmm), the reciprocal in place, its sum, A, R in place, and [rowsum, (. y)] of each in one
    (3, N) x (N, rows) product (A and R are symmetric, so a block's rows are also its columns).
    """
    import torch

    n_points = y.shape[0]
    block = min(n_points, TSNE_BLOCK_ROWS)
    y = y.clone()
    update = torch.zeros_like(y)
    gains = torch.ones_like(y)
    w_block = torch.empty((block, n_points))
    a_block = torch.empty((block, n_points))
    left = torch.ones((n_points, 3))
    right = torch.empty((3, n_points))
    column = torch.empty((n_points, 1))
    ones_y = torch.ones((3, n_points))
    attraction = torch.empty((3, n_points))
    repulsion = torch.empty((3, n_points))
    for it in range(iters):
        early = it < early_iters
        exaggeration = EARLY_EXAGGERATION if early else 1.0
        momentum = 0.5 if early else 0.8
        # centred for the distance product only: |y|^2 stays small, so 1 + |y_i|^2 + |y_j|^2 - 2 y_i.y_j keeps
        # its float32 precision (the gradient does not depend on a translation)
        yc = y - y.mean(dim=0)
        sq = (yc * yc).sum(dim=1)
        left[:, :2] = yc
        torch.mul(yc.T, -2.0, out=right[:2])
        right[2] = sq
        torch.add(sq, 1.0, out=column[:, 0])
        ones_y[1:] = yc.T
        z = 0.0
        for start in range(0, n_points, block):
            stop = min(n_points, start + block)
            w, a = w_block[: stop - start], a_block[: stop - start]
            torch.addmm(column[start:stop], left[start:stop], right, out=w)  # 1 + |y_i - y_j|^2
            w.diagonal(start).fill_(1.0)
            w.reciprocal_()
            w.diagonal(start).zero_()  # w_ii is not a pair
            z += float(w.sum())
            torch.mul(p[start:stop], w, out=a)
            torch.mm(ones_y, a.T, out=attraction[:, start:stop])
            w.mul_(w)
            torch.mm(ones_y, w.T, out=repulsion[:, start:stop])
        sums = attraction.mul_(exaggeration).sub_(repulsion, alpha=1.0 / z)  # (3, N): rowsum, (. y)^T
        grad = (yc * sums[0][:, None] - sums[1:].T).mul_(4.0)
        inc = update * grad < 0.0
        gains = torch.where(inc, gains + 0.2, gains * 0.8).clamp_(min=0.01)
        grad_gained = grad * gains
        update = momentum * update - lr * grad_gained
        y = y + update
    return y


def knn_accuracy(features: Any, labels: Any, k: int = 5, holdout: float = 0.3, seed: int = 0) -> float:
    """Held-out k-nearest-neighbour accuracy: how well a layer's features separate the classes.

    A seeded stratified split keeps ``holdout`` of the points for scoring (unstratified when some class is too rare
    to be split; `holdout_split`); a Euclidean k-NN classifier (majority vote) of the rest labels them.

    The vote is scikit-learn's ``KNeighborsClassifier(n_neighbors=k)`` (uniform weights): the k fitted points
    nearest in float64 Euclidean distance (an exact tie goes to the earlier fitted point), the most frequent label
    among them, a tie between labels going to the smallest label. Written with numpy and torch so that the build
    does not import scikit-learn (1.5 s) for it; the tests check it against scikit-learn on the same split.

    Returns:
        accuracy in [0, 1] on the held-out points.
    """
    import torch

    x = _features(features)
    require_usable(x)
    y = np.asarray(labels.detach().cpu() if hasattr(labels, "detach") else labels).reshape(-1)
    if y.shape[0] != x.shape[0]:
        raise ValueError(f"{x.shape[0]} feature rows but {y.shape[0]} labels")
    fit, test = holdout_split(y, holdout, seed)
    classes, codes = np.unique(y, return_inverse=True)
    k = min(k, len(fit))
    xt = torch.from_numpy(x).double()
    a, b = xt[test], xt[fit]
    # |a|^2 - 2 a.b + |b|^2; a per-row constant |a|^2 changes no ranking and is left out
    d = (b * b).sum(dim=1)[None, :] - 2.0 * (a @ b.T)
    near = torch.sort(d, dim=1, stable=True).indices[:, :k].numpy()  # stable: ties to the earlier fitted point
    votes = np.zeros((len(test), len(classes)), dtype=np.int64)
    np.add.at(votes, (np.arange(len(test))[:, None], codes[fit][near]), 1)
    predicted = votes.argmax(axis=1)  # the first, i.e. smallest, of tied labels
    return float(np.mean(predicted == codes[test]))


def holdout_split(labels: np.ndarray, holdout: float = 0.3, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """(fitted, held-out) row indices: a seeded split of the N labels with ceil(holdout * N) held out.

    Stratified (each class's share kept, up to rounding) when every class has two members and there are at least
    as many slots on each side as classes; else a plain random split. It is the split that scikit-learn's
    ``train_test_split(test_size=holdout, random_state=seed, stratify=labels)`` draws (falling back to the
    unstratified one when that refuses), drawn the same way from numpy's ``RandomState(seed)``, whose streams numpy
    keeps fixed across versions: the k-NN accuracies of the report stay those scikit-learn's split gave (the tests
    compare both on many random label sets). Raises ValueError when a side would be empty.
    """
    y = np.asarray(labels).reshape(-1)
    n = len(y)
    n_test = math.ceil(holdout * n)
    n_fit = n - n_test
    if not 0.0 < holdout < 1.0 or n_fit <= 0 or n_test <= 0:
        raise ValueError(f"holdout {holdout} of {n} points leaves a side empty")
    classes, codes, counts = np.unique(y, return_inverse=True, return_counts=True)
    rng = np.random.RandomState(seed)
    if counts.min() < 2 or min(n_fit, n_test) < len(classes):  # too rare to stratify
        order = rng.permutation(n)
        return order[n_test:], order[:n_test]
    members = np.split(np.argsort(codes, kind="stable"), np.cumsum(counts)[:-1])
    fit_counts = _likeliest_counts(counts, n_fit, rng)
    test_counts = _likeliest_counts(counts - fit_counts, n_test, rng)
    fit: list[int] = []
    test: list[int] = []
    for rows, n_f, n_t in zip(members, fit_counts, test_counts):
        rows = rows[rng.permutation(len(rows))]
        fit.extend(rows[:n_f])
        test.extend(rows[n_f : n_f + n_t])
    return rng.permutation(fit), rng.permutation(test)


def _likeliest_counts(counts: np.ndarray, draws: int, rng: np.random.RandomState) -> np.ndarray:
    """How many of ``draws`` to take from each class: the floor of its proportional share, the rest one each to the
    classes with the largest fractional parts (ties drawn from ``rng``); an approximation of the multivariate
    hypergeometric mode (scikit-learn's ``_approximate_mode``, reproduced for the same draws)."""
    share = counts / counts.sum() * draws
    taken = np.floor(share)
    missing = int(draws - taken.sum())
    if missing > 0:
        fraction = share - taken
        for value in np.sort(np.unique(fraction))[::-1]:
            (tied,) = np.nonzero(fraction == value)
            now = min(len(tied), missing)
            taken[rng.choice(tied, size=now, replace=False)] += 1
            missing -= now
            if missing == 0:
                break
    return taken.astype(np.int64)


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


def _dense_thread_job(args: tuple[np.ndarray, float, int]) -> np.ndarray:
    """`embed_tsne` of one layer in a worker thread, inside the caller's `_one_thread`."""
    import torch

    features, perplexity, _ = args
    torch.set_num_threads(1)  # also this thread's OpenMP and MKL settings, which are per thread
    if features.shape[0] < 3:
        return np.zeros((features.shape[0], 2), dtype=np.float32)
    require_usable(features)
    return tsne_dense(features, perplexity)


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
    pca: bool = False,
) -> dict[str, Any]:
    """`embed_tsne` of several layers' features, up to ``n_jobs`` at once.

    Each layer is embedded exactly as `embed_tsne` would do it alone (same seed, single-threaded), so the result is
    the same whether it runs in parallel or not; only the time differs. Layers of at most `DENSE_MAX_POINTS` points
    (the dense t-SNE) run in worker threads, which start for free; larger ones in worker processes when they pay.

    Args:
        features_by_layer: {layer: (N, D) features}; layers may have different N and D.
        perplexity, seed: as in `embed_tsne`.
        n_jobs: most worker threads or processes.
        parallel: None decides by the work at hand: threads for the dense layers when there are two; processes for
            the larger layers when there are at least two of them, at least ``PARALLEL_MIN_POINTS`` points in all,
            and an idle core (1-minute load average below the cores). True sends every layer to worker processes
            (when n_jobs > 1 and there are two layers), False runs everything in this thread.

        pca: also give each layer's `embed_pca` (N, 2): a dense layer's comes from the eigendecomposition that
            its t-SNE starts from (no second one), computed in the same worker thread.

    Returns:
        {layer: (N, 2) float32}, in the order of ``features_by_layer``; with ``pca``, {layer: (t-SNE, PCA)}.
    """
    names = list(features_by_layer)
    if pca:
        return _embed_layers_and_pca(features_by_layer, perplexity, seed, n_jobs, parallel)
    jobs = [(_features(features_by_layer[name]), perplexity, seed) for name in names]
    if parallel:
        workers = min(n_jobs, len(jobs))
        if workers > 1:
            found = _in_processes(jobs, workers)
            if found is not None:
                return dict(zip(names, found))
        parallel = False
    out: dict[int, np.ndarray] = {}
    dense = [i for i, job in enumerate(jobs) if job[0].shape[0] <= DENSE_MAX_POINTS]
    large = [i for i, job in enumerate(jobs) if job[0].shape[0] > DENSE_MAX_POINTS]
    threads = min(n_jobs, len(dense), _cores()) if parallel is None else 1
    if threads > 1:
        from concurrent.futures import ThreadPoolExecutor

        with _one_thread(), ThreadPoolExecutor(max_workers=threads) as pool:
            out.update(zip(dense, pool.map(_dense_thread_job, [jobs[i] for i in dense])))
    else:
        out.update((i, _tsne_job(jobs[i])) for i in dense)
    if large:
        workers = min(n_jobs, len(large), _cores())
        found = None
        if parallel is None and _processes_pay_off(workers, sum(jobs[i][0].shape[0] for i in large)):
            found = _in_processes([jobs[i] for i in large], workers)
        out.update(zip(large, found if found is not None else [_tsne_job(jobs[i]) for i in large]))
    return {name: out[i] for i, name in enumerate(names)}


def _embed_layers_and_pca(features_by_layer: Mapping[str, Any], perplexity: float, seed: int, n_jobs: int,
                          parallel: bool | None) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    names = list(features_by_layer)
    feats = {name: _features(features_by_layer[name]) for name in names}
    dense = [name for name in names if 3 <= feats[name].shape[0] <= DENSE_MAX_POINTS and parallel is not True]
    out: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    jobs = [(feats[name], perplexity, seed) for name in dense]
    threads = min(n_jobs, len(dense), _cores()) if parallel is None else 1
    if threads > 1:
        from concurrent.futures import ThreadPoolExecutor

        with _one_thread(), ThreadPoolExecutor(max_workers=threads) as pool:
            out.update(zip(dense, pool.map(_dense_pca_thread_job, jobs)))
    else:
        with _one_thread():
            out.update(zip(dense, map(_dense_pca_thread_job, jobs)))
    rest = [name for name in names if name not in out]
    if rest:
        tsne = embed_layers({name: feats[name] for name in rest}, perplexity, seed, n_jobs, parallel=parallel)
        out.update((name, (tsne[name], embed_pca(feats[name], 2))) for name in rest)
    return {name: out[name] for name in names}


def _dense_pca_thread_job(args: tuple[np.ndarray, float, int]) -> tuple[np.ndarray, np.ndarray]:
    """`_tsne_dense_and_pca` of one layer in a worker thread, inside the caller's `_one_thread`."""
    import torch

    features, perplexity, _ = args
    torch.set_num_threads(1)
    require_usable(features)
    return _tsne_dense_and_pca(features, perplexity)


def _in_processes(jobs: list[tuple[np.ndarray, float, int]], workers: int) -> list[np.ndarray] | None:
    """`_tsne_job` of each job in ``workers`` spawned processes; None when workers cannot start."""
    import multiprocessing as mp
    from concurrent.futures import ProcessPoolExecutor
    from concurrent.futures.process import BrokenProcessPool

    try:
        # spawn, not fork: forking a process that has started OpenMP / torch threads can deadlock
        with ProcessPoolExecutor(max_workers=workers, mp_context=mp.get_context("spawn")) as pool:
            return list(pool.map(_tsne_job, jobs))
    except (BrokenProcessPool, OSError):
        # workers that cannot start (a __main__ read from stdin, no semaphores): the caller runs them itself
        return None


# total points (over all layers) below which worker start-up eats the gain; see benchmarks/bench_embed.py
PARALLEL_MIN_POINTS = 1500
