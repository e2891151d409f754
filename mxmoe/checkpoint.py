"""Quantized checkpoints: safetensors + config.json, written atomically, loaded bit for bit.

Directory layout (what :func:`save_quantized` writes)::

    config.json          the model config + quantization_config = {"quant_method": "mxmoe", "version": ...,
                         "plan": <Plan JSON object>, "modules": {<module path>: <MxMoEExperts/MxMoELinear spec>},
                         "checksums": {"model.safetensors": sha256, <module path>: sha256 of its packed bytes}}
    model.safetensors    the whole state dict: ordinary parameters by their transformers names, and for every
                         quantized module its ragged buffers (`<path>.packed` u8, `<path>.segments` i64, ...)
    tokenizer files      when a tokenizer is given

The directory is written under a temporary name next to ``out_dir`` and renamed into place, so a crash never leaves
half a checkpoint.  :func:`load_quantized` (and ``AutoModelForCausalLM.from_pretrained(out_dir)`` after
``import mxmoe`` — see :mod:`mxmoe.hf_quantizer`) rebuild the model; a missing, truncated or modified file raises a
ValueError / FileNotFoundError naming it.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from .hf_quantizer import register as _hf_register

FORMAT_VERSION = 1

_hf_register()  # transformers is needed by everything here anyway: make from_pretrained know "mxmoe"
WEIGHTS_NAME = "model.safetensors"
CONFIG_NAME = "config.json"


def _sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 22), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _sha256_buffer(tensor: Any) -> str:
    return hashlib.sha256(np.ascontiguousarray(tensor.detach().cpu().numpy()).tobytes()).hexdigest()


def quantized_modules(model: Any) -> dict[str, Any]:
    """Module path -> MxMoEExperts / MxMoELinear of a quantized model, in model order."""
    from .experts import MxMoEExperts, MxMoELinear
    return {name: m for name, m in model.named_modules() if isinstance(m, (MxMoEExperts, MxMoELinear))}


def quantization_config_of(model: Any) -> dict:
    """The quantization_config dict describing a quantized model (without file checksums)."""
    plan = getattr(model, "mxmoe_plan", None)
    modules = quantized_modules(model)
    if not modules:
        raise ValueError("model has no MxMoE modules: quantize it with mxmoe.quantize first")
    from . import __version__
    config = {"quant_method": "mxmoe", "version": FORMAT_VERSION, "mxmoe_version": __version__,
              "plan": json.loads(plan.to_json()) if plan is not None else None,
              "modules": {name: m.spec() for name, m in modules.items()},
              "checksums": {name: _sha256_buffer(m.packed) for name, m in modules.items()}}
    config.update(getattr(model, "mxmoe_extra_config", {}) or {})
    return config


def _state_dict_for_saving(model: Any) -> dict:
    """Contiguous CPU tensors, one per storage (a tied lm_head is dropped: transformers re-ties it on load)."""
    state = {}
    seen: dict[tuple[int, int], str] = {}
    tied = bool(getattr(model.config, "tie_word_embeddings", False))
    for name, tensor in model.state_dict().items():
        key = (tensor.untyped_storage().data_ptr(), tensor.storage_offset()) if tensor.numel() else None
        if key is not None and key in seen:
            if not tied:
                state[name] = tensor.detach().cpu().clone().contiguous()
            continue
        if key is not None:
            seen[key] = name
        state[name] = tensor.detach().cpu().contiguous()
    return state


def save_quantized(model: Any, out_dir: str | os.PathLike, tokenizer: Any = None) -> Path:
    """Write a quantized model to ``out_dir`` atomically (see the module docstring); returns the path.
    An existing ``out_dir`` is replaced only if it is empty or an earlier checkpoint (has config.json)."""
    from safetensors.torch import save_file

    out_dir = Path(out_dir).resolve()
    if out_dir.exists():
        if not out_dir.is_dir():
            raise FileExistsError(f"{out_dir} exists and is not a directory")
        if any(out_dir.iterdir()) and not (out_dir / CONFIG_NAME).exists():
            raise FileExistsError(f"{out_dir} is a non-empty directory without {CONFIG_NAME}; refusing to replace")
    quant_config = quantization_config_of(model)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp_dir = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.tmp-", dir=out_dir.parent))
    try:
        save_file(_state_dict_for_saving(model), str(tmp_dir / WEIGHTS_NAME), metadata={"format": "pt"})
        quant_config["checksums"][WEIGHTS_NAME] = _sha256_file(tmp_dir / WEIGHTS_NAME)
        config_dict = model.config.to_dict()
        config_dict["quantization_config"] = quant_config
        with open(tmp_dir / CONFIG_NAME, "w", encoding="utf-8") as f:
            json.dump(config_dict, f, indent=2, sort_keys=True)
            f.write("\n")
        if tokenizer is not None:
            tokenizer.save_pretrained(str(tmp_dir))
        # swap into place: the old checkpoint (if any) is moved aside first and removed only after the rename
        backup = None
        if out_dir.exists():
            backup = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.old-", dir=out_dir.parent))
            os.rmdir(backup)
            os.replace(out_dir, backup)
        os.replace(tmp_dir, out_dir)
        if backup is not None:
            shutil.rmtree(backup, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp_dir, ignore_errors=True)
        raise
    return out_dir


def read_quantization_config(out_dir: str | os.PathLike) -> dict:
    """config.json of a checkpoint as a dict, checked to be an mxmoe checkpoint."""
    out_dir = Path(out_dir)
    if not out_dir.is_dir():
        raise FileNotFoundError(f"checkpoint directory {out_dir} does not exist")
    config_path = out_dir / CONFIG_NAME
    if not config_path.exists():
        raise FileNotFoundError(f"checkpoint {out_dir} has no {CONFIG_NAME}")
    try:
        with open(config_path, encoding="utf-8") as f:
            config = json.load(f)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ValueError(f"{config_path} is corrupted (not valid JSON: {exc})") from None
    quant = config.get("quantization_config") if isinstance(config, dict) else None
    if not isinstance(quant, dict) or quant.get("quant_method") != "mxmoe":
        raise ValueError(f"{config_path} has no quantization_config with quant_method 'mxmoe'; not an mxmoe "
                         "checkpoint (load plain models with AutoModelForCausalLM.from_pretrained)")
    if quant.get("version") != FORMAT_VERSION:
        raise ValueError(f"{config_path}: mxmoe checkpoint format version {quant.get('version')!r}, this mxmoe "
                         f"reads version {FORMAT_VERSION}")
    for key in ("modules", "checksums"):
        if not isinstance(quant.get(key), dict):
            raise ValueError(f"{config_path}: quantization_config has no valid {key!r}")
    return config


def install_skeleton(model: Any, quant_config: dict, dtype: Any = None) -> None:
    """Replace the modules listed in ``quant_config["modules"]`` by empty MxMoE modules of the same layout, so that
    the checkpoint's state dict loads into them."""
    from .experts import MxMoEExperts, MxMoELinear
    import torch

    for path, spec in quant_config["modules"].items():
        parent_path, _, attr = path.rpartition(".")
        try:
            parent = model.get_submodule(parent_path) if parent_path else model
            getattr(parent, attr)
        except AttributeError:
            raise ValueError(f"checkpoint lists quantized module {path!r}, which this model does not have") from None
        kind = spec.get("kind")
        if kind == "experts":
            module = MxMoEExperts.from_spec(spec)
        elif kind == "linear":
            module = MxMoELinear.from_spec(spec, dtype or torch.float32)
        else:
            raise ValueError(f"checkpoint module {path!r} has unknown kind {kind!r}")
        setattr(parent, attr, module)


def verify_module_checksums(model: Any, quant_config: dict, where: str) -> None:
    """ValueError if any quantized module's packed bytes differ from the checksum recorded at save time."""
    modules = quantized_modules(model)
    for path in quant_config["modules"]:
        expected = quant_config["checksums"].get(path)
        if path not in modules or expected is None:
            raise ValueError(f"{where}: quantized module {path!r} missing after loading")
        if _sha256_buffer(modules[path].packed) != expected:
            raise ValueError(f"{where}: packed weights of {path!r} do not match the checksum recorded at save time "
                             "(the checkpoint is corrupted)")


def attach_plan(model: Any, quant_config: dict) -> None:
    plan_json = quant_config.get("plan")
    model.mxmoe_plan = None
    if plan_json is not None:
        from .allocation import Plan
        model.mxmoe_plan = Plan.from_json(json.dumps(plan_json))
    model.mxmoe_extra_config = {k: v for k, v in quant_config.items()
                                if k not in ("quant_method", "version", "mxmoe_version", "plan", "modules",
                                             "checksums")}


def load_quantized(out_dir: str | os.PathLike, dtype: Any = None) -> Any:
    """Rebuild a model written by :func:`save_quantized` (CPU), with bit-identical packed weights.
    FileNotFoundError for a missing directory or file, ValueError for a corrupted or truncated one."""
    import torch
    from safetensors import SafetensorError
    from safetensors.torch import load_file
    from transformers import AutoConfig, AutoModelForCausalLM

    out_dir = Path(out_dir)
    config_dict = read_quantization_config(out_dir)
    quant_config = config_dict["quantization_config"]
    weights_path = out_dir / WEIGHTS_NAME
    if not weights_path.exists():
        raise FileNotFoundError(f"checkpoint {out_dir} has no {WEIGHTS_NAME}")
    expected = quant_config["checksums"].get(WEIGHTS_NAME)
    if expected is not None and _sha256_file(weights_path) != expected:
        raise ValueError(f"{weights_path} is corrupted or truncated (sha256 differs from the one in {CONFIG_NAME})")
    try:
        state = load_file(str(weights_path))
    except (SafetensorError, OSError) as exc:
        raise ValueError(f"{weights_path} cannot be read: {exc}") from None

    config_only = {k: v for k, v in config_dict.items() if k != "quantization_config"}
    with tempfile.TemporaryDirectory() as tmp:
        with open(Path(tmp) / CONFIG_NAME, "w") as f:
            json.dump(config_only, f)
        config = AutoConfig.from_pretrained(tmp)
    dtype = dtype or getattr(config, "dtype", None) or torch.float32
    if isinstance(dtype, str):
        dtype = getattr(torch, dtype)
    model = AutoModelForCausalLM.from_config(config, dtype=dtype)
    install_skeleton(model, quant_config, dtype)
    try:
        missing, unexpected = model.load_state_dict(state, strict=False)
    except RuntimeError as exc:
        raise ValueError(f"{weights_path} does not fit the model described by {CONFIG_NAME}: {exc}") from None
    tied_ok = {"lm_head.weight"} if getattr(config, "tie_word_embeddings", False) else set()
    missing = [k for k in missing if k not in tied_ok]
    if missing or unexpected:
        raise ValueError(f"{weights_path} does not match {CONFIG_NAME}: missing {missing[:5]}, unexpected "
                         f"{unexpected[:5]}")
    if tied_ok:
        model.tie_weights()
    verify_module_checksums(model, quant_config, str(weights_path))
    attach_plan(model, quant_config)
    model.config.quantization_config = quant_config
    model.eval()
    return model
