"""Time the optimized-input methods (not a test): ``python benchmarks/bench_optimize.py [--repeat 2] [--threads N]``.

On the zoo's ``shapes-cnn`` architecture with random weights (a VGG-style 16-32-64-64 net of the same layout if the
zoo is not importable), 64x64 inputs:

1. `maximize`: 8 images (one per class) x 50 steps with the default recipe (pixels, 2-pixel jitter, a blur every 4
   steps), the same with the edge-energy and l2 penalties added, and class-max's recipe (grey Fourier spectrum,
   soft window, random zoom and rotation);
2. `deepdream`: 4 images, 3 octaves x 10 steps on the last conv;
3. `adversarial`: 8 images, 50 l2 steps without stopping early;
4. `random_sphere`: 2 images x 1000 points, batch 500.

Prints the best of ``--repeat`` wall-clock runs per row, and per step where it applies; the first row is the
first `maximize` call of the process (lazy imports included: torch.optim.Adam's construction imports
torch._dynamo, 2 to 3 s, which `maximize`'s own Adam avoids), with whether torch._dynamo got imported.

``--analyses``: instead, the default build's context (zoo shapes-cnn, 1,000 images: load, plan, the one pass,
settle) and then class-max, unit-max, deepdream and adversarial with their default settings, each timed in CPU
seconds (``time.process_time``) and wall seconds; with ``--threads 1`` the CPU seconds are the least disturbed by
other work on the machine. Note that the build's settle step may import torch._dynamo itself (the FLOP counter).
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections import OrderedDict

import torch
from torch import nn

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from reportgen.methods.adversarial import adversarial, random_sphere  # noqa: E402
from reportgen.methods.optimize import (  # noqa: E402
    class_logit,
    deepdream,
    maximize,
    noise,
    penalized,
    standard_edits,
    standard_param,
    standard_transforms,
)

from _timing import best_time  # noqa: E402


def shapes_cnn() -> tuple[nn.Module, str, str]:
    try:
        from models_zoo.nets import ShapesCNN

        return ShapesCNN().eval(), "models_zoo ShapesCNN (random weights)", "features.conv4"
    except Exception:  # noqa: BLE001 - any failure: fall back to an equivalent net
        layers: OrderedDict[str, nn.Module] = OrderedDict()
        c_in = 3
        for i, c_out in enumerate((16, 32, 64, 64), start=1):
            layers[f"conv{i}"] = nn.Conv2d(c_in, c_out, 3, padding=1)
            layers[f"relu{i}"] = nn.ReLU()
            if i < 4:
                layers[f"pool{i}"] = nn.MaxPool2d(2)
            c_in = c_out
        layers["gap"] = nn.AdaptiveAvgPool2d(1)
        layers["flatten"] = nn.Flatten()
        layers["fc"] = nn.Linear(64, 8)
        return nn.Sequential(layers).eval(), "VGG-style net 16-32-64-64 (random weights)", "conv4"


def recipe(shape, generator, **settings) -> dict:
    """``param``, ``transforms`` and ``edits`` of `maximize` for `MaxDefaults`-named ``settings`` (the report's
    recipe, as ``reportgen.analyses.optimized._maximize`` builds it)."""
    keys = ("fourier", "fourier_decay", "grey", "window")
    param = standard_param(noise(shape, generator), **{k: v for k, v in settings.items() if k in keys})
    transforms = standard_transforms(generator, **{k: v for k, v in settings.items()
                                                  if k in ("jitter", "scale_jitter", "rotate")})
    return dict(param=param, transforms=transforms, edits=standard_edits(fourier=settings.get("fourier", False)))


def default_analyses() -> None:
    """The default build up to its analyses, then the four optimized ones, each timed (CPU and wall seconds)."""
    from reportgen import build as B
    from reportgen.config import load_config
    from reportgen.console import Output

    names = ["class-max", "unit-max", "deepdream", "adversarial"]
    cfg = load_config(None, out="/tmp/bench-optimize-unused", only=names)
    chosen = B.choose_analyses(cfg)
    ctx = B.load(cfg, Output(silent=True))
    plan = B.make_plan(ctx, chosen)
    ctx.predictions = B.forward_pass(ctx, plan.reducers, None)
    ctx.samples = B.pick_samples(ctx.predictions.indices, ctx.predictions.labels, cfg.samples, ctx.rng("samples"))
    B.settle(ctx, chosen, plan)
    print(f"default build's context: {len(ctx.predictions.indices)} images; torch {torch.__version__}; "
          f"{torch.get_num_threads()} threads")
    for a in plan.order:
        cpu, wall = time.process_time(), time.perf_counter()
        (outcome,) = B.analyse(ctx, [a], plan)
        print(f"{a.name:12s} {time.process_time() - cpu:7.2f} s CPU {time.perf_counter() - wall:7.2f} s wall "
              f"({outcome.status})")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=2)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--analyses", action="store_true", help="time the default build's optimized analyses")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.analyses:
        return default_analyses()
    model, desc, last_conv = shapes_cnn()
    print(f"model: {desc}; torch {torch.__version__}; {torch.get_num_threads()} threads")
    g = lambda: torch.Generator().manual_seed(0)  # noqa: E731
    start = time.perf_counter()
    maximize(model, class_logit(0), **recipe((1, 3, 64, 64), g()), steps=1)
    print(f"{'first maximize call (lazy imports)':36s} {time.perf_counter() - start:7.2f} s  "
          f"(torch._dynamo imported: {'torch._dynamo' in sys.modules})")
    x8 = torch.randn(8, 3, 64, 64, generator=g())
    classes = class_logit(list(range(8)))
    priors = dict(fourier=True, fourier_decay=1.5, grey=True, window=0.8, scale_jitter=0.2, rotate=45)
    rows = [
        ("maximize 8x64x64, 50 steps", 50, lambda: maximize(model, classes, **recipe((8, 3, 64, 64), g()), steps=50)),
        ("maximize + edge + l2 penalties", 50, lambda: maximize(
            model, penalized(classes, l2_weight=1e-4, edge_weight=1e-3), **recipe((8, 3, 64, 64), g()), steps=50)),
        ("maximize, class-max recipe", 50, lambda: maximize(
            model, classes, **recipe((8, 3, 64, 64), g(), **priors), steps=50)),
        ("deepdream 4x64x64, 3x10 steps", 30, lambda: deepdream(model, x8[:4], last_conv, generator=g())),
        ("adversarial 8x64x64, 50 l2 steps", 50, lambda: adversarial(model, x8, steps=50, stop_at_change=False)),
        ("random_sphere 2 x 1000 points", 0, lambda: random_sphere(model, x8[:2], 5.0, m=1000, generator=g())),
    ]
    maximize(model, class_logit(0), **recipe((8, 3, 64, 64), g()), steps=2)  # warm-up: first-call overheads
    for name, steps, fn in rows:
        t = best_time(fn, args.repeat)
        per = f"  ({1000 * t / steps:6.1f} ms/step)" if steps else ""
        print(f"{name:36s} {t:7.2f} s{per}")


if __name__ == "__main__":
    main()
