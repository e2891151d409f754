"""mxmoe.quantize end to end on tiny models (every architecture) and the mini model; perplexity; bad input."""
from __future__ import annotations

import copy
import math
import types

import numpy as np
import pytest
import torch

from tiny_models import TINY_MODEL_TYPES, random_token_windows, tiny_model

from mxmoe.allocation import Plan
from mxmoe.arch import expert_block_weight, moe_layers
from mxmoe.evaluate import perplexity
from mxmoe.experts import MxMoEExperts, MxMoELinear
from mxmoe.model import _check_device, calibration_windows, quantize
from mxmoe.quant import quantize_rtn

# w8 per-channel weights on random tiny models: relative logit change measured ~2e-3; bound with margin
W8_LOGIT_REL_TOL = 2e-2


def _profile(model, windows):
    from mxmoe.profiling import profile
    return profile(model, windows, seq_len=windows.shape[1], n_samples=windows.shape[0])


def _logits(model, ids):
    with torch.no_grad():
        return model(ids).logits


def _rel(a, b):
    return float((a - b).norm() / b.norm())


def test_quantize_rtn_packs_exactly_the_rtn_weights():
    """rotate=False, method=rtn, uniform plan: every packed block is bit-identical to quantize_rtn of the original
    weight (an independent path), routed and shared experts alike."""
    model = tiny_model("qwen2_moe")
    original = copy.deepcopy(model)
    windows = random_token_windows(4, 32)
    plan = Plan.uniform(_profile(model, windows), "w4a16_g-1_asym")
    quantize(model, windows, plan=plan, method="rtn", rotate=False, progress=False)
    assert model.mxmoe_plan is plan
    for ref_layer, layer in zip(moe_layers(original), model.model.layers):
        experts = layer.mlp.experts
        assert isinstance(experts, MxMoEExperts)
        for e in range(ref_layer.num_experts):
            for block in ("gate", "up", "down"):
                expected = quantize_rtn(expert_block_weight(ref_layer, e, block).detach().float().numpy(), "w4a16_g-1_asym")
                assert experts.block(e, block).equals(expected)
        shared = layer.mlp.shared_expert
        for block in ("gate", "up", "down"):
            linear = getattr(shared, f"{block}_proj")
            assert isinstance(linear, MxMoELinear)
            expected = quantize_rtn(getattr(ref_layer.shared_experts[0], f"{block}_proj").weight.detach().float().numpy(),
                                    "w4a16_g-1_asym")
            assert linear.weight_quantized.equals(expected)


@pytest.mark.parametrize("model_type", TINY_MODEL_TYPES)
def test_quantize_every_architecture(model_type):
    """Rotation + w8 RTN on every supported architecture: the quantized model stays close to the original."""
    model = tiny_model(model_type)
    ids = random_token_windows(2, 16, seed=5)
    reference = _logits(model, ids)
    windows = random_token_windows(4, 32)
    plan = Plan.uniform(_profile(model, windows), "w8a16_g-1_sym")
    quantize(model, windows, plan=plan, method="rtn", rotate=True, progress=False)
    assert all(isinstance(layer.experts, MxMoEExperts) for layer in _experts_holders(model))
    assert _rel(_logits(model, ids), reference) < W8_LOGIT_REL_TOL


def _experts_holders(model):
    return [layer.mlp for layer in model.model.layers if hasattr(layer.mlp, "experts")]


def test_quantize_activation_scheme_uses_online_hadamard():
    model = tiny_model("qwen2_moe")
    ids = random_token_windows(2, 16, seed=6)
    reference = _logits(model, ids)
    windows = random_token_windows(4, 32)
    plan = Plan.uniform(_profile(model, windows), "w8a8_g-1_sym")
    quantize(model, windows, plan=plan, method="rtn", rotate=True, progress=False)
    experts = model.model.layers[0].mlp.experts
    assert bool(experts.down_hadamard.all())
    assert bool(model.model.layers[0].mlp.shared_expert.down_proj.input_hadamard)
    assert _rel(_logits(model, ids), reference) < W8_LOGIT_REL_TOL


def test_quantize_gptq_with_allocation():
    pytest.importorskip("mxmoe.gptq_solver")
    pytest.importorskip("mxmoe.loss")
    model = tiny_model("qwen2_moe")
    windows = random_token_windows(8, 32)
    ids = random_token_windows(2, 16, seed=7)
    reference = _logits(model, ids)
    quantize(model, windows, wbits=5.0, r=1.0, method="gptq", progress=False)
    plan = model.mxmoe_plan
    assert plan.average_bits <= 5.0 + 1e-9
    assert model.mxmoe_report["average_bits"] == plan.average_bits
    assert _rel(_logits(model, ids), reference) < 0.2  # 4-bit on random tiny weights: coarse but bounded


def test_quantize_bad_plan():
    model = tiny_model("qwen2_moe")
    windows = random_token_windows(4, 32)
    other = tiny_model("mixtral")
    plan = Plan.uniform(_profile(other, windows), "w4a16_g-1_asym")
    with pytest.raises(ValueError, match="plan does not match"):
        quantize(model, windows, plan=plan, method="rtn", progress=False)
    with pytest.raises(TypeError, match="mxmoe.Plan"):
        quantize(model, windows, plan={"schemes": []}, method="rtn", progress=False)
    # nothing was touched
    assert not any(isinstance(m, MxMoEExperts) for m in model.modules())


def test_quantize_unsupported_architecture():
    from transformers import LlamaConfig, LlamaForCausalLM
    model = LlamaForCausalLM(LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                                         num_attention_heads=2, num_key_value_heads=2))
    with pytest.raises(ValueError, match="supported model types: qwen2_moe"):
        quantize(model, random_token_windows(2, 16), progress=False)


def test_quantize_calibration_too_short(mini_tokenizer):
    model = tiny_model("qwen2_moe")
    with pytest.raises(ValueError, match="shorter than one window"):
        quantize(model, "just a few words", tokenizer=mini_tokenizer, seq_len=512, progress=False)
    with pytest.raises(ValueError, match="needs a tokenizer"):
        quantize(model, "some text", progress=False)


def test_quantize_budget_below_cheapest():
    model = tiny_model("qwen2_moe")
    with pytest.raises(ValueError, match="below the cheapest candidate"):
        quantize(model, random_token_windows(4, 32), wbits=1.5, progress=False)
    with pytest.raises(ValueError, match="below the cheapest candidate"):
        quantize(model, random_token_windows(4, 32), wbits=3.0, candidates=["w4a16_g-1_asym"], progress=False)


def test_quantize_bad_arguments():
    model = tiny_model("qwen2_moe")
    windows = random_token_windows(4, 32)
    with pytest.raises(ValueError, match="method"):
        quantize(model, windows, method="awq", progress=False)
    with pytest.raises(ValueError, match="twice"):
        quantize(model, windows, plan=Plan.uniform(_profile(model, windows), "w16a16"), method="rtn", rotate=True,
                 prerotated=True, progress=False)
    plan = Plan.uniform(_profile(model, windows), "w16a16")
    quantize(model, windows, plan=plan, method="rtn", rotate=False, progress=False)
    with pytest.raises(ValueError, match="already quantized"):
        quantize(model, windows, plan=plan, method="rtn", rotate=False, progress=False)


def test_quantize_cuda_without_build():
    import mxmoe
    if mxmoe.cuda_available():
        pytest.skip("the CUDA build is usable here")
    fake_cuda_model = types.SimpleNamespace(parameters=lambda: iter([types.SimpleNamespace(
        device=torch.device("cuda"))]))
    with pytest.raises(RuntimeError, match="mxmoe._cuda"):
        _check_device(fake_cuda_model)


def test_calibration_windows(mini_tokenizer):
    ids = np.arange(10 * 16)
    windows = calibration_windows(ids, seq_len=16, n_samples=4, seed=1)
    assert windows.shape == (4, 16) and windows.dtype == torch.int64
    # non-overlapping windows of the original stream, in stream order
    starts = windows[:, 0].numpy()
    assert np.all(starts % 16 == 0) and np.all(np.diff(starts) > 0)
    assert torch.equal(windows[:, 1:] - windows[:, :-1], torch.ones(4, 15, dtype=torch.int64))
    assert calibration_windows(ids, seq_len=16, n_samples=100).shape == (10, 16)
    text_windows = calibration_windows(["hello world"] * 50, mini_tokenizer, seq_len=8, n_samples=3)
    assert text_windows.shape == (3, 8)
    with pytest.raises(TypeError, match="integers"):
        calibration_windows(np.zeros(100, dtype=np.float32), seq_len=8)


def test_perplexity(mini_model, mini_tokenizer):
    """Against an independent computation: manual log-softmax of each window's logits, no BOS, mean over windows."""
    text = open("data/wikitext-2/test.txt").read()[:20000]
    seq_len, n = 64, 3
    ids = mini_tokenizer(text, add_special_tokens=False)["input_ids"]
    nll = []
    with torch.no_grad():
        for w in range(n):
            window = torch.tensor(ids[w * seq_len: (w + 1) * seq_len])
            logp = torch.log_softmax(mini_model(window[None]).logits[0].double(), dim=-1)
            nll.append(-logp[torch.arange(seq_len - 1), window[1:]].mean().item())
    expected = math.exp(sum(nll) / n)
    assert perplexity(mini_model, mini_tokenizer, text, seq_len=seq_len, max_windows=n, progress=False) == \
        pytest.approx(expected, rel=1e-5)
    with pytest.raises(ValueError, match="fewer than one window"):
        perplexity(mini_model, mini_tokenizer, "too short", seq_len=seq_len)
    with pytest.raises(ValueError, match="max_windows"):
        perplexity(mini_model, mini_tokenizer, text, seq_len=seq_len, max_windows=0)


def _hand_plan():
    blocks, schemes = [], []
    names = ["w4a16_g128_asym", "w2a16_g128_asym", "w8a8_g-1_sym"]
    for layer in (1, 3):
        for expert in range(3):  # expert 2 plays the shared expert (num_experts=2)
            for b, block in enumerate(("gate", "up", "down")):
                blocks.append((layer, expert, block, 256, 128))
                schemes.append(names[(layer + expert + b) % 3])
    return Plan("qwen2_moe", 2, 2, blocks, schemes, names, wbits=4.0, r=0.75,
                block_loss=[0.1] * len(blocks), block_time=[1e-6] * len(blocks),
                frontiers={"1": [(1.0, 3e-6), (0.5, 4e-6)], "3": [(2.0, 2e-6)]})


def test_plot_plan():
    from mxmoe.plot import plan_grid, plot_plan
    from mxmoe import Scheme

    plan = _hand_plan()
    grid, layers, experts = plan_grid(plan)
    assert layers == [1, 3] and experts == 3 and grid.shape == (2, 9)
    for (layer, expert, block, _, k), name in zip(plan.blocks, plan.schemes):
        column = expert * 3 + ("gate", "up", "down").index(block)
        assert grid[layers.index(layer), column] == Scheme.parse(name).bits_for(k)
    fig = plot_plan(plan)
    image = fig.axes[0].images[0]
    np.testing.assert_array_equal(np.asarray(image.get_array()), grid)


def test_plot_pareto():
    from mxmoe.plot import plot_pareto

    plan = _hand_plan()
    fig = plot_pareto(plan, layer=1)
    frontier_line = fig.axes[0].lines[0]
    np.testing.assert_allclose(frontier_line.get_xdata(), [3.0, 4.0])
    np.testing.assert_allclose(frontier_line.get_ydata(), [1.0, 0.5])
    rows = [{"name": "a", "ppl": 70.0, "predicted_time": 2e-6}, {"name": "b", "ppl": 80.0, "predicted_time": 1e-6},
            {"name": "bf16", "ppl": 69.0}]
    fig = plot_pareto(rows)
    assert len(fig.axes[0].lines) == 2
    with pytest.raises(ValueError, match="no rows"):
        plot_pareto([{"name": "bf16", "ppl": 69.0}])
    uniform = Plan.uniform(plan, "w4a16_g128_asym")
    with pytest.raises(ValueError, match="no Pareto frontier"):
        plot_pareto(uniform)


def test_plot_kernels(tmp_path):
    import json

    from mxmoe.plot import plot_kernels

    def rec(model, tokens, impl, us, scope="layer", **extra):
        return dict(model_shape=model, tokens=tokens, impl=impl, us=us, scope=scope, **extra)

    records = [rec("a", 1, "torch_bf16_grouped_mm", 100.0), rec("a", 1, "mxmoe_x", 50.0),
               rec("a", 16, "torch_bf16_grouped_mm", 300.0), rec("a", 16, "mxmoe_x", 100.0),
               rec("b", 16, "torch_bf16_grouped_mm", 80.0), rec("b", 16, "mxmoe_x", 160.0),
               rec("c", 16, "mxmoe_x", 1.0),  # no baseline: no panel
               rec("a", 1, "torch_bf16_grouped_mm", 10.0, scope="gemm", proj="down"),
               rec("a", 1, "mxmoe_x", 5.0, scope="gemm", proj="down")]
    path = tmp_path / "kernels.json"
    path.write_text(json.dumps({"gpu": "test GPU", "records": records}))
    fig = plot_kernels(str(path))
    visible = [ax for ax in fig.axes if ax.get_visible()]
    assert [ax.get_title() for ax in visible] == ["a", "b"]
    line = visible[0].lines[0]
    np.testing.assert_allclose(line.get_xdata(), [1, 16])
    np.testing.assert_allclose(line.get_ydata(), [2.0, 3.0])  # baseline / ours at each token count
    np.testing.assert_allclose(visible[1].lines[0].get_ydata(), [0.5])
    gemm = plot_kernels(records, scope="gemm")  # a plain list, as bench/bench_gemm.py writes
    assert [ax.get_title() for ax in gemm.axes if ax.get_visible()] == ["a down"]
    with pytest.raises(ValueError, match="no 'layer'-scope records"):
        plot_kernels({"records": records}, impls=["nothing"])
    with pytest.raises(ValueError, match="no 'gemm'-scope records"):
        plot_kernels(records[:6], scope="gemm")
