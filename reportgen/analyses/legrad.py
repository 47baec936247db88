"""LeGrad on the report: for a vision transformer, each block's class score differentiated with respect to that
block's attention weights, positive gradients averaged (`reportgen.methods.legrad`; Bousselham et al. 2024).

An attribution page like the attention rollouts beside it (`reportgen.analyses.attention.RolloutFamily`): drawn,
scored and read by the trust checks like every other attribution method. It needs the attention weights the
build's probe recovered and a vision transformer whose final norm and head are found (timm, torchvision, Hugging
Face); elsewhere it is "not applicable" with the reason.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Optional

from ..artifacts import NotApplicable
from ..config import doc
from ..errors import ConfigError
from . import register
from .attention import RolloutFamily
from .influence import _percentile_field, _scale_field


@dataclass
class LegradParams:
    layers: Optional[int] = field(default=None, metadata=doc(
        "Blocks whose maps are averaged, counted from the last; empty = every block (the paper's aggregation; the "
        "authors' code reads the last 2).", min=1))
    scale: str = _scale_field()
    percentile: float = _percentile_field()


@register
class LeGrad(RolloutFamily):
    name = "legrad"
    title = "LeGrad"
    summary = ("each block's class score, read through the final norm and head, differentiated with respect to that "
               "block's attention; positive gradients averaged over heads, queries and blocks")
    paper = ("Bousselham, Boggust, Chaybouti, Strobelt & Kuehne, LeGrad: An Explainability Method for Vision "
             "Transformers via Feature Formation Sensitivity, ICCV 2025")
    paper_url = "https://arxiv.org/abs/2404.03214"
    order = 94
    Params = LegradParams
    map_passes = 3.0  # one forward pass, then one backward pass through the blocks for all of them at once
    blank_means = ("no block's attention weight has a positive gradient for that score at any patch, so the map "
                   "says nothing about the pixels (they may still change the score through the MLPs)")

    def check(self, ctx: Any, params: Any) -> None:
        super().check(ctx, params)
        from ..methods.attention import Unsupported
        from ..methods.legrad import legrad_readout

        try:
            readout = legrad_readout(ctx.model)
        except Unsupported as exc:
            raise NotApplicable(str(exc)) from None
        missing = [n for n in readout.attention if n not in ctx.facts.attention]
        if missing:
            raise NotApplicable(f"the attention weights of {', '.join(missing)} were not recovered on the probe")
        if params.layers is not None and params.layers > len(readout.blocks):
            raise ConfigError(f"analysis.legrad.layers: {params.layers} is more than the model's "
                              f"{len(readout.blocks)} blocks")

    def options(self, ctx: Any, params: Any) -> dict:
        return {"layers": params.layers}

    def words(self, options: dict) -> str:
        which = "every block" if options.get("layers") is None else f"the last {options['layers']} blocks"
        return (f"the mean over {which} of ReLU(dS/dA) averaged over heads and query tokens, S the block's class "
                "score (the mean of its tokens through the final norm and head), one value per patch, not "
                "min-max normalized (the per-image scale shows each map from 0 to its own top)")

    def short(self, options: dict) -> str:
        return self.title if options.get("layers") is None else f"{self.title} (last {options['layers']} blocks)"

    def attribute(self, model: Any, inputs: Any, target: Any, **options: Any) -> Any:
        from ..methods.attention import Unsupported
        from ..methods.legrad import legrad

        try:
            return legrad(model, inputs, target, layers=options.get("layers"), normalize=False)
        except Unsupported as exc:
            raise NotApplicable(str(exc)) from None
