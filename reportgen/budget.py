"""The compute budget of the costly analyses: how many multiply-adds each may spend, and what it runs within it.

The defaults of the per-sample and optimization analyses (200 Adam steps for each of 20 class images, 50 noisy
copies per SmoothGrad map, one forward pass per channel for Score-CAM...) cost nothing on a small CNN and hours on
a 224-px ResNet-50 on a laptop CPU. So each analysis states its cost in multiply-adds (`Analysis.cost`, from the
model's own count of one forward pass, `count_macs`; a backward pass counts twice a forward pass), and the build
gives each analysis at most ``--budget`` GMAC (billions of multiply-adds; 0 = no limit). An analysis over budget
first shrinks the settings it names in `Analysis.shrink`, in order, each down to its floor and only where the user
did not set that key; one with nothing left to shrink (or still over budget at the floors) does not run and says
why. The page of every analysis that was shrunk says what its defaults would have cost and what ran.

The count is of the model's operations (`torch.utils.flop_counter.FlopCounterMode`: convolutions, matrix products,
attention), not of time: the same model and config give the same settings on every machine, so the same seed still
gives the same report.
"""

from __future__ import annotations

import dataclasses
import sys
import threading
import time
from typing import Any, Optional

from .console import duration
from .manifest import BUDGET_REFUSAL
from .staging import _Held, _held_signals, _Signalled

# torch is imported inside the functions, so that the build can import this module before it loads torch (its
# config and path checks come first).

GIGA = 1e9


_PREFETCH: Optional[threading.Thread] = None


def prefetch_counter() -> None:
    """Start importing what `count_macs` needs (``torch._dynamo`` and torch's FLOP counter: 2 to 3 s) in a daemon
    thread, so that the import overlaps the loading and the one pass that come before the count (whose torch
    kernels release the GIL) instead of adding to the build. `_import_counter_whole` waits for it. An import in a
    thread is not cut short by a signal (they are raised in the main thread), so it cannot leave the half-initialized
    modules that `_import_counter_whole` guards against."""
    global _PREFETCH
    if _PREFETCH is not None or ("torch._dynamo" in sys.modules and "torch.utils.flop_counter" in sys.modules):
        return

    def run() -> None:
        try:
            import torch._dynamo  # noqa: F401
            import torch.utils.flop_counter  # noqa: F401
        except Exception:  # noqa: BLE001 - the main thread's own import then raises it where it is needed
            pass

    _PREFETCH = threading.Thread(target=run, name="reportgen-import-counter", daemon=True)
    _PREFETCH.start()


def _import_counter_whole() -> None:
    """Import torch's FLOP counter and ``torch._dynamo`` (with sympy and, on a CUDA build of torch, triton: 1 to 3 s
    on a first build) with SIGINT, SIGTERM and SIGHUP held until both are done, then raise the signal that came
    (as `reportgen.staging.interrupts_as_errors` would have).

    ``torch.utils.flop_counter`` imports triton, and the counter's forward pass is the first call of a build through
    ``torch._disable_dynamo``, which imports ``torch._dynamo`` on first use. A signal turned into an exception in the
    middle of these imports leaves their modules half initialized in ``sys.modules``; every later call through
    ``torch._disable_dynamo`` (an optimizer's ``zero_grad``) then fails with an error from inside triton or sympy
    ("module 'triton.language' has no attribute 'core'"). So a distributed rank that the launcher's SIGTERM reached
    there could fail with that error instead of stopping cleanly, and so could the next torch call in a notebook
    after a Ctrl-C."""
    if _PREFETCH is not None:
        _PREFETCH.join()
    if "torch._dynamo" in sys.modules and "torch.utils.flop_counter" in sys.modules:
        return
    _Held.pending = None
    with _held_signals():
        import torch._dynamo  # noqa: F401 - imported whole here, before the counter's forward pass needs it
        import torch.utils.flop_counter  # noqa: F401
    if _Held.pending is not None:
        signum, _Held.pending = _Held.pending, None
        raise _Signalled(signum)


def count_macs(model: Any, x: Any) -> tuple[int, dict[str, int]]:
    """Multiply-adds of one forward pass of ``model`` on ``x`` (1, C, H, W), and for every module the multiply-adds
    done by the time its output first exists ({dotted name: MACs}: what a forward pass truncated after that layer
    costs). Counted with gradients on (``x`` requires grad), as the gradient analyses run: some modules take a
    cheaper fused path without gradients (torch's MultiheadAttention) whose operations the counter does not see.
    Returns (0, {}) for a model the counter cannot run (the budget is then not applied). Hooks are removed on exit;
    the model's ``.grad`` tensors are not touched (no backward pass)."""
    import torch

    _import_counter_whole()
    from torch.utils.flop_counter import FlopCounterMode

    until: dict[str, int] = {}
    counter = FlopCounterMode(display=False, custom_mapping=_uncounted())
    handles = []

    def hook(name: str):
        def record(_module, _inputs, _output) -> None:
            until.setdefault(name, counter.get_total_flops() // 2)
        return record

    try:
        for name, module in model.named_modules():
            if name:
                handles.append(module.register_forward_hook(hook(name)))
        with torch.enable_grad(), counter:
            model(x.detach().clone().requires_grad_(True))
        return counter.get_total_flops() // 2, until
    except Exception:  # a compiled or exported graph the counter does not dispatch through: no budget
        return 0, {}
    finally:
        for h in handles:
            h.remove()


def measured_speed(model: Any, x: Any, macs: int) -> float:
    """Multiply-adds per second of a forward and backward pass of ``x`` (N, C, H, W) through ``model`` (``macs``
    per image forward, a backward counting twice that): the faster of two timed passes after one that pays for
    kernel selection. The gradient is taken with respect to ``x`` only, so no ``.grad`` of the model changes."""
    import torch

    from .tasks import output_total

    times = []
    for _ in range(3):
        inputs = x.detach().clone().requires_grad_(True)
        t0 = time.perf_counter()
        with torch.enable_grad():
            total = output_total(model(inputs))  # any task's output (a tensor, a dict, detection dicts)
            if total.requires_grad:  # a detector may find nothing: its output then does not depend on the input
                torch.autograd.grad(total, inputs, allow_unused=True)
        times.append(time.perf_counter() - t0)
    return 3 * macs * len(x) / max(min(times[1:]), 1e-9)


def _uncounted() -> dict:
    """Formulas for operators torch's counter has none for: the CPU kernel of scaled dot-product attention (the two
    matrix products of softmax(Q K^T) V, as torch counts its GPU kernels)."""
    import torch
    from torch.utils.flop_counter import sdpa_flop_count

    def cpu_attention(query, key, value, *args, out_shape=None, **kwargs) -> int:
        return sdpa_flop_count(query, key, value)

    op = getattr(torch.ops.aten, "_scaled_dot_product_flash_attention_for_cpu", None)
    return {op: cpu_attention} if op is not None else {}


@dataclasses.dataclass
class Fitted:
    """An analysis's settings within the budget: ``params`` to run with, its ``cost`` (MACs), what the defaults
    would have cost (``default_cost``), a ``note`` for its page ("" when nothing changed), and ``refused`` (why it
    does not run) when it is over the budget even with every knob it may lower at its floor (or none to lower)."""

    params: Any
    cost: float
    default_cost: float
    note: str = ""
    refused: str = ""


def gmac(macs: float) -> str:
    return f"{macs / GIGA:,.0f} GMAC" if macs >= 10 * GIGA else f"{macs / GIGA:,.2g} GMAC"


def fit(analysis: Any, ctx: Any, params: Any, upstream: Any = None) -> Fitted:
    """``params`` shrunk until ``analysis.cost(ctx, params, upstream)`` fits the build's budget
    (`ctx.config.budget` GMAC); ``upstream``: the settings of the analyses it reads
    (`reportgen.analyses.Upstream`, as `reportgen.build.Plan.upstream` gives them; none by default).

    The knobs of ``analysis.shrink`` ((key, floor) pairs) are tried in order: each integer key the user did not set
    under ``[analysis.NAME]`` is lowered to the largest value >= floor that fits (the cost never falls when a key
    grows, so bisection finds it), and the search stops once the cost fits. Still over budget: an analysis without
    knobs is ``refused``, and so is one still over at its floors: a budget is a bound, and the floors of a costly
    analysis on a large model can be thousands of times over it."""
    def cost_of(p: Any) -> float:
        return float(analysis.cost(ctx, p) if upstream is None else analysis.cost(ctx, p, upstream))

    budget = float(ctx.config.budget) * GIGA
    cost = cost_of(params)
    if budget <= 0 or cost <= budget or not ctx.facts.macs:
        return Fitted(params, cost, cost)
    fixed = set(ctx.config.analysis.get(analysis.name, {}))
    before = params
    for key, floor in analysis.shrink:
        value = getattr(params, key)
        if key in fixed or value <= floor:
            continue
        if cost_of(dataclasses.replace(params, **{key: floor})) >= cost_of(params):
            continue  # lowering it saves nothing here (a cap above what this model has)
        lo, hi = floor, value  # the largest v in [lo, hi] with cost <= budget, or lo when none
        while lo < hi:
            mid = (lo + hi + 1) // 2
            if cost_of(dataclasses.replace(params, **{key: mid})) <= budget:
                lo = mid
            else:
                hi = mid - 1
        params = dataclasses.replace(params, **{key: lo})
        if cost_of(params) <= budget:
            break
    spent = cost_of(params)
    passes = f"as much as {cost / ctx.facts.macs:,.0f} forward passes of one image through this model"
    over = (f"With its settings this analysis would spend {gmac(cost)} ({passes}), over the build's budget of "
            f"{gmac(budget)} per analysis (--budget)")
    changed = [f"{k} = {getattr(params, k)} instead of {getattr(before, k)}"
               for k in dict.fromkeys(k for k, _ in analysis.shrink) if getattr(params, k) != getattr(before, k)]
    if spent > budget:
        # Running at the floors anyway would spend many times the budget (RISE's 200 masks on a detector resizing
        # to 800 px: 1,700 times a budget of 30 GMAC); the user asked for a bound, so it is not run, like an
        # analysis with nothing to lower, and the line says what budget would run it.
        if not changed:
            why = "it has no setting the budget may lower" if not analysis.shrink else (
                "the settings the budget may lower are set in the config or already at their floors")
        else:
            why = (f"at the smallest settings the budget lowers it to ({', '.join(changed)}) it would still spend "
                   f"{gmac(spent)}")
        return Fitted(before, cost, cost, refused=f"{BUDGET_REFUSAL}{over[0].lower() + over[1:]}, and {why}; a "
                                                 f"--budget of {_at_least(spent)} or more (0 = no limit) runs it")
    note = (f"{over}: it ran with {', '.join(changed)}, {gmac(spent)}. Set these keys under "
            f"[analysis.{analysis.name}] or raise --budget (0 = no limit) to run more.")
    return Fitted(params, spent, cost, note=note)


def _at_least(macs: float) -> str:
    """``macs`` as a --budget value in GMAC, rounded up to two significant digits (so that it does fit)."""
    import math

    g = macs / GIGA
    step = 10 ** max(math.floor(math.log10(g)) - 1, -3) if g > 0 else 1
    value = math.ceil(g / step - 1e-9) * step
    return f"{value:.0f}" if value >= 10 else f"{value:.3g}"  # no thousands comma: it is typed as an option


def estimate_line(fitted: dict[str, Fitted], macs_per_second: Optional[float]) -> str:
    """One line for the console before the analyses start: the multiply-adds they will spend (at most), the costly
    ones named, and a time at ``macs_per_second`` (`measured_speed`) when known."""
    total = sum(f.cost for f in fitted.values() if not f.refused)
    costly = sorted(((f.cost, name) for name, f in fitted.items() if not f.refused), reverse=True)[:4]
    named = ", ".join(f"{name} {gmac(c)}" for c, name in costly if c > 0)
    when = ""
    if macs_per_second:
        when = f"; at most about {duration(total / macs_per_second)} at the measured {gmac(macs_per_second)}/s"
    return f"the analyses will spend at most {gmac(total)} ({named}){when}"
