"""What makes a transformer a transformer: its attention, read from the model's own attention modules.

`attention` draws, for each sample image, every layer's attention from the class token to the patches, per head
and averaged over heads; `attention-rollout` and `grad-rollout` are attribution maps built from all layers'
attention (Abnar & Zuidema 2020; Chefer, Gur & Wolf 2021), drawn and scored like every other attribution method.
The weights are recomputed from each module's projections and checked against its output in the build's probe
pass (`reportgen.methods.attention`), so nothing is drawn from weights the model did not use.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from ..artifacts import Grid, NotApplicable, Picture, Result
from ..config import doc
from . import EVERY_TASK, Analysis, NOTHING, register
from ..interactive import add_grid, tile_browser
from .activations import enlarge_tiles
from .influence import AttributionAnalysis

NO_ATTENTION = ("the model has no attention module whose weights this report can recover (torch.nn."
                "MultiheadAttention without masks, timm's ViT and BEiT Attention, Hugging Face ViT and BEiT attention, "
                "the Swin window attention of torchvision, timm and Hugging Face)")


def require_attention(ctx: Any, what: str) -> None:
    """`NotApplicable` unless the probe pass recovered some attention module's weights exactly."""
    ctx.facts.require_python(what)
    if not ctx.facts.attention:
        refused = "; ".join(f"{k}: {v}" for k, v in list(ctx.facts.attention_refused.items())[:3])
        raise NotApplicable(NO_ATTENTION + (f" ({refused})" if refused else ""))


@dataclass
class AttentionParams:
    heads: int = field(default=12, metadata=doc("Heads shown per layer (the first ones), beside their mean.",
                                                min=1, max=64))


@register
class AttentionMaps(Analysis):
    name = "attention"
    tasks = EVERY_TASK  # reads activations or weights only, never the output
    title = "Attention maps"
    section = "activations"
    summary = "each layer's attention from the class token to the image patches, per head and averaged"
    paper = "Dosovitskiy et al., An Image is Worth 16x16 Words: Transformers for Image Recognition at Scale, ICLR 2021"
    paper_url = "https://arxiv.org/abs/2010.11929"
    order = 45
    Params = AttentionParams

    def check(self, ctx, params):
        require_attention(ctx, self.title)

    def run(self, ctx, params, reduced, upstream=NOTHING):
        import torch
        import torch.nn.functional as F

        from ..methods.attention import attention_grids

        names = list(ctx.facts.attention)
        windowed = set(ctx.facts.attention_windowed)
        inputs = ctx.sample_inputs()
        per_layer: dict[str, list] = {n: [] for n in names}
        for chunk in inputs.split(ctx.batch_size(grad=False)):
            grids, refused = attention_grids(ctx.model, chunk, names)
            missing = [n for n in names if n not in grids]
            if missing:
                raise NotApplicable(f"the weights of {', '.join(missing)} could not be recovered on the sample "
                                    f"images ({'; '.join(refused.values())})")
            for n in names:
                per_layer[n].append(grids[n].float().cpu())
        maps = {n: torch.cat(v) for n, v in per_layer.items()}  # (S, h, gh, gw), the grid may change by stage
        side = max(max(m.shape[-2:]) for m in maps.values())
        displays = ctx.sample_display()
        result = Result()
        heads = sorted({int(m.shape[1]) for m in maps.values()})
        shown = min(max(heads), params.heads)
        browse = tile_browser(["image", "layer", "head"])
        if windowed:
            result.notes.append(
                f"{len(windowed)} of the {len(names)} attention layers attend within shifted windows (Swin): there "
                "is no class token, so their maps show the weight each position receives from the positions of "
                "its window, averaged over them (1/T everywhere for T positions per window when attention is "
                "uniform: 1/49 for 7x7 windows), placed "
                "back on the layer's map with the window shift undone.")
        if len(windowed) < len(names):
            result.notes.append(
                "The maps of global attention layers show the class token's attention to each patch (one row of "
                "the softmax weights, prefix tokens such as register tokens left out); without a class token, the "
                "weight each patch receives averaged over all tokens.")
        result.notes.append("The weights are recomputed from each module's own projections and reproduce its output "
                            "within 1e-4 of its largest value, so they are the weights the model used.")
        for s, i in enumerate(ctx.samples):
            tiles = []
            for n in names:
                m = maps[n][s]  # (h, gh, gw)
                rows = torch.cat([m.mean(dim=0, keepdim=True), m[:shown],
                                  torch.full((shown - min(shown, m.shape[0]), *m.shape[1:]), float("nan"))])
                tiles.append(F.interpolate(rows[:, None], size=(side, side), mode="nearest")[:, 0])
            image_name = ctx.images.names[i]
            # the page's layer and head browser: every tile but the grey ones of layers with fewer heads
            add_grid(browse, f"heads-{i:05d}", len(names) * (1 + shown), 1 + shown, [
                (image_name, n, "mean over heads" if h < 0 else f"head {h}") if h < maps[n].shape[1] else None
                for n in names for h in range(-1, shown)])
            result.items.append(Grid(
                key=f"heads-{i:05d}", tiles=enlarge_tiles(torch.cat(tiles).numpy(), 56), style="heat",
                cols=1 + shown, per_tile_scale=True, image=i, group="Per layer and head",
                row_labels=names, col_labels=["mean", *[f"head {h}" for h in range(shown)]],
                label=f"{image_name}: every layer and head",
                caption=f"{image_name}: one row per attention layer ({names[0]} at the top, {names[-1]} at the "
                        f"bottom); first column the mean over the heads, then heads 0 to {shown - 1} (grey: a layer "
                        "with fewer heads). Each tile has its own scale (black = 0, yellow = its largest weight); "
                        "smaller grids are enlarged to the largest."))
            last = maps[names[-1]][s].mean(dim=0)
            up = F.interpolate(last[None, None], size=displays.shape[1:3], mode="nearest")[0, 0].numpy()
            result.items.append(Picture(
                key=f"last-{i:05d}", array=up, style="heat", base=displays[s], colorbar=True, image=i,
                group="Last layer over the image", label=f"{image_name}: last layer, mean over heads",
                caption=f"{image_name}: the last attention layer ({names[-1]}), mean over the heads, one value "
                        "per patch, over a dimmed grey copy of the image."))
        result.shared["interactive"] = browse
        result.metrics["attention layers"] = len(names)
        result.metrics["heads"] = max(heads)
        return result


WINDOWS_ONLY = ("the model attends only within shifted windows (Swin): without a class token and with a token "
                "set that changes between stages, attention cannot be rolled out through the depth")


def global_attention(facts: Any) -> list[str]:
    """The attention modules of ``facts`` that attend over all tokens (not within windows)."""
    return [n for n in facts.attention if n not in facts.attention_windowed]


def mixed(facts: Any) -> str:
    """Why the global attention layers of ``facts`` cannot be rolled out together ("" when they can)."""
    from ..methods.attention import mixed_token_sets

    return mixed_token_sets({n: facts.attention_tokens[n] for n in global_attention(facts)
                             if n in facts.attention_tokens})


class RolloutFamily(AttributionAnalysis):
    """Attribution maps made from every layer's recovered attention weights; exact wherever they are recovered."""

    hooks = True

    def check(self, ctx: Any, params: Any) -> None:
        super().check(ctx, params)
        require_attention(ctx, self.title)
        if not global_attention(ctx.facts):
            raise NotApplicable(WINDOWS_ONLY)
        why = mixed(ctx.facts)
        if why:
            raise NotApplicable(why)

    def exactness(self, facts: Any) -> tuple[str, str]:
        if not facts.attention:
            return "not applicable", NO_ATTENTION
        if not global_attention(facts):
            return "not applicable", WINDOWS_ONLY
        why = mixed(facts)
        if why:
            return "not applicable", why
        return "exact", f"weights of {len(global_attention(facts))} attention modules, checked against their outputs"

    def options(self, ctx: Any, params: Any) -> dict:
        return {"names": global_attention(ctx.facts)}


@register
class AttentionRollout(RolloutFamily):
    name = "attention-rollout"
    title = "Attention rollout"
    summary = "every layer's attention, mixed with the residual path and multiplied through the depth"
    paper = "Abnar & Zuidema, Quantifying Attention Flow in Transformers, ACL 2020"
    paper_url = "https://arxiv.org/abs/2005.00928"
    order = 90
    map_passes = 1.0  # one forward pass records the attention
    map_words = ("the class token's row of the product over layers of (I + mean over heads of A) / 2, one value per "
                 "patch (the same for every class)")

    def attribute(self, model: Any, inputs: Any, target: Any, **options: Any) -> Any:
        from ..methods.attention import attention_rollout

        return attention_rollout(model, inputs, target, options["names"])


@register
class GradRollout(RolloutFamily):
    name = "grad-rollout"
    title = "Gradient-weighted rollout"
    summary = "attention weighted by its gradient for the class, kept where positive, accumulated through the depth"
    paper = ("Chefer, Gur & Wolf, Generic Attention-model Explainability for Interpreting Bi-Modal and "
             "Encoder-Decoder Transformers, ICCV 2021")
    paper_url = "https://arxiv.org/abs/2103.15679"
    order = 92
    map_words = ("the class token's row of R, R = I then R + mean over heads of ReLU(dS/dA * A) R layer by layer, "
                 "one value per patch")
    blank_means = ("no path of positive gradient-weighted attention leads from a patch to the class token (only "
                   "positive products are kept), so the pixels may still change that score")

    def attribute(self, model: Any, inputs: Any, target: Any, **options: Any) -> Any:
        from ..methods.attention import grad_rollout

        return grad_rollout(model, inputs, target, options["names"])
