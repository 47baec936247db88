"""One build shared by the processes of a torch.distributed job (torchrun, or srun + torchrun on a cluster).

Under ``torchrun --nproc-per-node N -m reportgen build ...`` the environment names the job (RANK, WORLD_SIZE,
LOCAL_RANK, MASTER_ADDR, MASTER_PORT); `current_world` reads it, and `shared_build` runs the build on every rank:

- the process group is gloo on the CPU and nccl when the device is cuda (rank r then computes on
  ``cuda:LOCAL_RANK``); every collective gives up after ``REPORTGEN_DIST_TIMEOUT`` seconds (default 1800);
- the one pass is sharded by image index: batch k holds the images [k * batch_size, (k + 1) * batch_size) and goes
  to rank k mod N (`Group.batches`), so every batch is exactly one of the batches of one process and the model sees
  the same inputs; each rank reads only its own images;
- before a batch is counted, the ranks agree on what must be the same everywhere (the histograms' ranges:
  `Reducer.span` / `Reducer.cover`, one small all-gather per round of N batches);
- at the end every rank sends its reducers, logits and unreadable images to rank 0 (`Group.gather`), which merges
  them in rank order (`Reducer.merge`), sorts the logits by image index and sends every rank what the analyses
  that split their work read (`Group.share`, `reportgen.build.share_pass`);
- those analyses deal their chunks of items round robin (`Group.map_chunks`: chunk k on rank k mod N, every result
  on every rank, a failing chunk raised on every rank); the other ranks run only them, in rank 0's order, and rank
  0 runs every analysis and writes the site through the same staged, atomic output as one process;
- ``... -m reportgen archive ...`` shares the checkpoints instead: checkpoint k (in the archive's order) is built
  by rank k mod N with the plain one-process build, into a folder beside rank 0's staged archive; rank 0 moves
  them in once every rank is done (`Group.collect`) and writes the index (`reportgen.archive.archive`);
- a rank that fails tells the others through the job's store and says so in one line (``rank R of N failed:
  ...``); a rank that is killed says nothing, so the lowest surviving rank names it; the previous site stays as it
  was, and no rank waits for longer than the timeout (`Group.failures`).

Without those variables nothing here runs, and torch is not imported: it is imported inside the functions that run
a job. A job of one process (WORLD_SIZE=1) is the plain build.
"""

from __future__ import annotations

import os
import pickle
import shutil
import signal
import time
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, Callable, Iterator, Optional

import numpy as np

from .data import BadImage, Batch
from .errors import ConfigError, ReportgenError, first_line
from .models import resolve_device
from .staging import BuildInterrupted, interrupts_as_errors

VARIABLES = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")
TIMEOUT_VARIABLE = "REPORTGEN_DIST_TIMEOUT"
DEFAULT_TIMEOUT_S = 1800.0
PREFIX = "reportgen/"  # keys of this module in the job's store
GRACE_S = 3.0  # how long a rank that lost a peer waits for the others' word before it names the silent one


@dataclass(frozen=True)
class World:
    """Where this process stands in the job: ``rank`` of ``size`` processes, ``local_rank`` on its machine, and the
    timeout of every collective in seconds."""

    rank: int
    size: int
    local_rank: int
    timeout_s: float = DEFAULT_TIMEOUT_S


def current_world(environ: Optional[dict] = None) -> Optional[World]:
    """The job this process belongs to, from the environment torchrun sets; None outside such a job or when it has
    a single process (then the build runs exactly as without torchrun)."""
    env = os.environ if environ is None else environ
    if "WORLD_SIZE" not in env and "RANK" not in env:
        return None
    missing = [v for v in VARIABLES if not env.get(v)]
    if missing:
        raise ConfigError(f"the environment sets {', '.join(v for v in VARIABLES if env.get(v))} but not "
                          f"{', '.join(missing)}: start a distributed build with torchrun (e.g. torchrun "
                          "--nproc-per-node 2 -m reportgen build ...), or unset RANK and WORLD_SIZE")
    try:
        rank, size, local = int(env["RANK"]), int(env["WORLD_SIZE"]), int(env["LOCAL_RANK"])
        int(env["MASTER_PORT"])
    except ValueError:
        raise ConfigError("RANK, WORLD_SIZE, LOCAL_RANK and MASTER_PORT must be integers: start the build with "
                          "torchrun") from None
    if size <= 1:
        return None
    if not 0 <= rank < size:
        raise ConfigError(f"RANK={rank} is not in 0..{size - 1} (WORLD_SIZE={size}): start the build with torchrun")
    raw = env.get(TIMEOUT_VARIABLE, "")
    try:
        timeout = float(raw) if raw else DEFAULT_TIMEOUT_S
    except ValueError:
        timeout = -1.0
    if not timeout > 0:
        raise ConfigError(f"{TIMEOUT_VARIABLE}={raw!r}: give the collectives' timeout in seconds, e.g. 1800")
    return World(rank, size, local, timeout)


class DistributedError(ReportgenError):
    """A distributed build that failed on some rank; the message names the rank and the cause."""

    exit_code = 1

    def __init__(self, message: str, exit_code: Optional[int] = None) -> None:
        super().__init__(message)
        if exit_code is not None:
            self.exit_code = exit_code


class PeerFailed(DistributedError):
    """This rank stopped because another rank failed and said so itself (or will): this one stays silent, so that a
    failure is said in one line. Exit status 1, or that of the mistake every rank made."""

    def show(self, file: Any = None) -> None:
        pass


class _PeerLost(Exception):
    """A collective of this module failed: another rank is gone (or the timeout passed)."""


def _portable(exc: Exception) -> Exception:
    """``exc`` itself when it survives pickling (to be raised on the other ranks as it is), else a RuntimeError
    that carries its type and message."""
    try:
        back = pickle.loads(pickle.dumps(exc))
        if type(back) is type(exc) and str(back) == str(exc):
            return exc
    except Exception:  # noqa: BLE001 - any exception that cannot travel is carried as its text
        pass
    return RuntimeError(f"{type(exc).__name__}: {exc}")


def shared_build(world: World, device_name: str, run: Callable[["Group"], Any]) -> Any:
    """Run ``run(group)`` on this rank of the job ``world`` (`reportgen.build.build` or
    `reportgen.archive.archive` with the group), with the
    process group up, this rank's GPU selected and every failure turned into one line that names its rank."""
    import torch

    device = resolve_device(device_name)
    if device.type == "cuda":
        if world.local_rank >= torch.cuda.device_count():
            raise DistributedError(f"rank {world.rank} of {world.size}: LOCAL_RANK {world.local_rank} but "
                                   f"{torch.cuda.device_count()} GPUs here: start at most one process per GPU "
                                   "(--nproc-per-node)")
        torch.cuda.set_device(world.local_rank)  # "cuda" now means cuda:LOCAL_RANK for the model and the inputs
    with Group.joined(world, "nccl" if device.type == "cuda" else "gloo") as group, group.failures():
        with interrupts_as_errors():  # the launcher's SIGTERM after another rank's failure: a clean stop
            done = run(group)
        if group.rank != 0:  # its share is done: when rank 0 stops later, this rank is not the one to name
            group.tell("passed", "")
        return done


class Group:
    """The process group of one distributed build, its collectives, and what the ranks tell each other through the
    job's key-value store (which outlives the ranks under torchrun: it lives in torchrun's agent)."""

    def __init__(self, world: World, store: Any) -> None:
        self.world = world
        self.rank, self.size = world.rank, world.size
        self.store = store
        # folders a rank writes that no ``finally`` of its own removes when it is killed, by rank (the archive's
        # staged folders): a rank that finds that one silent removes its folder for it (`_stopped`)
        self.leftovers: dict[int, Any] = {}
        self.product = "site"  # what the job writes, for its messages ("the previous site is left as it was")
        self.calls = 0  # `map_chunks` calls so far: the ranks check that they are at the same one

    @classmethod
    @contextmanager
    def joined(cls, world: World, backend: str) -> Iterator["Group"]:
        """Join the job's process group (env:// rendezvous, the world's timeout), yield, leave it."""
        import torch.distributed as dist

        where = f"{os.environ.get('MASTER_ADDR')}:{os.environ.get('MASTER_PORT')}"
        own = not dist.is_initialized()  # a script that set up the group itself keeps it
        try:
            if own:
                dist.init_process_group(backend, timeout=timedelta(seconds=world.timeout_s))
            store = dist.TCPStore(os.environ["MASTER_ADDR"], int(os.environ["MASTER_PORT"]), is_master=False,
                                  timeout=timedelta(seconds=min(world.timeout_s, 60.0)))
        except Exception as exc:
            raise DistributedError(f"rank {world.rank} of {world.size} could not join the process group at {where} "
                                   f"({backend}): {type(exc).__name__}: {first_line(exc)}") from None
        try:
            yield cls(world, store)
        except BaseException:
            # a failed rank leaves at once: tearing the group down would wait on peers that may be blocked in a
            # collective with it, and the launcher names the first rank to exit as the root cause
            raise
        else:
            if own and dist.is_initialized():
                dist.destroy_process_group()

    # --- the one pass ---------------------------------------------------------------------------------------------

    def rounds(self, n_images: int, batch_size: int) -> int:
        """Rounds of the pass: in round t, rank r reads batch t * size + r (when there is one)."""
        n_batches = (n_images + batch_size - 1) // batch_size
        return (n_batches + self.size - 1) // self.size

    def batches(self, images: Any, batch_size: int, device: Any, on_bad: Callable[[str, str], None]) -> Iterator:
        """This rank's batches, one per round (None in a round without one): batch k holds the readable images of
        indices [k * batch_size, (k + 1) * batch_size) and belongs to rank k mod size. Unreadable images are
        recorded in ``images.skipped`` as `ImageSet.batches` does (each rank records its own; `gather` joins them).
        With every image readable these are exactly the batches of one process."""
        import torch

        n = len(images)
        images.skipped.clear()
        for t in range(self.rounds(n, batch_size)):
            k = t * self.size + self.rank
            idx, arrays = [], []
            for i in range(k * batch_size, min(n, (k + 1) * batch_size)):
                try:
                    arrays.append(images.display(i))
                except BadImage as exc:
                    images.skipped.append((images.names[i], str(exc)))
                    on_bad(images.names[i], str(exc))
                    continue
                idx.append(i)
            if not idx:
                yield None
                continue
            yield Batch(torch.tensor(idx, dtype=torch.long), images.normalize(np.stack(arrays)).to(device),
                        torch.from_numpy(images.labels[idx]))

    def cover(self, reducers: list, spans: Optional[list]) -> None:
        """Share this round's ``spans`` (one per reducer, None without a batch) and let every reducer cover every
        rank's, in the global batch order (rank order within a round): the same calls on every rank."""
        import torch.distributed as dist

        gathered: list = [None] * self.size
        self._collective(lambda: dist.all_gather_object(gathered, spans))
        for theirs in gathered:
            if theirs is None:
                continue
            for reducer, span in zip(reducers, theirs):
                if span is not None:
                    reducer.cover(span)

    def gather(self, reducers: dict, indices: list, logits: list, labels: list, skipped: list,
               names: list) -> Optional[tuple]:
        """Send this rank's share of the pass to rank 0. On rank 0: ``reducers`` merged in place (rank order) and
        (indices (M,), logits (M, K), labels (M,)) of every rank sorted by image index, and the unreadable images
        of every rank in image order; None on the other ranks."""
        import torch.distributed as dist

        def joined(parts: list, empty: Any) -> Any:
            return np.concatenate(parts) if parts else empty

        mine = (reducers, joined(indices, np.zeros(0, np.int64)), joined(logits, None),
                joined(labels, np.zeros(0, np.int64)), list(skipped))
        everyone: Optional[list] = [None] * self.size if self.rank == 0 else None
        self._collective(lambda: dist.gather_object(mine, everyone, dst=0))
        if self.rank != 0:
            return None
        assert everyone is not None
        for theirs in everyone[1:]:
            for name, own in reducers.items():
                for key, reducer in own.items():
                    reducer.merge(theirs[0][name][key])
        idx = np.concatenate([e[1] for e in everyone])
        order = np.argsort(idx, kind="stable")
        found = [e[2] for e in everyone if e[2] is not None]
        all_logits = np.concatenate(found)[order] if found else None
        lab = np.concatenate([e[3] for e in everyone])[order]
        position = {name: i for i, name in enumerate(names)} if any(e[4] for e in everyone) else {}
        bad = sorted((s for e in everyone for s in e[4]), key=lambda s: position.get(s[0], -1))
        return idx[order], all_logits, lab, bad

    # --- the per-item work of the analyses ----------------------------------------------------------------------

    def map_chunks(self, fn: Callable[[Any], Any], chunks: list, label: str,
                   progress: Callable[[Any, int], Any] = lambda it, n: it) -> list:
        """``[fn(c) for c in chunks]`` with the chunks dealt round robin: chunk k is computed by rank k mod size, and
        every rank receives every result, in chunk order (one all-gather). The same call on every rank, with the
        same chunks (the ranks check the ``label`` and the call's number, so ranks out of step stop the build
        instead of mixing up two analyses' results).

        An exception in ``fn`` ends this rank's share (its later chunks are not computed) and travels with the
        results: every rank then raises the error of the first chunk that failed, as one process would have, so
        no rank waits for the others and the analysis fails with the same reason everywhere. ``progress(iterable,
        length)`` wraps this rank's own chunks (a progress bar)."""
        import torch.distributed as dist

        self.calls += 1
        tag = (label, self.calls, len(chunks))
        mine: dict[int, tuple[bool, Any]] = {}
        own = list(range(self.rank, len(chunks), self.size))
        for k in progress(own, len(own)):
            try:
                mine[k] = (True, fn(chunks[k]))
            except Exception as exc:  # noqa: BLE001 - carried to every rank, raised there (the failure is fn's)
                mine[k] = (False, _portable(exc))
                break
        gathered: list = [None] * self.size
        self._collective(lambda: dist.all_gather_object(gathered, (tag, mine)))
        if any(theirs[0] != tag for theirs in gathered):
            raise DistributedError(f"the ranks are out of step: rank {self.rank} is at {tag[0]!r} (call {tag[1]}) "
                                   f"but the ranks are at {[theirs[0][:2] for theirs in gathered]}: every rank must "
                                   "run the same split analyses in the same order")
        results: dict[int, tuple[bool, Any]] = {}
        for _, theirs in gathered:
            results.update(theirs)
        failed = [k for k, (ok, _) in results.items() if not ok]
        if failed:
            raise results[min(failed)][1]
        return [results[k][1] for k in range(len(chunks))]

    # --- the archive ----------------------------------------------------------------------------------------------

    def assigned(self, n_items: int) -> list[int]:
        """The positions of a list of ``n_items`` that this rank works on: k for every k with k mod size == rank
        (the archive's checkpoints, in the archive's order)."""
        return list(range(self.rank, n_items, self.size))

    def share(self, value: Any = None) -> Any:
        """Rank 0's ``value`` (any picklable object) on every rank, which also waits there for rank 0; the other
        ranks pass nothing."""
        import torch.distributed as dist

        box = [value if self.rank == 0 else None]
        self._collective(lambda: dist.broadcast_object_list(box, src=0))
        return box[0]

    def collect(self, value: Any) -> Optional[list]:
        """Every rank's ``value`` (picklable) on rank 0, in rank order; None on the other ranks."""
        import torch.distributed as dist

        everyone: Optional[list] = [None] * self.size if self.rank == 0 else None
        self._collective(lambda: dist.gather_object(value, everyone, dst=0))
        return everyone

    def _collective(self, call: Callable[[], Any]) -> None:
        try:
            call()
        except Exception as exc:  # a peer that died closes its sockets; a hung one runs into the timeout
            raise _PeerLost(f"{type(exc).__name__}: {first_line(exc)}") from exc

    # --- failures -------------------------------------------------------------------------------------------------

    def tell(self, state: str, detail: str) -> None:
        """Record this rank's ``state`` ("failed" with the cause, "stopped", "passed") in the job's store."""
        try:
            self.store.set(f"{PREFIX}{self.rank}", f"{state}:{detail}")
        except Exception:  # the store is gone with the job: nothing left to tell
            pass

    def states(self) -> dict[int, Optional[tuple[str, str]]]:
        """Each rank's recorded (state, detail), None for a rank that said nothing."""
        found: dict[int, Optional[tuple[str, str]]] = {}
        for r in range(self.size):
            key = f"{PREFIX}{r}"
            if self.store.check([key]):
                state, _, detail = self.store.get(key).decode().partition(":")
                found[r] = (state, detail)
            else:
                found[r] = None
        return found

    @contextmanager
    def failures(self) -> Iterator[None]:
        """Turn what stops this rank into one line that names the failing rank and its cause.

        A rank whose own code fails records the cause in the store and raises it with its rank. A rank stopped by
        the others (a collective failed or timed out, or the launcher's SIGTERM) waits briefly for every rank's
        word: when one failed and said so, it stays silent (`PeerFailed`); when one said nothing (killed, crashed or
        hung), the lowest stopped rank names it. A mistake that rank 0 made too (a config error: every rank makes
        it) is said by rank 0 alone."""
        who = f"rank {self.rank} of {self.size}"
        try:
            yield
        except (_PeerLost, BuildInterrupted) as exc:
            raise self._stopped(exc) from None
        except ReportgenError as exc:
            self.tell("failed", exc.message)
            if self.rank and self._same_on_rank_0(exc.message):  # a mistake every rank makes: rank 0 says it once
                raise PeerFailed(f"rank 0 of {self.size} failed: {exc.message}", exc.exit_code) from exc
            raise DistributedError(f"{who} failed: {exc.message}", exc.exit_code) from exc
        except Exception as exc:
            cause = f"unexpected {type(exc).__name__}: {first_line(exc, 300)}"
            self.tell("failed", cause)
            raise DistributedError(f"{who} failed: {cause} (run again with -v for the traceback)") from exc

    def _same_on_rank_0(self, message: str) -> bool:
        """Whether rank 0 failed with the same ``message`` (waiting a moment for its word: the ranks run in step)."""
        deadline = time.monotonic() + 1.0
        try:
            while time.monotonic() < deadline:
                state = self.states()[0]
                if state is not None:
                    return state == ("failed", message)
                time.sleep(0.1)
        except Exception:
            pass
        return False

    def _stopped(self, exc: BaseException) -> BaseException:
        # this rank is ending: the launcher's SIGTERM (sent to every rank once one died) must not cut short the wait
        # for the others' word and the one line that follows (it waits for the exit before it sends SIGKILL)
        try:
            signal.signal(signal.SIGTERM, lambda *_: None)
        except ValueError:  # not the main thread
            pass
        self.tell("stopped", "")
        try:
            deadline = time.monotonic() + GRACE_S
            states = self.states()
            while any(s is None for r, s in states.items() if r != self.rank) and time.monotonic() < deadline:
                time.sleep(0.1)
                states = self.states()
        except Exception as lost:  # the store went with rank 0 (a job started without torchrun)
            return DistributedError(f"rank {self.rank} of {self.size} stopped: another rank failed or was lost "
                                    f"({first_line(lost)}); the previous {self.product} is left as it was")
        failed = [(r, s[1]) for r, s in states.items() if s is not None and s[0] == "failed"]
        if failed:
            r, cause = failed[0]
            return PeerFailed(f"rank {r} of {self.size} failed: {cause}")
        silent = [r for r, s in states.items() if s is None]
        for r in silent:  # a killed rank's staged folder: nobody else removes it (idempotent on every rank)
            if self.leftovers.get(r) is not None:
                shutil.rmtree(self.leftovers[r], ignore_errors=True)
        if silent:
            if "timed out" in str(exc).lower() or "timeout" in str(exc).lower():
                what = (f"did not answer within the collectives' timeout of {self.world.timeout_s:g} s "
                        f"({TIMEOUT_VARIABLE}; hung or too slow)")
            else:
                what = "stopped without a word during the build (killed or crashed)"
            message = (f"rank {silent[0]} of {self.size} {what}: the build failed, the previous {self.product} is left "
                       "as it was")
            stopped = [r for r, s in states.items() if s is not None and s[0] == "stopped"]
            return DistributedError(message) if self.rank == min(stopped, default=self.rank) else PeerFailed(message)
        if isinstance(exc, BuildInterrupted):
            # every rank stopped: the whole job was interrupted (Ctrl-C), or the launcher ends the ranks after one
            # that already said why; the lowest stopped rank says it
            stopped = [r for r, s in states.items() if s is not None and s[0] == "stopped"]
            return exc if self.rank == min(stopped, default=self.rank) else PeerFailed(exc.message, exc.exit_code)
        return DistributedError(f"rank {self.rank} of {self.size} stopped: a collective failed ({exc}); the previous "
                                f"{self.product} is left as it was")
