"""LeGrad (`reportgen.methods.legrad`): against a second computation written out by hand on a tiny timm ViT (its
blocks run step by step, each block's attention recomputed from its qkv projection and differentiated with explicit
autograd), against torch-cam 0.5's `LeGrad` on torchvision's ViT, a known answer on a hand-weighted ViT whose values
come from one patch only, equal maps for the same weights in timm and Hugging Face, one forward and one backward
pass per call, batches, the model left as it was, refusals with their reasons, and the page in a build."""

from __future__ import annotations

import json

import pytest
import torch
from torch import nn

from reportgen.methods.attention import Unsupported
from reportgen.methods.legrad import legrad, legrad_grid, legrad_readout

timm = pytest.importorskip("timm")


def timm_vit(depth: int = 2, reg_tokens: int = 0, seed: int = 0, **kw) -> nn.Module:
    """timm's ViT on 32x32 images: 8-px patches (a 4x4 grid), width 16, 2 heads, 3 classes; a random head."""
    torch.manual_seed(seed)
    model = timm.create_model("vit_tiny_patch16_224", pretrained=False, img_size=32, patch_size=8, embed_dim=16,
                              depth=depth, num_heads=2, mlp_ratio=2.0, num_classes=3, reg_tokens=reg_tokens, **kw)
    nn.init.normal_(model.head.weight, std=0.5)
    return model.eval()


def images(n: int = 2, side: int = 32, seed: int = 1) -> torch.Tensor:
    return torch.randn(n, 3, side, side, generator=torch.Generator().manual_seed(seed))


def by_hand(model: nn.Module, x: torch.Tensor, target: list[int], pool: str, layers: int) -> torch.Tensor:
    """LeGrad written out on a timm ViT: the blocks run one by one; each block's attention weights are computed from
    its qkv projection and made a leaf, the block's output computed from them, its class score read (the token mean,
    or the class token as the head reads it) and differentiated with respect to that leaf alone."""
    prefix = model.num_prefix_tokens
    tokens = model.norm_pre(model._pos_embed(model.patch_embed(x)))
    maps = []
    for k, blk in enumerate(model.blocks):
        n, length, d = tokens.shape
        h = blk.attn.num_heads
        q, key, v = blk.attn.qkv(blk.norm1(tokens)).reshape(n, length, 3, h, d // h).permute(2, 0, 3, 1, 4)
        a = torch.softmax(q @ key.transpose(-2, -1) * blk.attn.scale, dim=-1).detach().requires_grad_(True)
        y = tokens + blk.ls1(blk.attn.proj((a @ v).transpose(1, 2).reshape(n, length, d)))
        z = y + blk.ls2(blk.mlp(blk.norm2(y)))
        pooled = z.mean(dim=1) if pool == "mean" else z[:, 0]
        score = model.head(model.fc_norm(model.norm(pooled)))[torch.arange(n), target]
        (grad,) = torch.autograd.grad(score.sum(), a)
        if k >= len(model.blocks) - layers:
            maps.append(grad.clamp(min=0).mean(dim=(1, 2))[:, prefix:])
        tokens = z.detach()
    return torch.stack(maps).mean(dim=0).reshape(n, 4, 4)


@pytest.mark.parametrize("pool,reg_tokens,layers", [("mean", 0, None), ("head", 2, 1)])
def test_equals_the_computation_by_hand_on_a_timm_vit(pool, reg_tokens, layers):
    model = timm_vit(depth=3, reg_tokens=reg_tokens).double()
    x = images().double()
    expected = by_hand(model, x, [0, 2], pool, layers or 3)
    got = legrad_grid(model, x, [0, 2], layers=layers, pool=pool, normalize=False)
    assert float(expected.max()) > 0
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-12)
    # normalized: min-max per image, spread over each patch's 8x8 pixels
    low = expected.flatten(1).min(1).values[:, None, None]
    high = expected.flatten(1).max(1).values[:, None, None]
    pixels = legrad(model, x, [0, 2], layers=layers, pool=pool)
    torch.testing.assert_close(pixels[:, ::8, ::8], (expected - low) / (high - low), rtol=1e-5, atol=1e-9)
    assert torch.equal(pixels, pixels[:, ::8, ::8].repeat_interleave(8, 1).repeat_interleave(8, 2))


def tiny_torchvision_vit(layers: int = 3) -> nn.Module:
    from torchvision.models import VisionTransformer

    torch.manual_seed(0)
    model = VisionTransformer(image_size=32, patch_size=8, num_layers=layers, num_heads=2, hidden_dim=16,
                              mlp_dim=32, num_classes=3)
    nn.init.normal_(model.heads.head.weight, std=0.5)
    return model.eval()


def test_equals_torchcam_legrad_on_a_torchvision_vit():
    """torch-cam 0.5.0's LeGrad (its torchvision path: the head on the normed token mean, every given block, mean
    over blocks), unnormalized and normalized, on every block and on the last two."""
    torchcam = pytest.importorskip("torchcam.methods")
    model, x = tiny_torchvision_vit(), images(3)
    for blocks, layers in ((list(model.encoder.layers), None), (list(model.encoder.layers)[-2:], 2)):
        with torchcam.LeGrad(model, blocks) as extractor:
            scores = model(x)
            raw = extractor([0, 2, 1], scores, normalized=False, retain_graph=True)[0]
            normed = extractor([0, 2, 1], scores)[0]
        torch.testing.assert_close(legrad_grid(model, x, [0, 2, 1], layers=layers, normalize=False), raw,
                                   rtol=1e-5, atol=1e-9)
        # torch-cam divides by max - min + 1e-8
        torch.testing.assert_close(legrad_grid(model, x, [0, 2, 1], layers=layers), normed, rtol=1e-5, atol=1e-6)


def test_known_answer_all_relevance_on_the_one_patch_with_values():
    """A one-block timm ViT by hand: zero class token and position embeddings, a patch embedding that reads only the
    first colour channel, no biases. On an image that is zero except in patch (0, 1), every other token is 0 before
    and after its LayerNorm, so its value vector is 0 and no attention weight to it can change any output: all
    relevance lies on patch (0, 1), for either class (the head's rows are opposite, so one of them gets a positive
    gradient there)."""
    model = timm.create_model("vit_tiny_patch16_224", pretrained=False, img_size=8, patch_size=4, embed_dim=4,
                              depth=1, num_heads=1, mlp_ratio=2.0, num_classes=2).eval()
    torch.manual_seed(3)
    with torch.no_grad():
        for p in model.parameters():
            p.normal_()
        model.cls_token.zero_()
        model.pos_embed.zero_()
        model.patch_embed.proj.weight.zero_()
        model.patch_embed.proj.weight[0, 0] = 1.0
        model.patch_embed.proj.bias.zero_()
        model.blocks[0].attn.qkv.bias.zero_()
        model.blocks[0].norm1.bias.zero_()
        model.head.weight[1] = -model.head.weight[0]
    x = torch.zeros(1, 3, 8, 8)
    x[0, 0, 0:4, 4:8] = 1.0  # patch (0, 1)
    maps = [legrad_grid(model, x, c, normalize=False)[0] for c in (0, 1)]
    onehot = torch.zeros(2, 2)
    onehot[0, 1] = 1.0
    for m in maps:
        assert torch.equal(m * (1 - onehot), torch.zeros(2, 2))
    assert float(maps[0][0, 1] + maps[1][0, 1]) > 1e-3  # the mean over queries of |d s / d A| there
    assert any(torch.equal(legrad_grid(model, x, c)[0], onehot) for c in (0, 1))


def copy_timm_to_hugging_face(vit: nn.Module):
    """A Hugging Face ViTForImageClassification with the weights of timm ``vit`` (q, k, v split from timm's qkv)."""
    transformers = pytest.importorskip("transformers")
    from reportgen.loaders.hf import logits_class

    d = vit.embed_dim
    config = transformers.ViTConfig(image_size=32, patch_size=8, hidden_size=d, num_hidden_layers=len(vit.blocks),
                                    num_attention_heads=2, intermediate_size=2 * d, num_labels=3,
                                    layer_norm_eps=1e-6, hidden_act="gelu", qkv_bias=True)
    hf = logits_class(transformers.ViTForImageClassification)(config).eval()
    src = vit.state_dict()
    new = {"vit.embeddings.cls_token": src["cls_token"], "vit.embeddings.position_embeddings": src["pos_embed"],
           "vit.embeddings.patch_embeddings.projection.weight": src["patch_embed.proj.weight"],
           "vit.embeddings.patch_embeddings.projection.bias": src["patch_embed.proj.bias"],
           "vit.layernorm.weight": src["norm.weight"], "vit.layernorm.bias": src["norm.bias"],
           "classifier.weight": src["head.weight"], "classifier.bias": src["head.bias"]}
    keys = set(hf.state_dict())
    layered = "vit.layers.0.attention.q_proj.weight" in keys  # transformers 5; 4.x: encoder.layer.i...query
    for i in range(len(vit.blocks)):
        b = f"blocks.{i}."
        if layered:
            t = f"vit.layers.{i}."
            names = {"q": "attention.q_proj", "k": "attention.k_proj", "v": "attention.v_proj",
                     "o": "attention.o_proj", "fc1": "mlp.fc1", "fc2": "mlp.fc2"}
        else:
            t = f"vit.encoder.layer.{i}."
            names = {"q": "attention.attention.query", "k": "attention.attention.key",
                     "v": "attention.attention.value", "o": "attention.output.dense", "fc1": "intermediate.dense",
                     "fc2": "output.dense"}
        for kind in ("weight", "bias"):
            for j, part in enumerate("qkv"):
                new[f"{t}{names[part]}.{kind}"] = src[f"{b}attn.qkv.{kind}"][j * d:(j + 1) * d]
            new[f"{t}{names['o']}.{kind}"] = src[f"{b}attn.proj.{kind}"]
            new[f"{t}{names['fc1']}.{kind}"] = src[f"{b}mlp.fc1.{kind}"]
            new[f"{t}{names['fc2']}.{kind}"] = src[f"{b}mlp.fc2.{kind}"]
            new[f"{t}layernorm_before.{kind}"] = src[f"{b}norm1.{kind}"]
            new[f"{t}layernorm_after.{kind}"] = src[f"{b}norm2.{kind}"]
    hf.load_state_dict(new, strict=True)
    return hf


def state(model: nn.Module):
    return ({k: v.detach().clone() for k, v in model.state_dict().items()},
            [p.requires_grad for p in model.parameters()], [m.training for m in model.modules()])


def assert_untouched(model: nn.Module, before) -> None:
    params, flags, modes = state(model)
    assert all(torch.equal(params[k], v) for k, v in before[0].items())
    assert flags == before[1] and modes == before[2]
    assert all(p.grad is None for p in model.parameters())
    assert not any(m._forward_hooks or m._forward_pre_hooks or m._backward_hooks for m in model.modules())


def test_timm_and_hugging_face_give_the_same_maps_for_the_same_weights_and_leave_the_model_as_it_was():
    vit = timm_vit()
    hf = copy_timm_to_hugging_face(vit)
    x = images(2)
    with torch.no_grad():
        torch.testing.assert_close(hf(x), vit(x), rtol=1e-5, atol=1e-5)
    assert legrad_readout(hf).family == "Hugging Face ViTForImageClassification"
    before = state(hf)
    for pool in ("mean", "head"):
        torch.testing.assert_close(legrad_grid(hf, x, [1, 2], pool=pool, normalize=False),
                                   legrad_grid(vit, x, [1, 2], pool=pool, normalize=False), rtol=1e-4, atol=1e-7)
    assert_untouched(hf, before)
    with pytest.raises(ValueError, match="out of range"):
        legrad(hf, x, 3)
    assert_untouched(hf, before)


def test_one_forward_and_one_backward_pass_however_many_blocks_and_batch_equals_single():
    """Each block runs once forward and gets its output's gradient once (torch-cam's LeGrad runs one backward pass
    per block: the first block's output would get it 4 times); an image's map is the same alone and in a batch."""
    model, x = timm_vit(depth=4), images(3)
    forward = {i: 0 for i in range(4)}
    backward = {i: 0 for i in range(4)}

    def count(i):
        def post(_m, _args, out):
            forward[i] += 1
            out.register_hook(lambda g: backward.__setitem__(i, backward[i] + 1))
        return post

    handles = [b.register_forward_hook(count(i)) for i, b in enumerate(model.blocks)]
    try:
        batched = legrad(model, x, [0, 1, 2])
    finally:
        for h in handles:
            h.remove()
    assert forward == {i: 1 for i in range(4)} and backward == {i: 1 for i in range(4)}
    singles = torch.cat([legrad(model, x[i:i + 1], t) for i, t in enumerate([0, 1, 2])])
    torch.testing.assert_close(batched, singles, rtol=1e-5, atol=1e-6)


class Doubled(nn.Module):
    """A ViT whose logits a wrapper changes: the head found no longer gives the model's output."""

    def __init__(self) -> None:
        super().__init__()
        self.vit = timm_vit()

    def forward(self, x):
        return 2 * self.vit(x)


def test_refusals_say_why_and_leave_the_model_as_it_was():
    cnn = nn.Sequential(nn.Conv2d(3, 4, 3), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 3))
    with pytest.raises(Unsupported, match="holds none of them"):
        legrad(cnn, images(1), 0)
    with pytest.raises(Unsupported, match="global_pool='map'"):
        legrad_readout(timm_vit(global_pool="map"))
    doubled = Doubled().eval()
    before = state(doubled)
    with pytest.raises(Unsupported, match="differs from the model's output"):
        legrad(doubled, images(1), 0)
    assert_untouched(doubled, before)
    with pytest.raises(ValueError, match="between 1 and the model's 2 blocks"):
        legrad(timm_vit(), images(1), 0, layers=3)


def test_the_page_in_a_build(tmp_path, image_folder):
    """The tiny torchvision ViT's report: the page draws its maps; too many blocks asked for is one clear line."""
    from conftest import fails_in_one_line, run

    out = tmp_path / "site"
    base = ["build", "tiny_models:tiny_vit", "--input-size", "32x32", "--channels", "3", "--images", image_folder,
            "--samples", "2", "-q", "--only", "legrad"]
    result = run(*base, "--out", out)
    assert result.exit_code == 0, result.output
    page = {a["name"]: a for a in json.loads((out / "manifest.json").read_text())["analyses"]}["legrad"]
    assert page["status"] == "ok", page["reason"]
    assert page["metrics"]["maps"] >= 2 and any("ReLU(dS/dA)" in n for n in page["notes"])
    config = tmp_path / "legrad.toml"
    config.write_text("[analysis.legrad]\nlayers = 3\n")
    fails_in_one_line(run(*base, "--out", tmp_path / "other", "--config", config),
                      "analysis.legrad.layers: 3 is more than the model's 2 blocks")
