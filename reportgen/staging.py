"""The site folder's plumbing: output path checks, the lock, signals, the staged folder and the atomic swap.

A build (or an archive) writes into a temporary folder beside ``--out`` (`staged_site`) and moves it into place at
the end with two renames, so a failed or interrupted build leaves the previous site as it was. A lock file beside
``--out`` keeps two builds from writing the same site at once. SIGINT/SIGTERM/SIGHUP become `BuildInterrupted` once
every ``finally`` has cleaned up. Nothing here knows what a report contains, except that it has a manifest.json.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator, Optional

from .errors import OutputError, ReportgenError
from .manifest import GENERATOR, MANIFEST

# fcntl is imported inside site_lock: it exists on POSIX systems only.


# the signals that stop a build cleanly (SIGHUP: the terminal was closed; Windows has none)
STOP_SIGNALS = tuple(getattr(signal, name) for name in ("SIGTERM", "SIGINT", "SIGHUP") if hasattr(signal, name))


class BuildInterrupted(ReportgenError):
    """SIGINT, SIGTERM or SIGHUP stopped the build; the exit status is 128 + the signal number, as a shell reports
    it."""

    exit_code = 130

    def __init__(self, message: str, signum: int = signal.SIGINT) -> None:
        super().__init__(message)
        self.exit_code = 128 + int(signum)


class _Signalled(KeyboardInterrupt):
    """Raised by the signal handler. A KeyboardInterrupt, so that no ``except Exception`` on the way (a model
    factory, a probe forward pass) can mistake it for an error of its own; `interrupts_as_errors` turns it into
    `BuildInterrupted` once every ``finally`` has cleaned up."""

    def __init__(self, signum: int) -> None:
        super().__init__(signum)
        self.signum = signum


class _Held:
    """Signals that arrive while a step that must not be cut in half runs (process-wide, as signal handlers are)."""

    depth = 0
    pending: Optional[int] = None


@contextmanager
def _held_signals() -> Iterator[None]:
    """Hold SIGINT/SIGTERM/SIGHUP (only under `interrupts_as_errors`) until the block ends; the caller checks
    ``_Held.pending`` afterwards."""
    _Held.depth += 1
    try:
        yield
    finally:
        _Held.depth -= 1


def is_report_folder(path: Path) -> bool:
    """True when ``path`` holds a manifest.json written by reportgen."""
    manifest = path / MANIFEST
    try:
        return json.loads(manifest.read_text()).get("generator") == GENERATOR
    except (OSError, ValueError, AttributeError):
        return False


def is_archive_folder(path: Path) -> bool:
    """True when ``path`` holds a checkpoint archive (`reportgen archive`): our manifest.json, of kind "archive"."""
    try:
        data = json.loads((path / MANIFEST).read_text())
        return data.get("generator") == GENERATOR and data.get("kind") == "archive"
    except (OSError, ValueError, AttributeError):
        return False


def check_out_path(out: Path) -> Path:
    """Refuse output folders that must not be replaced: a file, /, the home folder, a folder that is not a report."""
    out = Path(out).expanduser()
    resolved = out.resolve()
    forbidden = {Path("/").resolve(), Path.home().resolve(), Path.cwd().resolve()}
    if resolved in forbidden or resolved == resolved.parent:
        raise OutputError(f"refusing to write the site to '{out}' ({resolved}): give a dedicated folder, e.g. --out site")
    if out.exists() and not out.is_dir():
        raise OutputError(f"--out '{out}' is a file, not a folder: give a folder for the site")
    if out.is_dir() and any(out.iterdir()) and not is_report_folder(out):
        raise OutputError(f"--out '{out}' exists and is not a reportgen site (no manifest.json of ours): "
                          "refusing to replace it; give a new or empty folder")
    parent = resolved.parent
    if not parent.exists():
        raise OutputError(f"the folder '{parent}' for --out does not exist: create it first")
    if not os.access(parent, os.W_OK):
        raise OutputError(f"cannot write beside '{out}': '{parent}' is read-only; give a writable --out")
    return resolved


def check_replaceable(out: Path, inputs: list[Optional[str]]) -> None:
    """Refuse to replace a report folder that holds the build's own inputs or files reportgen did not write there:
    replacing the site deletes everything in it."""
    for item in inputs:
        if item and not str(item).startswith(("zoo:", "torchvision:")):
            path = Path(item).expanduser().resolve()
            if path == out or out in path.parents:
                raise OutputError(f"'{item}' lies inside --out '{out}', which the build replaces: move it out of the "
                                  "site folder or give another --out")
    if not is_report_folder(out):
        return
    try:
        listed = json.loads((out / MANIFEST).read_text()).get("files")
    except (OSError, ValueError):
        return
    if not isinstance(listed, dict):
        return
    foreign = sorted(p.relative_to(out).as_posix() for p in out.rglob("*")
                     if (p.is_file() or p.is_symlink()) and p.relative_to(out).as_posix() not in listed
                     and p.relative_to(out).as_posix() != MANIFEST)
    if foreign:
        shown = ", ".join(foreign[:3]) + (f" (+{len(foreign) - 3} more)" if len(foreign) > 3 else "")
        raise OutputError(f"--out '{out}' holds files that reportgen did not write ({shown}), which a rebuild would "
                          "delete: move them out of the site folder or give another --out")


@contextmanager
def site_lock(out: Path) -> Iterator[None]:
    """An exclusive lock on ``.<name>.lock`` beside the output folder; a second build fails at once, cleanly."""
    import fcntl

    lock_path = out.parent / f".{out.name}.lock"
    while True:
        try:
            fh = open(lock_path, "a+")
        except OSError as exc:
            raise OutputError(f"cannot create the lock file '{lock_path}' ({exc.strerror}): "
                              "give a writable --out") from None
        try:
            fcntl.flock(fh.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            fh.close()
            raise OutputError(f"another reportgen build is writing '{out}' right now: wait for it to finish") from None
        # the holder before us unlinks the file when it is done: a lock on that unlinked file guards nothing
        try:
            same = os.stat(lock_path).st_ino == os.fstat(fh.fileno()).st_ino
        except FileNotFoundError:
            same = False
        if same:
            break
        fh.close()
    try:
        yield
    finally:
        try:
            lock_path.unlink()  # while still holding the lock, so that no one locks a file about to vanish
        except OSError:
            pass
        fh.close()


@contextmanager
def interrupts_as_errors() -> Iterator[None]:
    """SIGTERM, SIGINT and SIGHUP raise `BuildInterrupted`, so ``finally`` blocks remove the temporary folder and the
    lock. SIGHUP is what a build gets when its terminal is closed; its default action would end the process at once,
    leaving both behind. A signal the process was started ignoring (``nohup`` ignores SIGHUP) stays ignored."""

    def handler(signum, _frame):
        if _Held.depth:
            _Held.pending = signum
            return
        raise _Signalled(signum)

    previous = {}
    for sig in STOP_SIGNALS:
        if signal.getsignal(sig) is signal.SIG_IGN:
            continue  # ignored by whoever started us (nohup, a background job): the build must go on
        try:
            previous[sig] = signal.signal(sig, handler)
        except ValueError:  # not the main thread: leave signals alone
            pass
    try:
        yield
    except _Signalled as exc:
        raise BuildInterrupted(f"build interrupted by {signal.Signals(exc.signum).name}: the previous site is "
                               "unchanged", exc.signum) from None
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)


def swap_into_place(tmp: Path, out: Path) -> None:
    """Replace ``out`` by ``tmp`` with two renames; the old site is deleted only after the new one is in place.

    SIGINT/SIGTERM/SIGHUP are held until both renames are done: a signal between them would leave no site at ``out``.
    """
    old = None
    _Held.pending = None
    with _held_signals():
        if out.exists():
            old = out.parent / f".{out.name}.old-{os.getpid()}"
            os.rename(out, old)
        try:
            os.rename(tmp, out)
        except OSError:
            if old is not None:
                os.rename(old, out)
            raise
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    if _Held.pending is not None:
        signum, _Held.pending = _Held.pending, None
        raise BuildInterrupted(f"build interrupted by {signal.Signals(signum).name} while the new site was moved "
                               f"into place: the new site is complete in '{out}'", signum)


@contextmanager
def staged_site(out: Path, inputs: list[Optional[str]]) -> Iterator[Path]:
    """Yield an empty temporary folder beside ``out``; when the block succeeds, swap it into place as ``out``.

    Signals are handled first, so that the lock file and the temporary folder are removed whatever stops the
    build; on any error the previous site stays as it was and the temporary folder is deleted.
    """
    check_replaceable(out, inputs)
    with interrupts_as_errors(), site_lock(out):
        tmp = out.parent / f".{out.name}.tmp-{os.getpid()}"
        try:
            tmp.mkdir()
            yield tmp
            # a report folder replaced meanwhile by something else must not be deleted
            if out.exists() and any(out.iterdir()) and not is_report_folder(out):
                raise OutputError(f"--out '{out}' changed during the build and is no longer a reportgen site: "
                                  f"the new site was not moved into place")
            check_replaceable(out, [])  # files dropped into the old site meanwhile
            swap_into_place(tmp, out)
        finally:
            with _held_signals():  # a second Ctrl-C must not cut the clean-up short; the build is ending anyway
                if tmp.exists():
                    shutil.rmtree(tmp, ignore_errors=True)
