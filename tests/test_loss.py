"""Tests of mxmoe.loss: the proxy and the exact layer-output loss against brute force over captured tokens."""
from __future__ import annotations

import numpy as np
import pytest
import torch

import mxmoe
from mxmoe import arch
from mxmoe.loss import estimate_loss, proxy_block_loss, spearman
from mxmoe.quant import dequantize_activations, quantize_activations, quantize_rtn
from test_profile import expert_rows, independent_statistics
from tiny_models import TINY_EXPERTS, random_token_windows, tiny_model

# float64 sums of float32-derived terms in different orders
SUM_RTOL = 1e-6
# layer_out runs a float32 layer: its output differences carry float32 rounding of the O(1) outputs
LAYER_OUT_RTOL = 1e-3
WEIGHT_ONLY = "w4a16_g-1_asym"
ACT_QUANT = "w4a8_g-1_sym"


@pytest.fixture(scope="module")
def qwen2_case():
    """A tiny Qwen2-MoE (shared expert with a sigmoid gate), its calibration windows and a profile in which the
    activation sample holds every row (so sampled terms are exact sums)."""
    model = tiny_model("qwen2_moe")
    windows = random_token_windows(3, 16, seed=5)
    prof = mxmoe.profile(model, windows, min_tokens=0, act_sample_rows=10_000, progress=False)
    return model, windows, prof


def brute_force_down(model, windows, layer_index, expert, scheme):
    """(weight term, activation term) of sum_t w_t^2 |dy_t|^2 for a down block, token by token."""
    ref = arch.moe_layer_ref(model, layer_index)
    x, weights, index = independent_statistics(model, windows)[layer_index]
    with torch.no_grad():
        if expert < ref.num_experts:
            rows, w = expert_rows(x, weights, index, expert)
        else:
            rows, w = x, torch.sigmoid(ref.shared_gate(x)).reshape(-1)
        gate, up, down = (arch.expert_block_weight(ref, expert, b) for b in arch.BLOCKS)
        h = (arch.expert_activation(ref, expert)(rows @ gate.T) * (rows @ up.T)).double().numpy()
    W = down.numpy()
    W_hat = quantize_rtn(W, scheme).dequantize().astype(np.float64)
    w2 = (w.double() ** 2).numpy()
    weight_term = float(np.sum(w2[:, None] * (h @ (W_hat - W).T) ** 2))
    act_term = 0.0
    if mxmoe.as_scheme(scheme).quantizes_activations:
        h_q = dequantize_activations(quantize_activations(h.astype(np.float32), scheme)).astype(np.float64)
        act_term = float(np.sum(w2[:, None] * ((h_q - h.astype(np.float32)) @ W_hat.T) ** 2))
    return weight_term, act_term


@pytest.mark.parametrize("which", ["busiest", "quietest", "shared"])  # routed experts and the gated shared one
def test_proxy_block_loss_down(qwen2_case, which):
    model, windows, prof = qwen2_case
    ref = arch.moe_layer_ref(model, 1)
    counts = prof.expert_token_counts[prof.layer_row(1), :TINY_EXPERTS]
    expert = {"busiest": int(np.argmax(counts)), "quietest": int(np.argmin(np.where(counts > 0, counts, 10**9))),
              "shared": TINY_EXPERTS}[which]
    weight_term, act_term = brute_force_down(model, windows, 1, expert, WEIGHT_ONLY)
    assert proxy_block_loss(prof, ref, expert, "down", WEIGHT_ONLY) == pytest.approx(weight_term, rel=SUM_RTOL)
    weight_term, act_term = brute_force_down(model, windows, 1, expert, ACT_QUANT)
    assert act_term > 0
    assert proxy_block_loss(prof, ref, expert, "down", ACT_QUANT) == pytest.approx(weight_term + act_term,
                                                                                   rel=SUM_RTOL)


def test_proxy_block_loss_gate(qwen2_case):
    """gate: sum_i |W_down[:, i]|^2 * mean_w2(d_i^2) * sum_t w_t^2 (dW_i x_t)^2, written token by token."""
    model, windows, prof = qwen2_case
    ref = arch.moe_layer_ref(model, 0)
    expert = 2
    x, weights, index = independent_statistics(model, windows)[0]
    rows, w = expert_rows(x, weights, index, expert)
    gate, up, down = (arch.expert_block_weight(ref, expert, b).double() for b in arch.BLOCKS)
    rows, w2 = rows.double(), w.double() ** 2
    g = rows @ gate.T
    slope = torch.sigmoid(g) * (1 + g * (1 - torch.sigmoid(g)))  # silu'
    d2 = (w2[:, None] * (slope * (rows @ up.T)) ** 2).sum(0) / w2.sum()
    dW = torch.from_numpy(quantize_rtn(gate.float().numpy(), WEIGHT_ONLY).dequantize()).double() - gate
    per_channel = (w2[:, None] * (rows @ dW.T) ** 2).sum(0)
    expected = float(((down ** 2).sum(0) * d2 * per_channel).sum())
    assert proxy_block_loss(prof, ref, expert, "gate", WEIGHT_ONLY) == pytest.approx(expected, rel=SUM_RTOL)


def test_estimate_loss(qwen2_case):
    model, windows, prof = qwen2_case
    candidates = [WEIGHT_ONLY, ACT_QUANT, "w8a16_g-1_sym"]
    proxy = estimate_loss(prof, candidates, model, progress=False)
    exact = estimate_loss(prof, candidates, model, method="layer_out", calib=windows, n_windows=3, seq_len=16,
                          progress=False)
    assert proxy.shape == exact.shape == (len(prof.blocks), 3)
    assert np.isfinite(proxy).all() and (proxy >= 0).all() and (exact >= 0).all()
    for layer in prof.layers:
        for expert in (0, TINY_EXPERTS):
            row = prof.block_index(layer, expert, "down")
            ref = arch.moe_layer_ref(model, layer)
            assert proxy[row, 0] == pytest.approx(proxy_block_loss(prof, ref, expert, "down", WEIGHT_ONLY), rel=1e-12)
            # down of a weight-only scheme on the profile's own windows: proxy and exact are the same quantity
            weight_term, act_term = brute_force_down(model, windows, layer, expert, WEIGHT_ONLY)
            assert exact[row, 0] == pytest.approx(weight_term, rel=LAYER_OUT_RTOL)
            weight_term, act_term = brute_force_down(model, windows, layer, expert, ACT_QUANT)
            # exact includes the cross term the proxy drops; it stays within a factor of the sum
            assert 0.5 * (weight_term + act_term) < exact[row, 1] < 2 * (weight_term + act_term)
        rows = prof.layer_blocks(layer)
        assert spearman(proxy[rows], exact[rows]) > 0.8  # measured 0.96-0.997 on this model
    # more bits, less loss (every block that saw tokens, both methods); blocks without tokens cost nothing
    seen = np.array([info.tokens > 0 for info in prof.blocks])
    assert (proxy[seen, 2] < proxy[seen, 0]).all() and (exact[seen, 2] < exact[seen, 0]).all()
    assert (proxy[~seen] == 0).all() and (exact[~seen] == 0).all()


def _saved(prof, tmp_path):
    prof.save(str(tmp_path / "profile"))
    return str(tmp_path / "profile")


def test_estimate_loss_bad_arguments(qwen2_case, tmp_path):
    model, windows, prof = qwen2_case
    with pytest.raises(ValueError, match="method must be one of"):
        estimate_loss(prof, [WEIGHT_ONLY], model, method="hessian")
    # model=None: the profiled model (still alive) is used; a loaded profile has none
    np.testing.assert_array_equal(estimate_loss(prof, [WEIGHT_ONLY], progress=False),
                                  estimate_loss(prof, [WEIGHT_ONLY], model, progress=False))
    loaded = mxmoe.Profile.load(_saved(prof, tmp_path))
    with pytest.raises(ValueError, match="needs the model"):
        estimate_loss(loaded, [WEIGHT_ONLY])
    with pytest.raises(ValueError, match="does not match the profile"):
        estimate_loss(prof, [WEIGHT_ONLY], tiny_model("mixtral"))
    with pytest.raises(ValueError, match="needs calib"):
        estimate_loss(prof, [WEIGHT_ONLY], model, method="layer_out")
    with pytest.raises(ValueError, match="candidates is empty"):
        estimate_loss(prof, [], model)


def test_spearman():
    rng = np.random.default_rng(0)

    def brute(a, b):  # ranks by counting, ties averaged; then Pearson
        def ranks(v):
            return np.array([np.sum(v < x) + (np.sum(v == x) - 1) / 2 for x in v])
        return np.corrcoef(ranks(a), ranks(b))[0, 1]

    for n in (2, 5, 40):
        a = rng.integers(0, 4, n).astype(float)  # many ties
        b = a + rng.standard_normal(n)
        if np.ptp(a) > 0:
            assert spearman(a, b) == pytest.approx(brute(a, b), rel=1e-12)
    assert spearman([1, 2, 3], [10, 20, 30]) == 1.0 and spearman([1, 2, 3], [3, 2, 1]) == -1.0
    assert np.isnan(spearman([1, 1, 1], [1, 2, 3]))
    with pytest.raises(ValueError, match="equal-length"):
        spearman([1, 2], [1, 2, 3])
