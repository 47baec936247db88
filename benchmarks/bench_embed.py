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

    python benchmarks/bench_embed.py --dump /tmp/emb.npz      # one default build (reportgen build), ~70 s idle
    python benchmarks/bench_embed.py --features /tmp/emb.npz [--baseline OLD_embed.py] [--repeat 2]

``--dump`` runs the default build once and saves the features the embeddings analysis hands to ``embed_layers``
(1,000 images x 7 layers of shapes-cnn), its labels and its k-NN seed. ``--features`` then times the analysis's
parts on them: CPU seconds (``time.process_time``) of the PCA eigendecomposition, the t-SNE affinities, the
t-SNE iterations and the k-NN accuracy, on one thread (BLAS, OpenMP and torch), and the wall seconds of
``embed_layers(pca=True)`` with its two worker threads. ``--baseline`` (a copy of an older ``embed.py``, e.g.
``git show REV:reportgen/methods/embed.py > /tmp/old.py``) times that version alternately with this one and
compares their results: the final KL divergence and the trustworthiness (10 neighbours) of each layer's t-SNE,
the largest difference of the PCA panels and the k-NN accuracies.
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


def dump_default_build(path: str) -> None:
    """Run ``reportgen build`` (the default build) with `embed_layers` and `knn_accuracy` wrapped to save what the
    embeddings analysis gives them."""
    import tempfile

    import reportgen.analyses.activations as analysis
    from reportgen.cli import main as cli

    saved: dict = {}
    real_layers, real_knn = analysis.embed_layers, analysis.knn_accuracy

    def layers(feats, *args, **kwargs):
        saved.setdefault("feats", {key: np.array(value) for key, value in feats.items()})
        return real_layers(feats, *args, **kwargs)

    def knn(features, labels, **kwargs):
        saved.setdefault("labels", np.array(labels))
        saved.setdefault("seed", kwargs["seed"])
        saved.setdefault("knn", []).append(real_knn(features, labels, **kwargs))
        return saved["knn"][-1]

    analysis.embed_layers, analysis.knn_accuracy = layers, knn
    with tempfile.TemporaryDirectory() as out:
        cli(["build", "-o", os.path.join(out, "site")], standalone_mode=False)
    np.savez(path, labels=saved["labels"], seed=saved["seed"], knn=np.array(saved["knn"]),
             **{f"f:{key}": value for key, value in saved["feats"].items()})
    print(f"saved {len(saved['feats'])} layers to {path}; k-NN {np.round(saved['knn'], 4).tolist()}")


def _load_baseline(path: str):
    import importlib.util

    spec = importlib.util.spec_from_file_location("reportgen.methods._embed_baseline", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def _kl(p, y) -> float:
    """KL(P || Q) of a t-SNE map y (N, 2) for the input affinities p (N, N), in float64."""
    import torch

    p = p.double()
    y = torch.as_tensor(y).double()
    w = 1.0 / (1.0 + torch.cdist(y, y) ** 2)
    w.fill_diagonal_(0.0)
    q = w / w.sum()
    mask = p > 0
    return float((p[mask] * torch.log(p[mask] / q[mask])).sum())


def bench_features(path: str, baseline: str | None, repeat: int) -> None:
    import torch
    from threadpoolctl import threadpool_limits

    data = np.load(path)
    feats = {key[2:]: data[key] for key in data.files if key.startswith("f:")}
    labels, seed = data["labels"], int(data["seed"])
    versions = {"this": embed_mod}
    if baseline:
        versions = {"baseline": _load_baseline(baseline), "this": embed_mod}
    cpu = {name: {} for name in versions}
    out = {name: {} for name in versions}
    lr = max(len(labels) / embed_mod.EARLY_EXAGGERATION / 4, 50.0)

    def clock(name: str, part: str, fn):
        best, result = float("inf"), None
        for _ in range(repeat):
            start = time.process_time()
            result = fn()
            best = min(best, time.process_time() - start)
        cpu[name][part] = cpu[name].get(part, 0.0) + best
        return result

    print(f"features={path} layers={len(feats)} points={len(labels)} load={os.getloadavg()[0]:.1f} repeat={repeat}")
    torch_threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with threadpool_limits(limits=1), torch.no_grad():
            for key, x in feats.items():
                for name, mod in versions.items():  # alternately, so that a change of load hits both alike
                    clock(name, "PCA scores", lambda: mod._pca_scores(x, mod.TSNE_PCA_DIM))
                    p, init, pca = clock(name, "affinities (incl. PCA)", lambda: mod._tsne_inputs(x, 30.0))
                    y = clock(name, "t-SNE iterations", lambda: mod._tsne_optimize(p, init, lr, mod.TSNE_ITERS,
                                                                                  mod.TSNE_EARLY_ITERS))
                    acc = clock(name, "k-NN accuracy", lambda: mod.knn_accuracy(x, labels, k=5, seed=seed))
                    out[name][key] = (p, y.numpy(), pca, acc)
    finally:
        torch.set_num_threads(torch_threads)
    for name in versions:
        print(f"{name:>9} CPU s, 1 thread: " + ", ".join(f"{part} {s:.2f}" for part, s in cpu[name].items()))
    for name, mod in versions.items():
        seconds, _ = timed(lambda: mod.embed_layers(feats, 30.0, seed, n_jobs=2, pca=True), repeat)
        print(f"{name:>9} embed_layers(pca=True), 2 worker threads: {seconds:.2f} s wall")
    if baseline:
        from sklearn.manifold import trustworthiness

        print(f"{'layer':>16} {'KL before':>9} {'KL after':>9} {'trust before':>12} {'trust after':>11} "
              f"{'PCA max|diff|/range':>19} {'k-NN before':>11} {'k-NN after':>10}")
        for key, x in feats.items():
            (p0, y0, pca0, a0), (p1, y1, pca1, a1) = out["baseline"][key], out["this"][key]
            t0, t1 = (trustworthiness(x, y, n_neighbors=10) for y in (y0, y1))
            diff = float(np.abs(pca1 - pca0).max() / np.ptp(pca0, axis=0).max())
            print(f"{key:>16} {_kl(p0, y0):9.4f} {_kl(p0, y1):9.4f} {t0:12.4f} {t1:11.4f} {diff:19.2e} "
                  f"{a0:11.4f} {a1:10.4f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--zoo", default=None, help="time the embeddings analysis on this zoo model's features")
    parser.add_argument("--points", type=int, default=1000)
    parser.add_argument("--dims", type=int, nargs="+", default=[784, 4096])
    parser.add_argument("--repeat", type=int, default=1, help="best of this many runs")
    parser.add_argument("--small", type=int, nargs="*", default=[100, 300], help="sizes for the break-even check")
    parser.add_argument("--dump", default=None, help="run the default build and save its embedding features here")
    parser.add_argument("--features", default=None, help="time the analysis's parts on features saved by --dump")
    parser.add_argument("--baseline", default=None, help="an older embed.py to compare with (with --features)")
    args = parser.parse_args()
    if args.dump:
        dump_default_build(args.dump)
        return
    if args.features:
        bench_features(args.features, args.baseline, args.repeat)
        return
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
