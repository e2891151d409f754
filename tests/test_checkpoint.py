"""save_quantized / load_quantized / AutoModelForCausalLM.from_pretrained: bit-identical round trips, atomic writes,
clear errors for missing or corrupted files."""
from __future__ import annotations

import json
import os

import pytest
import torch

from tiny_models import random_token_windows, tiny_model

from mxmoe.arch import expert_block_weight, moe_layers
from mxmoe.checkpoint import WEIGHTS_NAME, load_quantized, quantized_modules, save_quantized
from mxmoe.experts import MxMoEExperts, MxMoELinear
from mxmoe.quant import quantize_rtn

SCHEMES = ("w4a16_g-1_asym", "w8a16_g-1_sym", "w16a16", "w8a8_g-1_sym", "w4a8_g-1_sym")


def _rtn_quantized(model_type: str):
    """A tiny model whose experts (routed + shared) are packed with RTN, schemes varying per block."""
    model = tiny_model(model_type)
    for layer in moe_layers(model):
        weights = [[quantize_rtn(expert_block_weight(layer, e, b).detach().float().numpy(),
                                 SCHEMES[(e + i) % len(SCHEMES)]) for i, b in enumerate(("gate", "up", "down"))]
                   for e in range(layer.num_total_experts)]
        layer.mlp.experts = MxMoEExperts.from_quantized(weights[: layer.num_experts], model.config.hidden_act)
        for j, shared in enumerate(layer.shared_experts):
            for block, qw in zip(("gate", "up", "down"), weights[layer.num_experts + j]):
                setattr(shared, f"{block}_proj", MxMoELinear.from_quantized(qw))
    return model


def _assert_same_packed(a, b):
    modules_a, modules_b = quantized_modules(a), quantized_modules(b)
    assert list(modules_a) == list(modules_b) and modules_a
    for name, module in modules_a.items():
        other = modules_b[name]
        assert torch.equal(module.packed, other.packed) and torch.equal(module.segments, other.segments)
        if isinstance(module, MxMoEExperts):
            assert module.schemes == other.schemes
            assert module.block(0, "down").equals(other.block(0, "down"))


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    model = _rtn_quantized("qwen2_moe")
    out = save_quantized(model, tmp_path_factory.mktemp("ckpt") / "q")
    return model, out


def _logits(model):
    with torch.no_grad():
        return model(random_token_windows(2, 12)).logits


def test_save_quantized(saved):
    model, out = saved
    assert sorted(os.listdir(out)) == ["config.json", WEIGHTS_NAME]
    config = json.loads((out / "config.json").read_text())
    quant = config["quantization_config"]
    assert quant["quant_method"] == "mxmoe" and quant["version"] == 1
    assert set(quant["modules"]) == set(quantized_modules(model))
    # no leftovers of the atomic write next to the checkpoint
    assert [p.name for p in out.parent.iterdir()] == ["q"]


def test_load_quantized(saved):
    model, out = saved
    loaded = load_quantized(out)
    _assert_same_packed(model, loaded)
    assert torch.equal(_logits(model), _logits(loaded))


def test_from_pretrained(saved):
    import mxmoe.hf_quantizer
    from transformers import AutoModelForCausalLM

    model, out = saved
    mxmoe.hf_quantizer.register()
    loaded = AutoModelForCausalLM.from_pretrained(out)
    _assert_same_packed(model, loaded)
    assert torch.equal(_logits(model), _logits(loaded))


@pytest.mark.parametrize("model_type", ["deepseek_v2", "mixtral"])
def test_load_quantized_other_architectures(tmp_path, model_type):
    model = _rtn_quantized(model_type)
    loaded = load_quantized(save_quantized(model, tmp_path / "q"))
    _assert_same_packed(model, loaded)
    assert torch.equal(_logits(model), _logits(loaded))


def test_save_quantized_is_atomic(saved, tmp_path):
    """A failure while writing leaves neither a half checkpoint nor temp files, and keeps an older checkpoint."""
    model, _ = saved

    class FailingTokenizer:
        def save_pretrained(self, path):
            raise OSError("disk full (simulated)")

    with pytest.raises(OSError, match="disk full"):
        save_quantized(model, tmp_path / "new", tokenizer=FailingTokenizer())
    assert list(tmp_path.iterdir()) == []
    old = save_quantized(model, tmp_path / "old")
    before = (old / WEIGHTS_NAME).read_bytes()
    with pytest.raises(OSError, match="disk full"):
        save_quantized(model, old, tokenizer=FailingTokenizer())
    assert (old / WEIGHTS_NAME).read_bytes() == before and [p.name for p in tmp_path.iterdir()] == ["old"]
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "notes.txt").write_text("keep me")
    with pytest.raises(FileExistsError, match="refusing"):
        save_quantized(model, tmp_path / "other")


def test_save_quantized_unquantized_model(tmp_path):
    with pytest.raises(ValueError, match="no MxMoE modules"):
        save_quantized(tiny_model("qwen2_moe"), tmp_path / "q")


def _copy(out, tmp_path):
    import shutil
    target = tmp_path / "copy"
    shutil.copytree(out, target)
    return target


def test_load_quantized_truncated(saved, tmp_path):
    path = _copy(saved[1], tmp_path)
    weights = path / WEIGHTS_NAME
    data = weights.read_bytes()
    weights.write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match="corrupted or truncated"):
        load_quantized(path)


def test_load_quantized_flipped_bytes(saved, tmp_path):
    path = _copy(saved[1], tmp_path)
    weights = path / WEIGHTS_NAME
    data = bytearray(weights.read_bytes())
    data[-100] ^= 0xFF
    weights.write_bytes(bytes(data))
    with pytest.raises(ValueError, match="corrupted"):
        load_quantized(path)


def test_from_pretrained_flipped_packed_bytes(saved, tmp_path):
    """from_pretrained does not hash the file, but every packed buffer is checked against its recorded sha256."""
    import mxmoe.hf_quantizer
    from safetensors import safe_open
    from transformers import AutoModelForCausalLM

    path = _copy(saved[1], tmp_path)
    weights = path / WEIGHTS_NAME
    with safe_open(str(weights), "pt") as f:
        key = next(k for k in f.keys() if k.endswith("experts.packed"))
    header_len = int.from_bytes(weights.read_bytes()[:8], "little")
    offsets = json.loads(weights.read_bytes()[8: 8 + header_len])[key]["data_offsets"]
    data = bytearray(weights.read_bytes())
    data[8 + header_len + offsets[0] + 10] ^= 0x01
    weights.write_bytes(bytes(data))
    mxmoe.hf_quantizer.register()
    with pytest.raises(ValueError, match="checksum"):
        AutoModelForCausalLM.from_pretrained(path)


def test_load_quantized_missing_files(saved, tmp_path):
    path = _copy(saved[1], tmp_path)
    (path / WEIGHTS_NAME).unlink()
    with pytest.raises(FileNotFoundError, match=WEIGHTS_NAME):
        load_quantized(path)
    (path / "config.json").unlink()
    with pytest.raises(FileNotFoundError, match="config.json"):
        load_quantized(path)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_quantized(tmp_path / "nowhere")


def test_load_quantized_bad_config(saved, tmp_path):
    path = _copy(saved[1], tmp_path)
    config_path = path / "config.json"
    text = config_path.read_text()
    config_path.write_text(text[: len(text) // 2])
    with pytest.raises(ValueError, match="not valid JSON"):
        load_quantized(path)
    config = json.loads(text)
    del config["quantization_config"]
    config_path.write_text(json.dumps(config))
    with pytest.raises(ValueError, match="not an mxmoe checkpoint"):
        load_quantized(path)
    config = json.loads(text)
    config["quantization_config"]["version"] = 99
    config_path.write_text(json.dumps(config))
    with pytest.raises(ValueError, match="format version"):
        load_quantized(path)


@pytest.mark.slow  # a fresh interpreter importing torch + transformers
def test_install_import_hook(saved):
    """The cheap hook for `import mxmoe`: transformers imported afterwards knows quant_method "mxmoe"."""
    import subprocess
    import sys
    code = ("import sys, mxmoe.hf_quantizer as h; h.install_import_hook(); "
            "assert 'transformers' not in sys.modules; "
            "from transformers import AutoModelForCausalLM; "
            f"m = AutoModelForCausalLM.from_pretrained({str(saved[1])!r}); "
            "print(type(m.model.layers[0].mlp.experts).__name__)")
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=root, timeout=300,
                            env={**os.environ, "PYTHONPATH": root})
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.strip().endswith("MxMoEExperts")
