"""The GPU MoE layer: routing -> gather/quantize -> fused gate|up GroupGEMM -> SiLU·mul(/quantize) -> fused down
GroupGEMM -> routing-weighted combine, on torch CUDA tensors, through mxmoe._cuda (cuda/route.cu and
cuda/sm90_mixed_grouped_gemm.cu).

    layer = MoELayerCUDA(experts=[(gate_qw, up_qw, down_qw), ...], top_k=4,
                         shared_experts=[(gate_qw, up_qw, down_qw)])          # once: upload, problem tables
    out = layer(hidden, top_k_index, top_k_weights, shared_gate_logits=g)   # [T, H] bf16, no host sync

mxmoe.experts.MxMoEExperts / MxMoELinear call ``experts_forward`` / ``linear_forward`` on CUDA tensors: the layer
(or one fused GEMM, ``LinearCUDA``) is built on first use over zero-copy views of the module's packed buffer and
cached on the module; the online Hadamard of down's inputs follows the module's per-expert flags and seed.

Everything that can be decided once is decided in the constructor: packed weights are uploaded, the device problem
tables of the two fused launches are built, and the activation formats each expert group reads are fixed.
Per call the host work is O(1) Python plus 6-7 kernel launches on the current stream, and the two GEMMs' one-block
schedule kernels on two side streams that fork from it after the routing and join it before the first GEMM (they
run beside the gather; capturable in a CUDA graph like the rest); scratch buffers are cached for the largest token
count seen so far (warm up with the largest T before capturing a CUDA graph).  Decode calls (T <=
TWO_STAGE_MAX_TOKENS) of layers with many experts (>= TWO_STAGE_MIN_EXPERTS) of I <= TWO_STAGE_MAX_INTERMEDIATE whose
down blocks read bf16 without an online Hadamard run gate|up, SiLU·mul and down as ONE launch
(``mx_cuda_gemm_fused_layer``: an expert's down tiles start as soon as its gate|up tiles are stored, while other
experts' gate|up tiles still run), with one schedule kernel on a side stream.

Shared experts are expert groups whose rows are all T tokens.  A shared expert wider than the routed ones
(Qwen1.5-MoE: 5632 = 4 x 1408) is split along its intermediate dimension into chunks of the routed width I (gate/up
rows, down columns), each one more group: the GEMMs and the SiLU·mul stay uniform over rows of width I, and the
combine sums the chunks (exact math; only a down scheme that quantizes activations sees per-chunk token scales,
finer than per-token over the whole row).  The sigmoid gate of Qwen2-MoE's shared expert is applied in the combine
from logits the caller computes (``shared_gate_logits = hidden @ shared_expert_gate.weight.T``): one [T] vector.

Bad input raises before any launch: dtype / shape / device / contiguity of the tensors (``check_forward_inputs``),
and schemes without a kernel or shapes the kernels refuse (constructor).  Expert indices outside [0, E) cannot be
checked without a host sync: those (token, slot) pairs contribute nothing, the count is kept on the device
(``last_dropped``), and ``check_indices=True`` verifies them on the host first (one sync).  NaN / Inf in the
activations are not looked for on the GPU either (same reason): they propagate to the outputs of their tokens.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any, Optional, Sequence

import numpy as np

from ._scheme import Scheme, as_scheme, scheme_id

__all__ = ["MoELayerCUDA", "LinearCUDA", "PackedBlock", "act_format", "check_forward_inputs", "experts_forward",
           "hadamard_factors", "linear_forward", "split_intermediate", "torch_hadamard",
           "two_stage_advised", "workspace_layout", "ACT_BF16", "ACT_INT8", "ACT_FP8", "ACT_INT4", "ACT_FORMAT_NAMES"]

# enum mx_cuda_act_format (cuda/mx_cuda.h)
ACT_BF16, ACT_INT8, ACT_FP8, ACT_INT4 = 0, 1, 2, 3
ACT_FORMAT_NAMES = ("bf16", "int8", "fp8", "int4")
# enum mx_cuda_weight_dtype (cuda/route.cuh)
_WEIGHT_DTYPE_CODES = {"bfloat16": 0, "float32": 1, "float16": 2}
# Kernel limits (cuda/route.cuh): row length and expert groups of the routing kernels.
MAX_ROW = 32768
MAX_GROUPS = 1024
# Calls of at most this many tokens run both GEMMs and the SiLU·mul in one launch (mx_cuda_gemm_fused_layer) when
# every down problem reads bf16, there is no online Hadamard, the layer has at least TWO_STAGE_MIN_EXPERTS routed
# experts and an intermediate size of at most TWO_STAGE_MAX_INTERMEDIATE (MoELayerCUDA.two_stage);
# MXMOE_LAYER_FUSED=0 turns it off, =1 on wherever it applies.
TWO_STAGE_MAX_TOKENS = 16
# Measured on the H100, whole layer w4a16_g128 with and without the one launch (bench/two_stage_threshold.py,
# bench/results/two-stage-threshold-h100.json; NOTES session 11): 60 experts top-4 H 2048 (Qwen-like) gain at
# I = 1408 and 2816 at 1, 8 and 16 tokens (2-12 %), at I = 4096 only at 8-16 tokens (8 %; 31 % slower at 1 token),
# and lose from I = 8192 (but 3 % at 14336 and 16 tokens); 8 experts top-2 H 4096 (Mixtral-like) hardly gain (4 % at
# I = 1408 and 8 tokens, 10 % slower at 1 token; 5-45 % slower from I = 2816).  Expert counts between 8 and 60 are not
# measured.
TWO_STAGE_MAX_INTERMEDIATE = 2816
TWO_STAGE_MIN_EXPERTS = 32


def two_stage_advised(tokens: int, intermediate_size: int, n_experts: int) -> bool:
    """Whether a layer of `n_experts` routed experts whose down blocks read bf16 (no online Hadamard) should run a call
    of `tokens` tokens as one two-stage launch (mx_cuda_gemm_fused_layer): decode (tokens <= TWO_STAGE_MAX_TOKENS),
    n_experts >= TWO_STAGE_MIN_EXPERTS and I <= TWO_STAGE_MAX_INTERMEDIATE.  The one launch lets an expert's down
    tiles start while other experts' gate_up tiles still run, which pays where many small expert groups end at
    different times; but one CTA writes each expert's h rows while its down tiles wait, and the split tail cannot cut
    down's tiles apart from gate_up's.  Both cost most where I is large or the experts are few and large (Mixtral:
    h rows of 14336, down tiles that two launches split at 1-4 tokens).  MXMOE_LAYER_FUSED=0 turns the launch off,
    =1 on for every decode call."""
    if tokens > TWO_STAGE_MAX_TOKENS:
        return False
    switch = os.environ.get("MXMOE_LAYER_FUSED")
    if switch in ("0", "1"):
        return switch == "1"
    return intermediate_size <= TWO_STAGE_MAX_INTERMEDIATE and n_experts >= TWO_STAGE_MIN_EXPERTS


def act_format(scheme: Scheme | str) -> int:
    """The activation format a scheme's GEMM reads: bf16 (a16), int8 / fp8-e4m3 (a8) or packed int4 (a4)."""
    s = as_scheme(scheme)
    if s.a_bits == 16:
        return ACT_BF16
    if s.a_bits == 8:
        return ACT_FP8 if s.fmt == "fp8" else ACT_INT8
    if s.a_bits == 4:
        return ACT_INT4
    raise ValueError(f"scheme {s} has no activation format on the GPU (a_bits={s.a_bits})")


def _contiguous(a: Any) -> Any:
    """A contiguous copy-if-needed of a NumPy array or a torch tensor (the bench builds blocks on the device)."""
    if a is None:
        return None
    return a.contiguous() if hasattr(a, "contiguous") else np.ascontiguousarray(a)


@dataclass(frozen=True)
class PackedBlock:
    """One linear block's packed buffers (the QuantizedWeight fields), host side: qweight u32 [N, K/32*W] (u16 [N, K]
    for w16a16), scales f16 [K/G', N] or None, zeros u8 [K/G', N] or None.  The buffers may also be torch tensors
    already on the layer's device, of the same shapes with int32 / int16 in place of uint32 / uint16 (no copy)."""

    scheme: Scheme
    out_features: int
    in_features: int
    qweight: np.ndarray
    scales: Optional[np.ndarray]
    zeros: Optional[np.ndarray]

    @staticmethod
    def of(weight: Any) -> "PackedBlock":
        """From a mxmoe.quant.QuantizedWeight (or anything with its fields)."""
        for field in ("scheme", "out_features", "in_features", "qweight", "scales", "zeros"):
            if not hasattr(weight, field):
                raise TypeError(f"expected a QuantizedWeight, got {type(weight).__name__} without .{field}")
        return PackedBlock(as_scheme(weight.scheme), int(weight.out_features), int(weight.in_features),
                           weight.qweight, weight.scales, weight.zeros)

    def rows(self, start: int, stop: int) -> "PackedBlock":
        """Output channels [start, stop): rows of qweight, columns of scales / zeros."""
        cut = (lambda a: None if a is None else _contiguous(a[:, start:stop]))
        return PackedBlock(self.scheme, stop - start, self.in_features, _contiguous(self.qweight[start:stop]),
                           cut(self.scales), cut(self.zeros))

    def columns(self, start: int, stop: int) -> "PackedBlock":
        """Input features [start, stop) (multiples of 32 and of the group size): a run of packs of every row, and
        the matching scale groups (per-channel scales are shared by every chunk)."""
        s, width = self.scheme, stop - start
        if start % 32 or width % 32 or (s.group_size > 0 and (start % s.group_size or width % s.group_size)):
            raise ValueError(f"cannot split K={self.in_features} of {s} at [{start}, {stop}): bounds must be "
                             f"multiples of 32 and of the group size")
        if s.w_bits == 16:
            return PackedBlock(s, self.out_features, width, _contiguous(self.qweight[:, start:stop]), None, None)
        words = (lambda c: c // 32 * s.w_bits)
        qweight = _contiguous(self.qweight[:, words(start):words(stop)])
        if s.group_size > 0:
            g = s.group_size
            cut = (lambda a: None if a is None else _contiguous(a[start // g:stop // g]))
        else:
            cut = _contiguous
        return PackedBlock(s, self.out_features, width, qweight, cut(self.scales), cut(self.zeros))


def split_intermediate(gate: PackedBlock, up: PackedBlock, down: PackedBlock,
                       width: int) -> list[tuple[PackedBlock, PackedBlock, PackedBlock]]:
    """A (shared) expert of intermediate size I_s as I_s / width experts of intermediate `width`: chunk c takes gate
    and up rows [c·w, (c+1)·w) and down columns [c·w, (c+1)·w); the sum of the chunks' outputs is the expert's."""
    inter = gate.out_features
    if inter % width:
        raise ValueError(f"a shared expert of intermediate size {inter} cannot be split into chunks of the routed "
                         f"experts' intermediate size {width} (not a multiple)")
    return [(gate.rows(c, c + width), up.rows(c, c + width), down.columns(c, c + width))
            for c in range(0, inter, width)]


def _fwht(x: np.ndarray) -> np.ndarray:
    """Unnormalized Sylvester Walsh-Hadamard transform along the last axis (length a power of two)."""
    y = np.array(x, dtype=np.float64, copy=True)
    n = y.shape[-1]
    h = 1
    while h < n:
        v = y.reshape(*y.shape[:-1], n // (2 * h), 2, h)
        a, b = v[..., 0, :].copy(), v[..., 1, :].copy()
        v[..., 0, :], v[..., 1, :] = a + b, a - b
        h *= 2
    return y


def kron_hadamard(x: np.ndarray, signs: np.ndarray, base: np.ndarray) -> np.ndarray:
    """What the device computes (cuda/route.cuh): (B_m ⊗ H_{2^p}) · diag(signs) · x / √n along the last axis."""
    n, m = x.shape[-1], base.shape[0]
    z = _fwht((np.asarray(x, np.float64) * signs).reshape(*x.shape[:-1], m, n // m))
    return (np.asarray(base, np.float64) @ z).reshape(x.shape) / np.sqrt(n)


def hadamard_factors(n: int, seed: Optional[int]) -> tuple[np.ndarray, np.ndarray]:
    """(signs f32 [n], base f32 [m, m]) of mxmoe.hadamard_transform(·, seed=seed) for the device kernel: that
    transform is H_n·D with H_n = (H_m ⊗ H_{2^k}) / √n, so D is hadamard_signs(n, seed) and column a of H_m is
    read off the transform of the unit vector e_{a·2^k} (H_{2^k}'s first column is all ones).  The factors are
    checked against hadamard_transform on random vectors; ValueError if the definitions ever diverge."""
    from . import hadamard  # the gptq helper's module: the one definition of the rotation

    m = int(hadamard.hadamard_base_order(n))
    p = n // m
    signs = (np.ones(n) if seed is None else hadamard.hadamard_signs(n, seed)).astype(np.float32)
    units = np.zeros((m, n), np.float64)
    units[np.arange(m), np.arange(m) * p] = 1.0
    columns = hadamard.hadamard_transform(units, seed=seed)  # row a = H_n D e_{a p} = d_{a p} (H_m[:, a] ⊗ 1) / √n
    base = (columns[:, ::p].T * np.sqrt(n) * signs[np.arange(m) * p][None, :]).round()
    if not np.array_equal(np.abs(base), np.ones((m, m))):
        raise ValueError(f"mxmoe.hadamard_transform of size {n} is not (H_m ⊗ H_2^k)·D as expected")
    probe = np.random.default_rng(0).standard_normal((4, n))
    err = np.abs(kron_hadamard(probe, signs, base) - hadamard.hadamard_transform(probe, seed=seed)).max()
    if err > 1e-9 * np.sqrt(n):
        raise ValueError(f"Hadamard factors of size {n} do not reproduce mxmoe.hadamard_transform (max error {err})")
    return signs, base.astype(np.float32)


def workspace_layout(tokens: int, top_k: int, n_experts: int, n_shared_groups: int, hidden: int,
                     intermediate: int, gate_up_formats: int, down_formats: int, route_workspace_bytes: int = 0,
                     gemm_workspace_bytes: int = 0) -> dict[str, tuple[tuple[int, ...], str]]:
    """Every scratch buffer of one layer call for up to `tokens` tokens: name -> (shape, torch dtype name).
    Rows = tokens·top_k routed + tokens·n_shared_groups shared.  `*_formats` are bit masks (1 << ACT_*) of the
    activation formats the gate|up and the down GEMMs read."""
    rows = tokens * (top_k + n_shared_groups)
    layout: dict[str, tuple[tuple[int, ...], str]] = {
        "row_offsets": ((n_experts + n_shared_groups + 1,), "int32"),
        "perm_token": ((rows,), "int32"),
        "inv_perm": ((tokens * top_k,), "int32"),
        "dropped": ((1,), "int32"),
        "route_workspace": ((route_workspace_bytes,), "uint8"),
        "gemm_workspace": ((gemm_workspace_bytes,), "uint8"),  # the gate|up GEMM's schedule (and split tail)
        "gemm_workspace_down": ((gemm_workspace_bytes,), "uint8"),  # the down GEMM's, made at the same time
        "y_gate_up": ((rows, 2 * intermediate), "bfloat16"),
        "y_down": ((rows, hidden), "bfloat16"),
    }
    for stage, width, mask in (("x", hidden, gate_up_formats), ("h", intermediate, down_formats)):
        if mask & (1 << ACT_BF16):
            layout[f"{stage}_bf16"] = ((rows, width), "bfloat16")
        if mask & (1 << ACT_INT8):
            layout[f"{stage}_int8"] = ((rows, width), "int8")
            layout[f"{stage}_scale_int8"] = ((rows,), "float32")
            layout[f"{stage}_rowsum_int8"] = ((rows,), "int32")  # Σ codes per row: the int8 GEMM's zero-point term
        if mask & (1 << ACT_FP8):
            layout[f"{stage}_fp8"] = ((rows, width), "uint8")
            layout[f"{stage}_scale_fp8"] = ((rows,), "float32")
        if mask & (1 << ACT_INT4):
            layout[f"{stage}_int4"] = ((rows, width // 2), "uint8")
            layout[f"{stage}_scale_int4"] = ((rows,), "float32")
    return layout


def _describe(t: Any) -> str:
    return f"{tuple(t.shape)} {str(t.dtype).replace('torch.', '')} on {t.device}"


def check_forward_inputs(hidden: Any, top_k_index: Any, top_k_weights: Any, hidden_size: int, top_k: int,
                         shared_gate_logits: Any = None) -> None:
    """ValueError / TypeError naming the argument for anything the kernels cannot take: hidden [T, H] bf16|f16,
    top_k_index [T, k] int64, top_k_weights [T, k] bf16|f32|f16, shared_gate_logits [T] or [T, 1]; all contiguous
    and on one CUDA device.  Device placement is checked last so that CPU tensors exercise the other checks."""
    import torch

    for name, t in (("hidden", hidden), ("top_k_index", top_k_index), ("top_k_weights", top_k_weights)) + (
            (("shared_gate_logits", shared_gate_logits),) if shared_gate_logits is not None else ()):
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
    if hidden.dtype not in (torch.bfloat16, torch.float16):
        raise TypeError(f"hidden must be bfloat16 (or float16), got {_describe(hidden)}")
    if hidden.dim() != 2 or hidden.shape[1] != hidden_size:
        raise ValueError(f"hidden must be [T, {hidden_size}], got {_describe(hidden)}")
    T = hidden.shape[0]
    if top_k_index.dtype != torch.int64:
        raise TypeError(f"top_k_index must be int64, got {_describe(top_k_index)}")
    if top_k_index.shape != (T, top_k):
        raise ValueError(f"top_k_index must be [T={T}, top_k={top_k}], got {_describe(top_k_index)}")
    if top_k_weights.dtype not in (torch.bfloat16, torch.float32, torch.float16):
        raise TypeError(f"top_k_weights must be bfloat16, float32 or float16, got {_describe(top_k_weights)}")
    if top_k_weights.shape != (T, top_k):
        raise ValueError(f"top_k_weights must be [T={T}, top_k={top_k}], got {_describe(top_k_weights)}")
    if shared_gate_logits is not None:
        if shared_gate_logits.dtype not in (torch.bfloat16, torch.float32, torch.float16):
            raise TypeError(f"shared_gate_logits must be bfloat16, float32 or float16, got "
                            f"{_describe(shared_gate_logits)}")
        if shared_gate_logits.shape not in ((T,), (T, 1)):
            raise ValueError(f"shared_gate_logits must be [T={T}] or [T, 1], got {_describe(shared_gate_logits)}")
    named = [("hidden", hidden), ("top_k_index", top_k_index), ("top_k_weights", top_k_weights)]
    if shared_gate_logits is not None:
        named.append(("shared_gate_logits", shared_gate_logits))
    for name, t in named:
        if not t.is_contiguous():
            raise ValueError(f"{name} must be contiguous (call .contiguous()), got strides {t.stride()}")
    for name, t in named:
        if t.device.type != "cuda":
            raise ValueError(f"{name} must be a CUDA tensor, got {_describe(t)}")
        if t.device != hidden.device:
            raise ValueError(f"{name} is on {t.device} but hidden is on {hidden.device}")


def _cuda_module():
    from ._cuda_status import cuda_status

    status = cuda_status()
    if not status.startswith("ok"):
        raise RuntimeError(status)
    from . import _cuda  # type: ignore[attr-defined]

    return _cuda


def _check_hadamard(down_hadamard: tuple[np.ndarray, np.ndarray], I: int, chunked_shared: bool
                    ) -> tuple[np.ndarray, np.ndarray]:
    """Validate (signs [I] ±1, base [m, m] ±1 Hadamard, I = m·2^p, m <= 64) on the host; f32 copies."""
    if chunked_shared:
        raise ValueError("down_hadamard with a shared expert wider than the routed ones is not supported: the "
                         "online transform is over each I-wide chunk, the offline rotation over the whole row")
    signs = np.asarray(down_hadamard[0], np.float32)
    base = np.atleast_2d(np.asarray(down_hadamard[1], np.float32))
    m = base.shape[0]
    if signs.shape != (I,) or not np.all(np.abs(signs) == 1):
        raise ValueError(f"down_hadamard signs must be ±1 of shape ({I},), got {signs.shape}")
    if base.shape != (m, m) or not np.all(np.abs(base) == 1) or I % m or (I // m) & (I // m - 1) or m > 64:
        raise ValueError(f"down_hadamard base must be an m x m ±1 matrix with I={I} = m·2^p and m <= 64, "
                         f"got {base.shape}")
    if not np.array_equal(base @ base.T, m * np.eye(m, dtype=np.float32)):
        raise ValueError(f"down_hadamard base ({m}x{m}) is not a Hadamard matrix (B·Bᵀ != m·I)")
    return signs, base


class MoELayerCUDA:
    """One MoE layer of packed experts on a CUDA device (see the module docstring)."""

    def __init__(self, experts: Sequence[Sequence[Any]], top_k: int,
                 shared_experts: Sequence[Sequence[Any]] = (), device: Any = "cuda",
                 down_hadamard: Optional[tuple[np.ndarray, np.ndarray]] = None,
                 down_hadamard_experts: Optional[Sequence[bool]] = None) -> None:
        """experts: per routed expert (gate, up, down) QuantizedWeights ([I, H], [I, H], [H, I]); shared_experts:
        the same per shared expert ([I_s, H] ..., I_s a multiple of I); down_hadamard: (signs f32 [I] of ±1,
        base f32 [m, m] ±1 Hadamard with I = m·2^p) to rotate down's inputs online, y = (B ⊗ H_2^p)·diag(signs)·h/√I
        (cuda/route.cuh), matching down weights rotated offline by the same transform; down_hadamard_experts: which
        experts (routed, then shared) get it (default: all)."""
        import torch

        groups = self._plan(experts, top_k, shared_experts)  # host-only checks first: no GPU needed to fail them
        group_flags = None
        if down_hadamard is not None:
            n_all = self.n_experts + self.n_shared_experts
            flags = [True] * n_all if down_hadamard_experts is None else [bool(f) for f in down_hadamard_experts]
            if len(flags) != n_all:
                raise ValueError(f"down_hadamard_experts has {len(flags)} flags for {self.n_experts} experts + "
                                 f"{self.n_shared_experts} shared")
            chunked = self.n_shared_groups != self.n_shared_experts and any(flags[self.n_experts:])
            down_hadamard = _check_hadamard(down_hadamard, self.intermediate_size, chunked)
            chunks = self.n_shared_groups // max(self.n_shared_experts, 1)
            group_flags = np.array(flags[:self.n_experts] + [f for f in flags[self.n_experts:] for _ in range(chunks)],
                                   np.uint8)
        self.device = torch.device(device)
        if self.device.type != "cuda":
            raise ValueError(f"device must be a CUDA device, got {self.device}")
        self._cuda = _cuda_module()
        if self.device.index is None:
            self.device = torch.device("cuda", torch.cuda.current_device())
        self._upload(groups, down_hadamard, group_flags)
        self._workspace: dict[str, Any] = {}
        self._capacity = 0
        self._schedule_streams: Any = None  # two side streams, made on first use (forward)

    # ---- construction -------------------------------------------------------------------------------------

    def _plan(self, experts: Sequence[Sequence[Any]], top_k: int,
              shared_experts: Sequence[Sequence[Any]]) -> list[tuple[PackedBlock, PackedBlock, PackedBlock]]:
        if not isinstance(top_k, int) or top_k < 1:
            raise ValueError(f"top_k={top_k!r} must be a positive int")
        if len(experts) == 0:
            raise ValueError("a MoE layer needs at least one routed expert")
        if len(experts) < top_k:
            raise ValueError(f"top_k={top_k} exceeds the {len(experts)} experts")
        groups: list[tuple[PackedBlock, PackedBlock, PackedBlock]] = []
        for e, blocks in enumerate(experts):
            if len(blocks) != 3:
                raise ValueError(f"expert {e}: expected (gate, up, down), got {len(blocks)} blocks")
            groups.append(tuple(PackedBlock.of(b) for b in blocks))  # type: ignore[arg-type]
        gate0, _, down0 = groups[0]
        self.hidden_size, self.intermediate_size = gate0.in_features, gate0.out_features
        H, I = self.hidden_size, self.intermediate_size
        for e, (gate, up, down) in enumerate(groups):
            shapes = [(gate.out_features, gate.in_features), (up.out_features, up.in_features),
                      (down.out_features, down.in_features)]
            if shapes != [(I, H), (I, H), (H, I)]:
                raise ValueError(f"expert {e}: gate/up/down shapes {shapes}, expected [(I, H), (I, H), (H, I)] with "
                                 f"I={I}, H={H} (expert 0's)")
        self.n_experts, self.top_k = len(groups), top_k
        self.n_shared_experts = len(shared_experts)
        for j, blocks in enumerate(shared_experts):
            if len(blocks) != 3:
                raise ValueError(f"shared expert {j}: expected (gate, up, down), got {len(blocks)} blocks")
            gate, up, down = (PackedBlock.of(b) for b in blocks)
            I_s = gate.out_features
            if (gate.in_features, up.out_features, up.in_features, down.out_features, down.in_features) != (
                    H, I_s, H, H, I_s):
                raise ValueError(f"shared expert {j}: shapes gate {gate.out_features}x{gate.in_features}, up "
                                 f"{up.out_features}x{up.in_features}, down {down.out_features}x{down.in_features} "
                                 f"do not form an MLP of hidden size {H}")
            groups.extend(split_intermediate(gate, up, down, I))
        self.n_shared_groups = len(groups) - self.n_experts
        if len(groups) > MAX_GROUPS:
            raise ValueError(f"{self.n_experts} experts + {self.n_shared_groups} shared groups exceed {MAX_GROUPS}")
        for name, size in (("hidden size", H), ("intermediate size", I)):
            if size % 8 or size > MAX_ROW:
                raise ValueError(f"{name} {size} must be a multiple of 8 and <= {MAX_ROW} for the routing kernels")
        for g, blocks in enumerate(groups):
            for block_name, block in zip(("gate", "up", "down"), blocks):
                if not block.scheme.is_candidate:
                    raise ValueError(f"group {g} {block_name}: scheme {block.scheme} has no GPU kernel (not a "
                                     f"candidate scheme)")
        return groups

    def _upload(self, groups: list[tuple[PackedBlock, PackedBlock, PackedBlock]],
                down_hadamard: Optional[tuple[np.ndarray, np.ndarray]],
                group_flags: Optional[np.ndarray] = None) -> None:
        import torch

        I = self.intermediate_size
        self._tensors: list[Any] = []  # keeps every device buffer a problem table points to alive

        def put(array: Any) -> int:
            if array is None:
                return 0
            if isinstance(array, torch.Tensor):
                if array.device != self.device or not array.is_contiguous():
                    raise ValueError(f"a packed buffer given as a tensor must be contiguous on {self.device}, got "
                                     f"{_describe(array)}")
                self._tensors.append(array)
                return array.data_ptr()
            a = np.ascontiguousarray(array)
            if a.dtype == np.uint32:
                a = a.view(np.int32)
            elif a.dtype == np.uint16:
                a = a.view(np.int16)
            t = torch.from_numpy(a).to(self.device)
            self._tensors.append(t)
            return t.data_ptr()

        gate_up: list[tuple] = []
        down: list[tuple] = []
        gu_formats = np.zeros(len(groups), np.uint8)
        down_formats = np.zeros(len(groups), np.uint8)
        for g, (gate_b, up_b, down_b) in enumerate(groups):
            for block, out_col, table in ((gate_b, 0, gate_up), (up_b, I, gate_up), (down_b, 0, down)):
                table.append((scheme_id(block.scheme), g, block.out_features, block.in_features, out_col,
                              put(block.qweight), put(block.scales), put(block.zeros)))
            gu_formats[g] = (1 << act_format(gate_b.scheme)) | (1 << act_format(up_b.scheme))
            down_formats[g] = 1 << act_format(down_b.scheme)
        self.group_schemes = [tuple(b.scheme.name for b in blocks) for blocks in groups]
        nbytes = (lambda a: 0 if a is None else int(a.nbytes if isinstance(a, np.ndarray) else
                                                    a.numel() * a.element_size()))
        self._group_bytes = [sum(nbytes(b.qweight) + nbytes(b.scales) + nbytes(b.zeros) for b in blocks)
                             for blocks in groups]
        self.gate_up_formats = int(np.bitwise_or.reduce(gu_formats))
        self.down_formats = int(np.bitwise_or.reduce(down_formats))
        self._gu_formats = torch.from_numpy(gu_formats).to(self.device)
        self._down_formats = torch.from_numpy(down_formats).to(self.device)
        self._gate_up_tables = self._tables(gate_up)
        self._down_tables = self._tables(down)
        # The two-stage decode launch's table: the gate_up table's records, then the down table's (one device copy)
        self._layer_table = None
        if (self.down_formats == 1 << ACT_BF16 and down_hadamard is None and
                len(gate_up) + len(down) <= self._cuda.GEMM_MAX_PROBLEMS):
            self._layer_table = torch.cat([self._gate_up_tables["fused"][0], self._down_tables["fused"][0]])
        self._hadamard = None
        if down_hadamard is not None:
            signs, base = down_hadamard
            m = base.shape[0]
            signs_t, base_t = torch.from_numpy(signs).to(self.device), torch.from_numpy(base).to(self.device)
            mask_t = torch.from_numpy(group_flags if group_flags is not None else
                                      np.ones(len(groups), np.uint8)).to(self.device)
            self._tensors += [signs_t, base_t, mask_t]
            self._hadamard = (signs_t.data_ptr(), base_t.data_ptr(), m, mask_t.data_ptr())

    def _tables(self, problems: list[tuple]) -> dict[str, Any]:
        """The fused table (every problem) and one table per scheme (the sequential baseline), on the device."""
        import torch

        def device_table(subset: list[tuple]) -> tuple[Any, tuple]:
            table, info = self._cuda.gemm_problems_pack(subset)
            t = torch.frombuffer(bytearray(table), dtype=torch.uint8).to(self.device)
            return t, info

        per_scheme: dict[int, list[tuple]] = {}
        for p in problems:
            per_scheme.setdefault(p[0], []).append(p)
        return {"fused": device_table(problems), "n_problems": len(problems),
                "per_scheme": [device_table(subset) for _, subset in sorted(per_scheme.items())]}

    # ---- per call --------------------------------------------------------------------------------------------

    def _buffers(self, tokens: int) -> dict[str, Any]:
        """Scratch for `tokens` tokens, reallocated only when `tokens` exceeds the cached capacity."""
        import torch

        if tokens <= self._capacity:
            return self._workspace
        rows = tokens * (self.top_k + self.n_shared_groups)
        n_gu, n_down = self._gate_up_tables["n_problems"], self._down_tables["n_problems"]
        # the two-stage launch's table holds both (its workspace is the largest), else either table alone
        gemm_ws = self._cuda.gemm_workspace_bytes(rows, n_gu + n_down if self._layer_table is not None
                                                  else max(n_gu, n_down))
        layout = workspace_layout(tokens, self.top_k, self.n_experts, self.n_shared_groups, self.hidden_size,
                                  self.intermediate_size, self.gate_up_formats, self.down_formats,
                                  self._cuda.route_workspace_bytes(tokens, self.top_k, self.n_experts), gemm_ws)
        self._workspace = {}  # drop the old buffers first: peak memory = one workspace
        self._workspace = {name: torch.empty(shape, dtype=getattr(torch, dtype), device=self.device)
                           for name, (shape, dtype) in layout.items()}
        self._capacity = tokens
        return self._workspace

    @staticmethod
    def _acts(ws: dict[str, Any], stage: str, width: int) -> tuple:
        ptr = (lambda name: ws[name].data_ptr() if name in ws else 0)
        return (ptr(f"{stage}_bf16"), ptr(f"{stage}_int8"), ptr(f"{stage}_fp8"), ptr(f"{stage}_int4"),
                ptr(f"{stage}_scale_int8"), ptr(f"{stage}_scale_fp8"), ptr(f"{stage}_scale_int4"), width,
                ptr(f"{stage}_rowsum_int8"))

    def _gemm(self, tables: dict[str, Any], ws: dict[str, Any], n_rows: int, acts: tuple, y: Any,
              sequential: bool, stream: int, part: str = "all", workspace: str = "gemm_workspace") -> None:
        n_groups = self.n_experts + self.n_shared_groups
        for table, info in (tables["per_scheme"] if sequential else [tables["fused"]]):
            self._cuda.gemm_fused(table.data_ptr(), info, ws["row_offsets"].data_ptr(), n_groups, n_rows, acts,
                                  y.data_ptr(), y.shape[1], ws[workspace].data_ptr(), ws[workspace].numel(), stream,
                                  part)

    def _gemm_layer(self, ws: dict[str, Any], n_rows: int, x_acts: tuple, stream: int, part: str) -> None:
        """Both GEMMs and the SiLU·mul between them in one two-stage launch (or its schedule)."""
        self._cuda.gemm_fused_layer(
            self._layer_table.data_ptr(), self._gate_up_tables["fused"][1], self._down_tables["fused"][1],
            ws["row_offsets"].data_ptr(), self.n_experts + self.n_shared_groups, n_rows, x_acts,
            ws["y_gate_up"].data_ptr(), ws["y_gate_up"].shape[1], ws["h_bf16"].data_ptr(), ws["h_bf16"].shape[1],
            self.intermediate_size, ws["y_down"].data_ptr(), ws["y_down"].shape[1],
            ws["gemm_workspace"].data_ptr(), ws["gemm_workspace"].numel(), stream, part)

    def two_stage(self, tokens: int) -> bool:
        """Whether a call of `tokens` tokens runs its two GEMMs and the SiLU·mul as one launch: down reads bf16
        without an online Hadamard, and `two_stage_advised(tokens, I, n_experts)`."""
        return self._layer_table is not None and two_stage_advised(tokens, self.intermediate_size, self.n_experts)

    def forward(self, hidden: Any, top_k_index: Any, top_k_weights: Any, shared_gate_logits: Any = None, *,
                sequential: bool = False, check_indices: bool = False) -> Any:
        """out [T, H] (hidden's dtype) = Σ_slot w·expert(hidden) + sigmoid(shared_gate_logits)·Σ shared experts.
        `sequential=True` launches each scheme's problems separately (the baseline of the fused kernel)."""
        import torch

        check_forward_inputs(hidden, top_k_index, top_k_weights, self.hidden_size, self.top_k, shared_gate_logits)
        if hidden.device != self.device:
            raise ValueError(f"hidden is on {hidden.device} but the layer's weights are on {self.device}")
        if check_indices and top_k_index.numel():
            lo, hi = int(top_k_index.min()), int(top_k_index.max())
            if lo < 0 or hi >= self.n_experts:
                raise ValueError(f"top_k_index has expert indices in [{lo}, {hi}], outside [0, {self.n_experts})")
        out_dtype = hidden.dtype
        if hidden.dtype != torch.bfloat16:
            hidden = hidden.to(torch.bfloat16)
        T, H, I, k = hidden.shape[0], self.hidden_size, self.intermediate_size, self.top_k
        out = torch.empty((T, H), dtype=torch.bfloat16, device=self.device)
        if T == 0:
            return out.to(out_dtype)
        ws = self._buffers(T)
        stream = torch.cuda.current_stream(self.device).cuda_stream
        n_rows = T * (k + self.n_shared_groups)
        n_groups = self.n_experts + self.n_shared_groups
        cuda = self._cuda
        cuda.route_topk(top_k_index.data_ptr(), T, k, self.n_experts, self.n_shared_groups,
                        ws["row_offsets"].data_ptr(), ws["perm_token"].data_ptr(), ws["inv_perm"].data_ptr(),
                        ws["dropped"].data_ptr(), ws["route_workspace"].data_ptr(), ws["route_workspace"].numel(),
                        stream)
        x_acts, h_acts = self._acts(ws, "x", H), self._acts(ws, "h", I)
        main = torch.cuda.current_stream(self.device)
        one_launch = not sequential and self.two_stage(T)
        schedules = []
        if not sequential:
            # The GEMMs' tile schedules depend only on the routing: compute them on side streams while the
            # activations are gathered, so no one-block schedule kernel sits between two kernels of the layer
            # (graph-capturable: the side streams fork from and join back into the current one).  They join before
            # the first GEMM: a schedule kernel still running beside a GEMM holds an SM's room for one of its CTAs,
            # which then starts late (measured: Mixtral's mixed plan at 1 token 392 -> 423 µs).
            if self._schedule_streams is None:
                self._schedule_streams = (torch.cuda.Stream(self.device), torch.cuda.Stream(self.device))
            if one_launch:  # both GEMMs and the SiLU·mul in one launch: one schedule
                schedules = [lambda s: self._gemm_layer(ws, n_rows, x_acts, s, "schedule")]
            else:
                schedules = [lambda s, job=job: self._gemm(job[0], ws, n_rows, job[1], job[2], False, s, "schedule",
                                                           job[3])
                             for job in ((self._gate_up_tables, x_acts, ws["y_gate_up"], "gemm_workspace"),
                                         (self._down_tables, h_acts, ws["y_down"], "gemm_workspace_down"))]
            for side, schedule in zip(self._schedule_streams, schedules):
                side.wait_stream(main)
                with torch.cuda.stream(side):
                    schedule(side.cuda_stream)
        cuda.route_gather_quant(hidden.data_ptr(), H, T, H, ws["perm_token"].data_ptr(), n_rows,
                                ws["row_offsets"].data_ptr(), n_groups, self._gu_formats.data_ptr(), x_acts, stream)
        for side in (self._schedule_streams or ())[:len(schedules)]:
            main.wait_stream(side)
        if one_launch:
            self._gemm_layer(ws, n_rows, x_acts, stream, "compute")
        else:
            part = "all" if sequential else "compute"
            self._gemm(self._gate_up_tables, ws, n_rows, x_acts, ws["y_gate_up"], sequential, stream, part)
            cuda.route_act_mul_quant(ws["y_gate_up"].data_ptr(), 2 * I, n_rows, I, ws["row_offsets"].data_ptr(),
                                     n_groups, self._down_formats.data_ptr(), self._hadamard, h_acts, stream)
            self._gemm(self._down_tables, ws, n_rows, h_acts, ws["y_down"], sequential, stream, part,
                       "gemm_workspace_down")
        gate_ptr, gate_dtype = 0, 0
        if shared_gate_logits is not None and self.n_shared_groups:
            gate_ptr = shared_gate_logits.data_ptr()
            gate_dtype = _WEIGHT_DTYPE_CODES[str(shared_gate_logits.dtype).replace("torch.", "")]
        cuda.route_combine(ws["y_down"].data_ptr(), H, T, H, k, ws["inv_perm"].data_ptr(), top_k_weights.data_ptr(),
                           _WEIGHT_DTYPE_CODES[str(top_k_weights.dtype).replace("torch.", "")],
                           ws["row_offsets"].data_ptr(), self.n_experts, self.n_shared_groups, gate_ptr, gate_dtype,
                           True, out.data_ptr(), H, stream)
        return out if out_dtype == torch.bfloat16 else out.to(out_dtype)

    __call__ = forward

    def gemm_only(self, tokens: int, sequential: bool = False, stage: Optional[str] = None) -> None:
        """Re-run only the fused GEMM launches of the last forward call of `tokens` tokens, on its buffers (the
        "gemm" scope of the benchmark: routing, quantization and combine excluded); `stage` "gate_up" or "down"
        runs one of the two."""
        import torch

        if tokens < 1 or tokens > self._capacity:
            raise ValueError(f"tokens={tokens}: call forward with at least this many tokens first "
                             f"(capacity {self._capacity})")
        if stage not in (None, "gate_up", "down"):
            raise ValueError(f"stage={stage!r} must be None, 'gate_up' or 'down'")
        ws, stream = self._workspace, torch.cuda.current_stream(self.device).cuda_stream
        n_rows = tokens * (self.top_k + self.n_shared_groups)
        if stage in (None, "gate_up"):
            self._gemm(self._gate_up_tables, ws, n_rows, self._acts(ws, "x", self.hidden_size), ws["y_gate_up"],
                       sequential, stream)
        if stage in (None, "down"):
            self._gemm(self._down_tables, ws, n_rows, self._acts(ws, "h", self.intermediate_size), ws["y_down"],
                       sequential, stream)

    def weight_bytes(self, groups: Optional[Sequence[int]] = None) -> int:
        """Bytes of the packed buffers of the given expert groups (all by default): what a GEMM must read."""
        sizes = self._group_bytes
        return int(sum(sizes) if groups is None else sum(sizes[g] for g in groups))

    @property
    def last_dropped(self) -> Any:
        """Device int32 [1]: (token, slot) pairs of the last call whose expert index was out of range."""
        return self._workspace.get("dropped")


# ---------------------------------------------------------------------------------------------------------------
# transformers integration: the CUDA path of mxmoe.experts.MxMoEExperts / MxMoELinear
# ---------------------------------------------------------------------------------------------------------------

_PACKED_PARTS = ("qweight", "scales", "zeros")  # the order of mxmoe.experts' segments table
_SILU_NAMES = ("silu", "swish")


def _segment_block(packed: Any, segments: np.ndarray, index: int, scheme: Scheme, n: int, k: int) -> PackedBlock:
    """Zero-copy device view of block `index` of a module's flat packed buffer (mxmoe.experts layout)."""
    import torch

    from .experts import packed_shapes

    torch_dtypes = {np.dtype(np.uint32): torch.int32, np.dtype(np.uint16): torch.int16,
                    np.dtype(np.float16): torch.float16, np.dtype(np.uint8): torch.uint8}
    parts: dict[str, Any] = {"qweight": None, "scales": None, "zeros": None}
    for part, (shape, dtype) in packed_shapes(scheme, n, k).items():
        offset, length = (int(v) for v in segments[index, _PACKED_PARTS.index(part)])
        if offset % 16 or offset + length > packed.numel():
            raise ValueError(f"packed block {index} {part}: bytes [{offset}, {offset + length}) are not a 16-byte "
                             f"aligned segment of the {packed.numel()}-byte buffer")
        parts[part] = packed[offset:offset + length].view(torch_dtypes[np.dtype(dtype)]).view(shape)
    return PackedBlock(scheme, n, k, parts["qweight"], parts["scales"], parts["zeros"])


def torch_hadamard(x: Any, signs: Any, base: Any) -> Any:
    """kron_hadamard on torch tensors (f32 math): (B ⊗ H_{2^p}) · diag(signs) · x / √n along the last axis."""
    import torch

    n, m = x.shape[-1], base.shape[0]
    p = n // m
    lead = x.shape[:-1]
    z = (x.float() * signs.float()).reshape(-1, m, p)
    half = 1
    while half < p:
        v = z.reshape(z.shape[0], m, p // (2 * half), 2, half)
        z = torch.stack((v[..., 0, :] + v[..., 1, :], v[..., 0, :] - v[..., 1, :]), dim=-2).reshape(-1, m, p)
        half *= 2
    return (torch.einsum("ab,rbp->rap", base.float(), z) / float(np.sqrt(n))).reshape(*lead, n)


def _cached(module: Any, key: tuple, build: Any) -> Any:
    cache = module.__dict__.get("_mxmoe_cuda_cache")
    if cache is None or cache[0] != key:
        cache = (key, build())
        module.__dict__["_mxmoe_cuda_cache"] = cache
    return cache[1]


def experts_forward(module: Any, hidden_states: Any, top_k_index: Any, top_k_weights: Any) -> Any:
    """MxMoEExperts.forward on CUDA tensors: a MoELayerCUDA over zero-copy views of the module's packed buffer,
    built on first use and cached on the module (rebuilt when the buffer moves or top_k changes)."""
    import torch

    if module.act_name not in _SILU_NAMES:
        raise ValueError(f"the GPU experts path implements SiLU·up only, the model uses act_fn={module.act_name!r}")
    if hidden_states.dim() != 2 or top_k_index.dim() != 2:
        raise ValueError(f"hidden_states must be [T, H] and top_k_index [T, k], got {tuple(hidden_states.shape)} "
                         f"and {tuple(top_k_index.shape)}")
    packed, top_k = module.packed, int(top_k_index.shape[1])
    if packed.device != hidden_states.device:
        raise ValueError(f"hidden_states is on {hidden_states.device} but the experts' weights are on {packed.device}")

    def build() -> MoELayerCUDA:
        segments = module.segments.cpu().numpy()
        specs = module._block_specs()
        experts = [tuple(_segment_block(packed, segments, 3 * e + b, *specs[3 * e + b]) for b in range(3))
                   for e in range(module.num_experts)]
        flags = [bool(f) for f in module.down_hadamard.tolist()]
        hadamard = hadamard_factors(module.intermediate_size, module.hadamard_seed) if any(flags) else None
        return MoELayerCUDA(experts, top_k=top_k, device=packed.device, down_hadamard=hadamard,
                            down_hadamard_experts=flags if hadamard is not None else None)

    layer = _cached(module, (packed.data_ptr(), str(packed.device), top_k), build)
    dtype = hidden_states.dtype
    hidden = hidden_states if dtype in (torch.bfloat16, torch.float16) else hidden_states.to(torch.bfloat16)
    weights = top_k_weights if top_k_weights.dtype in (torch.bfloat16, torch.float32, torch.float16) else \
        top_k_weights.float()
    out = layer(hidden.contiguous(), top_k_index.to(torch.int64).contiguous(), weights.contiguous())
    return out if out.dtype == dtype else out.to(dtype)


class LinearCUDA:
    """One packed linear block y = x·Wᵀ on the GPU (MxMoELinear: shared experts): per-token quantization of x where
    the scheme needs it (route_gather_quant with the identity permutation), then one fused GEMM launch."""

    def __init__(self, block: PackedBlock, device: Any,
                 input_hadamard: Optional[tuple[np.ndarray, np.ndarray]] = None) -> None:
        import torch

        self._cuda = _cuda_module()
        self.device = torch.device(device)
        if not block.scheme.is_candidate:
            raise ValueError(f"scheme {block.scheme} has no GPU kernel (not a candidate scheme)")
        self.block, self.format = block, act_format(block.scheme)
        self.in_features, self.out_features = block.in_features, block.out_features
        ptr = (lambda a: 0 if a is None else a.data_ptr())
        table, self._info = self._cuda.gemm_problems_pack([(scheme_id(block.scheme), 0, block.out_features,
                                                            block.in_features, 0, ptr(block.qweight),
                                                            ptr(block.scales), ptr(block.zeros))])
        self._table = torch.frombuffer(bytearray(table), dtype=torch.uint8).to(self.device)
        self._hadamard = None
        if input_hadamard is not None:
            signs, base = _check_hadamard(input_hadamard, self.in_features, False)
            self._hadamard = (torch.from_numpy(signs).to(self.device), torch.from_numpy(base).to(self.device))
        self._offsets = torch.zeros(2, dtype=torch.int32, device=self.device)
        self._capacity, self._ws = 0, {}

    def _buffers(self, rows: int) -> dict[str, Any]:
        import torch

        if rows <= self._capacity:
            return self._ws
        K, dev = self.in_features, self.device
        ws = {"perm": torch.arange(rows, dtype=torch.int32, device=dev),
              "gemm": torch.empty(max(self._cuda.gemm_workspace_bytes(rows, 1), 1), dtype=torch.uint8, device=dev)}
        if self.format == ACT_INT8:
            ws["int8"] = torch.empty(rows, K, dtype=torch.int8, device=dev)
            ws["rowsum_int8"] = torch.empty(rows, dtype=torch.int32, device=dev)  # the GEMM's zero-point term
        elif self.format == ACT_FP8:
            ws["fp8"] = torch.empty(rows, K, dtype=torch.uint8, device=dev)
        elif self.format == ACT_INT4:
            ws["int4"] = torch.empty(rows, K // 2, dtype=torch.uint8, device=dev)
        if self.format != ACT_BF16:
            ws["scale"] = torch.empty(rows, dtype=torch.float32, device=dev)
        self._ws, self._capacity = ws, rows
        return ws

    def __call__(self, x: Any) -> Any:
        """x: [M, K] bf16 contiguous CUDA -> [M, N] bf16."""
        import torch

        M, K = x.shape
        y = torch.empty(M, self.out_features, dtype=torch.bfloat16, device=self.device)
        if M == 0:
            return y
        if self._hadamard is not None:
            x = torch_hadamard(x, *self._hadamard).to(torch.bfloat16).contiguous()
        ws = self._buffers(M)
        stream = torch.cuda.current_stream(self.device).cuda_stream
        self._offsets[1:].fill_(M)
        if self.format == ACT_BF16:
            acts = (x.data_ptr(), 0, 0, 0, 0, 0, 0, K)
        else:
            q = ws[ACT_FORMAT_NAMES[self.format]].data_ptr()
            s = ws["scale"].data_ptr()
            if self.format == ACT_INT8:
                acts = (0, q, 0, 0, s, 0, 0, K, ws["rowsum_int8"].data_ptr())
            elif self.format == ACT_FP8:
                acts = (0, 0, q, 0, 0, s, 0, K)
            else:
                acts = (0, 0, 0, q, 0, 0, s, K)
            self._cuda.route_gather_quant(x.data_ptr(), K, M, K, ws["perm"].data_ptr(), M, self._offsets.data_ptr(),
                                          1, 0, acts, stream)
        self._cuda.gemm_fused(self._table.data_ptr(), self._info, self._offsets.data_ptr(), 1, M, acts, y.data_ptr(),
                              self.out_features, ws["gemm"].data_ptr(), ws["gemm"].numel(), stream)
        return y


def linear_forward(module: Any, x: Any) -> Any:
    """MxMoELinear.forward on CUDA tensors (LinearCUDA over a zero-copy view of the module's packed buffer)."""
    import torch

    if x.shape[-1] != module.in_features:
        raise ValueError(f"input has {x.shape[-1]} features, expected {module.in_features}")
    packed = module.packed
    if packed.device != x.device:
        raise ValueError(f"input is on {x.device} but the linear's weights are on {packed.device}")

    def build() -> LinearCUDA:
        block = _segment_block(packed, module.segments.cpu().numpy(), 0, module._scheme, module.out_features,
                               module.in_features)
        rotate = bool(module.input_hadamard.item())
        return LinearCUDA(block, packed.device,
                          hadamard_factors(module.in_features, module.hadamard_seed) if rotate else None)

    linear = _cached(module, (packed.data_ptr(), str(packed.device)), build)
    lead = x.shape[:-1]
    y = linear(x.reshape(-1, module.in_features).to(torch.bfloat16).contiguous())
    out = y.to(x.dtype).reshape(*lead, module.out_features)
    if module.bias is not None:
        out = out + module.bias
    return out
