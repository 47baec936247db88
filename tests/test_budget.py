"""The compute budget (`reportgen.budget`): multiply-adds counted by hand, the shrinking rule, and a build that keeps
to its budget and says so."""

from __future__ import annotations

import json
from dataclasses import dataclass
from types import SimpleNamespace

import pytest
import torch
from torch import nn

from conftest import TINY_ARGS, run
from test_memory import Reuses
from reportgen.budget import count_macs, fit


class Attends(nn.Module):
    """16 tokens of 2 dims (the pixels of a 2x4x4 image) -> one 1-head self-attention -> mean -> linear (2 -> 3)."""

    def __init__(self):
        super().__init__()
        self.attn = nn.MultiheadAttention(2, 1, batch_first=True)
        self.fc = nn.Linear(2, 3)

    def forward(self, x):
        t = x.flatten(2).transpose(1, 2)
        return self.fc(self.attn(t, t, t, need_weights=False)[0].mean(1))


def test_macs_of_a_conv_and_a_linear_layer_by_hand():
    model = Reuses().eval()  # conv (1 -> 2 channels, 3x3, 8x8 map) -> the same ReLU twice -> linear (128 -> 3)
    x = torch.randn(1, 1, 8, 8)
    before = model(x)
    macs, until = count_macs(model, x)
    conv = 8 * 8 * 2 * (1 * 3 * 3)  # output positions x output channels x (inputs per output)
    fc = 128 * 3
    assert macs == conv + fc
    assert until["conv"] == until["relu"] == conv and until["fc"] == conv + fc  # the ReLU's first call
    assert all(not m._forward_hooks for m in model.modules())
    assert torch.equal(model(x), before)


def test_attention_is_counted_in_eval_mode_too():
    # without gradients torch's MultiheadAttention takes a fused path the counter does not see: counted with them
    model = Attends().eval()
    macs, _ = count_macs(model, torch.randn(1, 2, 4, 4))
    length, dim = 16, 2
    by_hand = 3 * length * dim * dim + 2 * length * length * dim + length * dim * dim + dim * 3
    assert macs == by_hand


@dataclass
class Knobs:
    a: int = 10
    b: int = 10


class Product:
    """A fake analysis whose cost is a x b GMAC."""

    name = "product"
    shrink = (("a", 2), ("b", 1))

    def cost(self, ctx, params):
        return params.a * params.b * 1e9


def ctx_with(budget: float, fixed: dict | None = None):
    return SimpleNamespace(config=SimpleNamespace(budget=budget, analysis={"product": fixed or {}}),
                           facts=SimpleNamespace(macs=10**9))


@pytest.mark.parametrize("budget, fixed, expected", [
    (0, None, (10, 10)),  # no limit
    (100, None, (10, 10)),  # fits
    (30, None, (3, 10)),  # the first knob alone: the largest a with a x 10 <= 30
    (12, None, (2, 6)),  # a at its floor, then b
    (30, {"a": 10}, (10, 3)),  # a set by the user: left alone
])
def test_knobs_shrink_in_order_to_the_largest_value_that_fits(budget, fixed, expected):
    fitted = fit(Product(), ctx_with(budget, fixed), Knobs())
    assert (fitted.params.a, fitted.params.b) == expected
    assert fitted.cost == expected[0] * expected[1] * 1e9 and fitted.default_cost == 100e9
    assert not fitted.refused
    if expected != (10, 10):
        assert "over the build's budget" in fitted.note and "[analysis.product]" in fitted.note


def test_over_budget_at_the_floors_is_not_run_and_names_the_budget_that_runs_it():
    # a x b GMAC: the floors (a=2, b=1) cost 2 GMAC, twice a budget of 1
    fitted = fit(Product(), ctx_with(1), Knobs())
    assert fitted.refused.startswith("not run:") and (fitted.params.a, fitted.params.b) == (10, 10)
    assert "a = 2 instead of 10, b = 1 instead of 10" in fitted.refused and "still spend 2 GMAC" in fitted.refused
    assert "a --budget of 2 or more" in fitted.refused
    at_floor = fit(Product(), ctx_with(2), Knobs())  # the budget it names runs it, at the floors
    assert not at_floor.refused and (at_floor.params.a, at_floor.params.b) == (2, 1)
    # just under the floors' cost: still refused; the named budget is rounded up, never down
    assert fit(Product(), ctx_with(1.99), Knobs()).refused


def test_the_budget_a_refusal_names_is_rounded_up_to_two_digits():
    class Odd(Product):
        def cost(self, ctx, params):
            return 51_234e9 * params.a / 10

    fitted = fit(Odd(), ctx_with(30), Knobs())
    assert "still spend 10,247 GMAC" in fitted.refused and "a --budget of 11000 or more" in fitted.refused
    assert not fit(Odd(), ctx_with(11000), Knobs()).refused


def test_an_analysis_with_nothing_to_shrink_is_not_run():
    fixed = Product()
    fixed.shrink = ()
    fitted = fit(fixed, ctx_with(50), Knobs())
    assert fitted.refused.startswith("not run:") and "--budget" in fitted.refused
    assert fit(Product(), ctx_with(50, {"a": 10, "b": 10}), Knobs()).refused


def test_a_build_keeps_class_images_and_smoothgrad_within_the_budget(tmp_path, image_folder):
    """The tiny CNN's forward pass is counted by hand (conv 3->8 and 8->16 at 32 and 16 px, linear 16->3); the
    budget then sets steps and copies that the manifest and the page show, and a key set in the config stays."""
    macs = 32 * 32 * 8 * 27 + 16 * 16 * 16 * 72 + 16 * 3
    # class-max: 3 classes x steps x (forward + backward); 0.5 GMAC allows floor(0.5e9 / (9 macs)) steps
    budget = 0.5
    out = tmp_path / "site"
    config = tmp_path / "c.toml"
    config.write_text("[analysis.smoothgrad]\nn = 600\n")
    result = run("build", *TINY_ARGS, "--images", image_folder, "--out", out, "--only", "class-max,smoothgrad,gradient",
                 "--budget", budget, "--samples", "2", "--config", config, "-q")
    assert result.exit_code == 0, result.output
    manifest = json.loads((out / "manifest.json").read_text())
    entries = {a["name"]: a for a in manifest["analyses"]}
    steps = entries["class-max"]["params"]["steps"]
    # lowering max_classes (20) to its floor (4) saves nothing with 3 classes: the steps shrink
    assert steps == int(budget * 1e9 // (3 * 3 * macs)) < 200
    assert entries["class-max"]["params"]["max_classes"] == 20
    assert "over the build's budget" in entries["class-max"]["notes"][0]
    # smoothgrad's n is set in the config: the budget leaves it and the analysis does not run
    assert entries["smoothgrad"]["status"] == "not applicable"
    assert "budget" in entries["smoothgrad"]["reason"]
    assert entries["gradient"]["status"] == "ok" and not any("budget" in n for n in entries["gradient"]["notes"])
    page = (out / "analyses" / "class-max.html").read_text()
    assert f"steps = {steps} instead of 200" in page
    # the refused analysis is "not applicable" in the manifest, "over budget" on the pages, never "not applicable"
    refused = (out / "analyses" / "smoothgrad.html").read_text()
    assert "Over the compute budget, so not run: with its settings" in refused
    assert "Not applicable to this model" not in refused
    assert '<span class="tag">over budget</span>' in refused and 'class="status-over-budget"' in refused
    card = (out / "index.html").read_text()
    assert card.count('class="status-over-budget">over budget<br>') == 1


def test_a_method_left_out_by_the_budget_is_left_out_of_the_trust_checks_too(tmp_path, image_folder):
    """SmoothGrad with n set to 1000 costs 4 maps x 3000 passes of the tiny CNN (6.2 GMAC): over a 2 GMAC budget,
    and n is the user's, so its page is not run; deletion-insertion then checks the other methods only."""
    out = tmp_path / "site"
    config = tmp_path / "c.toml"
    config.write_text("[analysis.smoothgrad]\nn = 1000\n")
    result = run("build", *TINY_ARGS, "--images", image_folder, "--out", out, "--samples", "2", "--budget", 2,
                 "--only", "gradient,grad-cam,smoothgrad,deletion-insertion", "--config", config, "-q")
    assert result.exit_code == 0, result.output
    entries = {a["name"]: a for a in json.loads((out / "manifest.json").read_text())["analyses"]}
    assert entries["smoothgrad"]["status"] == "not applicable"
    trust = entries["deletion-insertion"]
    assert trust["status"] == "ok", trust
    assert any(n.startswith("Not checked: smoothgrad") for n in trust["notes"])
    table = next(i for i in trust["items"] if i.get("key") == "trust")
    rows = [r[0] for r in table["rows"]]
    assert "smoothgrad" not in rows and "gradient" in rows and "grad-cam" in rows
