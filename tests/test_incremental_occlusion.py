"""Exact incremental occlusion (Krypton): the same maps as full forward passes, on torchvision CNNs and on models
whose ReLUs are functional, reused or in place; the plain path where the engine does not apply; the model untouched."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
import torchvision
from torch import nn

from reportgen.methods import attribution as A
from reportgen.methods.incremental import IncrementalOcclusion, _Axis, _window_axis


def both(model: nn.Module, x: torch.Tensor, target, **options) -> tuple[torch.Tensor, torch.Tensor, object]:
    """(incremental maps, plain maps, the plan used)."""
    plans: list = []
    fast = A.occlusion(model, x, target, plans=plans, **options)
    plain = A.occlusion(model, x, target, incremental=False, **options)
    assert len(plans) == 1
    return fast, plain, plans[0]


def assert_close(fast: torch.Tensor, plain: torch.Tensor) -> None:
    """Equal to 1e-4 of the largest drop (float32 rounding differs between a crop and the whole map)."""
    scale = float(plain.abs().max())
    assert scale > 0
    assert float((fast - plain).abs().max()) <= 1e-4 * scale


def snapshot(model: nn.Module) -> tuple:
    return ([(name, id(m), m.training, dict(m._forward_hooks), dict(m._forward_pre_hooks))
             for name, m in model.named_modules()],
            {k: v.clone() for k, v in model.state_dict().items()})


def assert_unchanged(model: nn.Module, before: tuple) -> None:
    modules, state = snapshot(model)
    assert modules == before[0]
    assert all(not hooks and not pre for *_, hooks, pre in modules)
    assert state.keys() == before[1].keys() and all(torch.equal(state[k], before[1][k]) for k in state)


# ---------------------------------------------------------------------------------------------------------------
# Box arithmetic, checked against real convolutions


@pytest.mark.parametrize("kernel,stride,pad,dilation", [(3, 1, 1, 1), (7, 2, 3, 1), (1, 2, 0, 1), (3, 2, 1, 2),
                                                         (2, 2, 0, 1), (5, 3, 0, 1)])
def test_window_axis_is_exactly_the_outputs_a_change_reaches(kernel, stride, pad, dilation):
    """The interval predicted for a conv output is the outputs that change when the input interval changes (an
    independent brute-force check with a positive kernel, so that every reached output does change)."""
    length = 23
    conv = nn.Conv1d(1, 1, kernel, stride=stride, padding=pad, dilation=dilation, bias=False)
    nn.init.constant_(conv.weight, 1.0)
    x = torch.zeros(1, 1, length)
    out_len = conv(x).shape[-1]
    changes = [(a, b) for a in range(length) for b in (a + 1, a + 4) if b <= length]
    got = _window_axis(_Axis(length, changes), kernel, stride, pad, dilation, out_len).exact
    for (a, b), (lo, hi) in zip(changes, got):
        moved = x.clone()
        moved[..., a:b] = 1.0
        changed = (conv(moved) != conv(x))[0, 0].nonzero().flatten().tolist()
        if dilation == 1:
            assert (lo, hi) == ((changed[0], changed[-1] + 1) if changed else (0, 0)), (a, b)
        else:  # a dilated kernel may step over a short change: the interval is then a cover, not exact
            assert all(lo <= o < hi for o in changed), (a, b)


def test_axis_box_has_one_size_and_stays_in_the_map():
    axis = _Axis(10, [(0, 3), (4, 8), (8, 10), (5, 5)])
    assert axis.size == 4 and axis.start == [0, 4, 6, 5]
    assert not axis.full and _Axis(4, [(0, 4)]).full


# ---------------------------------------------------------------------------------------------------------------
# torchvision CNNs (random seeded weights, eval mode, 64 px)


@pytest.mark.parametrize("arch,images,size,window,stride", [("resnet18", 2, 64, 16, 16), ("vgg11", 1, 48, 16, 16),
                                                            ("densenet121", 1, 48, 16, 16)])
def test_torchvision_cnns_give_the_plain_maps(arch, images, size, window, stride):
    torch.manual_seed(0)
    model = getattr(torchvision.models, arch)(num_classes=5).eval()
    x = torch.randn(images, 3, size, size, generator=torch.Generator().manual_seed(1))
    before = snapshot(model)
    fast, plain, plan = both(model, x, [1, 4][:images], window=window, stride=stride, batch_size=16)
    assert plan.used, plan.reason
    assert plan.boxed_nodes >= 8  # the early layers really ran on boxes
    assert plan.mac_fraction < 1.0
    positions = (size - window) // stride + 1
    assert fast.shape == (images, positions, positions)
    assert_close(fast, plain)
    assert_unchanged(model, before)


@pytest.mark.parametrize("name", ["ShapesCNN", "ShapesResNet"])
def test_zoo_models_give_the_plain_maps(name):
    """The zoo's VGG-style net and its small ResNet (one in-place ReLU module run twice per block)."""
    import models_zoo.nets as nets

    torch.manual_seed(0)
    model = getattr(nets, name)().eval()
    x = torch.randn(1, 3, 64, 64, generator=torch.Generator().manual_seed(4))
    fast, plain, plan = both(model, x, 2, window=12, stride=10, batch_size=12)
    assert plan.used and plan.boxed_nodes >= 8, plan.reason
    assert_close(fast, plain)


def test_resnet_plan_names_where_full_recomputation_starts():
    torch.manual_seed(0)
    model = torchvision.models.resnet18(num_classes=3).eval()
    x = torch.randn(1, 3, 64, 64)
    engine = IncrementalOcclusion.prepare(model, x, (16, 16), (8, 8))
    names = dict(model.named_modules())
    assert engine.plan.used and engine.plan.fallbacks
    layer, why = engine.plan.fallbacks[0]
    assert layer in names and "covers the whole" in why
    sentence = engine.plan.sentence()
    assert "incremental" in sentence and layer in sentence


def test_drops_match_an_independent_loop_of_single_forward_passes():
    """The plain method is itself checked: three positions recomputed one image at a time, by hand."""
    torch.manual_seed(0)
    model = torchvision.models.resnet18(num_classes=4).eval()
    x = torch.randn(1, 3, 40, 40)
    fill = torch.tensor([0.5, -0.2, 0.1])[:, None, None]
    fast = A.occlusion(model, x, 2, window=(12, 8), stride=(9, 10), fill=fill, score="prob", batch_size=7)
    with torch.no_grad():
        base = model(x).softmax(1)[0, 2]
        for i, j in [(0, 0), (2, 3), (3, 1)]:
            occluded = x.clone()
            occluded[0, :, 9 * i:9 * i + 12, 10 * j:10 * j + 8] = fill
            expected = base - model(occluded).softmax(1)[0, 2]
            assert abs(float(fast[0, i, j] - expected)) <= 1e-4 * float(fast.abs().max())


# ---------------------------------------------------------------------------------------------------------------
# ReLUs written every way, and the ops the engine computes by region


class Mixed(nn.Module):
    """Functional, reused and in-place ReLUs; a residual add, a channel concatenation, a ceil-mode max pool, a
    padded average pool, dilated and grouped convolutions, batch norm, a per-channel scale and a reshape head."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.conv1 = nn.Conv2d(3, 8, 3, padding=1)
        self.bn = nn.BatchNorm2d(8)
        self.act = nn.ReLU()  # reused three times
        self.inplace = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(8, 8, 3, padding=2, dilation=2, groups=2)
        self.pool = nn.MaxPool2d(3, stride=2, padding=1, ceil_mode=True)
        self.conv3 = nn.Conv2d(16, 6, 3, stride=2, padding=1)
        self.avg = nn.AvgPool2d(3, stride=1, padding=1)
        self.scale = nn.Parameter(torch.linspace(0.5, 1.5, 6)[None, :, None, None])
        self.fc = nn.Linear(6, 4)
        with torch.no_grad():  # running statistics that are not the identity
            self.bn.running_mean.uniform_(-0.5, 0.5)
            self.bn.running_var.uniform_(0.5, 2.0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a = self.act(self.bn(self.conv1(x)))
        b = F.relu(self.conv2(a)) + a  # functional ReLU, residual add
        b = self.act(b)
        c = torch.cat([b, self.inplace(self.conv2(b)).relu_()], dim=1)  # in-place on a fresh output, twice
        c = self.pool(c)
        d = torch.relu(self.conv3(c)).relu_()  # torch.relu, then an in-place method
        d = F.relu(self.avg(d) * self.scale, inplace=True)
        d = self.act(d - 0.1)
        return self.fc(d.view(d.size(0), d.size(1), -1).mean(dim=2))


def test_functional_reused_and_in_place_relus_give_the_plain_maps():
    model = Mixed().eval()
    x = torch.randn(3, 3, 29, 31, generator=torch.Generator().manual_seed(2))
    before = snapshot(model)
    fast, plain, plan = both(model, x, [0, 3, 1], window=(5, 7), stride=(3, 4), batch_size=10)
    assert plan.used, plan.reason
    assert plan.boxed_nodes >= 15
    assert_close(fast, plain)
    per_pixel, plain_pixel, _ = both(model, x, 2, window=6, stride=5, fill=-1.0, per_pixel=True)
    assert_close(per_pixel, plain_pixel)
    assert_unchanged(model, before)


class SharedInPlace(nn.Module):
    """An in-place ReLU writes into a tensor that a later node still reads: the engine must not apply."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.head = nn.Linear(4, 2)

    def forward(self, x):
        y = self.conv(x)
        z = F.relu(y, inplace=True)
        return self.head((y + z).mean(dim=(2, 3)))


class Untraceable(nn.Module):
    """Control flow on a tensor's value: torch.fx cannot trace it."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.head = nn.Linear(4, 2)

    def forward(self, x):
        y = self.conv(x)
        if float(y.mean()) > 0:
            y = y.relu()
        return self.head(y.mean(dim=(2, 3)))


def dropout_net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.Dropout(0.5), nn.Flatten(), nn.Linear(4 * 14 * 14, 2))


@pytest.mark.parametrize("factory,train,reason", [(Untraceable, False, "torch.fx cannot trace"),
                                                  (SharedInPlace, False, "in-place op"),
                                                  (dropout_net, True, "training mode")])
def test_where_the_engine_does_not_apply_the_plain_path_runs(factory, train, reason):
    model = factory().train(train)
    x = torch.randn(2, 3, 16, 16, generator=torch.Generator().manual_seed(3))
    before = snapshot(model)
    plans: list = []
    torch.manual_seed(0)  # the same dropout masks in both runs
    fast = A.occlusion(model, x, 1, window=4, stride=4, plans=plans)
    torch.manual_seed(0)
    plain = A.occlusion(model, x, 1, window=4, stride=4, incremental=False)
    assert not plans[0].used and reason in plans[0].reason
    assert "full forward passes" in plans[0].sentence()
    assert torch.equal(fast, plain)
    assert_unchanged(model, before)


def test_a_hooked_model_runs_the_plain_path_and_its_hook_sees_every_pass():
    """A hook counts or changes the model's calls (reportgen's cost probe counts images this way): the engine, whose
    crops and skipped calls would escape it, steps aside."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 8 * 8, 2)).eval()
    seen: list[int] = []
    handle = model.register_forward_pre_hook(lambda m, args: seen.append(args[0].shape[0]))
    try:
        plans: list = []
        A.occlusion(model, torch.randn(1, 3, 8, 8), 0, window=4, stride=2, batch_size=5, plans=plans)
    finally:
        handle.remove()
    assert not plans[0].used and "forward hook on the model" in plans[0].reason
    assert sum(seen) == 1 + 9  # the image, then one copy per position


def test_a_torchscript_model_runs_the_plain_path():
    model = torch.jit.script(nn.Sequential(nn.Conv2d(3, 2, 3), nn.Flatten(), nn.Linear(2 * 6 * 6, 3)).eval())
    x = torch.randn(1, 3, 8, 8)
    fast, plain, plan = both(model, x, 0, window=2, stride=2)
    assert not plan.used and "TorchScript" in plan.reason
    assert torch.equal(fast, plain)


def test_a_model_error_is_the_models_own():
    class Raises(nn.Module):
        def forward(self, x):
            raise RuntimeError("broken on purpose")

    with pytest.raises(RuntimeError, match="broken on purpose"):
        A.occlusion(Raises().eval(), torch.randn(1, 3, 8, 8), 0, window=2, stride=2)


def test_the_report_caption_says_how_the_maps_were_computed(tmp_path):
    """A small build: each occlusion caption and the page's notes say that incremental inference ran."""
    from conftest import write_image_folder
    from reportgen.build import build
    from reportgen.config import load_config
    from reportgen.console import Output

    images = write_image_folder(tmp_path / "images", per_class=2, size=(32, 32))
    cfg = load_config(None, model="tiny_models:tiny_cnn", input_size=[32, 32], channels=3, images=str(images),
                      out=str(tmp_path / "site"), only=["occlusion"], samples=1,
                      analysis={"occlusion": {"window": 8, "stride": 4}})
    report = build(cfg, Output(silent=True))
    section = next(s for s in report.manifest.to_json()["analyses"] if s["name"] == "occlusion")
    captions = [item["caption"] for item in section["items"] if item.get("caption")]
    assert captions and all("Computed by exact incremental inference" in c for c in captions)
    assert any("exact incremental inference" in note for note in section["notes"])
