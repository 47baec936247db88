"""Attention weights of vision transformers, recovered without changing what the model computes, and the maps
made from them: class-token attention, attention rollout and its gradient-weighted variant.

Fast attention kernels (``nn.MultiheadAttention`` with ``need_weights=False``, timm's fused attention, PyTorch's
``scaled_dot_product_attention``) never materialize the weights. Here they are recomputed from the attention
module's own input and projections, ``A = softmax(q k^T * scale + bias)`` per head (bias: the relative position bias
of BEiT and Swin, the module's attention mask, a boolean one as 0 / -inf, else none), and the module's output is
recomputed from ``A`` too: a layer whose recomputed output differs from what the module returned (by more than 1e-4
relative) is refused, so a map is never drawn from weights the model did not use.

What each kind of attention module is and how its call is taken apart lives in one module per family, each an
`AttentionFamily` adapter, tried in the order of `registry.FAMILIES`: ``torch.nn.MultiheadAttention`` (torchvision's
ViT, `torch_mha`), torchvision's Swin ``ShiftedWindowAttention`` and ``ShiftedWindowAttentionV2``
(`torchvision_swin`), timm's ViT ``Attention`` (`timm_vit`), its BEiT ``Attention`` (`timm_beit`) and its Swin
``WindowAttention`` (`timm_swin`), Hugging Face's ViT-like attention with ``q_proj``/``k_proj``/``v_proj``/``o_proj``
(`hf_vit`), the older ``query``/``key``/``value`` form with BEiT's and Data2Vec-Vision's relative position biases
(`hf_legacy`) and its Swin window attention (`hf_swin`). Window attention (no class token) is shown as the weight
each position receives within its window (`Windows`); timm's and Hugging Face's windows are cut by the block, so
their places are checked against the block's own input. `core` records the weights and makes the maps, the same
for every family.

Papers: attention rollout, Abnar & Zuidema, Quantifying Attention Flow in Transformers, ACL 2020,
https://arxiv.org/abs/2005.00928 ; gradient-weighted rollout, Chefer, Gur & Wolf, Generic Attention-model
Explainability for Interpreting Bi-Modal and Encoder-Decoder Transformers, ICCV 2021,
https://arxiv.org/abs/2103.15679 .
"""

from __future__ import annotations

from .base import AttentionFamily, Recovered, Split, Unsupported, Windows
from .core import (AttentionRecord, attention_from_inputs, attention_grids, attention_maps, attention_modules,
                   attention_rollout, attention_weights, class_token_attention, grad_rollout, grad_rollout_of_weights,
                   mixed_token_sets, probe_layouts, recording_attention, rollout_of_weights)
from .registry import FAMILIES, family_of

__all__ = ["attention_modules", "recording_attention", "attention_weights", "attention_rollout", "grad_rollout",
           "class_token_attention", "attention_maps", "attention_grids", "rollout_of_weights",
           "grad_rollout_of_weights", "Unsupported", "Windows", "mixed_token_sets", "probe_layouts",
           "attention_from_inputs", "AttentionRecord", "AttentionFamily", "Split", "Recovered", "FAMILIES",
           "family_of"]
