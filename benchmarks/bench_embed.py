"""t-SNE cost per layer, and whether embedding several layers in parallel processes pays off.

    .venv/bin/python benchmarks/bench_embed.py [--points 1000] [--dims 784 4096] [--repeat 1]

Synthetic, seeded data (Gaussian clusters), nothing downloaded. Prints one line per measurement:
  * ``embed_tsne`` per layer (PCA to 50 dims first when D > 50, single-threaded by design);
  * scikit-learn's ``n_jobs`` (threads for the neighbour search) 1 vs 2;
  * scikit-learn's own default threading (no thread limit), for reference, and whether its result differs;
  * ``embed_layers`` over all layers: sequential (n_jobs=1) vs two worker processes, and that both agree;
  * the break-even size for worker processes (``PARALLEL_MIN_POINTS``).

    .venv/bin/python benchmarks/bench_embed.py --zoo lenet-digits [--points 1000]

times the embeddings analysis per layer on a zoo model's real features instead (input, its default layers, logits,
kept as the analysis keeps them: a seeded reservoir sample, maps pooled to at most 4096 numbers): PCA, t-SNE and
k-NN seconds per layer. Shipped weights when present, else seeded random ones (t-SNE time hardly depends on them).
Wall times depend on what else runs on the machine; CPU seconds (``/usr/bin/time``) are steadier.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from reportgen.methods import embed as embed_mod  # noqa: E402
from reportgen.methods.embed import embed_layers, embed_tsne  # noqa: E402


def clusters(n: int, dim: int, seed: int = 0, n_classes: int = 10) -> np.ndarray:
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(n_classes, dim)) * 2.0
    return (centres[rng.integers(0, n_classes, n)] + rng.normal(size=(n, dim))).astype(np.float32)


def timed(fn, repeat: int):
    best, out = float("inf"), None
    for _ in range(repeat):
        start = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - start)
    return best, out


def zoo_features(name: str, points: int, max_dim: int = 4096):
    """{key: (M, D)} features and labels of a zoo model's test split, collected as the embeddings analysis does."""
    from types import SimpleNamespace

    import torch

    import models_zoo
    from reportgen.analyses.activations import FeatureSample
    from reportgen.capture import capture
    from reportgen.layers import default_layers, layer_table

    entry = models_zoo.get(name)
    try:
        model = entry.load_pretrained()
    except (FileNotFoundError, RuntimeError):
        torch.manual_seed(0)
        model = entry.build_model().eval()
    data = entry.load_dataset("test")
    layers = default_layers(layer_table(model, (entry.channels, *entry.input_size)))
    sampler = FeatureSample(layers, points, max_dim, np.random.default_rng(0))
    with capture(model, layers) as rec, torch.no_grad():
        for start in range(0, len(data), 64):
            x = entry.preprocess(data.inputs[start:start + 64])
            logits = model(x)
            batch = SimpleNamespace(inputs=x, indices=torch.arange(start, start + len(x)),
                                    labels=torch.from_numpy(data.labels[start:start + 64]))
            sampler.update(batch, {k: rec.acts[k] for k in layers}, logits)
    feats, _, labels, _ = sampler.collected()
    return feats, labels


def bench_zoo(name: str, points: int, repeat: int) -> None:
    from reportgen.methods.embed import embed_pca, knn_accuracy

    feats, labels = zoo_features(name, points)
    embed_tsne(next(iter(feats.values()))[:50])  # warm imports
    print(f"zoo={name} cpus={os.cpu_count()} load={os.getloadavg()[0]:.1f} points={len(labels)}")
    total = 0.0
    for key, x in feats.items():
        t_pca, _ = timed(lambda: embed_pca(x), repeat)
        t_tsne, _ = timed(lambda: embed_tsne(x), repeat)
        t_knn, acc = timed(lambda: knn_accuracy(x, labels), repeat)
        total += t_tsne
        print(f"{key:>16}  D={x.shape[1]:>6}  pca {t_pca:6.2f} s  t-SNE {t_tsne:6.2f} s  k-NN {t_knn:5.2f} s "
              f"(acc {acc:.3f})")
    print(f"t-SNE total {total:.2f} s over {len(feats)} layers, {total / len(feats):.2f} s per layer")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--zoo", default=None, help="time the embeddings analysis on this zoo model's features")
    parser.add_argument("--points", type=int, default=1000)
    parser.add_argument("--dims", type=int, nargs="+", default=[784, 4096])
    parser.add_argument("--repeat", type=int, default=1, help="best of this many runs")
    parser.add_argument("--small", type=int, nargs="*", default=[100, 300], help="sizes for the break-even check")
    args = parser.parse_args()
    if args.zoo:
        bench_zoo(args.zoo, args.points, args.repeat)
        return

    from sklearn.manifold import TSNE

    print(f"cpus={os.cpu_count()} points={args.points} dims={args.dims} repeat={args.repeat}")
    layers = {f"d{dim}": clusters(args.points, dim, seed=dim) for dim in args.dims}
    embed_tsne(layers[next(iter(layers))][:50])  # warm imports

    sequential = {}
    for name, x in layers.items():
        seconds, sequential[name] = timed(lambda: embed_tsne(x), args.repeat)
        print(f"embed_tsne  {name:>6}  n_jobs=1        {seconds:7.2f} s")
        seconds, two = timed(lambda: embed_tsne(x, n_jobs=2), args.repeat)
        print(f"embed_tsne  {name:>6}  n_jobs=2        {seconds:7.2f} s  same={np.array_equal(two, sequential[name])}")

        def sklearn_default():
            reduced = embed_mod._pca_reduce(x, embed_mod.TSNE_PCA_DIM, 0)
            tsne = TSNE(n_components=2, perplexity=30, init="pca", learning_rate="auto", random_state=0)
            return tsne.fit_transform(reduced)

        seconds, free = timed(sklearn_default, args.repeat)
        diff = float(np.abs(free - sequential[name]).max())
        print(f"sklearn     {name:>6}  default threads {seconds:7.2f} s  max|diff| vs 1 thread={diff:.3g}")

    seconds, seq = timed(lambda: embed_layers(layers, parallel=False), args.repeat)
    print(f"embed_layers {len(layers)} layers  sequential   {seconds:7.2f} s")
    seconds, par = timed(lambda: embed_layers(layers, n_jobs=2, parallel=True), args.repeat)
    same = all(np.array_equal(par[k], seq[k]) for k in layers)
    print(f"embed_layers {len(layers)} layers  2 processes  {seconds:7.2f} s  same={same}")
    dense = args.points <= embed_mod.DENSE_MAX_POINTS
    pays = embed_mod._processes_pay_off(min(2, len(layers)), args.points * len(layers))
    auto = "threads (exact dense t-SNE)" if dense else "processes" if pays else "sequential"
    print(f"embed_layers default now chooses: {auto} (load average {os.getloadavg()[0]:.1f}, "
          f"{embed_mod._cores()} cores)")

    for n in args.small:
        small = {name: x[:n] for name, x in layers.items()}
        s_seq, _ = timed(lambda: embed_layers(small, parallel=False), args.repeat)
        s_par, _ = timed(lambda: embed_layers(small, n_jobs=2, parallel=True), args.repeat)
        print(f"break-even  n={n:<5} sequential {s_seq:6.2f} s  2 processes {s_par:6.2f} s")

if __name__ == "__main__":
    main()
