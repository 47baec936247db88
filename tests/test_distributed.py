"""Distributed builds (issue 15): the reducers' merges, and 2 and 3 gloo processes under torchrun against one process.

The end-to-end tests launch ``python -m torch.distributed.run --nproc-per-node N -m reportgen build`` on the tiny
CNN and a folder of 21 images and an unreadable file (6 batches of 4; the file is the last), with the analyses whose
state comes from the one pass (histograms, top images, the hashed sample of the neighbours' bank, the logits), and
compare the site with the one-process build: every figure byte for byte, every number of the manifest exactly but
the float64 spreads, merged by Chan's formula in another order (relative 1e-12). The same comparison runs with the
analyses that deal their per-item chunks to the ranks (`Group.map_chunks`, tested alone with ranks as threads),
with a chunk that fails on rank 1 only and with rank 1 killed in its chunks. The archive tests launch
``... -m reportgen archive`` over 3 tiny checkpoints (each snapshot built whole by one rank) and compare it with the
one-process archive the same way, with no tolerance at all.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from torch import nn

from conftest import TESTS, run, write_image_folder

ONLY = "distributions,top-images,neighbours"
ARGS = ["tiny_models:tiny_cnn", "--input-size", "32x32", "--channels", "3", "--batch-size", "4", "--only", ONLY,
        "--layers", "1,4", "--samples", "3"]
# max_points: fewer than the 21 readable images, so that the hashed sample matters; few figures, as rendering them
# is most of a build's time here
CONFIG = "[analysis.neighbours]\nmax_points = 10\nk_refs = 2\n[analysis.top-images]\nchannels = 3\nn = 4\n"
SPREAD_TOLERANCE = 1e-12  # relative, for the float64 std of `distributions` (the only number merged in another order)
# the analyses that split their per-item work across the ranks, small: batches of 2 so that most of them have
# several chunks (maps of 2 targets; SmoothGrad and occlusion one image per chunk; class images of 2 classes; 4
# batches of channel images; DeepDream and the sphere one image per chunk; t-SNE one of 4 layers per chunk)
SPLIT = "gradient,smoothgrad,occlusion,grad-cam,class-max,unit-max,adversarial,deepdream,embeddings"
SPLIT_ARGS = ["tiny_models:tiny_cnn", "--input-size", "32x32", "--channels", "3", "--batch-size", "2", "--only", SPLIT,
              "--layers", "1,4", "--samples", "5"]
SPLIT_CONFIG = """
[analysis.gradient]
scale = "shared"
[analysis.smoothgrad]
n = 4
scale = "shared"
[analysis.occlusion]
window = 16
stride = 8
scale = "shared"
[analysis.grad-cam]
scale = "per-image"
[analysis.class-max]
steps = 4
[analysis.unit-max]
steps = 4
channels = 3
[analysis.adversarial]
steps = 4
sphere_points = 100
[analysis.deepdream]
images = 3
octaves = 1
steps_per_octave = 3
[analysis.embeddings]
perplexity = 5.0
"""


# Under `pytest -n 2 --dist loadgroup` (the README's test command) the launches run in three groups, each on one
# worker and each building its own one-process site once: the whole builds, the split analyses, the archives.
WHOLE_BUILDS = pytest.mark.xdist_group("test_distributed-whole")
SPLIT_BUILDS = pytest.mark.xdist_group("test_distributed-split")
ARCHIVES = pytest.mark.xdist_group("test_distributed-archive")


# ---------------------------------------------------------------------------------------------------------------
# the environment


def test_world_comes_from_torchruns_environment_and_only_from_it():
    from reportgen.distributed import World, current_world
    from reportgen.errors import ConfigError

    env = {"RANK": "2", "WORLD_SIZE": "3", "LOCAL_RANK": "0", "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": "29500"}
    assert current_world({}) is None  # no variables: the plain build
    assert current_world({**env, "RANK": "0", "WORLD_SIZE": "1"}) is None  # one process: the plain build too
    assert current_world(env) == World(2, 3, 0, 1800.0)
    assert current_world({**env, "REPORTGEN_DIST_TIMEOUT": "5"}).timeout_s == 5.0
    for broken, fragment in (({"RANK": "1", "WORLD_SIZE": "2"}, "not LOCAL_RANK, MASTER_ADDR, MASTER_PORT"),
                             ({**env, "RANK": "3"}, "RANK=3 is not in 0..2"),
                             ({**env, "REPORTGEN_DIST_TIMEOUT": "soon"}, "REPORTGEN_DIST_TIMEOUT='soon'")):
        with pytest.raises(ConfigError, match=fragment):
            current_world(broken)


def test_detection_imports_no_torch_outside_a_distributed_job():
    code = ("import sys, reportgen.build, reportgen.distributed as d; "
            "assert d.current_world() is None; "
            "print('torch' in sys.modules)")
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE")}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=60)
    assert out.stdout.strip() == "False", out.stderr


SIGNAL_MID_IMPORT = """
import os, signal, sys
sys.path.insert(0, {tests!r})
import torch, tiny_models
from reportgen.budget import count_macs
from reportgen.staging import BuildInterrupted, interrupts_as_errors

class SignalMidImport:  # SIGTERM to this process in the middle of sympy's import (torch._dynamo imports it), once
    def find_spec(self, name, path=None, target=None):  # sympy.logic is imported by then, sympy not yet whole
        if name == "sympy.plotting":
            sys.meta_path.remove(self)
            os.kill(os.getpid(), signal.SIGTERM)
        return None

model = tiny_models.tiny_cnn().eval()
sys.meta_path.insert(0, SignalMidImport())
try:
    with interrupts_as_errors():
        count_macs(model, torch.zeros(1, 3, 32, 32))
    print("not interrupted")
except BuildInterrupted as exc:
    print("interrupted:", exc)
torch.optim.SGD(model.parameters(), lr=0.1).zero_grad()  # through torch._disable_dynamo, as the analyses go
print("macs after:", count_macs(model, torch.zeros(1, 3, 32, 32))[0])
"""


def test_a_signal_during_the_first_counts_imports_stops_the_build_and_leaves_torch_whole():
    """The launcher's SIGTERM may reach a rank while its first `count_macs` imports torch._dynamo (sympy, triton):
    raised in the middle of that import, it left half-initialized modules behind, and a later torch call failed
    with an error from inside them ("module 'sympy' has no attribute 'logic'") instead of the rank stopping. Here
    the signal arrives exactly there: the build stops with `BuildInterrupted` once the import is whole, and torch
    works afterwards."""
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE")}
    out = subprocess.run([sys.executable, "-c", SIGNAL_MID_IMPORT.format(tests=str(TESTS))], capture_output=True,
                         text=True, env=env, timeout=120)
    assert out.returncode == 0, out.stdout + out.stderr
    lines = out.stdout.splitlines()
    assert lines[0] == "interrupted: build interrupted by SIGTERM: the previous site is unchanged", out.stdout
    assert lines[1].startswith("macs after: ") and int(lines[1].split()[-1]) > 0, out.stdout


def test_checkpoints_are_dealt_round_robin_in_archive_order():
    from reportgen.distributed import Group, World

    dealt = {size: [Group(World(r, size, r), store=None).assigned(7) for r in range(size)] for size in (2, 3, 8)}
    assert dealt[2] == [[0, 2, 4, 6], [1, 3, 5]]
    assert dealt[3] == [[0, 3, 6], [1, 4], [2, 5]]
    assert dealt[8] == [[0], [1], [2], [3], [4], [5], [6], []]  # more ranks than checkpoints: some have none
    for size, shares_ in dealt.items():  # every checkpoint exactly once, on rank k mod size
        assert sorted(k for share in shares_ for k in share) == list(range(7))
        assert all(k % size == r for r, share in enumerate(shares_) for k in share)


def test_rank_0_moves_the_snapshots_of_the_others_and_says_when_it_cannot_see_them(tmp_path):
    from reportgen.archive import _move_snapshots, helper_folder
    from reportgen.errors import OutputError

    tmp = tmp_path / ".archive.tmp-1"
    helper = helper_folder(tmp, 1)
    assert helper == tmp_path / ".archive.tmp-1.rank1"
    (helper / "step-00002" / "img").mkdir(parents=True)
    (helper / "step-00002" / "manifest.json").write_text("{}")
    (helper / "step-00002" / "img" / "a.png").write_bytes(b"png")
    (tmp / "snapshots").mkdir(parents=True)
    _move_snapshots(helper, tmp / "snapshots", {"step-00002": "built"}, 1)
    assert (tmp / "snapshots" / "step-00002" / "img" / "a.png").read_bytes() == b"png"
    assert list(helper.iterdir()) == []
    # a rank on another machine whose folder is not the one rank 0 sees (no shared file system)
    with pytest.raises(OutputError, match="rank 1 built snapshot 'step-00004' into .* where rank 0 does not see it: "
                                          "on several machines the folder of --out must be on a file system"):
        _move_snapshots(helper, tmp / "snapshots", {"step-00004": "built"}, 1)


def test_batches_are_the_one_process_batches_dealt_round_robin():
    from reportgen.data import BadImage
    from reportgen.distributed import Group, World

    class Images:  # 22 images of 1x1 pixel, image 9 unreadable
        names = [f"img{i}" for i in range(22)]
        labels = np.arange(22) % 3
        skipped: list = []

        def __len__(self):
            return 22

        def display(self, i):
            if i == 9:
                raise BadImage("broken")
            return np.full((1, 1, 1), i, dtype=np.uint8)

        def normalize(self, arrays):
            return torch.from_numpy(arrays).float().reshape(len(arrays), 1, 1, 1)

    got, bad = {}, []
    for rank in range(3):
        group = Group(World(rank, 3, rank), store=None)
        assert group.rounds(22, 4) == 2  # 6 batches, 3 ranks
        mine = list(group.batches(Images(), 4, "cpu", lambda name, why: bad.append((rank, name, why))))
        assert len(mine) == 2
        for t, b in enumerate(mine):
            assert b is not None
            got[3 * t + rank] = b.indices.tolist()
            assert b.inputs.reshape(-1).tolist() == b.indices.tolist() and b.labels.tolist() == [i % 3 for i in
                                                                                                    got[3 * t + rank]]
    assert [got[k] for k in range(6)] == [[0, 1, 2, 3], [4, 5, 6, 7], [8, 10, 11], [12, 13, 14, 15],
                                          [16, 17, 18, 19], [20, 21]]
    assert bad == [(2, "img9", "broken")]  # only the rank that read it


# ---------------------------------------------------------------------------------------------------------------
# merges: N shares, fed round robin as the ranks are fed, equal one stream


def shares(n_batches: int, world: int) -> list[list[int]]:
    return [[k for k in range(n_batches) if k % world == r] for r in range(world)]


def test_running_stats_merged_from_ranks_equal_one_stream():
    from reportgen.methods.activations import RunningStats

    gen = torch.Generator().manual_seed(0)
    # ranges that move both ways, so that the histogram grows up and down at different batches on different ranks
    batches = [torch.randn(3, 4, 5, 5, generator=gen) * s + o for s, o in
               ((1, 0), (3, 2), (0.5, -6), (10, 0), (1, 30), (2, -40), (1, 0))]
    one = RunningStats(bins=16, chunk=37)
    for b in batches:
        one.update(b)
    for world in (2, 3):
        ranks = [RunningStats(bins=16, chunk=37) for _ in range(world)]
        for t in range(0, len(batches), world):  # one round: every rank covers every batch's range, in order
            for stats in ranks:
                for b in batches[t:t + world]:
                    stats.cover(*stats.span(b))
            for r, b in enumerate(batches[t:t + world]):
                ranks[r].update(b)
        merged = ranks[0]
        for other in ranks[1:]:
            merged.merge(other)
        got, want = merged.result(), one.result()
        assert np.array_equal(got["hist_edges"], want["hist_edges"])
        assert np.array_equal(got["hist_counts"], want["hist_counts"])
        values = torch.cat([b.reshape(-1) for b in batches]).double().numpy()
        assert np.array_equal(got["hist_counts"], np.histogram(values, bins=got["hist_edges"])[0])  # independent
        assert (got["count"], got["min"], got["max"]) == (values.size, values.min(), values.max())
        assert np.array_equal(got["active_units"], want["active_units"])
        for key, ref in (("mean", values.mean()), ("std", values.std())):
            assert got[key] == pytest.approx(ref, rel=SPREAD_TOLERANCE)
            assert got[key] == pytest.approx(want[key], rel=SPREAD_TOLERANCE)


def test_top_images_merged_from_ranks_equal_one_stream_ties_to_the_lower_index():
    from reportgen.methods.activations import StreamingTopK

    gen = torch.Generator().manual_seed(1)
    acts = torch.randint(0, 4, (22, 3, 2, 2), generator=gen).float()  # many ties
    one = StreamingTopK(n=5)
    for start in range(0, 22, 4):
        one.update(acts[start:start + 4], torch.arange(start, min(start + 4, 22)))
    ranks = [StreamingTopK(n=5) for _ in range(3)]
    for r, mine in enumerate(shares(6, 3)):
        for k in mine:
            ranks[r].update(acts[4 * k:4 * k + 4], torch.arange(4 * k, min(4 * k + 4, 22)))
    for other in ranks[1:]:
        ranks[0].merge(other)
    got, want = ranks[0].result(), one.result()
    for key in ("values", "indices", "positions"):
        assert np.array_equal(got[key], want[key]), key
    scores = acts.amax(dim=(2, 3)).double().numpy()  # independent: sort every channel by (-score, index)
    for c in range(3):
        expected = sorted(range(22), key=lambda i: (-scores[i, c], i))[:5]
        assert got["indices"][c].tolist() == expected


def test_feature_sample_merged_from_ranks_keeps_the_same_images():
    from reportgen.analyses.activations import FeatureSample, index_hash

    feats = torch.arange(23 * 3, dtype=torch.float32).reshape(23, 3)

    def batch(k):
        idx = torch.arange(4 * k, min(4 * k + 4, 23))
        return SimpleNamespace(inputs=feats[idx], indices=idx, labels=idx % 2)

    one = FeatureSample([], 8, 1 << 20, np.random.default_rng(5))
    for k in range(6):
        b = batch(k)
        one.update(b, {}, b.inputs)
    ranks = [FeatureSample([], 8, 1 << 20, np.random.default_rng(5)) for _ in range(3)]
    for r, mine in enumerate(shares(6, 3)):
        for k in mine:
            b = batch(k)
            ranks[r].update(b, {}, b.inputs)
    for other in ranks[1:]:
        ranks[0].merge(other)
    (f1, i1, l1, p1), (f2, i2, l2, p2) = one.collected(), ranks[0].collected()
    assert np.array_equal(i1, i2) and np.array_equal(l1, l2) and np.array_equal(p1, p2)
    assert all(np.array_equal(f1[k], f2[k]) for k in f1) and set(f1) == set(f2)
    assert np.array_equal(f2["input"], feats[i2].numpy()) and ranks[0].seen == 23
    # independent: the 8 indices of smallest hash
    assert i2.tolist() == sorted(np.argsort(index_hash(np.arange(23), one.key), kind="stable")[:8].tolist())


# ---------------------------------------------------------------------------------------------------------------
# who says what when a rank fails: `Group.failures` with a store in memory (the launches below cost much more)


class MemoryStore:
    """The three calls of a torch.distributed store that `Group` makes."""

    def __init__(self, **states: str) -> None:
        self.data = {f"reportgen/{rank[1:]}": value.encode() for rank, value in states.items()}

    def set(self, key, value):
        self.data[key] = value.encode()

    def check(self, keys):
        return all(k in self.data for k in keys)

    def get(self, key):
        return self.data[key]


@pytest.fixture
def group_of(monkeypatch):
    import reportgen.distributed as dist

    monkeypatch.setattr(dist, "GRACE_S", 0.2)
    previous = signal.getsignal(signal.SIGTERM)  # a stopped rank ignores the launcher's SIGTERM from then on
    yield lambda rank, size, store: dist.Group(dist.World(rank, size, rank, timeout_s=2.0), store)
    signal.signal(signal.SIGTERM, previous)


def test_a_failing_rank_says_so_and_the_others_stay_silent(group_of, capsys):
    from reportgen.distributed import DistributedError, PeerFailed, _PeerLost
    from reportgen.errors import ModelError

    store = MemoryStore(r0="stopped:")
    with pytest.raises(DistributedError) as failed:
        with group_of(1, 3, store).failures():
            raise ModelError("model 'm' failed on a batch")
    assert type(failed.value) is DistributedError and failed.value.exit_code == ModelError.exit_code
    assert failed.value.message == "rank 1 of 3 failed: model 'm' failed on a batch"
    assert store.data["reportgen/1"] == b"failed:model 'm' failed on a batch"
    for rank in (0, 2):  # the others lost their collective (or got SIGTERM): silent, the cause in their error
        with pytest.raises(PeerFailed, match="rank 1 of 3 failed: model 'm' failed on a batch") as quiet:
            with group_of(rank, 3, store).failures():
                raise _PeerLost("RuntimeError: Connection closed by peer")
        quiet.value.show()
    assert capsys.readouterr().err == ""


def test_a_killed_rank_is_named_once_by_the_lowest_stopped_rank(group_of):
    from reportgen.distributed import DistributedError, PeerFailed, _PeerLost

    store = MemoryStore(r2="stopped:")  # rank 1 never speaks again
    with pytest.raises(DistributedError) as named:
        with group_of(0, 3, store).failures():
            raise _PeerLost("RuntimeError: Connection closed by peer")
    assert type(named.value) is DistributedError
    assert named.value.message.startswith("rank 1 of 3 stopped without a word during the build (killed or crashed)")
    with pytest.raises(PeerFailed, match="rank 1 of 3 stopped without a word"):
        with group_of(2, 3, store).failures():
            raise _PeerLost("RuntimeError: Connection closed by peer")


def test_a_hung_rank_is_named_after_the_timeout_and_the_launchers_teardown_is_silent(group_of):
    from reportgen.distributed import DistributedError, PeerFailed, _PeerLost
    from reportgen.staging import BuildInterrupted

    store = MemoryStore()
    with pytest.raises(DistributedError) as named:  # what gloo says when a peer does not answer in time
        with group_of(0, 2, store).failures():
            raise _PeerLost("DistBackendError: Timed out waiting 5000ms for recv operation to complete")
    assert named.value.message.startswith("rank 1 of 2 did not answer within the collectives' timeout of 2 s "
                                          "(REPORTGEN_DIST_TIMEOUT; hung or too slow)")
    with pytest.raises(PeerFailed):  # then the launcher's SIGTERM ends rank 1: nothing more to say
        with group_of(1, 2, store).failures():
            raise BuildInterrupted("build interrupted by SIGTERM: the previous site is unchanged", signal.SIGTERM)


def test_a_mistake_every_rank_makes_is_said_once_by_rank_0(group_of):
    from reportgen.distributed import DistributedError, PeerFailed
    from reportgen.errors import LayerError

    store = MemoryStore()
    with pytest.raises(DistributedError, match="rank 0 of 2 failed: unknown layer 'x'") as first:
        with group_of(0, 2, store).failures():
            raise LayerError("unknown layer 'x'")
    assert type(first.value) is DistributedError
    with pytest.raises(PeerFailed, match="rank 0 of 2 failed: unknown layer 'x'"):
        with group_of(1, 2, store).failures():
            raise LayerError("unknown layer 'x'")


# ---------------------------------------------------------------------------------------------------------------
# the per-item work: `Group.map_chunks` with N ranks as N threads and an in-memory all-gather


def on_ranks(size: int, body, monkeypatch) -> list:
    """``body(group)`` on ``size`` ranks at once (threads), their all-gathers met in memory (values pickled both
    ways, as they travel between processes); each rank's (True, value) or (False, exception)."""
    import pickle
    import threading

    import torch.distributed as dist

    from reportgen.distributed import Group, World

    local, slots = threading.local(), [None] * size
    barrier = threading.Barrier(size, timeout=20)

    def all_gather_object(out, obj):
        slots[local.rank] = pickle.dumps(obj)
        barrier.wait()
        out[:] = [pickle.loads(b) for b in slots]
        barrier.wait()

    monkeypatch.setattr(dist, "all_gather_object", all_gather_object)
    results: list = [None] * size

    def rank(r: int) -> None:
        local.rank = r
        try:
            results[r] = (True, body(Group(World(r, size, r), store=None)))
        except Exception as exc:  # noqa: BLE001 - the test looks at it
            results[r] = (False, exc)

    threads = [threading.Thread(target=rank, args=(r,)) for r in range(size)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    return results


class Unpicklable(Exception):
    def __reduce__(self):
        raise TypeError("not today")


@pytest.mark.parametrize("size, n_chunks", [(2, 7), (3, 7), (8, 3)])
def test_chunks_are_dealt_round_robin_and_every_rank_gets_all_in_order(monkeypatch, size, n_chunks):
    ran: list = []

    def body(group):
        def fn(chunk):
            ran.append((group.rank, chunk))
            return {"chunk": chunk, "rank": group.rank, "square": torch.tensor([chunk]) ** 2}

        return group.map_chunks(fn, list(range(n_chunks)), "squares")

    results = on_ranks(size, body, monkeypatch)
    assert all(ok for ok, _ in results), results
    for _, got in results:
        assert [g["chunk"] for g in got] == list(range(n_chunks))  # chunk order, whoever computed them
        assert [g["rank"] for g in got] == [k % size for k in range(n_chunks)]  # chunk k on rank k mod size
        assert [int(g["square"]) for g in got] == [k * k for k in range(n_chunks)]
    assert sorted(ran) == sorted((k % size, k) for k in range(n_chunks))  # each chunk computed exactly once


def test_a_chunk_that_fails_on_rank_1_only_fails_on_every_rank_with_its_error(monkeypatch):
    ran: list = []

    def body(group):
        def fn(chunk):
            ran.append(chunk)
            if chunk in (3, 4):  # 3 on rank 1, 4 on rank 0 (which still computes it): the first in order wins
                raise ValueError(f"chunk {chunk} is broken")
            return chunk

        return group.map_chunks(fn, list(range(8)), "fragile")

    results = on_ranks(2, body, monkeypatch)
    for ok, exc in results:  # every rank raises what one process would have raised: the first failing chunk's
        assert not ok and type(exc) is ValueError and str(exc) == "chunk 3 is broken"
    assert sorted(ran) == [0, 1, 2, 3, 4]  # a rank stops at its first failure (5, 7: rank 1; 6: rank 0)

    def unpicklable(group):
        def fn(chunk):
            if group.rank == 1:
                raise Unpicklable("cannot travel")
            return chunk

        return group.map_chunks(fn, [0, 1], "odd")

    for ok, exc in on_ranks(2, unpicklable, monkeypatch):  # carried as its type and message
        assert not ok and str(exc) == "Unpicklable: cannot travel"


def test_ranks_out_of_step_stop_instead_of_mixing_results(monkeypatch):
    from reportgen.distributed import DistributedError

    def body(group):
        return group.map_chunks(lambda c: c, [0, 1], "gradient" if group.rank == 0 else "smoothgrad")

    for ok, exc in on_ranks(2, body, monkeypatch):
        assert not ok and type(exc) is DistributedError and "the ranks are out of step" in exc.message


def test_context_maps_chunks_in_one_process_and_shares_them_only_for_an_analysis_that_splits(monkeypatch):
    from reportgen.config import BuildConfig
    from reportgen.context import Context

    ctx = Context(config=BuildConfig(), loaded=None, images=None, device="cpu", facts=None)
    assert ctx.map_chunks(lambda c: 2 * c, range(5), "double") == [0, 2, 4, 6, 8]  # no group: a plain loop

    def body(group):
        ctx = Context(config=BuildConfig(), loaded=None, images=None, device="cpu", facts=None, group=group)
        ctx.freeze()  # as the build hands it to the analyses
        local = ctx.running(SimpleNamespace(splits=False)).map_chunks(lambda c: (c, group.rank), range(3),
                                                                      "not split")  # no collective: all here
        split = ctx.running(SimpleNamespace(splits=True))
        assert split.frozen and not ctx.splitting  # a read-only copy for the analysis; the build's own unchanged
        return local, split.map_chunks(lambda c: (c, group.rank), range(3), "split")

    for r, (ok, (local, shared)) in enumerate(on_ranks(2, body, monkeypatch)):
        assert ok and local == [(0, r), (1, r), (2, r)] and shared == [(0, 0), (1, 1), (2, 0)]


# ---------------------------------------------------------------------------------------------------------------
# end to end: torchrun


class DiesOnRankOne(nn.Sequential):
    """`tiny_cnn` (the same layers) whose process, on rank 1, is killed by SIGKILL at its second batch of the pass."""

    def __init__(self) -> None:
        from tiny_models import tiny_cnn

        super().__init__(*tiny_cnn())
        self.batches = 0

    def forward(self, x):
        if x.shape[0] > 2 and os.environ.get("RANK") == "1":  # the probe pass runs 2 images
            self.batches += 1
            if self.batches == 2:
                os.kill(os.getpid(), signal.SIGKILL)
        return super().forward(x)


def killed_on_rank_one() -> nn.Module:
    return DiesOnRankOne()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def torchrun(n: int, args: list, cwd: Path, timeout_s: int = 60, command: str = "build") -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(TESTS), os.environ.get("PYTHONPATH", "")]),
           "OMP_NUM_THREADS": "1", "REPORTGEN_DIST_TIMEOUT": str(timeout_s)}
    for key in ("RANK", "WORLD_SIZE", "LOCAL_RANK"):
        env.pop(key, None)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", str(n), "--master-addr", "127.0.0.1",
           "--master-port", str(free_port()), "-m", "reportgen", command, *map(str, args)]
    return subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=240)


@pytest.fixture(scope="module")
def one_process(tmp_path_factory):
    """The image folder, the config and the one-process site (built in this process)."""
    root = tmp_path_factory.mktemp("dist")
    images = write_image_folder(root / "images", per_class=7)
    (images / "dog" / "zz broken.png").write_bytes(b"not a png")  # the last index: the batches stay the same
    (root / "cfg.toml").write_text(CONFIG)
    result = run("build", *ARGS, "--images", images, "--out", root / "one", "--config", root / "cfg.toml", "-q")
    assert result.exit_code == 0, result.output
    return root


def numbers_close(a, b, path=""):
    """The same structure and strings; the same numbers exactly, or within the tolerance for the spreads."""
    assert type(a) is type(b) or {type(a), type(b)} <= {int, float}, path
    if isinstance(a, dict):
        assert a.keys() == b.keys(), path
        for k in a:
            numbers_close(a[k], b[k], f"{path}/{k}")
    elif isinstance(a, list):
        assert len(a) == len(b), path
        for i, (x, y) in enumerate(zip(a, b)):
            numbers_close(x, y, f"{path}[{i}]")
    elif isinstance(a, float) and a != b:
        assert ("std" in path or "/rows[" in path) and a == pytest.approx(b, rel=SPREAD_TOLERANCE), (path, a, b)
    else:
        assert a == b, (path, a, b)


def assert_same_site(one: Path, many: Path, timings: tuple = ()) -> None:
    files = sorted(p.relative_to(one).as_posix() for p in one.rglob("*") if p.is_file())
    assert files == sorted(p.relative_to(many).as_posix() for p in many.rglob("*") if p.is_file())
    figures = [f for f in files if not f.endswith((".html", "manifest.json"))]  # pages and manifest hold timings
    assert sum(f.endswith(".png") for f in figures) > 30
    assert [f for f in figures if (one / f).read_bytes() != (many / f).read_bytes()] == []
    m1, m2 = (json.loads((d / "manifest.json").read_text()) for d in (one, many))
    assert m1["images"] == m2["images"]  # counts, unreadable images (gathered from their rank), sample images
    assert m1["images"]["skipped"] and m1["images"]["used"] == 21
    assert m1["model"] == m2["model"]
    for e1, e2 in zip(m1["analyses"], m2["analyses"]):
        assert (e1["name"], e1["status"]) == (e2["name"], e2["status"]) and e1["status"] == "ok", e1["reason"]
        drop = [k for k in e1["metrics"] if k in timings]  # seconds: not the same in two runs
        assert all(k in e2["metrics"] for k in drop)
        numbers_close({k: v for k, v in e1["metrics"].items() if k not in drop},
                      {k: v for k, v in e2["metrics"].items() if k not in drop}, e1["name"])
        numbers_close(e1["items"], e2["items"], e1["name"])
        assert e1["notes"] == e2["notes"]


@WHOLE_BUILDS
@pytest.mark.parametrize("n", [2, 3])
def test_n_gloo_processes_build_the_same_site_as_one(one_process, n):
    root = one_process
    out = root / f"ranks{n}"
    t0 = time.perf_counter()
    result = torchrun(n, [*ARGS, "--images", root / "images", "--out", out, "--config", root / "cfg.toml"], root)
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.count("Report written to") == 1  # rank 0 alone says it
    assert result.stderr.count("skipped image 'dog/zz broken.png'") == 1  # only the rank that read it
    assert_same_site(root / "one", out)
    assert time.perf_counter() - t0 < 120


@pytest.fixture(scope="module")
def one_process_split(one_process):
    """The one-process site of the analyses that split their work (same image folder)."""
    root = one_process
    (root / "split.toml").write_text(SPLIT_CONFIG)
    result = run("build", *SPLIT_ARGS, "--images", root / "images", "--out", root / "split-one", "--config",
                 root / "split.toml", "-q")
    assert result.exit_code == 0, result.output
    return root


@SPLIT_BUILDS
@pytest.mark.parametrize("n", [2, 3])
def test_n_gloo_processes_split_the_per_item_analyses_and_build_the_same_site(one_process_split, n):
    root = one_process_split
    out = root / f"split-ranks{n}"
    t0 = time.perf_counter()
    result = torchrun(n, [*SPLIT_ARGS, "--images", root / "images", "--out", out, "--config", root / "split.toml"],
                      root)
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.count("Report written to") == 1
    assert [line for line in result.stderr.splitlines() if "warning" in line and "skipped image" not in line] == []
    assert_same_site(root / "split-one", out, timings=("t-SNE seconds per layer",))
    manifest = json.loads((out / "manifest.json").read_text())
    assert sorted(e["name"] for e in manifest["analyses"]) == sorted(SPLIT.split(","))  # all there, all "ok"
    assert time.perf_counter() - t0 < 120


def in_split_work() -> bool:
    """Whether this call comes from a chunk that a distributed build dealt to this rank (`Group.map_chunks`)."""
    frame = sys._getframe(1)
    while frame is not None:
        if frame.f_code.co_name == "map_chunks" and "distributed" in frame.f_code.co_filename:
            return True
        frame = frame.f_back
    return False


class FailsOnRankOne(nn.Sequential):
    """`tiny_cnn` that, on rank 1, fails (``kill=False``: raises) or is killed by SIGKILL in its first chunk of the
    analyses' per-item work."""

    def __init__(self, kill: bool) -> None:
        from tiny_models import tiny_cnn

        super().__init__(*tiny_cnn())
        self.kill = kill

    def forward(self, x):
        if os.environ.get("RANK") == "1" and in_split_work():
            if self.kill:
                os.kill(os.getpid(), signal.SIGKILL)
            raise ValueError("this model refuses rank 1's chunks")
        return super().forward(x)


def killed_in_split_work_on_rank_one() -> nn.Module:
    return FailsOnRankOne(kill=True)


def failing_in_split_work_on_rank_one() -> nn.Module:
    return FailsOnRankOne(kill=False)


@SPLIT_BUILDS
def test_a_chunk_that_fails_on_rank_1_fails_its_analysis_with_the_same_reason_and_the_job_goes_on(one_process_split):
    root = one_process_split
    out = root / "split-failing"
    args = ["test_distributed:failing_in_split_work_on_rank_one", *SPLIT_ARGS[1:8], "gradient,smoothgrad,top-images",
            "--layers", "1,4", "--samples", "5", "--images", root / "images", "--out", out, "--config",
            root / "split.toml"]
    result = torchrun(2, args, root)
    # the site is written; the exit status is 1, as for any build with a failed analysis
    assert result.returncode == 1 and result.stdout.count("Report written to") == 1, result.stdout + result.stderr
    entries = json.loads((out / "manifest.json").read_text())["analyses"]
    status = {e["name"]: (e["status"], e["reason"]) for e in entries}
    reason = "ValueError: this model refuses rank 1's chunks"
    assert status == {"gradient": ("failed", reason), "smoothgrad": ("failed", reason), "top-images": ("ok", None)}
    # rank 0 says it once per analysis; rank 1 stays quiet
    assert result.stderr.count(f"analysis 'gradient' failed: {reason}") == 1, result.stderr


@WHOLE_BUILDS
@pytest.mark.parametrize("how, says", [("killed", "rank 1 of 2 stopped without a word during the build")])
def test_a_rank_that_dies_mid_pass_fails_the_job_in_one_line_and_keeps_the_site(one_process, how, says):
    """Rank 1 is killed by SIGKILL at its second batch; torchrun then sends SIGTERM to rank 0 (a rank that raises
    instead is `test_a_failing_rank_says_so_and_the_others_stay_silent`, here without the cost of a launch)."""
    root = one_process
    out = root / f"previous-{how}"
    shutil.copytree(root / "one", out)
    before = {p.relative_to(out): p.read_bytes() for p in out.rglob("*") if p.is_file()}
    t0 = time.perf_counter()
    result = torchrun(2, [f"test_distributed:{how}_on_rank_one", *ARGS[1:], "--images", root / "images", "--out", out,
                          "--config", root / "cfg.toml"], root, timeout_s=600)
    assert result.returncode != 0
    ours = [line for line in (result.stdout + result.stderr).splitlines() if line.startswith("Error:")]
    assert len(ours) == 1 and says in ours[0], result.stdout + result.stderr  # one line, from one rank
    assert time.perf_counter() - t0 < 200  # no rank waited for the collectives' timeout (600 s)
    assert {p.relative_to(out): p.read_bytes() for p in out.rglob("*") if p.is_file()} == before
    assert sorted(p.name for p in root.iterdir() if p.name.startswith(f".previous-{how}")) == []  # no tmp, no lock


@SPLIT_BUILDS
def test_a_rank_killed_during_a_split_analysis_fails_the_job_in_one_line_and_keeps_the_site(one_process_split):
    root = one_process_split
    out = root / "previous-split"
    shutil.copytree(root / "split-one", out)
    before = {p.relative_to(out): p.read_bytes() for p in out.rglob("*") if p.is_file()}
    t0 = time.perf_counter()
    result = torchrun(2, ["test_distributed:killed_in_split_work_on_rank_one", *SPLIT_ARGS[1:], "--images",
                          root / "images", "--out", out, "--config", root / "split.toml"], root, timeout_s=600)
    assert result.returncode != 0
    ours = [line for line in (result.stdout + result.stderr).splitlines() if line.startswith("Error:")]
    assert len(ours) == 1, result.stdout + result.stderr
    assert ours[0] == ("Error: rank 1 of 2 stopped without a word during the build (killed or crashed): the build "
                       "failed, the previous site is left as it was")
    assert time.perf_counter() - t0 < 200  # no rank waited for the collectives' timeout (600 s)
    assert {p.relative_to(out): p.read_bytes() for p in out.rglob("*") if p.is_file()} == before
    assert sorted(p.name for p in root.iterdir() if p.name.startswith(".previous-split")) == []


# ---------------------------------------------------------------------------------------------------------------
# the archive: checkpoint k built whole by rank k mod N


ARCHIVE_ARGS = ["--model", "tiny_models:tiny_cnn", "--input-size", "32x32", "--channels", "3", "--batch-size", "4",
                "--only", "predictions,filters,grad-cam", "--samples", "2", "-q"]


@pytest.fixture(scope="module")
def one_process_archive(tmp_path_factory):
    """3 tiny checkpoints (epochs 1, 2, 3), 12 images, and their archive built by one process (in this one)."""
    from test_archive import save_checkpoints

    root = tmp_path_factory.mktemp("dist-archive")
    write_image_folder(root / "images", per_class=4)
    save_checkpoints(root / "ckpts", [(3, "c.safetensors"), (1, "a.safetensors"), (2, "b.safetensors")])
    result = run("archive", root / "ckpts", *ARCHIVE_ARGS, "--images", root / "images", "--out", root / "one")
    assert result.exit_code == 0, result.output
    return root


def without_times(manifest: dict) -> dict:
    """A manifest without what differs between two runs of the same build: timings, the output folder, the pages'
    and manifests' hashes (they hold timings)."""
    drop = {"timings", "build_seconds", "seconds"}

    def strip(x, key=""):
        if isinstance(x, dict):
            return {k: strip(v, k) for k, v in x.items() if k not in drop and not (key == "config" and k == "out")
                    and not (key == "files" and k.endswith((".html", "manifest.json")))}
        return [strip(v) for v in x] if isinstance(x, list) else x

    return strip(manifest)


@ARCHIVES
def test_two_gloo_processes_build_the_same_archive_as_one(one_process_archive):
    root = one_process_archive
    one, two = root / "one", root / "two"
    result = torchrun(2, [root / "ckpts", *ARCHIVE_ARGS[:-1], "--images", root / "images", "--out", two], root,
                      command="archive")
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.count("Archive written to") == 1 and "(3 snapshots built, 0 reused)" in result.stdout
    # checkpoint k of the archive's order (the epochs, not the file names) on rank k mod 2
    for line in ("step-00001: building from a.safetensors (rank 0)", "step-00002: building from b.safetensors "
                 "(rank 1)", "step-00003: building from c.safetensors (rank 0)"):
        assert line in result.stdout + result.stderr
    files = sorted(p.relative_to(one).as_posix() for p in one.rglob("*") if p.is_file())
    assert files == sorted(p.relative_to(two).as_posix() for p in two.rglob("*") if p.is_file())
    figures = [f for f in files if f.endswith(".png")]
    assert len(figures) > 100 and "img/archive/accuracy.png" in figures
    assert [f for f in figures if (one / f).read_bytes() != (two / f).read_bytes()] == []
    manifests = [f for f in files if f.endswith("manifest.json")]
    assert len(manifests) == 4  # the index's and one per snapshot
    for f in manifests:
        m1, m2 = (without_times(json.loads((d / f).read_text())) for d in (one, two))
        assert m1 == m2, f
    assert [p.name for p in root.iterdir() if p.name.startswith(".two")] == []  # no staged folder, no lock left


@ARCHIVES
def test_a_rank_killed_during_its_snapshot_fails_the_archive_in_one_line_and_keeps_the_previous(one_process_archive):
    """Rank 1 is killed by SIGKILL in the pass of its snapshot (the second checkpoint): one line names it, the previous
    archive is unchanged, and neither rank 0's staged archive nor rank 1's own folder beside it is left behind."""
    root = one_process_archive
    out = root / "previous"
    shutil.copytree(root / "one", out)
    before = {p.relative_to(out): p.read_bytes() for p in out.rglob("*") if p.is_file()}
    args = [root / "ckpts", "--model", "test_distributed:killed_on_rank_one", *ARCHIVE_ARGS[2:-1], "--images",
            root / "images", "--out", out]
    t0 = time.perf_counter()
    result = torchrun(2, args, root, timeout_s=600, command="archive")
    assert result.returncode != 0
    ours = [line for line in (result.stdout + result.stderr).splitlines() if line.startswith("Error:")]
    assert len(ours) == 1, result.stdout + result.stderr
    assert ours[0] == ("Error: rank 1 of 2 stopped without a word during the build (killed or crashed): the build "
                       "failed, the previous archive is left as it was")
    assert time.perf_counter() - t0 < 200  # no rank waited for the collectives' timeout (600 s)
    assert {p.relative_to(out): p.read_bytes() for p in out.rglob("*") if p.is_file()} == before
    assert [p.name for p in root.iterdir() if p.name.startswith(".previous")] == []
