"""Occlusion: reportgen (exact incremental inference) against Captum's `Occlusion`, same inputs, same maps.

    python benchmarks/bench_occlusion.py [--repeat 3] [--size 224] [--batch-size 128] [--plain]

torchvision resnet18 (random weights, seed 0, eval mode), one image of ``--size`` pixels, a 32x32 window moved by 8
pixels (625 positions at 224 px), the patch set to 0; the drop of the predicted class's logit, averaged over the
windows covering each pixel (Captum's map, reportgen's ``per_pixel=True``). Two threads (`torch.set_num_threads(2)`),
as on the project's machine. Each method runs ``--repeat`` times, the two alternating, and the fastest run of each
counts (other jobs share the machine). The maps must agree to 1e-4 of their largest value. ``--plain`` also times
reportgen's plain batched forward passes (``incremental=False``).

Captum is a peer, never a dependency of reportgen: it is imported only here (``pip install captum``).
"""

from __future__ import annotations

import argparse
import os
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=3, help="runs of each method; the fastest counts")
    parser.add_argument("--size", type=int, default=224, help="image side in pixels")
    parser.add_argument("--batch-size", type=int, default=128, help="reportgen's positions per batch")
    parser.add_argument("--plain", action="store_true", help="also time reportgen without incremental inference")
    args = parser.parse_args()

    import torch
    import torchvision

    from reportgen.methods.attribution import occlusion

    try:
        from captum.attr import Occlusion
    except ImportError:
        print("captum is not installed: pip install captum", file=sys.stderr)
        return 2

    torch.set_num_threads(2)
    torch.manual_seed(0)
    model = torchvision.models.resnet18().eval()
    x = torch.randn(1, 3, args.size, args.size, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        target = int(model(x).argmax(dim=1))
    window, stride = 32, 8
    positions = ((args.size - window) // stride + 1) ** 2

    def ours(incremental: bool = True) -> tuple[torch.Tensor, list]:
        plans: list = []
        out = occlusion(model, x, target, window=window, stride=stride, fill=0.0, per_pixel=True,
                        batch_size=args.batch_size, incremental=incremental, plans=plans)
        return out, plans

    def captum() -> torch.Tensor:
        return Occlusion(model).attribute(x, sliding_window_shapes=(3, window, window), strides=(3, stride, stride),
                                          target=target, baselines=0.0, perturbations_per_eval=64)

    load = os.getloadavg()[0]
    times: dict[str, list[float]] = {"reportgen": [], "captum": [], "plain": []}
    maps: dict[str, torch.Tensor] = {}
    plans: list = []
    for _ in range(args.repeat):
        start = time.perf_counter()
        maps["reportgen"], plans = ours()
        times["reportgen"].append(time.perf_counter() - start)
        start = time.perf_counter()
        maps["captum"] = captum()[0, 0]
        times["captum"].append(time.perf_counter() - start)
        if args.plain:
            start = time.perf_counter()
            maps["plain"] = ours(incremental=False)[0]
            times["plain"].append(time.perf_counter() - start)

    scale = float(maps["captum"].abs().max())
    error = float((maps["reportgen"][0] - maps["captum"]).abs().max()) / scale
    print(f"resnet18, {args.size} px, 1 image, {window}x{window} window, stride {stride}: {positions} positions; "
          f"2 threads; best of {args.repeat} (load average before: {load:.1f}, after: {os.getloadavg()[0]:.1f})")
    print(plans[0].sentence())
    print(f"maps: max |reportgen - captum| / max |captum| = {error:.2e} (must be <= 1e-4)")
    best = {k: min(v) for k, v in times.items() if v}
    for name, value in best.items():
        runs = ", ".join(f"{t:.1f}" for t in times[name])
        print(f"  {name:9s} {value:7.2f} s   (runs: {runs})")
    print(f"ratio reportgen / captum = {best['reportgen'] / best['captum']:.2f} (target <= 0.5)")
    if "plain" in best:
        plain_error = float((maps["plain"][0] - maps["captum"]).abs().max()) / scale
        print(f"ratio plain / captum = {best['plain'] / best['captum']:.2f} (maps differ by {plain_error:.2e})")
    return 0 if error <= 1e-4 else 1


if __name__ == "__main__":
    sys.exit(main())
