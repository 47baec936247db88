"""Time the faithfulness and sanity checks (not a test): ``python benchmarks/bench_faithfulness.py [--model M]``.

``--model shapes-cnn`` (the zoo's trained model, 64x64, its test split) or a torchvision architecture with random
weights and two classes (``resnet18``, ``vit_b_16``: ``torchvision.models.NAME(num_classes=2)``, 224x224, the shapes
images resized). On the first ``--images`` images, for every attribution method at its report defaults, prints

- ``passes``: the images one map sends through the model (forward passes of one image; the unit of
  ``[analysis.randomization-test] max_passes``);
- ``maps``: its maps alone (what the method's own page spends anyway, and what deletion-insertion no longer repeats:
  it reads the page's maps);
- ``del+ins``: deletion and insertion of those maps (2 x 17 perturbed copies per image, batched);
- ``step``: one step of the randomization cascade (the maps recomputed once on the re-initialized copy), measured;
- ``cascade``: the whole cascade at the report's defaults, ``step`` x its steps, or ``left out`` where the method
  costs more than ``max_passes`` per map and so does not run unless named,

each in seconds per sample image: the extra seconds per sample image per method that the two checks cost. Methods
named in ``--no-maps`` are only counted (passes, from one map of one image on a copy), not timed. Prints the load
average before and after (the machine may be shared). CPU threads: torch's default unless ``--threads``.

``--together``: instead, the two checks as the report runs them, every method at once (`deletion_insertion_many`
of all methods' maps and the random order; `randomization_tests`, one cascade for the methods within
``max_passes`` and the edge control), each ``--repeats`` times, in CPU seconds (``time.process_time``: on a shared
machine, run with ``OMP_NUM_THREADS=1 --threads 1``) and wall seconds, with the images sent through the model.
"""

from __future__ import annotations

import argparse
import copy
import os
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

import torch


def context(model: str, images: int):
    """The build's read-only context (model, image set) with the first ``images`` images as samples, and its plan
    (the settings of every attribution method the trust checks read)."""
    from reportgen.build import Given, choose_analyses, forward_pass, load, make_plan, settle
    from reportgen.config import load_config
    from reportgen.console import Output

    only = ["deletion-insertion", "randomization-test"]
    if model == "shapes-cnn":
        cfg = load_config(None, model="shapes-cnn", device="cpu", max_images=images, samples=images, only=only)
        given = None
    else:
        import torchvision

        torch.manual_seed(0)
        net = getattr(torchvision.models, model)(num_classes=2).eval()
        cfg = load_config(None, images=shapes_folder(images), input_size=[224, 224], channels=3, device="cpu",
                          max_images=images, samples=images, only=only, class_names=["a", "b"])
        given = Given(model=net)
    ctx = load(cfg, Output(silent=True), given)
    chosen = choose_analyses(cfg)
    plan = make_plan(ctx, chosen)
    ctx.predictions = forward_pass(ctx, {})
    ctx.samples = list(range(images))
    settle(ctx, chosen, plan)
    return ctx, plan


def shapes_folder(images: int) -> str:
    """A temporary folder with the first ``images`` test images of the shapes data set as PNG files (the build
    resizes them to the model's 224x224 input)."""
    import tempfile

    from PIL import Image

    import models_zoo

    data = models_zoo.ZOO["shapes-cnn"].load_dataset("test", seed=0)
    folder = tempfile.mkdtemp(prefix="bench-faithfulness-")
    for i in range(images):
        Image.fromarray(data.inputs[i]).save(os.path.join(folder, f"{i:05d}.png"))
    return folder


def timed(fn) -> tuple[float, object]:
    start = time.perf_counter()
    out = fn()
    return time.perf_counter() - start, out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="shapes-cnn", help="shapes-cnn, resnet18 or vit_b_16")
    parser.add_argument("--images", type=int, default=4)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--no-maps", default="", help="comma-separated methods to count only, not time")
    parser.add_argument("--together", action="store_true", help="time the two checks over all methods at once")
    parser.add_argument("--repeats", type=int, default=2, help="with --together: runs of each check")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.together:
        together(args)
        return
    from reportgen.analyses.faithfulness import (
        DeletionParams,
        RandomizationParams,
        attribution_methods,
        method_maps,
        predicted,
    )
    from reportgen.methods.faithfulness import (
        cascade_layers,
        counting_images,
        deletion_insertion,
        randomization_test,
    )

    load_before = os.getloadavg()
    t0 = time.perf_counter()
    ctx, plan = context(args.model, args.images)
    inputs, targets, bs = ctx.sample_inputs(), predicted(ctx, ctx.samples), ctx.config.batch_size
    dp, rp = DeletionParams(), RandomizationParams()  # the report's defaults
    layers = cascade_layers(ctx.model, inputs, rp.steps)
    n = len(ctx.samples)
    steps = len(layers)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; {args.model}, {n} images "
          f"{inputs.shape[-2]}x{inputs.shape[-1]}, {steps} steps in the cascade, randomization on "
          f"{min(rp.images, n)} images, max_passes {rp.max_passes} (setup {time.perf_counter() - t0:.1f} s); "
          f"load average {load_before[0]:.1f}")
    print(f"  {'method':<20}{'passes':>8}{'maps':>9}{'del+ins':>9}{'step':>9}{'cascade':>10}   seconds per image")
    skip = {s for s in args.no_maps.split(",") if s}
    twin = copy.deepcopy(ctx.model)
    total = [0.0, 0.0, 0.0]
    images = ctx.samples
    for a, opts in attribution_methods(ctx, plan.upstream("deletion-insertion"), dp):
        with counting_images(twin) as count:
            method_maps(a, ctx, twin, inputs[:1], images[:1], targets[:1], opts)
        passes = count[0]
        if a.name in skip:
            print(f"  {a.name:<20}{passes:>8}{'(not timed)':>27}")
            continue
        t_maps, maps = timed(lambda _a=a, _o=opts: method_maps(_a, ctx, ctx.model, inputs, images, targets, _o))
        t_curves, _ = timed(lambda _m=maps: deletion_insertion(
            ctx.model, inputs, targets, _m, steps=dp.steps, fill=dp.fill, blur_sigma=dp.blur, batch_size=bs,
            generator=torch.Generator().manual_seed(0)))

        def attribute(model, x, t, _a=a, _o=opts):
            return method_maps(_a, ctx, model, x, images, t, _o)

        t_step, _ = timed(lambda _f=attribute, _m=maps: randomization_test(
            ctx.model, inputs, targets, _f, layers=layers[:1], original=_m))
        runs = passes <= rp.max_passes
        cascade = t_step * steps if runs else 0.0
        total = [t + r for t, r in zip(total, (t_maps, t_curves, cascade))]
        print(f"  {a.name:<20}{passes:>8}" + "".join(f"{r / n:>9.3f}" for r in (t_maps, t_curves, t_step))
              + (f"{cascade / n:>10.2f}" if runs else f"{'left out':>10}"))
    print(f"  {'all methods':<20}{'':>8}" + "".join(f"{t / n:>9.3f}" for t in total[:2]) + f"{'':>9}"
          f"{total[2] / n:>10.2f}")
    print(f"load average after: {os.getloadavg()[0]:.1f} (before {load_before[0]:.1f}); "
          f"total {time.perf_counter() - t0:.0f} s")


def together(args: argparse.Namespace) -> None:
    """The two checks over every method at once, as the report runs them (``--together``)."""
    from reportgen.analyses.faithfulness import (
        DeletionParams,
        RandomizationParams,
        attribution_methods,
        method_maps,
        predicted,
        too_costly,
    )
    from reportgen.methods.faithfulness import (
        cascade_layers,
        deletion_insertion_many,
        edge_map,
        randomization_tests,
    )

    ctx, plan = context(args.model, args.images)
    inputs, targets, bs = ctx.sample_inputs(), predicted(ctx, ctx.samples), ctx.config.batch_size
    images, n = ctx.samples, len(ctx.samples)
    dp, rp = DeletionParams(), RandomizationParams()
    methods = attribution_methods(ctx, plan.upstream("deletion-insertion"), dp)
    start = time.process_time()
    maps = [method_maps(a, ctx, ctx.model, inputs, images, targets, o) for a, o in methods]
    maps.append(torch.zeros(n, *inputs.shape[-2:]))  # the random order
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; {args.model}, {n} images "
          f"{inputs.shape[-2]}x{inputs.shape[-1]}; the maps of {len(methods)} methods: "
          f"{time.process_time() - start:.1f} CPU s; load average {os.getloadavg()[0]:.1f}")
    k = min(rp.images, n)
    layers = cascade_layers(ctx.model, inputs, rp.steps)
    twin = copy.deepcopy(ctx.model)
    cheap = [(a, o, m[:k]) for (a, o), m in zip(methods, maps)
             if not too_costly(a, ctx, twin, inputs[:1], images[:1], targets[:1], o, rp.max_passes)]

    def curves() -> None:
        gens = [torch.Generator().manual_seed(j) for j in range(len(maps))]
        deletion_insertion_many(ctx.model, inputs, targets, maps, steps=dp.steps, fill=dp.fill,
                                blur_sigma=dp.blur, batch_size=bs, generators=gens)

    def cascade() -> None:
        attributes = [lambda model, x, t, _a=a, _o=o: method_maps(_a, ctx, model, x, images[:k], t, _o)
                      for a, o, _ in cheap]
        randomization_tests(ctx.model, inputs[:k], targets[:k], [*attributes, lambda model, x, t: edge_map(x)],
                            layers=layers, seed=0, originals=[*(m for _, _, m in cheap), None])

    copies = n * (3 + 2 * len(maps) * (dp.steps - 1))  # the shared copies once per image (deletion_insertion_many)
    for name, fn, what in (("deletion-insertion", curves, f"{len(maps)} map sets x {n} images, {dp.steps} steps: "
                                                          f"{copies} images through the model"),
                           ("randomization-test", cascade, f"{len(cheap)} methods + the control x {k} images, "
                                                           f"{len(layers)} steps")):
        for _ in range(args.repeats):
            cpu, wall = time.process_time(), time.perf_counter()
            fn()
            cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
            print(f"  {name:<20} {cpu:6.2f} CPU s {wall:6.2f} wall s  ({what})")
    print(f"load average after: {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
