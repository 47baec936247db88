"""Time the faithfulness and sanity checks (not a test): ``python benchmarks/bench_faithfulness.py``.

On the zoo's trained ``shapes-cnn`` and the first ``--images`` images of its test split, at the report's defaults
(each attribution method with its default parameters; deletion and insertion with 16 steps; the randomization
cascade of at most 8 steps), prints for every attribution method the seconds of

- its maps alone (what the report spends on it anyway),
- deletion and insertion of those maps (2 x 17 perturbed copies per image),
- the randomization cascade (the maps recomputed once per layer of the cascade),

each divided by the number of images: the extra seconds per sample image per method that the two checks cost.
Best of ``--repeat`` runs. CPU threads: torch's default unless ``--threads``.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

import torch
from _timing import best_time


def context(images: int):
    """The build's context for shapes-cnn (model, image set, plan), with the first ``images`` images as samples."""
    from reportgen.build import choose_analyses, forward_pass, load, make_plan
    from reportgen.config import load_config
    from reportgen.console import Output

    cfg = load_config(None, model="shapes-cnn", device="cpu", max_images=images, samples=images,
                      only=["deletion-insertion", "randomization-test"])
    ctx = load(cfg, Output(silent=True))
    make_plan(ctx, choose_analyses(cfg))
    ctx.predictions = forward_pass(ctx, {})
    ctx.samples = list(range(images))
    return ctx


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=4)
    parser.add_argument("--repeat", type=int, default=1)
    parser.add_argument("--threads", type=int, default=None)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    from reportgen.analyses.faithfulness import (
        DeletionParams,
        RandomizationParams,
        attribution_methods,
        method_maps,
        predicted,
    )
    from reportgen.methods.faithfulness import (
        cascade_layers,
        deletion_insertion,
        randomization_test,
    )

    t0 = time.perf_counter()
    ctx = context(args.images)
    inputs, targets, bs = ctx.sample_inputs(), predicted(ctx, ctx.samples), ctx.config.batch_size
    dp, rp = DeletionParams(), RandomizationParams()  # the report's defaults
    layers = cascade_layers(ctx.model, inputs, rp.steps)
    n = len(ctx.samples)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, best of {args.repeat}; shapes-cnn, "
          f"{n} images 64x64, {len(layers)} steps in the cascade (setup {time.perf_counter() - t0:.1f} s)")
    print(f"  {'method':<20}{'maps':>10}{'del+ins':>10}{'cascade':>10}   seconds per image")
    total = [0.0, 0.0, 0.0]
    for a, opts in attribution_methods(ctx, [], "methods"):
        maps = method_maps(a, ctx.model, inputs, targets, opts, bs)

        def attribute(model, x, t, _a=a, _o=opts):
            return method_maps(_a, model, x, t, _o, bs)

        def curves(_maps=maps):
            return deletion_insertion(ctx.model, inputs, targets, _maps, steps=dp.steps, fill=dp.fill,
                                      blur_sigma=dp.blur, batch_size=bs,
                                      generator=torch.Generator().manual_seed(0))

        row = [best_time(lambda _f=attribute: _f(ctx.model, inputs, targets), args.repeat),
               best_time(curves, args.repeat),
               best_time(lambda _f=attribute: randomization_test(ctx.model, inputs, targets, _f, layers=layers),
                         args.repeat)]
        total = [t + r for t, r in zip(total, row)]
        print(f"  {a.name:<20}" + "".join(f"{r / n:>10.3f}" for r in row))
    print(f"  {'all methods':<20}" + "".join(f"{t / n:>10.3f}" for t in total))


if __name__ == "__main__":
    main()
