"""Model sources (issue 12, model loading): every torchvision classifier, timm:NAME, a local Hugging Face
image-classification folder. Tiny random models are built offline and saved the way users receive them; every
mistake ends in one line and a non-zero exit."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import torch

from conftest import fails_in_one_line, run
from reportgen.config import load_config
from reportgen.loaders.torchvision_models import (
    arch_kwargs,
    classifier_names,
    default_input_size,
    reference_state,
)
from reportgen.models import load_model



def save(state: dict, path: Path) -> Path:
    if path.suffix == ".safetensors":
        from safetensors.torch import save_file

        save_file({k: v.contiguous() for k, v in state.items()}, str(path))
    else:
        torch.save(state, path)
    return path


# ------------------------------------------------------------------------------------------------------ torchvision


@pytest.mark.parametrize("arch", classifier_names())
def test_every_torchvision_classifier_reads_its_classes_from_the_weights(arch):
    """Shapes only (meta device): the builder arguments found from a 3-class state dict rebuild exactly it."""
    aux = {"aux_logits": True, "init_weights": False} if arch in ("googlenet", "inception_v3") else {}
    shapes = {k: tuple(v.shape) for k, v in reference_state(arch, num_classes=3, **aux).items()}
    kwargs = arch_kwargs(arch, shapes)
    assert kwargs["num_classes"] == 3
    assert kwargs.get("aux_logits", False) == bool(aux)
    rebuilt = {k: tuple(v.shape) for k, v in reference_state(arch, **kwargs).items()}
    assert rebuilt == shapes


def test_regnet_meta_build_puts_torchvision_back():
    from torchvision.models import regnet

    before = regnet.BlockParams.__dict__["from_init_params"]
    reference_state("regnet_y_400mf", num_classes=3)
    assert regnet.BlockParams.__dict__["from_init_params"] is before
    assert regnet.BlockParams.from_init_params(depth=2, w_0=8, w_a=4.0, w_m=2.0, group_width=8).depths == [1, 1]


@pytest.mark.parametrize("arch, fmt", [("squeezenet1_1", "pt"), ("googlenet", "safetensors"),
                                       ("mobilenet_v3_small", "pt"), ("resnet18", "safetensors"),
                                       ("mnasnet0_5", "safetensors"), ("mnasnet0_5", "pt")])
def test_torchvision_state_dict_round_trip(tmp_path, arch, fmt):
    """A 5-class model saved as users save it loads back through the spec and gives the same logits at the
    architecture's default size; GoogLeNet keeps its auxiliary heads and returns plain logits in eval mode; MNASNet,
    which reads a format version from the state dict's metadata, loads from a flat safetensors file too."""
    import torchvision

    aux = {"aux_logits": True, "init_weights": False} if arch == "googlenet" else {}
    torch.manual_seed(0)
    net = torchvision.models.get_model(arch, weights=None, num_classes=5, **aux).eval()
    weights = save(net.state_dict(), tmp_path / f"w.{fmt}")
    loaded = load_model(load_config(None, model=f"torchvision:{arch}", weights=str(weights)))
    assert loaded.num_classes == 5 and loaded.input.size == (224, 224)
    x = torch.randn(2, 3, 224, 224)
    out = loaded.model(x)
    assert isinstance(out, torch.Tensor) and torch.allclose(out, net(x), atol=1e-5)


def test_torchvision_default_input_sizes_without_download():
    assert default_input_size("inception_v3") == 299
    assert default_input_size("efficientnet_b7") == 600
    assert default_input_size("resnet18") == 224


def test_vit_takes_the_size_of_its_position_embeddings(tmp_path):
    shapes = {k: tuple(v.shape) for k, v in reference_state("vit_b_32", num_classes=4, image_size=64).items()}
    assert arch_kwargs("vit_b_32", shapes) == {"num_classes": 4, "image_size": 64}
    result = run("layers", "torchvision:vit_b_32", "--input-size", "64x64")
    fails_in_one_line(result, "takes exactly 224x224", "drop --input-size")


def test_torchvision_weights_of_another_architecture(tmp_path):
    import torchvision

    weights = save(torchvision.models.get_model("resnet18", weights=None, num_classes=3).state_dict(),
                   tmp_path / "r18.pt")
    fails_in_one_line(run("layers", "torchvision:squeezenet1_1", "--weights", weights), "squeezenet1_1")


# ------------------------------------------------------------------------------------------------------------- timm


@pytest.fixture(scope="module")
def timm_vit(tmp_path_factory):
    timm = pytest.importorskip("timm")
    torch.manual_seed(0)
    net = timm.create_model("vit_tiny_patch16_224", pretrained=False, num_classes=4, img_size=32).eval()
    return net, save(net.state_dict(), tmp_path_factory.mktemp("timm") / "vit.safetensors")


def test_timm_vit_from_a_state_dict(timm_vit):
    net, weights = timm_vit
    loaded = load_model(load_config(None, model="timm:vit_tiny_patch16_224", weights=str(weights),
                                    input_size=[32, 32]))
    assert loaded.form == "timm" and loaded.num_classes == 4
    assert loaded.input.size == (32, 32) and loaded.input.mean == (0.5, 0.5, 0.5)  # timm's pretrained config
    assert "blocks.1.attn.qkv" in dict(loaded.model.named_modules())
    x = torch.randn(2, 3, 32, 32)
    assert torch.equal(loaded.model(x), net(x))


def test_timm_training_checkpoint_and_pretrained_config(tmp_path):
    """timm's training script saves {"state_dict", "args": Namespace, ...} with DDP's "module." prefix."""
    import argparse

    timm = pytest.importorskip("timm")
    net = timm.create_model("resnet10t", pretrained=False, num_classes=3).eval()
    state = {f"module.{k}": v for k, v in net.state_dict().items()}
    weights = save({"state_dict": state, "args": argparse.Namespace(lr=0.1), "epoch": 3}, tmp_path / "ck.pth.tar")
    loaded = load_model(load_config(None, model="timm:resnet10t", weights=str(weights)))
    cfg = timm.data.resolve_data_config({}, model=net)
    assert loaded.num_classes == 3 and loaded.input.size == tuple(cfg["input_size"][1:])
    assert loaded.input.mean == tuple(cfg["mean"]) and loaded.input.std == tuple(cfg["std"])


def test_shared_parameters_stored_once(tmp_path):
    """safetensors' save_model keeps one name of a parameter the model shares under several (timm's CoaT shares
    its positional convolutions between blocks); the loader gives the others the stored one."""
    from safetensors.torch import load_file, save_model

    from reportgen.models import ModelError, apply_weights

    class Tied(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.a = torch.nn.Linear(3, 3)
            self.b = self.a  # the same module under a second name: a.weight and b.weight are one tensor
            self.out = torch.nn.Linear(3, 2)

    torch.manual_seed(0)
    net = Tied()
    save_model(net, str(tmp_path / "tied.safetensors"))
    state = load_file(str(tmp_path / "tied.safetensors"))
    assert len(state) == 4  # one name per shared tensor
    fresh = Tied()
    apply_weights(fresh, state, "tied.safetensors")
    assert all(torch.equal(v, net.state_dict()[k]) for k, v in fresh.state_dict().items())
    with pytest.raises(ModelError, match="missing: out.weight"):
        apply_weights(Tied(), {k: v for k, v in state.items() if k != "out.weight"}, "tied.safetensors")


def test_timm_coat_saved_by_save_model(tmp_path):
    timm = pytest.importorskip("timm")
    from safetensors.torch import save_model

    torch.manual_seed(0)
    net = timm.create_model("coat_lite_tiny", pretrained=False, num_classes=3).eval()
    save_model(net, str(tmp_path / "coat.safetensors"))
    loaded = load_model(load_config(None, model="timm:coat_lite_tiny", weights=str(tmp_path / "coat.safetensors")))
    x = torch.randn(1, 3, 224, 224)
    assert torch.equal(loaded.model(x), net(x))


def test_timm_mistakes(tmp_path, timm_vit, monkeypatch):
    _, weights = timm_vit
    fails_in_one_line(run("layers", "timm:vit_tiny_patch16_22"), "timm has no model", "vit_tiny_patch16_224")
    fails_in_one_line(run("layers", "timm:resnet10t", "--weights", weights), "timm's 'resnet10t'")
    monkeypatch.setitem(sys.modules, "timm", None)  # what an environment without timm imports
    fails_in_one_line(run("layers", "timm:resnet10t"), "pip install 'reportgen-vision[timm]'")


# ------------------------------------------------------------------------------------------------- Hugging Face


def vit_folder(root: Path, preprocessor: bool = True, labels: bool = True) -> tuple[Path, object]:
    """A 2-layer ViT classifier saved by save_pretrained, as a Hugging Face checkpoint folder is received."""
    transformers = pytest.importorskip("transformers")
    names = {0: "cat", 1: "dog", 2: "bird"} if labels else None
    cfg = transformers.ViTConfig(image_size=32, patch_size=8, hidden_size=16, num_hidden_layers=2,
                                 num_attention_heads=2, intermediate_size=32, num_labels=3,
                                 **({"id2label": names, "label2id": {v: k for k, v in names.items()}} if labels
                                    else {}))
    torch.manual_seed(0)
    net = transformers.ViTForImageClassification(cfg).eval()
    net.save_pretrained(str(root))
    if preprocessor:
        (root / "preprocessor_config.json").write_text(json.dumps(
            {"image_mean": [0.5, 0.4, 0.3], "image_std": [0.2, 0.25, 0.3], "size": {"height": 32, "width": 32},
             "do_normalize": True}))
    return root, net


def test_hugging_face_folder(tmp_path):
    folder, net = vit_folder(tmp_path / "vit")
    loaded = load_model(load_config(None, model=str(folder)))
    assert loaded.form == "huggingface" and loaded.class_names == ["cat", "dog", "bird"]
    assert loaded.input.size == (32, 32) and loaded.input.mean == (0.5, 0.4, 0.3)
    assert loaded.input.std == (0.2, 0.25, 0.3)
    names = [n for n, _ in loaded.model.named_modules()]
    assert names == [n for n, _ in net.named_modules()]  # the model's own dotted names, no wrapper prefix
    assert "classifier" in names and any(n.endswith("1.attention") for n in names)
    assert loaded.model.config._attn_implementation == "eager"
    x = torch.randn(2, 3, 32, 32)
    assert torch.allclose(loaded.model(x), net(pixel_values=x).logits, atol=1e-6)


def test_hugging_face_folder_without_preprocessor_or_labels(tmp_path):
    folder, _ = vit_folder(tmp_path / "vit", preprocessor=False, labels=False)
    loaded = load_model(load_config(None, model=str(folder)), image_class_names=["a", "b", "c"])
    assert loaded.input.size == (32, 32) and loaded.input.mean == (0.0, 0.0, 0.0)  # config.image_size; no norm
    assert loaded.class_names == ["a", "b", "c"]  # LABEL_0.. name nothing: the image folders do


def test_hugging_face_mistakes(tmp_path, monkeypatch):
    folder, _ = vit_folder(tmp_path / "vit")
    empty = tmp_path / "empty"
    empty.mkdir()
    fails_in_one_line(run("layers", empty), "no config.json")
    config = json.loads((folder / "config.json").read_text())
    wrong = tmp_path / "wrong"
    wrong.mkdir()
    (wrong / "model.safetensors").write_bytes((folder / "model.safetensors").read_bytes())
    (wrong / "config.json").write_text(json.dumps({**config, "hidden_size": 24, "intermediate_size": 48}))
    fails_in_one_line(run("layers", wrong), "do not fit its config.json", "wrong shape")
    (folder / "model.safetensors").rename(tmp_path / "elsewhere.safetensors")
    fails_in_one_line(run("layers", folder), "no weights file", "model.safetensors")
    (tmp_path / "elsewhere.safetensors").rename(folder / "model.safetensors")
    monkeypatch.setitem(sys.modules, "transformers", None)  # what an environment without transformers imports
    fails_in_one_line(run("layers", folder), "pip install 'reportgen-vision[hf]'")
