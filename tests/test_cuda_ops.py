"""CPU-side logic of mxmoe.cuda_ops (no GPU needed): activation formats, splitting packed weights into chunks,
workspace sizing, input validation and the layer's host-side checks."""
from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from mxmoe import cuda_ops  # noqa: E402
from mxmoe.cuda_ops import (ACT_BF16, ACT_FP8, ACT_INT4, ACT_INT8, MoELayerCUDA, PackedBlock,  # noqa: E402
                            act_format, check_forward_inputs, split_intermediate, workspace_layout)
from mxmoe.quant import QuantizedWeight, quantize_rtn  # noqa: E402

SPLIT_SCHEMES = ["w16a16", "w8a16_g-1_sym", "w4a16_g-1_asym", "w4a16_g128_asym", "w3a16_g128_asym",
                 "w2a16_g128_asym", "w8a8_g-1_sym", "w8a8_g-1_sym_fp8", "w4a8_g128_asym", "w4a4_g-1_sym"]


def _as_weight(block: PackedBlock) -> QuantizedWeight:
    return QuantizedWeight(block.scheme, block.out_features, block.in_features, block.qweight, block.scales,
                           block.zeros)


def test_act_format():
    # Independent rule from the scheme grammar: a16 -> bf16, a8 -> int8 unless the name ends in _fp8, a4 -> int4.
    from mxmoe import schemes

    for s in schemes():
        name = s.name
        expected = (ACT_BF16 if "a16" in name else ACT_INT4 if "a4_" in name or name.endswith("a4")
                    else ACT_FP8 if name.endswith("_fp8") else ACT_INT8)
        assert act_format(name) == expected, name


@pytest.mark.parametrize("scheme", SPLIT_SCHEMES)
def test_split_intermediate(scheme):
    rng = np.random.default_rng(0)
    H, I_s, width = 256, 512, 128
    gate = quantize_rtn(rng.standard_normal((I_s, H)).astype(np.float32), scheme)
    up = quantize_rtn(rng.standard_normal((I_s, H)).astype(np.float32), scheme)
    down = quantize_rtn(rng.standard_normal((H, I_s)).astype(np.float32), scheme)
    chunks = split_intermediate(PackedBlock.of(gate), PackedBlock.of(up), PackedBlock.of(down), width)
    assert len(chunks) == I_s // width
    full = [w.dequantize() for w in (gate, up, down)]
    for c, (g, u, d) in enumerate(chunks):
        cols = slice(c * width, (c + 1) * width)
        # bit-identical: a chunk is a run of whole packs and whole scale groups of the original
        np.testing.assert_array_equal(_as_weight(g).dequantize(), full[0][cols])
        np.testing.assert_array_equal(_as_weight(u).dequantize(), full[1][cols])
        np.testing.assert_array_equal(_as_weight(d).dequantize(), full[2][:, cols])


def test_split_intermediate_bad_width():
    rng = np.random.default_rng(1)
    w = PackedBlock.of(quantize_rtn(rng.standard_normal((384, 256)).astype(np.float32), "w4a16_g128_asym"))
    d = PackedBlock.of(quantize_rtn(rng.standard_normal((256, 384)).astype(np.float32), "w4a16_g128_asym"))
    with pytest.raises(ValueError, match="not a multiple"):
        split_intermediate(w, w, d, 256)
    with pytest.raises(ValueError, match="group size"):
        d.columns(64, 192)  # 64 is a multiple of 32 but not of the group size 128


def test_packed_block_of_rejects_other_objects():
    with pytest.raises(TypeError, match="QuantizedWeight"):
        PackedBlock.of(np.zeros((4, 4)))


def test_workspace_layout():
    mask_all = (1 << ACT_BF16) | (1 << ACT_INT8) | (1 << ACT_FP8) | (1 << ACT_INT4)
    T, k, E, S, H, I = 17, 4, 60, 4, 2048, 1408
    layout = workspace_layout(T, k, E, S, H, I, mask_all, 1 << ACT_INT8, route_workspace_bytes=1000,
                              gemm_workspace_bytes=3000)
    rows = T * k + T * S
    assert layout["row_offsets"] == ((E + S + 1,), "int32")
    assert layout["perm_token"] == ((rows,), "int32")
    assert layout["inv_perm"] == ((T * k,), "int32")
    assert layout["y_gate_up"] == ((rows, 2 * I), "bfloat16")
    assert layout["y_down"] == ((rows, H), "bfloat16")
    assert layout["x_int4"] == ((rows, H // 2), "uint8")
    assert layout["x_fp8"] == ((rows, H), "uint8") and layout["x_scale_fp8"] == ((rows,), "float32")
    assert layout["h_int8"] == ((rows, I), "int8") and layout["h_rowsum_int8"] == ((rows,), "int32")
    assert "x_rowsum_int8" in layout and "x_rowsum_fp8" not in layout
    assert "h_bf16" not in layout and "h_int4" not in layout
    assert layout["route_workspace"] == ((1000,), "uint8") and layout["gemm_workspace"] == ((3000,), "uint8")
    assert layout["gemm_workspace_down"] == ((3000,), "uint8")
    empty = workspace_layout(0, k, E, 0, H, I, 1, 1)
    assert empty["perm_token"] == ((0,), "int32") and empty["row_offsets"] == ((E + 1,), "int32")


def _inputs(T=5, H=64, k=2, E=8):
    hidden = torch.randn(T, H).to(torch.bfloat16)
    idx = torch.randint(0, E, (T, k), dtype=torch.int64)
    w = torch.rand(T, k, dtype=torch.float32)
    return hidden, idx, w


def test_two_stage_advised(monkeypatch):
    """The decode layer's one-launch policy: decode calls of layers with many experts (>= TWO_STAGE_MIN_EXPERTS) and
    I <= TWO_STAGE_MAX_INTERMEDIATE (Qwen1.5-MoE's 60 experts of 1408: faster on the H100; Mixtral's 8 of 14336, and 8
    of 1408: not), never above TWO_STAGE_MAX_TOKENS; MXMOE_LAYER_FUSED forces it either way for decode calls only."""
    monkeypatch.delenv("MXMOE_LAYER_FUSED", raising=False)
    advised = cuda_ops.two_stage_advised
    many, few = cuda_ops.TWO_STAGE_MIN_EXPERTS, cuda_ops.TWO_STAGE_MIN_EXPERTS - 1
    assert advised(1, 1408, 60) and advised(cuda_ops.TWO_STAGE_MAX_TOKENS, 1408, 64)
    assert not advised(cuda_ops.TWO_STAGE_MAX_TOKENS + 1, 1408, 60)
    assert advised(16, cuda_ops.TWO_STAGE_MAX_INTERMEDIATE, many)
    assert not advised(16, cuda_ops.TWO_STAGE_MAX_INTERMEDIATE + 128, many)
    assert not advised(1, 14336, 8) and not advised(16, 1408, 8) and not advised(16, 1408, few)
    monkeypatch.setenv("MXMOE_LAYER_FUSED", "1")
    assert advised(1, 14336, 8) and not advised(17, 1408, 60)
    monkeypatch.setenv("MXMOE_LAYER_FUSED", "0")
    assert not advised(1, 1408, 60)


def test_check_forward_inputs():
    hidden, idx, w = _inputs()
    H, k = 64, 2
    cases = [
        ((hidden.float(), idx, w), TypeError, "hidden must be bfloat16"),
        ((hidden[:, :32].contiguous(), idx, w), ValueError, r"hidden must be \[T, 64\]"),
        ((hidden, idx.int(), w), TypeError, "top_k_index must be int64"),
        ((hidden, idx[:, :1].contiguous(), w), ValueError, "top_k_index must be"),
        ((hidden, idx, w.to(torch.int32)), TypeError, "top_k_weights must be"),
        ((hidden, idx, w[:4]), ValueError, "top_k_weights must be"),
        ((hidden.t().contiguous().t()[:, :] if False else torch.randn(64, 5).to(torch.bfloat16).t(), idx, w),
         ValueError, "hidden must be contiguous"),
        ((hidden, idx, w), ValueError, "must be a CUDA tensor"),  # everything else is right: the device is not
        (([[1.0]], idx, w), TypeError, "hidden must be a torch.Tensor"),
    ]
    for args, exc, pattern in cases:
        with pytest.raises(exc, match=pattern):
            check_forward_inputs(*args, hidden_size=H, top_k=k)
    with pytest.raises(ValueError, match="shared_gate_logits must be"):
        check_forward_inputs(hidden, idx, w, H, k, shared_gate_logits=torch.zeros(4))
    with pytest.raises(TypeError, match="shared_gate_logits must be"):
        check_forward_inputs(hidden, idx, w, H, k, shared_gate_logits=torch.zeros(5, dtype=torch.int32))
    # float16 activations are accepted (converted to bf16 by the layer)
    with pytest.raises(ValueError, match="must be a CUDA tensor"):
        check_forward_inputs(hidden.half(), idx, w.to(torch.bfloat16), H, k, shared_gate_logits=torch.zeros(5, 1))


def _expert(rng, H, I, schemes=("w4a16_g128_asym",) * 3):
    return (quantize_rtn(rng.standard_normal((I, H)).astype(np.float32), schemes[0]),
            quantize_rtn(rng.standard_normal((I, H)).astype(np.float32), schemes[1]),
            quantize_rtn(rng.standard_normal((H, I)).astype(np.float32), schemes[2]))


def test_layer_host_checks():
    """Every constructor check that needs no GPU fails with a clear ValueError before any upload."""
    rng = np.random.default_rng(2)
    H, I = 256, 128
    experts = [_expert(rng, H, I) for _ in range(4)]
    with pytest.raises(ValueError, match="top_k=5 exceeds"):
        MoELayerCUDA(experts, top_k=5)
    with pytest.raises(ValueError, match="at least one routed expert"):
        MoELayerCUDA([], top_k=1)
    with pytest.raises(ValueError, match="expected \\(gate, up, down\\)"):
        MoELayerCUDA([experts[0][:2]] + experts[1:], top_k=2)
    wrong = experts[:3] + [_expert(rng, H, 256)]
    with pytest.raises(ValueError, match="expert 3: gate/up/down shapes"):
        MoELayerCUDA(wrong, top_k=2)
    with pytest.raises(ValueError, match="cannot be split"):
        MoELayerCUDA(experts, top_k=2, shared_experts=[_expert(rng, H, 192, ("w4a16_g-1_asym",) * 3)])
    g64 = experts[:3] + [_expert(rng, H, I, ("w4a16_g128_asym", "w4a16_g64_asym", "w4a16_g128_asym"))]
    with pytest.raises(ValueError, match="w4a16_g64_asym has no GPU kernel"):
        MoELayerCUDA(g64, top_k=2)
    with pytest.raises(ValueError, match="must be a CUDA device"):
        MoELayerCUDA(experts, top_k=2, device="cpu")


@pytest.mark.skipif(cuda_ops.__name__ and __import__("mxmoe").cuda_available(), reason="this machine has CUDA")
def test_layer_without_cuda_says_why():
    rng = np.random.default_rng(3)
    experts = [_expert(rng, 256, 128) for _ in range(2)]
    with pytest.raises(RuntimeError, match="_cuda"):
        MoELayerCUDA(experts, top_k=1)


# ---- benchmark helpers (mxmoe.bench_kernels), CPU side ----

def test_mixed_assign_plan_shares():
    from mxmoe import Scheme
    from mxmoe.bench_kernels import MIXED_PLANS, mixed_assign

    n_experts = 61
    for plan, parts in MIXED_PLANS.items():
        assign = mixed_assign(plan, n_experts, seed=3)
        chosen = [assign(e, b) for e in range(n_experts) for b in range(3)]
        for scheme, share in parts:
            assert abs(chosen.count(scheme) / len(chosen) - share) <= 1 / len(chosen) + 1e-9, (plan, scheme)
        assert chosen == [mixed_assign(plan, n_experts, seed=3)(e, b) for e in range(n_experts) for b in range(3)]
    decode = mixed_assign("decode-3.25bit", n_experts, seed=0)
    mean_bits = np.mean([Scheme.parse(decode(e, b)).bits_for(1408) for e in range(n_experts) for b in range(3)])
    assert abs(mean_bits - 3.25) < 0.02, mean_bits  # the ~3.25-bit weight-only decode plan


def test_geometric_means():
    from mxmoe.bench_kernels import geometric_means

    records = [{"impl": "a", "scope": "layer", "speedup_vs_bf16": 2.0},
               {"impl": "a", "scope": "layer", "speedup_vs_bf16": 8.0},
               {"impl": "a", "scope": "gemm", "speedup_vs_bf16": float("nan")},
               {"impl": "b", "scope": "layer", "us": None, "error": "x"}]
    assert geometric_means(records) == [("a", "layer", pytest.approx(4.0), 2)]


def test_bench_args_and_atomic_json(tmp_path):
    import json

    from mxmoe.bench_kernels import parse_args, write_json_atomic

    args = parse_args(["--tokens", "1", "64", "--models", "mixtral-8x7b", "--out", str(tmp_path / "k.json")])
    assert args.tokens == [1, 64] and args.models == ["mixtral-8x7b"]
    for bad in (["--tokens", "0"], ["--models", "llama"], ["--reps", "0"]):
        with pytest.raises(SystemExit):
            parse_args(bad)
    path = tmp_path / "sub" / "k.json"
    write_json_atomic(str(path), {"records": [{"us": 1.5}]})
    assert json.loads(path.read_text()) == {"records": [{"us": 1.5}]}
    assert [p.name for p in path.parent.iterdir()] == ["k.json"]  # no temp file left behind


# ---- online Hadamard factors ----

def _sylvester(p: int) -> np.ndarray:
    i = np.arange(p)
    return np.array([[(-1) ** bin(a & b).count("1") for b in i] for a in i], np.float64)


def test_kron_hadamard():
    from mxmoe.cuda_ops import kron_hadamard

    rng = np.random.default_rng(4)
    residues = {1, 3, 4, 5, 9}  # quadratic residues mod 11: Paley construction I of order 12
    Q = np.array([[0 if i == j else 1 if (j - i) % 11 in residues else -1 for j in range(11)] for i in range(11)])
    S = np.zeros((12, 12), int)
    S[0, 1:], S[1:, 0], S[1:, 1:] = 1, -1, Q
    base12 = S + np.eye(12, dtype=int)
    assert np.array_equal(base12 @ base12.T, 12 * np.eye(12))
    for base, p in ((np.ones((1, 1)), 64), (base12.astype(np.float64), 4)):
        n = base.shape[0] * p
        signs = np.where(rng.random(n) < 0.5, -1.0, 1.0)
        explicit = np.kron(base, _sylvester(p)) * signs[None, :] / np.sqrt(n)
        x = rng.standard_normal((3, n))
        np.testing.assert_allclose(kron_hadamard(x, signs, base), x @ explicit.T, atol=1e-12)


@pytest.mark.parametrize("n,seed", [(128, 7), (768, 3), (1408, 11), (256, None)])
def test_hadamard_factors(n, seed):
    hadamard = pytest.importorskip("mxmoe.hadamard")
    from mxmoe.cuda_ops import hadamard_factors, kron_hadamard

    signs, base = hadamard_factors(n, seed)
    m = base.shape[0]
    assert signs.shape == (n,) and n % m == 0 and np.array_equal(base @ base.T, m * np.eye(m))
    x = np.random.default_rng(n).standard_normal((5, n))
    np.testing.assert_allclose(kron_hadamard(x, signs, base), hadamard.hadamard_transform(x, seed=seed), atol=1e-10)


def test_layer_hadamard_host_checks():
    rng = np.random.default_rng(5)
    H, I = 256, 128
    experts = [_expert(rng, H, I) for _ in range(2)]
    good = (np.ones(I, np.float32), np.ones((1, 1), np.float32))
    with pytest.raises(ValueError, match="signs must be"):
        MoELayerCUDA(experts, top_k=1, down_hadamard=(np.ones(I - 1), good[1]), device="cpu")
    with pytest.raises(ValueError, match="signs must be"):
        MoELayerCUDA(experts, top_k=1, down_hadamard=(np.full(I, 0.5), good[1]), device="cpu")
    with pytest.raises(ValueError, match="not a Hadamard matrix"):
        MoELayerCUDA(experts, top_k=1, down_hadamard=(good[0], np.ones((2, 2))), device="cpu")
    with pytest.raises(ValueError, match="m·2\\^p"):
        MoELayerCUDA(experts, top_k=1, down_hadamard=(good[0], np.ones((3, 3))), device="cpu")
    with pytest.raises(ValueError, match="wider than the routed"):
        MoELayerCUDA(experts, top_k=1, shared_experts=[_expert(rng, H, 256)], down_hadamard=good, device="cpu")
    with pytest.raises(ValueError, match="must be a CUDA device"):  # valid factors: only the device is wrong
        MoELayerCUDA(experts, top_k=1, down_hadamard=good, device="cpu")


def test_gpu_tag():
    from mxmoe.bench_kernels import gpu_tag

    assert gpu_tag("NVIDIA H100 80GB HBM3") == "h100"
    assert gpu_tag("NVIDIA H200") == "h200"
    assert gpu_tag("NVIDIA GeForce RTX 4090") == "rtx4090"
    assert gpu_tag("Some GPU v2") == "some-gpu-v2"


def test_fused_gains():
    from mxmoe.bench_kernels import fused_gains

    rec = (lambda impl, t, us, scope="layer": {"model_shape": "m", "tokens": t, "impl": impl, "scope": scope, "us": us})
    records = [rec("mxmoe_mixed_fused", 1, 10.0), rec("mxmoe_mixed_sequential", 1, 20.0),
               rec("mxmoe_mixed_fused", 2, 10.0), rec("mxmoe_mixed_sequential", 2, 80.0),
               rec("mxmoe_mixed_fused", 3, 10.0),  # no sequential twin: ignored
               rec("mxmoe_mixed_sequential", 1, 30.0, "gemm"), rec("mxmoe_mixed_fused", 1, 10.0, "gemm")]
    assert fused_gains(records) == [("gemm", pytest.approx(3.0), 1), ("layer", pytest.approx(4.0), 2)]


def test_torch_hadamard():
    from mxmoe.cuda_ops import kron_hadamard, torch_hadamard

    rng = np.random.default_rng(6)
    for m, p in ((1, 256), (12, 8)):
        n = m * p
        base = np.ones((1, 1)) if m == 1 else None
        if base is None:
            residues = {1, 3, 4, 5, 9}
            Q = np.array([[0 if i == j else 1 if (j - i) % 11 in residues else -1 for j in range(11)]
                          for i in range(11)])
            base = np.eye(12)
            base[0, 1:], base[1:, 0], base[1:, 1:] = 1, -1, Q + np.eye(11)
        signs = np.where(rng.random(n) < 0.5, -1.0, 1.0)
        x = rng.standard_normal((2, 3, n))
        got = torch_hadamard(torch.from_numpy(x), torch.from_numpy(signs), torch.from_numpy(base)).double().numpy()
        np.testing.assert_allclose(got, kron_hadamard(x, signs, base), atol=1e-5)  # f32 math in torch_hadamard
