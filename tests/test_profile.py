"""Tests of mxmoe.profile (calibration statistics) and the stats C binding.

The oracle is independent of the profiler's machinery: a plain full-model forward (the model's default experts
implementation, no layer streaming) with ordinary forward hooks capturing each MoE block's input and the router's
(weights, indices); counts, masses and Hessians are then recomputed with PyTorch / NumPy in float64.
"""
from __future__ import annotations

import os

import numpy as np
import pytest
import torch

import mxmoe
from mxmoe import _C, arch
from mxmoe._reference import stats as ref_stats
from mxmoe.profiling import FALLBACKS, Profile, calibration_windows
from tiny_models import TINY_EXPERTS, random_token_windows, tiny_model

# Hessians: the same float32 rows summed in float64 in a different order, plus float32 forward differences
# between layer-streamed and full-model runs (different experts implementation => ~1e-7 relative per value).
HESSIAN_RTOL = 1e-5
# stats binding vs NumPy float64: only summation order differs (~rows * 1e-16 relative).
XTX_RTOL = 1e-12


def independent_statistics(model, windows):
    """{layer: (block input rows f32 [T, H], router weights [T, k] f32, router indices [T, k])} from one plain
    forward of the whole model."""
    captured, handles = {}, []
    for ref in arch.moe_layers(model):
        def block_hook(module, args, output, layer=ref.layer_index):
            captured.setdefault(layer, {})["x"] = args[0].reshape(-1, args[0].shape[-1]).detach().float()

        def router_hook(module, args, output, layer=ref.layer_index):
            captured.setdefault(layer, {})["routing"] = (output[1].detach().float(), output[2].detach())

        handles += [ref.mlp.register_forward_hook(block_hook), ref.router.register_forward_hook(router_hook)]
    try:
        with torch.no_grad():
            model(input_ids=windows, use_cache=False)
    finally:
        for handle in handles:
            handle.remove()
    return {layer: (c["x"], *c["routing"]) for layer, c in captured.items()}


def expert_rows(x, weights, index, expert):
    """Rows routed to `expert` (token order) and their routing weights."""
    hit = index == expert
    rows = hit.any(dim=1)
    return x[rows], (weights * hit).sum(dim=1)[rows]


def xtx(rows, weights=None):
    rows64 = rows.double()
    if weights is not None:
        return (rows64.T * weights.double()) @ rows64
    return rows64.T @ rows64


def assert_hessian_close(ours, theirs, what):
    scale = max(float(np.abs(theirs).max()), 1e-30)
    assert np.abs(ours - theirs).max() <= HESSIAN_RTOL * scale, f"{what}: max diff {np.abs(ours - theirs).max()}"


@torch.no_grad()
def check_against_independent(model, windows, prof, experts_to_check):
    """Counts and masses of every expert, Hessians (H and Hw, all spaces) of `experts_to_check` + shared."""
    oracle = independent_statistics(model, windows)
    for ref in arch.moe_layers(model):
        x, weights, index = oracle[ref.layer_index]
        row = prof.layer_row(ref.layer_index)
        counts = torch.bincount(index.reshape(-1), minlength=ref.num_experts).numpy()
        np.testing.assert_array_equal(prof.expert_token_counts[row, :ref.num_experts], counts)
        np.testing.assert_array_equal(prof.expert_token_counts[row, ref.num_experts:], len(x))
        mass = [float(weights[index == e].double().sum()) for e in range(ref.num_experts)]
        np.testing.assert_allclose(prof.routing_mass[row, :ref.num_experts], mass, rtol=1e-5, atol=1e-6)
        experts = [e for e in experts_to_check(counts) if counts[e] >= prof.min_tokens]
        for expert in experts + list(range(ref.num_experts, ref.num_total_experts)):
            if expert < ref.num_experts:
                rows, w = expert_rows(x, weights, index, expert)
            else:
                rows = x
                w = torch.sigmoid(ref.shared_gate(x)).reshape(-1) if ref.shared_gate is not None \
                    else torch.ones(len(x))
            gate, up = (arch.expert_block_weight(ref, expert, b).float() for b in ("gate", "up"))
            hidden_act = arch.expert_activation(ref, expert)(rows @ gate.T) * (rows @ up.T)
            where = f"layer {ref.layer_index} expert {expert}"
            for block in ("gate", "up"):
                assert_hessian_close(prof.hessian(ref.layer_index, expert, block), xtx(rows).numpy(), where)
            assert_hessian_close(prof.hessian(ref.layer_index, expert, "down"), xtx(hidden_act).numpy(), where)
            assert_hessian_close(prof.weighted_hessian(ref.layer_index, expert, "gate"), xtx(rows, w * w).numpy(),
                                 where + " weighted")
            assert_hessian_close(prof.weighted_hessian(ref.layer_index, expert, "down"),
                                 xtx(hidden_act, w * w).numpy(), where + " weighted down")


def test_profile_mini_model(mini_model, mini_tokenizer):
    """The bundled Qwen2-MoE mini on a few short WikiText windows: counts and Hessians match the oracle."""
    with open(os.path.join(os.path.dirname(__file__), "..", "data", "wikitext-2", "valid.txt")) as f:
        text = f.read(20000)
    windows = calibration_windows(text, seq_len=48, n_samples=3, tokenizer=mini_tokenizer)
    prof = mxmoe.profile(mini_model, text, tokenizer=mini_tokenizer, seq_len=48, n_samples=3, batch_size=3,
                         min_tokens=4, progress=False)
    assert prof.calib_tokens == 3 * 48 and prof.layers == list(range(6)) and prof.num_shared == 1
    # the two busiest experts of each layer and the shared expert, every layer
    check_against_independent(mini_model, windows, prof, lambda counts: list(np.argsort(-counts)[:2]))


def test_profile_tiny_models(tiny_moe_model):
    windows = random_token_windows(3, 20, seed=1)
    prof = mxmoe.profile(tiny_moe_model, windows, batch_size=2, min_tokens=0, progress=False)
    assert prof.model_type == tiny_moe_model.config.model_type
    assert prof.layers == [r.layer_index for r in arch.moe_layers(tiny_moe_model)]
    assert prof.coverage() == {layer: [] for layer in prof.layers}  # min_tokens=0: nobody starves
    check_against_independent(tiny_moe_model, windows, prof, lambda counts: list(range(TINY_EXPERTS)))


@pytest.mark.parametrize("fallback", FALLBACKS)
@torch.no_grad()
def test_profile_starved_fallback(fallback):
    """3 tokens x top-2 of 8 experts: some experts get nothing; their Hessians are exactly the documented prior."""
    model = tiny_model("mixtral")
    windows = random_token_windows(1, 3, seed=2)
    min_tokens = 5
    prof = mxmoe.profile(model, windows, min_tokens=min_tokens, fallback=fallback, progress=False)
    oracle = independent_statistics(model, windows)
    for ref in arch.moe_layers(model):
        x, weights, index = oracle[ref.layer_index]
        counts = torch.bincount(index.reshape(-1), minlength=ref.num_experts).numpy()
        starved = [e for e in range(ref.num_experts) if counts[e] < min_tokens]
        assert prof.coverage()[ref.layer_index] == starved == list(range(ref.num_experts))
        pooled_cov = xtx(x).numpy() / len(x)
        for expert in range(ref.num_experts):
            missing = min_tokens - counts[expert]
            rows, _ = expert_rows(x, weights, index, expert)
            gate, up = (arch.expert_block_weight(ref, expert, b) for b in ("gate", "up"))
            pooled_act = ref.experts.act_fn(x @ gate.T) * (x @ up.T)  # every token is in the pooled sample
            priors = {"gate": pooled_cov, "down": xtx(pooled_act).numpy() / len(x)}
            for block, seen in (("gate", rows), ("down", ref.experts.act_fn(rows @ gate.T) * (rows @ up.T))):
                prior = priors[block]
                if fallback == "diag":
                    prior = np.mean(np.diag(prior)) * np.eye(len(prior))
                elif fallback == "identity":
                    prior = np.eye(len(prior))
                expected = xtx(seen).numpy() + missing * prior
                ours = prof.hessian(ref.layer_index, expert, block)
                assert np.isfinite(ours).all()
                assert_hessian_close(ours, expected, f"{fallback} layer {ref.layer_index} expert {expert} {block}")
            info = prof.blocks[prof.block_index(ref.layer_index, expert, "up")]
            assert info.starved and info.tokens == counts[expert]
            assert np.isfinite(prof.channel_gain(ref.layer_index, expert, "gate")).all()
            sample, sample_weights, scale = prof.act_sample(ref.layer_index, expert, "down")
            assert len(sample) > 0 and np.isfinite(sample).all() and scale > 0


def test_profile_blocks():
    model = tiny_model("qwen2_moe")
    prof = mxmoe.profile(model, random_token_windows(2, 8), progress=False, min_tokens=3)
    assert len(prof.blocks) == len(prof.layers) * (TINY_EXPERTS + 1) * 3
    previous = None
    for i, info in enumerate(prof.blocks):
        key = (prof.layer_row(info.layer), info.expert, ("gate", "up", "down").index(info.block))
        assert previous is None or key > previous  # canonical order: layer, expert, block
        previous = key
        assert prof.block_index(info.layer, info.expert, info.block) == i
        assert info.shared == (info.expert >= TINY_EXPERTS)
        assert (info.routing_mass == info.tokens) if info.shared else info.routing_mass <= info.tokens
        assert info.params == info.out_features * info.in_features
    assert prof.layer_blocks(1) == list(range(len(prof.blocks) // 2, len(prof.blocks)))
    assert prof.blocks[prof.block_index(0, TINY_EXPERTS, "down")].in_features == 96
    freq = prof.expert_frequency(0)
    assert freq[:TINY_EXPERTS].sum() == pytest.approx(2) and freq[TINY_EXPERTS] == 1  # top-2, shared always
    with pytest.raises(ValueError, match="not a profiled MoE layer"):
        prof.hessian(7, 0, "gate")
    with pytest.raises(ValueError, match="out of range"):
        prof.hessian(0, TINY_EXPERTS + 1, "gate")
    with pytest.raises(ValueError, match="block must be one of"):
        prof.hessian(0, 0, "gate_up")


def test_profile_save_load(tmp_path):
    model = tiny_model("deepseek_v2")
    prof = mxmoe.profile(model, random_token_windows(2, 12), min_tokens=8, progress=False)
    prof.save(str(tmp_path / "p"))
    assert sorted(os.listdir(tmp_path / "p")) == ["profile.json", "profile.npz"]  # no temp files left
    loaded = Profile.load(str(tmp_path / "p"))
    assert loaded.blocks == prof.blocks and loaded.signature() == prof.signature()
    assert loaded.coverage() == prof.coverage() and loaded.meta == prof.meta
    np.testing.assert_array_equal(loaded.expert_token_counts, prof.expert_token_counts)
    for info in prof.blocks:
        args = (info.layer, info.expert, info.block)
        np.testing.assert_array_equal(loaded.hessian(*args), prof.hessian(*args))
        np.testing.assert_array_equal(loaded.weighted_hessian(*args), prof.weighted_hessian(*args))
        np.testing.assert_array_equal(loaded.channel_gain(*args), prof.channel_gain(*args))
        for a, b in zip(loaded.act_sample(*args), prof.act_sample(*args)):
            np.testing.assert_array_equal(a, b)


def test_profile_leaves_model_unchanged():
    model = tiny_model("qwen3_moe")
    ids = random_token_windows(2, 10)
    before_logits = model(ids).logits
    before_impl = model.get_experts_implementation()
    mxmoe.profile(model, ids, progress=False)
    assert model.get_experts_implementation() == before_impl and not model.training
    torch.testing.assert_close(model(ids).logits, before_logits, rtol=0, atol=0)


def test_calibration_windows(mini_tokenizer):
    stream = torch.arange(1, 101)
    windows = calibration_windows(stream, seq_len=10, n_samples=4)
    # 10 windows available, 4 evenly spaced ones taken: windows 0, 3, 6, 9
    np.testing.assert_array_equal(windows[:, 0].numpy(), [1, 31, 61, 91])
    assert calibration_windows(np.arange(1, 25), seq_len=8, n_samples=99).shape == (3, 8)  # tail dropped
    two_d = np.arange(30).reshape(5, 6)
    np.testing.assert_array_equal(calibration_windows(two_d, n_samples=2).numpy(), two_d[:2])
    texts = ["Hello world, this is calibration text.", "A second text follows here."]
    ids = mini_tokenizer(texts[0], add_special_tokens=False)["input_ids"] + \
        mini_tokenizer(texts[1], add_special_tokens=False)["input_ids"]
    windows = calibration_windows(texts, seq_len=4, n_samples=100, tokenizer=mini_tokenizer)
    np.testing.assert_array_equal(windows.reshape(-1).numpy(), ids[:len(ids) // 4 * 4])


def test_profile_bad_arguments(mini_tokenizer):
    model = tiny_model("olmoe")
    ids = random_token_windows(1, 8)
    with pytest.raises(ValueError, match="fallback must be one of"):
        mxmoe.profile(model, ids, fallback="zeros", progress=False)
    with pytest.raises(ValueError, match="need a tokenizer"):
        mxmoe.profile(model, "some text", progress=False)
    with pytest.raises(TypeError, match="must be integers"):
        mxmoe.profile(model, np.zeros((2, 8), dtype=np.float32), progress=False)
    with pytest.raises(ValueError, match="fewer than one window"):
        mxmoe.profile(model, np.arange(1, 10), seq_len=16, progress=False)
    with pytest.raises(ValueError, match=r"must lie in \[0, 128\)"):
        mxmoe.profile(model, np.full((1, 8), 500), progress=False)
    with pytest.raises(ValueError, match="1-D .* or 2-D"):
        mxmoe.profile(model, np.ones((1, 2, 8), dtype=np.int64), progress=False)
    with pytest.raises(ValueError, match="batch_size > 0"):
        mxmoe.profile(model, ids, batch_size=0, progress=False)


@pytest.mark.parametrize("rows,K", [(0, 5), (1, 1), (3, 64), (130, 65), (257, 200)])
@pytest.mark.parametrize("weighted", [False, True])
def test_stats_accumulate_xtx(rows, K, weighted):
    rng = np.random.default_rng(rows * 1000 + K)
    x = rng.standard_normal((rows, K)).astype(np.float32)
    w = rng.random(rows).astype(np.float32) if weighted else None
    H = rng.standard_normal((K, K))  # accumulates onto existing contents
    expected = ref_stats.accumulate_xtx(H, x, w)
    _C.stats_accumulate_xtx(H, x, w)
    np.testing.assert_allclose(H, expected, rtol=0, atol=XTX_RTOL * max(1.0, float(np.abs(expected).max())))


def test_stats_accumulate_xtx_bad_input():
    H, x = np.zeros((4, 4)), np.ones((3, 4), dtype=np.float32)
    with pytest.raises(TypeError, match="x must have dtype"):
        _C.stats_accumulate_xtx(H, x.astype(np.float16))
    with pytest.raises(TypeError, match="H must have dtype"):
        _C.stats_accumulate_xtx(H.astype(np.float32), x)
    with pytest.raises(ValueError, match="C-contiguous"):
        _C.stats_accumulate_xtx(H, np.ones((4, 3), dtype=np.float32).T)
    with pytest.raises(ValueError, match=r"H must be \[K, K\]"):
        _C.stats_accumulate_xtx(np.zeros((3, 3)), x)
    with pytest.raises(ValueError, match="one entry per row"):
        _C.stats_accumulate_xtx(H, x, np.ones(2, dtype=np.float32))
    with pytest.raises(ValueError, match="not finite"):
        _C.stats_accumulate_xtx(H, np.full((3, 4), np.nan, dtype=np.float32))
    with pytest.raises(ValueError, match="negative"):
        _C.stats_accumulate_xtx(H, x, -np.ones(3, dtype=np.float32))
    read_only = np.zeros((4, 4))
    read_only.setflags(write=False)
    with pytest.raises(ValueError, match="writeable"):
        _C.stats_accumulate_xtx(read_only, x)
    assert not H.any()  # every failure left H untouched


def test_first_layer_inputs():
    """Layer-0 inputs are the token embeddings, and running the layer on them with the captured kwargs reproduces
    the model's own hidden states after layer 0 (output_hidden_states)."""
    from mxmoe.profiling import first_layer_inputs

    model = tiny_model("qwen2_moe")
    windows = random_token_windows(5, 9, seed=3)
    hidden, layer_kwargs = first_layer_inputs(model, windows, batch_size=2)
    assert sorted(layer_kwargs) == [1, 2]  # batches of 2, 2 and 1
    with torch.no_grad():
        torch.testing.assert_close(hidden, model.get_input_embeddings()(windows), rtol=0, atol=0)
        states = model(windows, output_hidden_states=True).hidden_states[1]
        out = arch.decoder_layers(model)[0](hidden[:2], **layer_kwargs[2])
    torch.testing.assert_close(out[0] if isinstance(out, tuple) else out, states[:2], rtol=0, atol=1e-6)
