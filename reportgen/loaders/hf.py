"""A local Hugging Face image-classification folder (``config.json`` + ``model.safetensors``), optional extra
``pip install 'reportgen-vision[hf]'``.

Loaded with ``AutoModelForImageClassification.from_pretrained(folder, local_files_only=True)`` (a config whose
architecture ends in ``ForSemanticSegmentation``: ``AutoModelForSemanticSegmentation``, task segment; a
``problem_type`` states multilabel or regress: `reportgen.tasks.hf_task`), eager attention
(so that attention weights can be computed), strictly: a missing or mis-shaped weight is an error, not a silent
random initialization. The loaded object gets a subclass of its own class whose ``forward(x)`` returns the logits
of ``pixel_values=x``: the report calls ``model(inputs)`` and names layers by their dotted ``named_modules()``
path, which a wrapper module would prefix. Class names come from ``config.id2label``, normalization and size from
``preprocessor_config.json`` when present (``image_mean``, ``image_std``, ``crop_size`` / ``size``), else from the
config's ``image_size``.
"""

from __future__ import annotations

import functools
import json
from pathlib import Path
from typing import Any

from ..errors import ModelError, first_line
from ..tasks import hf_task
from . import SPEC_HELP, Loader, Source, require
from .weights import side_json


def is_hf_folder(path: Path) -> bool:
    return path.is_dir() and (path / "config.json").is_file()


@functools.cache
def logits_class(cls: type) -> type:
    """A subclass of the transformers model class ``cls`` whose ``forward(x)`` takes pixel values (N, C, H, W)
    and returns the logits (N, classes) of the output object."""

    class Logits(cls):  # type: ignore[misc, valid-type]
        def forward(self, x):
            return super().forward(pixel_values=x).logits

    Logits.__name__ = cls.__name__
    Logits.__qualname__ = cls.__qualname__
    Logits.__doc__ = f"{cls.__name__} returning logits from pixel values (reportgen)"
    return Logits


def _size(value: Any) -> list[int] | None:
    """[H, W] from a preprocessor ``size``/``crop_size`` ({"height", "width"}, {"shortest_edge"}, an int)."""
    if isinstance(value, int):
        return [value, value]
    if isinstance(value, (list, tuple)) and len(value) == 2:
        return [int(value[0]), int(value[1])]
    if isinstance(value, dict):
        if "height" in value and "width" in value:
            return [int(value["height"]), int(value["width"])]
        if "shortest_edge" in value:
            return [int(value["shortest_edge"])] * 2
    return None


def input_defaults(folder: Path, config: Any) -> dict:
    """Input size, channels, mean and std from the folder's preprocessor config, else from the model config."""
    defaults: dict = {"channels": int(getattr(config, "num_channels", 3) or 3)}
    image_size = getattr(config, "image_size", None)
    if image_size is not None:
        defaults["input_size"] = _size(image_size)
    pre = folder / "preprocessor_config.json"
    if pre.is_file():
        try:
            data = json.loads(pre.read_text())
        except (OSError, ValueError) as exc:
            raise ModelError(f"'{pre}' is not valid JSON ({exc}): fix or remove it") from None
        size = _size(data.get("crop_size")) if data.get("do_center_crop") else None
        size = size or _size(data.get("size"))
        if size:
            defaults["input_size"] = size
        if data.get("do_normalize", True) and data.get("image_mean") is not None:
            defaults["mean"] = list(data["image_mean"])
            defaults["std"] = list(data["image_std"])
    return defaults


def class_names(config: Any) -> list[str]:
    """``config.id2label`` in index order; transformers' placeholders ``LABEL_i`` do not name anything."""
    id2label = {int(k): str(v) for k, v in (getattr(config, "id2label", None) or {}).items()}
    names = [id2label.get(i, f"LABEL_{i}") for i in range(len(id2label))]
    return [] if all(n == f"LABEL_{i}" for i, n in enumerate(names)) else names


def load_hf_folder(folder: Path) -> Source:
    """The image-classification model saved in ``folder`` (by ``save_pretrained``), strictly loaded, eager
    attention, returning logits; `ModelError` lines for a missing file, a config that is not an image
    classifier, or weights that do not fit."""
    if not (folder / "config.json").is_file():
        raise ModelError(f"model folder '{folder}' has no config.json: give a folder saved by a Hugging Face "
                         "model's save_pretrained(folder)")
    if not any(folder.glob("model*.safetensors")):
        found = "pytorch_model.bin (a pickle, which reportgen refuses to load)" if any(
            folder.glob("pytorch_model*.bin")) else "no weights file"
        raise ModelError(f"model folder '{folder}' has {found}: it needs model.safetensors "
                         "(model.save_pretrained(folder) writes it)")
    transformers = require("transformers", f"the Hugging Face model folder '{folder}'")
    log = transformers.utils.logging
    level, bars = log.get_verbosity(), log.is_progress_bar_enabled()
    log.set_verbosity_error()  # its notes on unused or new weights become our one-line error below
    log.disable_progress_bar()
    try:
        config = transformers.AutoConfig.from_pretrained(str(folder), local_files_only=True)
        task = hf_task(config)
        # a semantic segmentation head (SegFormer, DPT, BEiT...) returns (N, K, h, w) logits: its own auto class
        auto = (transformers.AutoModelForSemanticSegmentation if task == "segment"
                else transformers.AutoModelForImageClassification)
        try:
            model, info = auto.from_pretrained(
                str(folder), local_files_only=True, attn_implementation="eager", use_safetensors=True,
                output_loading_info=True)
        except ValueError as exc:
            if "Unrecognized configuration class" in str(exc):
                raise ModelError(f"model folder '{folder}' holds a {type(config).__name__}, which is not an image "
                                 "classifier in transformers: give an image-classification model's folder") from None
            raise
    except ModelError:
        raise
    except RuntimeError as exc:
        if "ignore_mismatched_sizes" not in str(exc):
            raise ModelError(f"model folder '{folder}' cannot be loaded by transformers ({first_line(exc)}): "
                             "re-save it with save_pretrained(folder)") from None
        raise ModelError(f"the weights in '{folder}' do not fit its config.json (wrong shape: a weight's shape "
                         "differs from what the config says): check that the folder was saved by one save_pretrained "
                         "call") from None
    except Exception as exc:
        raise ModelError(f"model folder '{folder}' cannot be loaded by transformers ({type(exc).__name__}: "
                         f"{first_line(exc)}): re-save it with save_pretrained(folder)") from None
    finally:
        log.set_verbosity(level)
        if bars:
            log.enable_progress_bar()
    problems = []
    for label, key in (("missing", "missing_keys"), ("unexpected", "unexpected_keys"),
                       ("wrong shape", "mismatched_keys")):
        keys = [k if isinstance(k, str) else f"{k[0]} {tuple(k[1])} vs {tuple(k[2])}" for k in info.get(key, [])]
        if keys:
            problems.append(f"{label}: " + ", ".join(keys[:4]) + (f" (+{len(keys) - 4} more)" if len(keys) > 4
                                                                     else ""))
    if problems:
        raise ModelError(f"the weights in '{folder}' do not fit its config.json ({'; '.join(problems)}): "
                         "check that the folder was saved by one save_pretrained call")
    model.__class__ = logits_class(type(model))
    notes = [] if (folder / "preprocessor_config.json").is_file() else [
        ("the folder has no preprocessor_config.json: the input size is the config's image_size and the "
         "normalization is what --mean/--std say (none by default)")]
    how = (f"its config's problem_type '{config.problem_type}'" if getattr(config, "problem_type", None)
           else f"its config's architecture {', '.join(config.architectures or [])}")
    return Source(model, input_defaults(folder, config), class_names=class_names(config), notes=notes, task=task,
                  task_source=how if task else "")


class HuggingFaceLoader(Loader):
    """A local folder saved by a transformers image classifier's ``save_pretrained`` (it holds its weights:
    ``--weights`` is refused)."""

    form = "huggingface"

    @classmethod
    def claims(cls, spec: str) -> bool:
        return Path(spec).is_dir()

    @classmethod
    def load(cls, spec: str, cfg: Any, side: dict) -> Source:
        path = Path(spec)
        if not (path / "config.json").is_file():
            raise ModelError(f"model folder '{spec}' has no config.json, so it is not a Hugging Face model folder: "
                             f"give {SPEC_HELP}")
        if cfg.weights:
            raise ModelError(f"--weights is not used with a Hugging Face folder ('{spec}' holds its weights): "
                             "drop --weights")
        source = load_hf_folder(path)
        weights = next(iter(sorted(path.glob("model*.safetensors"))), None)
        source.weights = str(weights) if weights else None
        source.side = side or side_json(str(path / "config.json"))
        return source
