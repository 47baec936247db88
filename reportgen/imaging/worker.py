"""The render worker: a child process that draws the report's figures while the build runs its next analyses.

Drawing the default report's 578 items (matplotlib, PIL, PNG encoding) takes about 26 s of CPU. In the build's own
process it would sit on the critical path after every analysis; in this worker it runs beside them on a second
core. The worker renders each item with `reportgen.imaging.render_item` into a `Recorder` (no file is written
here) and sends back the (path, bytes) it would have written and the manifest entry; the build writes those bytes
through its real `ArtifactWriter` in the order of today's in-process rendering, so the files, their hashes, the
staged folder and the manifest are the same with and without the worker (``tests/test_render_worker.py``).

How the two processes talk: ``python -m reportgen.imaging.worker`` (a plain child process, not multiprocessing's
spawn, which re-imports ``__main__`` and trips over click, torchrun and notebooks), with frames over its stdin and
stdout: an 8-byte big-endian length, then a pickle. The build sends ``(prefix, items)``, one analysis's items; the
worker answers ``(seq, rendered)`` (``seq``: the job's number, from 0 in the order sent) with one ``(files,
entry)`` per item, or the error's one-line text where rendering that item raised (the build then renders the item
itself, which raises the same exception where today's build raised it); ``rendered`` is None where the job could
not be unpickled (the build renders the whole job itself). The worker never imports torch (it starts in about a
second): the items are numpy and plain data, a tensor in them is sent as its numpy array (`dumps_items`).

``REPORTGEN_RENDER_WORKER=0`` in the environment turns the worker off (the figures are drawn in the build's
process, as before); the test suite sets it (its many tiny builds would each start a worker) and
``tests/test_render_worker.py`` compares both paths.
"""

from __future__ import annotations

import io
import os
import pickle
import queue
import signal
import struct
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any, BinaryIO, Optional

ENV = "REPORTGEN_RENDER_WORKER"
MAX_IN_FLIGHT = 3  # analyses whose items were sent and not yet written: bounds what the build holds (and the worker)
_HEADER = struct.Struct(">Q")


def enabled() -> bool:
    """Whether builds draw their figures in a worker: yes unless ``REPORTGEN_RENDER_WORKER`` is 0/false/no/off."""
    return os.environ.get(ENV, "1").strip().lower() not in ("0", "false", "no", "off")


def write_frame(stream: BinaryIO, data: bytes) -> None:
    stream.write(_HEADER.pack(len(data)))
    stream.write(data)
    stream.flush()


def _read_exact(stream: BinaryIO, n: int) -> Optional[bytes]:
    parts, got = [], 0
    while got < n:
        chunk = stream.read(n - got)
        if not chunk:
            return None
        parts.append(chunk)
        got += len(chunk)
    return b"".join(parts)


def read_frame(stream: BinaryIO) -> Optional[bytes]:
    """The next frame's payload, or None at the end of the stream (also when it ends inside a frame)."""
    head = _read_exact(stream, _HEADER.size)
    if head is None:
        return None
    return _read_exact(stream, _HEADER.unpack(head)[0])


class _ItemPickler(pickle.Pickler):
    """Pickles items as plain data: a torch tensor goes as its numpy array, a ``torch.Size`` as a tuple, so that the
    worker never needs torch to read them; any other torch object fails (the build then renders in-process)."""

    def reducer_override(self, obj: Any) -> Any:
        module = type(obj).__module__ or ""
        if not module.startswith("torch"):
            return NotImplemented
        if hasattr(obj, "detach") and hasattr(obj, "numpy"):
            t = obj.detach().cpu()
            if not t.dtype.is_floating_point or t.dtype in _NUMPY_FLOATS():
                return t.resolve_conj().resolve_neg().numpy().__reduce_ex__(5)
            return t.float().numpy().__reduce_ex__(5)  # bfloat16 has no numpy dtype
        if isinstance(obj, tuple):  # torch.Size
            return tuple, (tuple(obj),)
        raise pickle.PicklingError(f"cannot send a {module}.{type(obj).__name__} to the render worker")


def _NUMPY_FLOATS() -> tuple:
    import torch

    return (torch.float16, torch.float32, torch.float64)


def dumps_items(prefix: str, items: list) -> bytes:
    """One job's frame: ``(prefix, items)`` pickled with `_ItemPickler`."""
    buf = io.BytesIO()
    _ItemPickler(buf, protocol=pickle.HIGHEST_PROTOCOL).dump((prefix, items))
    return buf.getvalue()


class Recorder:
    """Stands in for `reportgen.artifacts.ArtifactWriter` in the worker: keeps each (path, bytes) in the order
    written instead of writing it (the build writes them; it refuses a path written twice, as it does today)."""

    def __init__(self) -> None:
        self.files: list[tuple[str, bytes]] = []

    def write_bytes(self, rel: str, data: bytes) -> str:
        self.files.append((rel, bytes(data)))
        return rel

    def write_text(self, rel: str, text: str) -> str:
        return self.write_bytes(rel, text.encode("utf-8"))


def render_job(seq: int, frame: bytes) -> bytes:
    """Render job ``seq`` (a `dumps_items` frame) and return the answer's frame ``(seq, rendered)``."""
    from . import render_item

    try:
        prefix, items = pickle.loads(frame)
    except Exception:  # a class the worker cannot import, say: the build renders the job itself
        return pickle.dumps((seq, None))
    rendered: list = []
    for item in items:
        rec = Recorder()
        try:
            entry = render_item(item, rec, prefix)
        except Exception as exc:
            rendered.append(f"{type(exc).__name__}: {exc}")
        else:
            rendered.append((rec.files, entry))
    try:
        return pickle.dumps((seq, rendered), protocol=pickle.HIGHEST_PROTOCOL)
    except Exception:
        return pickle.dumps((seq, None))


def main() -> int:
    """The worker's loop: read jobs from stdin (in a thread, so that the build never waits to send one), render
    them in order, answer on stdout; stop at the end of stdin."""
    # Ctrl-C reaches the whole process group: the build stops this worker itself (in a finally), without a traceback
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    out = os.fdopen(os.dup(sys.stdout.fileno()), "wb")
    os.dup2(sys.stderr.fileno(), sys.stdout.fileno())  # a stray print must not corrupt the frames
    source = sys.stdin.buffer
    jobs: queue.Queue = queue.Queue()

    def read() -> None:
        while True:
            frame = read_frame(source)
            jobs.put(frame)
            if frame is None:
                return

    threading.Thread(target=read, daemon=True).start()
    from . import _load_plot_kinds

    _load_plot_kinds()  # matplotlib and every plot kind, while the build runs its first analysis
    import PIL.PngImagePlugin  # noqa: F401

    seq = 0
    while True:
        frame = jobs.get()
        if frame is None:
            return 0
        try:
            write_frame(out, render_job(seq, frame))
        except (BrokenPipeError, OSError):  # the build has gone
            return 0
        seq += 1


class WorkerGone(RuntimeError):
    """The worker stopped (or could not be started); the message says why, in one line."""


class RenderWorker:
    """The build's side of the worker: `start` it, `send` jobs, `take` their answers in order, `close` it (in a
    ``finally``: it is killed and reaped whatever stopped the build)."""

    def __init__(self, proc: subprocess.Popen) -> None:
        self.proc = proc
        self.answers: queue.Queue = queue.Queue()
        self.next_seq = 0
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    @classmethod
    def start(cls) -> "RenderWorker":
        """Start ``python -m reportgen.imaging.worker`` with this reportgen on its path; raises `WorkerGone`."""
        if not sys.executable:
            raise WorkerGone("no Python executable to start it with (sys.executable is empty)")
        env = dict(os.environ)
        root = str(Path(__file__).resolve().parents[2])  # the folder that holds this reportgen package
        env["PYTHONPATH"] = os.pathsep.join([root] + ([env["PYTHONPATH"]] if env.get("PYTHONPATH") else []))
        try:
            proc = subprocess.Popen([sys.executable, "-m", "reportgen.imaging.worker"], stdin=subprocess.PIPE,
                                    stdout=subprocess.PIPE, env=env, close_fds=True)
        except OSError as exc:
            raise WorkerGone(f"{type(exc).__name__}: {exc}") from None
        return cls(proc)

    def _read(self) -> None:
        try:
            while True:
                frame = read_frame(self.proc.stdout)
                if frame is None:
                    break
                self.answers.put(pickle.loads(frame))
        except Exception:
            pass
        self.answers.put(None)  # the end: the worker stopped

    def send(self, items: list, prefix: str) -> int:
        """Send one analysis's items; returns the job's number. Raises `pickle.PicklingError` (or another error of
        pickling) when they cannot be sent, `WorkerGone` when the worker has stopped."""
        frame = dumps_items(prefix, items)
        try:
            write_frame(self.proc.stdin, frame)
        except (BrokenPipeError, OSError, ValueError):
            raise WorkerGone(self._why()) from None
        self.next_seq += 1
        return self.next_seq - 1

    def ready(self) -> bool:
        """Whether the oldest job not taken yet is answered (or the worker has stopped): `take` returns at once."""
        return not self.answers.empty()

    def take(self, seq: int) -> Any:
        """Job ``seq``'s ``rendered`` (`render_job`: None where the worker could not read the job), waiting for it;
        jobs are answered in order, so take the oldest. Raises `WorkerGone` when the worker stopped first."""
        while True:
            try:
                got = self.answers.get(timeout=0.5)
            except queue.Empty:
                if self.proc.poll() is not None and not self._reader.is_alive() and self.answers.empty():
                    raise WorkerGone(self._why()) from None
                continue
            if got is None:
                self.answers.put(None)  # stays gone for later calls
                raise WorkerGone(self._why())
            answered, rendered = got
            if answered == seq:
                return rendered

    def _why(self) -> str:
        try:
            code = self.proc.wait(timeout=2)
        except subprocess.TimeoutExpired:
            return "it stopped answering"
        return f"it exited with status {code}"

    def close(self, kill: bool = False) -> None:
        """End the worker: at the end of its input (it exits once idle), or killed at once with ``kill``; either way
        it is waited for, so that no process (or zombie) is left behind."""
        proc = self.proc
        try:
            if not kill:
                try:
                    proc.stdin.close()
                except OSError:
                    pass
                try:
                    proc.wait(timeout=5)
                except subprocess.TimeoutExpired:
                    kill = True
            if kill and proc.poll() is None:
                proc.kill()
        finally:
            proc.wait()
            for stream in (proc.stdin, proc.stdout):
                try:
                    stream.close()
                except OSError:
                    pass
            self._reader.join(timeout=2)


if __name__ == "__main__":
    sys.exit(main())
