"""LeGrad: for each transformer block, the gradient of that block's own class score with respect to its attention
weights, kept where positive and averaged (Bousselham, Boggust, Chaybouti, Strobelt & Kuehne, LeGrad: An
Explainability Method for Vision Transformers via Feature Formation Sensitivity, ICCV 2025,
https://arxiv.org/abs/2404.03214).

For block l of a vision transformer with output tokens z^l (N, L, D), the class score s^l is read as the model
reads its last block: the mean of all L tokens of z^l through the model's final norm and classification head (the
head's pooling, e.g. the class token, with ``pool="head"``). With A^l (N, h, L, L) the block's attention weights
(the softmax output, queries x keys),

    E^l = mean over heads h and query tokens i of ReLU(d s^l_c / d A^l[h, i, :])   (one value per key token),

the prefix keys (class token, registers) are dropped, the patch keys laid on the patch grid, and the map is the
mean of E^l over the blocks, min-max normalized per image (``normalize``).

What this follows, checked against the two references (the authors' code, github.com/WalBouss/LeGrad,
``legrad/wrapper.py``; torch-cam 0.5.0's ``torchcam.methods.LeGrad``):

- the pooled token: the mean of all tokens of z^l, class token included, then the final norm and the head, as
  torch-cam 0.5 does for torchvision's ViT (``heads(ln(tokens.mean(dim=1)))``) and the authors' code for OpenCLIP
  (``ln_post(feat.mean(dim=0)) @ proj``). That is not what the head reads: a ViT's head reads the normed class
  token, so s^L differs from the model's logit. ``pool="head"`` reads each block as the model reads its last
  one (s^L is then the logit exactly).
- the gradient alone, not multiplied by A (unlike Chefer et al.'s gradient-weighted rollout); ReLU, then the mean
  over heads and over every query row (class token and patches), then the prefix keys dropped: as both.
- which blocks: every block by default (the paper's text aggregates over all layers); ``layers=k`` keeps the last
  k (the authors' CLIP wrapper defaults to the last 2, ``layer_index=-2``; torch-cam takes the blocks it is given).
- aggregation: the mean over blocks (torch-cam; the authors' code sums, the same after min-max normalization).
- normalization: per image, ``(m - min) / (max - min)``, on the patch grid; a constant map gives zeros (torch-cam
  divides by ``max - min + 1e-8``, the authors' code by ``max - min``). The map is then spread over each patch's
  pixels with nearest-neighbour upsampling, one value per patch as computed (the authors' code upsamples each
  layer's map bilinearly before summing; torch-cam returns the patch grid).

How the gradients are taken: the weights A^l are recomputed from each attention module's own projections and
checked against its output (`reportgen.methods.attention.recording_attention`), so fused attention kernels are no
obstacle; s^l depends on A^l only through z^l, so each block's input is cut from the graph (the same values, no
gradient behind them) and one backward pass of the sum of all s^l gives every d s^l / d A^l at once, exactly: one
forward and one backward pass per image, however many blocks (torch-cam runs one backward pass per block).

Families (the final norm and head found per family; anything else is refused with the reason):

- timm ``VisionTransformer`` and its subclasses (DeiT's distilled one included; not the attention-pooling
  ``global_pool="map"``, for which LeGrad differentiates the pooler's own attention, a variant not built here):
  blocks ``blocks``, score ``forward_head(norm(z))``, the mean variant the same head on tokens that all equal the
  token mean (for a class-token or average-pooling head ``head(fc_norm(norm(mean z)))``; DeiT's two heads both
  read it);
- torchvision ``VisionTransformer``: blocks ``encoder.layers``, score ``heads(encoder.ln(z)[:, 0])``;
- Hugging Face models with a ``classifier`` over the base model's ``layernorm`` (``ViTForImageClassification``,
  ``DeiTForImageClassification``): blocks ``layers`` or ``encoder.layer``, score ``classifier(layernorm(z)[:, 0])``.

The head found is checked at every call: the score read from the last block with ``pool="head"`` must equal the
model's own output, else `Unsupported` (a head that reads something else, or a wrapper that changes the
logits).
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from typing import Callable, Optional

import torch
import torch.nn.functional as F
from torch import nn

from ..capture import preserved
from .attention import Unsupported, attention_modules, recording_attention
from .attribution import Target, _check_inputs, as_targets, target_scores
from .tokens import token_grid

POOLS = ("mean", "head")


@dataclass(frozen=True)
class Readout:
    """How one vision transformer is read block by block: its ``family`` (words), the dotted names of its
    ``blocks`` (first to last) and of each block's attention module (``attention``), and the class scores (N, K)
    of a block's output tokens (N, L, D): ``head`` as the model reads its last block, ``mean`` the mean of all
    tokens through the final norm and head (LeGrad's reference)."""

    family: str
    blocks: tuple[str, ...]
    attention: tuple[str, ...]
    head: Callable[[torch.Tensor], torch.Tensor]
    mean: Callable[[torch.Tensor], torch.Tensor]


def _loaded_class(module: str, name: str) -> Optional[type]:
    """The class ``module.name`` if that module is already imported (a model cannot be an instance of a class whose
    module was never imported, and importing timm or transformers costs seconds)."""
    mod = sys.modules.get(module)
    return getattr(mod, name, None) if mod is not None else None


def _timm(m: nn.Module) -> Optional[tuple[str, nn.Module, Callable, Callable]]:
    cls = _loaded_class("timm.models.vision_transformer", "VisionTransformer")
    if cls is None or not isinstance(m, cls):
        return None
    if getattr(m, "attn_pool", None) is not None:
        raise Unsupported("its head pools the tokens with attention (timm global_pool='map'); LeGrad's variant for "
                          "an attention pooler differentiates the pooler's own attention, which this report does "
                          "not build")

    def mean(z: torch.Tensor) -> torch.Tensor:
        # the head as it is, on tokens that all equal the token mean: whatever it pools (the class token, the patch
        # mean, DeiT's class and distillation tokens through their two heads), it reads norm(mean z)
        return m.forward_head(m.norm(z.mean(dim=1, keepdim=True).expand_as(z)))

    return "timm VisionTransformer", m.blocks, lambda z: m.forward_head(m.norm(z)), mean


def _torchvision(m: nn.Module) -> Optional[tuple[str, nn.Module, Callable, Callable]]:
    cls = _loaded_class("torchvision.models.vision_transformer", "VisionTransformer")
    if cls is None or not isinstance(m, cls):
        return None
    return ("torchvision VisionTransformer", m.encoder.layers, lambda z: m.heads(m.encoder.ln(z)[:, 0]),
            lambda z: m.heads(m.encoder.ln(z.mean(dim=1))))


def _hugging_face(m: nn.Module) -> Optional[tuple[str, nn.Module, Callable, Callable]]:
    if not type(m).__module__.startswith("transformers.") and not any(
            c.__module__.startswith("transformers.") for c in type(m).__mro__):
        return None
    base = getattr(m, getattr(m, "base_model_prefix", ""), None)
    head, norm = getattr(m, "classifier", None), getattr(base, "layernorm", None)
    blocks = getattr(base, "layers", None)
    if blocks is None:
        blocks = getattr(getattr(base, "encoder", None), "layer", None)
    if not isinstance(head, nn.Module) or not isinstance(norm, nn.Module) or not isinstance(blocks, nn.ModuleList):
        return None
    return (f"Hugging Face {type(m).__name__}", blocks, lambda z: head(norm(z)[:, 0]),
            lambda z: head(norm(z.mean(dim=1))))


FAMILIES = (_timm, _torchvision, _hugging_face)


def legrad_readout(model: nn.Module) -> Readout:
    """The `Readout` of the first (outermost) vision transformer of a known family inside ``model``, found from its
    modules alone (nothing runs); `Unsupported` with the reason when there is none or its blocks are not read."""
    names = {id(mod): name for name, mod in model.named_modules()}
    attention = attention_modules(model)
    for m in model.modules():
        for family in FAMILIES:
            found = family(m)
            if found is None:
                continue
            words, blocks, head, mean = found
            block_names = tuple(names[id(b)] for b in blocks)
            if not block_names:
                raise Unsupported(f"its {words} has no blocks")
            per_block = []
            for b in block_names:
                inside = [a for a in attention if a.startswith(f"{b}.")]
                if len(inside) != 1:
                    raise Unsupported(f"block '{b}' of its {words} holds {len(inside)} attention modules this report "
                                      "can read, not one")
                per_block.append(inside[0])
            return Readout(words, block_names, tuple(per_block), head, mean)
    raise Unsupported("LeGrad reads a vision transformer's final norm and head at every block; it knows timm's and "
                      "torchvision's VisionTransformer and Hugging Face's ViT-like image classifiers, and the model "
                      "holds none of them")


def legrad_grid(model: nn.Module, inputs: torch.Tensor, target: Target, *, layers: Optional[int] = None,
                pool: str = "mean", normalize: bool = True) -> torch.Tensor:
    """LeGrad maps (N, gh, gw) on the patch grid of ``inputs`` (N, C, H, W) for ``target`` (one int, or one class
    per image): in [0, 1] per image with ``normalize`` (the reference's min-max), else the raw mean over blocks of
    the positive attention gradients (>= 0). ``layers``: the last k blocks (None: all). ``pool``: "mean" (all
    tokens, the reference) or "head" (what the head reads). One forward and one backward pass; the model is left
    as it was (hooks removed, modes and flags restored, no ``.grad`` written). See the module docstring."""
    _check_inputs(inputs)
    if pool not in POOLS:
        raise ValueError(f"unknown pool {pool!r}: use 'mean' or 'head'")
    readout = legrad_readout(model)
    depth = len(readout.blocks)
    if layers is not None and not 1 <= int(layers) <= depth:
        raise ValueError(f"layers={layers} is not between 1 and the model's {depth} blocks")
    chosen = range(depth - (int(layers) if layers is not None else depth), depth)
    targets = as_targets(target, inputs.shape[0], inputs.device)
    score_of = readout.mean if pool == "mean" else readout.head
    blocks = {readout.blocks[k]: k for k in chosen}
    cut: dict[int, torch.Tensor] = {}  # each chosen block's input, cut from the graph
    outputs: dict[int, torch.Tensor] = {}  # each chosen block's output tokens, in the graph from its cut input
    handles = []

    def cut_input(k: int):
        def pre(_m, args, kwargs):
            # s^l depends on A^l only through z^l: with every chosen block's input cut from the graph, one
            # backward pass of the sum of the s^l leaves each attention module d s^l / d A^l alone
            if args and isinstance(args[0], torch.Tensor):
                cut[k] = args[0].detach().requires_grad_(True)
                return (cut[k], *args[1:]), kwargs
            if isinstance(kwargs.get("hidden_states"), torch.Tensor):
                cut[k] = kwargs["hidden_states"].detach().requires_grad_(True)
                return args, {**kwargs, "hidden_states": cut[k]}
            raise Unsupported(f"block '{readout.blocks[k]}' is not called with its tokens first")
        return pre

    def keep_output(k: int):
        def post(_m, _args, output):
            out = output[0] if isinstance(output, (tuple, list)) else output
            if not isinstance(out, torch.Tensor) or out.dim() != 3:
                raise Unsupported(f"block '{readout.blocks[k]}' does not return tokens (N, L, D)")
            outputs[k] = out
        return post

    with preserved(model), recording_attention(model, [readout.attention[k] for k in chosen], grads=True) as rec, \
            torch.enable_grad():
        try:
            for name, k in blocks.items():
                block = model.get_submodule(name)
                handles.append(block.register_forward_pre_hook(cut_input(k), with_kwargs=True))
                handles.append(block.register_forward_hook(keep_output(k)))
            logits = model(inputs.detach())
        finally:
            for handle in handles:
                handle.remove()
        wanted = target_scores(logits, targets).detach()
        last = outputs.get(depth - 1)
        if last is None or len(outputs) != len(blocks):
            raise Unsupported("its blocks did not each run once in the forward pass")
        read = target_scores(readout.head(last), targets).detach()
        scale = float(logits.detach().abs().max()) or 1.0
        err = float((read - wanted).abs().max())
        if not err <= 1e-4 * scale:
            raise Unsupported(f"the class score read from its last block through the final norm and head of its "
                              f"{readout.family} differs from the model's output by {err / scale:.1e} relative "
                              "(a head or a wrapper that computes more than that)")
        objective = sum(target_scores(score_of(outputs[k]), targets).sum() for k in chosen)
        torch.autograd.grad(objective, [cut[k] for k in chosen])
    missing = [readout.attention[k] for k in chosen if readout.attention[k] not in rec.grads]
    if missing:
        why = "; ".join(f"{n}: {rec.refused[n]}" for n in missing if n in rec.refused)
        raise Unsupported(f"the attention weights of {', '.join(missing)} could not be recovered"
                          + (f" ({why})" if why else ""))
    length = int(rec.grads[readout.attention[chosen[0]]].shape[-1])
    layout = token_grid(length, rec.input_size)
    if layout is None:
        raise Unsupported(f"{length} tokens do not form a patch grid of a {rec.input_size} input")
    prefix, grid = layout
    maps = torch.stack([rec.grads[readout.attention[k]].clamp(min=0).mean(dim=(1, 2))[:, prefix:] for k in chosen])
    maps = maps.mean(dim=0).reshape(-1, *grid)
    return _min_max(maps) if normalize else maps


def _min_max(maps: torch.Tensor) -> torch.Tensor:
    """(N, gh, gw) -> each map scaled to [0, 1] by its own minimum and maximum; a constant map -> zeros."""
    flat = maps.flatten(1)
    low, high = flat.min(dim=1).values, flat.max(dim=1).values
    span = (high - low)[:, None, None]
    scaled = (maps - low[:, None, None]) / torch.where(span > 0, span, torch.ones_like(span))
    return torch.where(span > 0, scaled, torch.zeros_like(maps))


def legrad(model: nn.Module, inputs: torch.Tensor, target: Target, *, layers: Optional[int] = None,
           pool: str = "mean", normalize: bool = True) -> torch.Tensor:
    """LeGrad (N, H, W) of ``inputs`` (N, C, H, W) for ``target``, each patch's value over its pixels (nearest, as
    the attention rollouts of `reportgen.methods.attention`); in [0, 1] per image with ``normalize``. Bousselham et
    al. 2024, https://arxiv.org/abs/2404.03214; see `legrad_grid` and the module docstring."""
    maps = legrad_grid(model, inputs, target, layers=layers, pool=pool, normalize=normalize)
    return F.interpolate(maps[:, None], size=tuple(inputs.shape[-2:]), mode="nearest")[:, 0]
