"""Tests of mxmoe.cost: the roofline written out by hand, the measured-profile interpolation, expected tokens."""
from __future__ import annotations

import json
import math

import numpy as np
import pytest

from mxmoe import Scheme
from mxmoe.cost import GPU_PRESETS, CostModel, arithmetic_unit, expected_tokens
from mxmoe.profiling import BlockInfo

# the model is closed-form arithmetic: only float rounding separates it from the hand computation
TIME_RTOL = 1e-12


def hand_roofline(preset, n, k, m, w_bits_total, a_bits, throughput):
    """The roofline of the cost module's docstring, spelled out for one case."""
    weight = n * k * w_bits_total / 8
    act_in = m * k * 2 if a_bits == 16 else m * k * a_bits / 8 + 4 * m
    quant = 0 if a_bits == 16 else (m * k * 2 + act_in) / preset["bandwidth"]
    memory = (weight + act_in + m * n * 2) / preset["bandwidth"]
    overhead = math.ceil(m / 128) * math.ceil(n / 128) * preset["tile_overhead"] / preset["sms"]
    return quant + max(memory, 2 * m * n * k / throughput) + overhead


@pytest.mark.parametrize("gpu", sorted(GPU_PRESETS))
@pytest.mark.parametrize("m", [1, 16, 100, 4096, 65536])
def test_block_time(gpu, m):
    preset, cost = GPU_PRESETS[gpu], CostModel(gpu)
    n, k = 1408, 2048
    cases = [("w16a16", 16, 16, "bf16"), ("w4a16_g128_asym", 4 + 32 / 128, 16, "bf16"),
             ("w8a8_g-1_sym", 8 + 16 / k, 8, "int8"), ("w4a4_g-1_sym", 4 + 16 / k, 4,
                                                       "int8" if preset["arch"] == "sm90" else "int4")]
    for name, bits, a_bits, unit in cases:
        expected = hand_roofline(preset, n, k, m, bits, a_bits, preset[unit])
        assert cost.block_time(n, k, m, name) == pytest.approx(expected, rel=TIME_RTOL), name
    assert cost.block_time(n, k, 0, "w4a16_g128_asym") == 0.0


def test_block_time_shapes_of_the_roofline():
    h100, ada = CostModel("h100"), CostModel("rtx4090")
    # bandwidth-bound (few tokens): fewer weight bits is faster, and K matters
    small = [h100.block_time(2048, 2048, 8, s) for s in ("w16a16", "w8a16_g-1_sym", "w4a16_g128_asym",
                                                          "w2a16_g128_asym")]
    assert small == sorted(small, reverse=True)
    assert h100.block_time(2048, 4096, 8, "w4a16_g128_asym") > 1.8 * h100.block_time(2048, 2048, 8, "w4a16_g128_asym")
    # compute-bound: fp8 beats bf16 on Hopper even after the activation-quantization pass (int8 at the library
    # GEMM's 918 TOPS only breaks even); a4 buys nothing on Hopper but is fastest on Ada
    big = 65536
    assert h100.block_time(2048, 2048, big, "w8a8_g-1_sym_fp8") < h100.block_time(2048, 2048, big, "w4a16_g128_asym")
    assert h100.block_time(2048, 2048, big, "w4a4_g-1_sym") >= 0.95 * h100.block_time(2048, 2048, big, "w4a8_g-1_sym")
    assert ada.block_time(2048, 2048, big, "w4a4_g-1_sym") < ada.block_time(2048, 2048, big, "w4a8_g-1_sym")
    assert arithmetic_unit("w8a8_g-1_sym_fp8", "a100") == "bf16"  # no fp8 units on Ampere
    assert arithmetic_unit("w8a8_g-1_sym_fp8", "NVIDIA H100 80GB HBM3") == "fp8"


def test_block_time_bad_arguments():
    with pytest.raises(ValueError, match="unknown GPU 'tpu'"):
        CostModel("tpu")
    with pytest.raises(ValueError, match="N=0"):
        CostModel().block_time(0, 16, 4, "w16a16")
    with pytest.raises(ValueError, match="M=-1"):
        CostModel().block_time(16, 16, -1, "w16a16")
    with pytest.raises(ValueError):
        CostModel().block_time(16, 16, 4, "w5a16_g128_asym")


def _profile(entries):
    return {"gpu": "NVIDIA H100 80GB HBM3", "date": "2026-11-23", "entries": entries}


def test_kernel_profile(tmp_path):
    entries = [{"scheme": "w4a16_g128_asym", "n": 1024, "k": 2048, "m": m, "us": us}
               for m, us in ((16, 10.0), (256, 40.0), (4096, 640.0))]
    path = tmp_path / "k.json"
    path.write_text(json.dumps(_profile(entries)))
    cost = CostModel("h100", kernel_profile=str(path))
    # measured points exactly; between them linear in log-log (geometric interpolation)
    assert cost.block_time(1024, 2048, 256, "w4a16_g128_asym") == pytest.approx(40e-6, rel=TIME_RTOL)
    assert cost.block_time(1024, 2048, 64, "w4a16_g128_asym") == pytest.approx(20e-6, rel=TIME_RTOL)  # sqrt(10*40)
    # beyond the measured range: the edge point scaled by the roofline ratio
    roof = CostModel("h100")
    expected = 640e-6 * roof.block_time(1024, 2048, 16384, "w4a16_g128_asym") / \
        roof.block_time(1024, 2048, 4096, "w4a16_g128_asym")
    assert cost.block_time(1024, 2048, 16384, "w4a16_g128_asym") == pytest.approx(expected, rel=TIME_RTOL)
    # another shape of a measured scheme: nearest measured shape scaled by the roofline ratio
    expected = 40e-6 * roof.block_time(2048, 2048, 256, "w4a16_g128_asym") / \
        roof.block_time(1024, 2048, 256, "w4a16_g128_asym")
    assert cost.block_time(2048, 2048, 256, "w4a16_g128_asym") == pytest.approx(expected, rel=TIME_RTOL)
    # unmeasured scheme: the roofline
    assert cost.block_time(1024, 2048, 256, "w8a8_g-1_sym") == roof.block_time(1024, 2048, 256, "w8a8_g-1_sym")


def test_kernel_profile_bad_schema():
    good = {"scheme": "w16a16", "n": 8, "k": 8, "m": 1, "us": 1.0}
    with pytest.raises(ValueError, match="entries"):
        CostModel(kernel_profile={"gpu": "x"})
    with pytest.raises(ValueError, match="needs scheme, n, k, m, us"):
        CostModel(kernel_profile=_profile([{"scheme": "w16a16", "n": 8}]))
    with pytest.raises(ValueError, match="finite us > 0"):
        CostModel(kernel_profile=_profile([dict(good, us=-1.0)]))
    with pytest.raises(ValueError, match="duplicate"):
        CostModel(kernel_profile=_profile([good, dict(good)]))


def _blocks():
    """One layer: 3 routed experts (tokens 30, 10, 0) top-2 of 20 tokens, one shared expert (20 tokens)."""
    infos = []
    for expert, tokens, shared in ((0, 30, False), (1, 10, False), (2, 0, False), (3, 20, True)):
        for block in ("gate", "up", "down"):
            out_f, in_f = (64, 32) if block == "down" else (32, 64)
            infos.append(BlockInfo(0, expert, block, out_f, in_f, tokens, float(tokens), tokens < 5, shared))
    return infos


def test_expected_tokens_and_table():
    infos = _blocks()
    m = expected_tokens(infos, tokens=512)
    # routed: 512 * top_k(2) * share of assignments (30/40, 10/40, 0); shared: 512
    np.testing.assert_allclose(m, np.repeat([768.0, 256.0, 0.0, 512.0], 3))
    np.testing.assert_allclose(expected_tokens(infos[:9], tokens=512, top_k=2), m[:9])
    with pytest.raises(ValueError, match="pass top_k"):
        expected_tokens(infos[:9], tokens=512)
    cost = CostModel("h100")
    candidates = ["w16a16", Scheme.parse("w4a16_g128_asym")]
    table = cost.table(infos, candidates, tokens=512)
    assert table.shape == (12, 2)
    for i, info in enumerate(infos):
        for j, s in enumerate(candidates):
            assert table[i, j] == cost.block_time(info.out_features, info.in_features, m[i], s)
    assert (table[6:9] == 0).all()  # the expert without tokens costs nothing


def test_table_from_profile_blocks():
    """profile.blocks carries top_k, so models without a shared expert need no extra argument."""
    import mxmoe
    from tiny_models import random_token_windows, tiny_model

    prof = mxmoe.profile(tiny_model("mixtral"), random_token_windows(2, 8), progress=False)
    cost = CostModel("h200")
    table = cost.table(prof.blocks, ["w16a16"], tokens=64)
    np.testing.assert_array_equal(table, cost.table(prof, ["w16a16"], tokens=64))
    m = expected_tokens(prof.blocks, 64, top_k=prof.top_k)
    for layer in prof.layers:
        rows = [i for i, b in enumerate(prof.blocks) if b.layer == layer and b.block == "gate"]
        assert m[rows].sum() == pytest.approx(64 * prof.top_k)
