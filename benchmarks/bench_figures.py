"""Time the writing of a build's figures apart from its compute (not a test).

    python benchmarks/bench_figures.py --dump /tmp/items.pkl        # a default build; keeps every item it wrote
    python benchmarks/bench_figures.py /tmp/items.pkl --out /tmp/f  # writes them again: CPU seconds per kind

The first form runs `reportgen build` (further options after --) with `reportgen.imaging.render_item` wrapped to
pickle each item (numpy arrays and numbers) with its folder, in order. The second renders those items through an
`ArtifactWriter` into ``--out`` (emptied first) and prints the CPU seconds per item kind (a plot's kind; pictures
with a colour bar apart), in all, and the files' count and bytes: the same items before and after a change to
`reportgen.imaging` give comparable numbers even on a busy machine, where wall time is not. ``--profile FILE``
keeps a cProfile of the rendering.
"""

from __future__ import annotations

import argparse
import collections
import pickle
import shutil
import sys
import tempfile
import time
from pathlib import Path


def dump(path: Path, extra: list[str]) -> None:
    from reportgen import imaging
    from reportgen.cli import main

    items, render = [], imaging.render_item

    def keep(item, writer, prefix):
        items.append((item, prefix))
        return render(item, writer, prefix)

    imaging.render_item = keep  # build.write looks it up on the module at each call
    with tempfile.TemporaryDirectory() as tmp:
        try:
            main(["build", "-q", "--out", str(Path(tmp) / "site"), *extra])
        except SystemExit as exc:
            if exc.code:
                raise
    path.write_bytes(pickle.dumps(items))
    print(f"{len(items)} items -> {path}")


def render(path: Path, out: Path, profile: str | None) -> None:
    from reportgen import imaging
    from reportgen.artifacts import ArtifactWriter, Plot

    items = pickle.loads(path.read_bytes())
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    imaging._load_plot_kinds()  # matplotlib's import outside the timing
    writer = ArtifactWriter(out)
    seconds: dict = collections.defaultdict(float)
    count: collections.Counter = collections.Counter()
    prof = None
    if profile:
        import cProfile

        prof = cProfile.Profile()
        prof.enable()
    cpu, wall = time.process_time(), time.perf_counter()
    for item, prefix in items:
        t = time.process_time()
        imaging.render_item(item, writer, prefix)
        kind = item.kind if isinstance(item, Plot) else type(item).__name__ + (" + bar" * bool(
            getattr(item, "colorbar", False)))
        seconds[kind] += time.process_time() - t
        count[kind] += 1
    cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
    if prof is not None:
        prof.disable()
        prof.dump_stats(profile)
    for kind in sorted(seconds, key=seconds.get, reverse=True):
        print(f"  {kind:<20} {count[kind]:4d} items {seconds[kind]:7.2f} CPU s")
    size = sum(p.stat().st_size for p in out.rglob("*") if p.is_file())
    print(f"{len(items)} items: {cpu:.2f} CPU s, {wall:.2f} s wall, {len(writer.hashes)} files, {size / 1e6:.2f} MB")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("items", type=Path, nargs="?", help="the pickled items of --dump, to render")
    parser.add_argument("--dump", type=Path, help="run a build and pickle its items here")
    parser.add_argument("--out", type=Path, default=Path(tempfile.gettempdir()) / "bench-figures")
    parser.add_argument("--profile", help="keep a cProfile of the rendering in this file")
    argv = sys.argv[1:]
    cut = argv.index("--") if "--" in argv else len(argv)  # after --: more `reportgen build` options for --dump
    args = parser.parse_args(argv[:cut])
    if args.dump:
        dump(args.dump, argv[cut + 1:])
    elif args.items:
        render(args.items, args.out, args.profile)
    else:
        parser.error("give the items to render, or --dump FILE")


if __name__ == "__main__":
    sys.exit(main())
