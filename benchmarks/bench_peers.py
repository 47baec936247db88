"""reportgen beside its peers, the table of issue 14 (not a test; the peers are never dependencies):

    python benchmarks/bench_peers.py [--repeat 3] [--rows smoothgrad gbp ig kernelshap gradcam tsne]

Rows (torchvision ``resnet18``, random seeded weights, 224x224, torch threads = ``--threads``, default 2):
  * smoothgrad: n = 50 noisy copies of 1 image vs Captum ``NoiseTunnel(Saliency)``: the same std, signed maps (no
    abs), all 50 copies in one forward and one backward pass on both sides, one warm-up call each excluded, then
    the two run in turns (A, B, A, B) so that other work on the machine slows both alike; the maps are compared
    with the same noise (Captum draws from the global generator, seeded like reportgen's own);
  * gbp: guided backpropagation of 8 images vs Captum ``GuidedBackprop`` (maps compared: max |difference|);
  * ig: Integrated Gradients of 8 images, 50 Gauss-Legendre steps, zero baseline, vs Captum
    ``IntegratedGradients``, 64 path points per pass on both sides (``internal_batch_size``), in turns as above;
  * kernelshap: KernelSHAP of 1 image, 200 coalitions of its ~50 SLIC superpixels, vs Captum ``KernelShap`` with
    the same feature mask and the very same coalitions (fed to its ``perturb_func``), 64 copies per forward pass on
    both sides (``perturbations_per_eval``), in turns as above;
  * gradcam: Grad-CAM of 8 images at ``layer4`` vs pytorch-grad-cam ``GradCAM`` (each as its own users call it:
    reportgen's raw map, the peer's map normalized and resized with OpenCV);
  * tsne: t-SNE of 6 layers x 1,000 points x 256 dims (seeded Gaussian clusters) by `embed_layers` vs scikit-learn
    ``TSNE`` run layer after layer with its own threads, with the trustworthiness (10 neighbours) of both.
Occlusion against Captum has its own script: ``benchmarks/bench_occlusion.py``.

Each time is the best of ``--repeat`` runs; ratio = reportgen / peer. Other work on the machine slows both sides,
so compare the ratio, and rerun on an idle machine for absolute numbers.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

import numpy as np
import torch

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from _timing import best_time  # noqa: E402


def resnet18() -> torch.nn.Module:
    import torchvision

    torch.manual_seed(0)
    return torchvision.models.resnet18(num_classes=10).eval()


def row(name: str, ours: float, peer: float, extra: str = "") -> None:
    print(f"| {name} | {ours:.3f} s | {peer:.3f} s | {ours / peer:.2f} |{' ' + extra if extra else ''}", flush=True)


def interleaved(fns: dict, repeat: int) -> dict:
    """Wall and CPU seconds of each function, run in turns (A, B, A, B, ...) after one excluded warm-up call each, so
    that other work on the machine falls on both sides alike: {name: (wall times, CPU times, last result)}."""
    for fn in fns.values():
        fn()  # warm-up: first-call costs (oneDNN primitives, first touch of memory) are not the method's
    times: dict = {name: ([], [], None) for name in fns}
    for _ in range(repeat):
        for name, fn in fns.items():
            wall, cpu = time.perf_counter(), time.process_time()
            result = fn()
            walls, cpus, _ = times[name]
            times[name] = (walls + [time.perf_counter() - wall], cpus + [time.process_time() - cpu], result)
    return times


def smoothgrad_row(repeat: int) -> None:
    from captum.attr import NoiseTunnel, Saliency

    from reportgen.methods.attribution import smoothgrad

    n, sigma, seed = 50, 0.15, 0
    model, x = resnet18(), torch.randn(1, 3, 224, 224, generator=torch.Generator().manual_seed(1))
    nt = NoiseTunnel(Saliency(model))
    # Captum's stdevs is absolute; reportgen's sigma is a fraction of the image's range: the same std here
    std = float(sigma * (x.max() - x.min()))

    def ours() -> torch.Tensor:  # signed mean gradient, all n copies in one forward and one backward pass
        return smoothgrad(model, x, 3, n=n, sigma=sigma, batch_size=n, generator=torch.Generator().manual_seed(seed))

    def peer() -> torch.Tensor:  # the same: Saliency without abs, nt_samples_batch_size = n (Captum's default)
        torch.manual_seed(seed)  # Captum draws from the global generator: torch.normal(0, std) = the same noise
        return nt.attribute(x, nt_type="smoothgrad", nt_samples=n, nt_samples_batch_size=n, stdevs=std, target=3,
                            abs=False)

    load = os.getloadavg()[0]
    times = interleaved({"ours": ours, "peer": peer}, repeat)
    (ours_wall, ours_cpu, a), (peer_wall, peer_cpu, b) = times["ours"], times["peer"]
    diff = float((a - b).abs().max() / b.abs().max())
    pairs = sorted(o / p for o, p in zip(ours_wall, peer_wall))
    row(f"SmoothGrad n={n}, 1 image, vs Captum NoiseTunnel(Saliency), interleaved", min(ours_wall), min(peer_wall),
        f"maps with the same noise: max |diff| {diff:.1e} of the largest; median of the {repeat} paired ratios "
        f"{pairs[len(pairs) // 2]:.2f}; CPU s {min(ours_cpu):.2f} vs {min(peer_cpu):.2f}; load average "
        f"{load:.1f} -> {os.getloadavg()[0]:.1f}")


def gbp_row(repeat: int) -> None:
    from captum.attr import GuidedBackprop

    from reportgen.methods.attribution import guided_backprop

    model, x = resnet18(), torch.randn(8, 3, 224, 224, generator=torch.Generator().manual_seed(1))
    ours = best_time(lambda: guided_backprop(model, x, 3), repeat)
    gb = GuidedBackprop(model)
    peer = best_time(lambda: gb.attribute(x, target=3), repeat)
    diff = float((guided_backprop(model, x, 3) - gb.attribute(x, target=3)).abs().max())
    row("guided backprop, 8 images, vs Captum GuidedBackprop", ours, peer, f"max |diff| {diff:.1e}")


def ig_row(repeat: int) -> None:
    from captum.attr import IntegratedGradients

    from reportgen.methods.paths import integrated_gradients

    steps, batch = 50, 64
    model, x = resnet18(), torch.randn(8, 3, 224, 224, generator=torch.Generator().manual_seed(1))
    ig = IntegratedGradients(model)

    def ours() -> torch.Tensor:  # 64 path points per forward and backward pass on both sides
        return integrated_gradients(model, x, 3, steps=steps, batch_size=batch)

    def peer() -> torch.Tensor:
        return ig.attribute(x, target=3, n_steps=steps, internal_batch_size=batch)

    load = os.getloadavg()[0]
    times = interleaved({"ours": ours, "peer": peer}, repeat)
    (ours_wall, ours_cpu, a), (peer_wall, peer_cpu, b) = times["ours"], times["peer"]
    diff = float((a - b).abs().max() / b.abs().max())
    pairs = sorted(o / p for o, p in zip(ours_wall, peer_wall))
    row(f"Integrated Gradients, {steps} steps (Gauss-Legendre), 8 images, vs Captum IntegratedGradients, "
        "interleaved", min(ours_wall), min(peer_wall),
        f"max |diff| {diff:.1e} of the largest; median of the {repeat} paired ratios {pairs[len(pairs) // 2]:.2f}; "
        f"CPU s {min(ours_cpu):.1f} vs {min(peer_cpu):.1f}; load average {load:.1f} -> {os.getloadavg()[0]:.1f}")


def kernelshap_row(repeat: int) -> None:
    from captum.attr import KernelShap

    from reportgen.methods.perturbation import input_superpixels, kernel_shap, shap_coalitions

    n, batch, seed = 200, 64, 0
    model, x = resnet18(), torch.randn(1, 3, 224, 224, generator=torch.Generator().manual_seed(1))
    segments = input_superpixels(x, n_segments=50)[0]
    m = int(segments.max()) + 1
    ks = KernelShap(model)
    mask = segments[None, None].expand_as(x)

    def ours() -> torch.Tensor:
        return kernel_shap(model, x, 3, segments=segments, n_samples=n, batch_size=batch,
                           generator=torch.Generator().manual_seed(seed))

    def peer() -> torch.Tensor:  # the same coalitions, drawn by reportgen's sampler from the same seed
        rows = shap_coalitions(m, n, torch.Generator().manual_seed(seed))

        def coalitions(_inp, **_kw):  # a generator function: Captum then draws from one generator per call
            yield from (r[None].long() for r in rows)

        ks.perturb_func = coalitions
        return ks.attribute(x, target=3, feature_mask=mask, n_samples=n, perturbations_per_eval=batch)[:, 0]

    load = os.getloadavg()[0]
    times = interleaved({"ours": ours, "peer": peer}, repeat)
    (ours_wall, ours_cpu, a), (peer_wall, peer_cpu, b) = times["ours"], times["peer"]
    diff = float((a - b).abs().max() / b.abs().max())
    pairs = sorted(o / p for o, p in zip(ours_wall, peer_wall))
    row(f"KernelSHAP, {n} coalitions of {m} superpixels, 1 image, vs Captum KernelShap, interleaved",
        min(ours_wall), min(peer_wall),
        f"max |diff| {diff:.1e} of the largest (Captum holds the end conditions by a weight of 1e6, ours exactly); "
        f"median of the {repeat} paired ratios {pairs[len(pairs) // 2]:.2f}; CPU s {min(ours_cpu):.1f} vs "
        f"{min(peer_cpu):.1f}; load average {load:.1f} -> {os.getloadavg()[0]:.1f}")


def gradcam_row(repeat: int) -> None:
    from pytorch_grad_cam import GradCAM
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    from reportgen.methods.cams import grad_cam

    model, x = resnet18(), torch.randn(8, 3, 224, 224, generator=torch.Generator().manual_seed(1))
    ours = best_time(lambda: grad_cam(model, x, 3, "layer4"), repeat)
    with GradCAM(model=model, target_layers=[model.layer4]) as cam:
        peer = best_time(lambda: cam(input_tensor=x, targets=[ClassifierOutputTarget(3)] * len(x)), repeat)
    row("Grad-CAM, 8 images, vs pytorch-grad-cam GradCAM", ours, peer)


def tsne_row(repeat: int) -> None:
    from sklearn.manifold import TSNE, trustworthiness

    from reportgen.methods.embed import embed_layers

    rng = np.random.default_rng(0)
    layers = {}
    for k in range(6):
        centres = rng.normal(size=(10, 256)) * 2.0
        layers[f"layer{k}"] = (centres[rng.integers(0, 10, 1000)] + rng.normal(size=(1000, 256))).astype(np.float32)
    found: dict = {}
    # CPU seconds of this process (all its threads) beside the wall time: on a shared machine the wall time of
    # OpenMP code (scikit-learn's gradient) grows much more with the load than the work it does
    cpu: dict = {"ours": [], "peer": []}

    def ours_run() -> None:
        start = time.process_time()
        found["ours"] = embed_layers(layers, perplexity=30.0, seed=0, n_jobs=2)
        cpu["ours"].append(time.process_time() - start)

    def peer_run() -> None:
        start = time.process_time()
        found["peer"] = {n: TSNE(2, perplexity=30.0, init="pca", learning_rate="auto", random_state=0).fit_transform(f)
                         for n, f in layers.items()}
        cpu["peer"].append(time.process_time() - start)

    t0 = time.perf_counter()
    load = os.getloadavg()[0]
    ours = best_time(ours_run, repeat)
    peer = best_time(peer_run, repeat)
    trust = [(trustworthiness(f, found["ours"][n], n_neighbors=10),
              trustworthiness(f, found["peer"][n], n_neighbors=10)) for n, f in layers.items()]
    worst = min(a - b for a, b in trust)
    row("t-SNE, 6 layers x 1,000 points x 256 dims, vs scikit-learn layer after layer", ours, peer,
        f"trustworthiness ours - sklearn: worst {worst:+.4f}; CPU s {min(cpu['ours']):.1f} vs "
        f"{min(cpu['peer']):.1f}; load average {load:.1f} -> {os.getloadavg()[0]:.1f} "
        f"({time.perf_counter() - t0:.0f} s in all)")


ROWS = {"smoothgrad": smoothgrad_row, "gbp": gbp_row, "ig": ig_row, "kernelshap": kernelshap_row,
        "gradcam": gradcam_row, "tsne": tsne_row}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--rows", nargs="*", choices=sorted(ROWS), default=list(ROWS))
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    print(f"python benchmarks/bench_peers.py {' '.join(sys.argv[1:])}  (torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads, load average {os.getloadavg()[0]:.1f})")
    print("| resnet18, 224 px | reportgen | peer | ratio |\n|---|---|---|---|")
    for name in args.rows:
        ROWS[name](args.repeat)


if __name__ == "__main__":
    main()
