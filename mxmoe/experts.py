"""Modules that run packed mixed-precision weights inside unmodified transformers models.

:class:`MxMoEExperts` replaces a transformers fused experts module (same call: ``experts(hidden [T, H],
top_k_index [T, k] int64, top_k_weights [T, k]) -> [T, H]``); :class:`MxMoELinear` replaces the ``nn.Linear``
projections of shared experts.  Both keep their packed weights *ragged*: every block's ``qweight``, ``scales`` and
``zeros`` (the layouts of csrc/mx_scheme.h) are byte segments of one flat ``uint8`` buffer, located by an ``int64``
table ``segments [n_blocks, 3 parts, 2 (byte offset, byte length)]``.  Both are registered buffers, so
``state_dict`` / safetensors carry them as they are (no stacking, no padding to the widest scheme).

On CPU tensors the forward runs :func:`mxmoe.ref_group_gemm` on the packed weights (real quantized inference: per
token activation quantization where the scheme asks for it, integer dot products per weight group); nothing is
dequantized or cached.  On CUDA tensors it calls :mod:`mxmoe.cuda_ops` when ``mxmoe.cuda_available()``, else it
raises a RuntimeError carrying ``mxmoe.cuda_status()``.
"""
from __future__ import annotations

from typing import Any, Sequence

import numpy as np
import torch
from torch import nn

from ._scheme import Scheme, as_scheme

BLOCKS = ("gate", "up", "down")
_PARTS = ("qweight", "scales", "zeros")
_SEGMENT_ALIGN = 64  # bytes: each segment starts cache-line aligned, so its NumPy view is aligned for the C core


def packed_shapes(scheme: Scheme, out_features: int, in_features: int) -> dict[str, tuple[tuple[int, ...], Any]]:
    """Shape and dtype of each packed part of an [N, K] = [out, in] block (csrc/mx_scheme.h); absent parts omitted."""
    N, K = out_features, in_features
    if scheme.w_bits == 16:
        return {"qweight": ((N, K), np.uint16)}
    group = K if scheme.group_size == -1 else scheme.group_size
    if K % 32 or K % group:
        raise ValueError(f"in_features K={K} must be a multiple of 32 and of the group size {group} ({scheme})")
    shapes = {"qweight": ((N, K // 32 * scheme.w_bits), np.uint32), "scales": ((K // group, N), np.float16)}
    if not scheme.symmetric:
        shapes["zeros"] = ((K // group, N), np.uint8)
    return shapes


def _nbytes(shape: tuple[int, ...], dtype: Any) -> int:
    return int(np.prod(shape)) * np.dtype(dtype).itemsize


def layout_segments(blocks: Sequence[tuple[Scheme, int, int]]) -> tuple[np.ndarray, int]:
    """Byte segments [n_blocks, 3, 2] (offset, length; length 0 = part absent) and the total buffer size for blocks
    given as (scheme, out_features, in_features)."""
    segments = np.zeros((len(blocks), len(_PARTS), 2), dtype=np.int64)
    cursor = 0
    for index, (scheme, n, k) in enumerate(blocks):
        for part_index, part in enumerate(_PARTS):
            spec = packed_shapes(scheme, n, k).get(part)
            if spec is None:
                continue
            cursor = -(-cursor // _SEGMENT_ALIGN) * _SEGMENT_ALIGN
            length = _nbytes(*spec)
            segments[index, part_index] = (cursor, length)
            cursor += length
    return segments, cursor


def pack_blocks(weights: Sequence[Any]) -> tuple[np.ndarray, np.ndarray]:
    """Flat uint8 buffer + segments table holding the packed parts of QuantizedWeights, bit for bit."""
    blocks = [(w.scheme, w.out_features, w.in_features) for w in weights]
    segments, total = layout_segments(blocks)
    packed = np.zeros(total, dtype=np.uint8)
    for index, weight in enumerate(weights):
        for part_index, part in enumerate(_PARTS):
            offset, length = segments[index, part_index]
            if length == 0:
                continue
            data = np.ascontiguousarray(getattr(weight, part)).view(np.uint8).reshape(-1)
            if data.size != length:
                raise ValueError(f"block {index} {part}: {data.size} bytes, layout says {length} ({weight.scheme})")
            packed[offset: offset + length] = data
    return packed, segments


def unpack_block(packed: np.ndarray, segments: np.ndarray, index: int, scheme: Scheme, out_features: int,
                 in_features: int) -> Any:
    """Zero-copy QuantizedWeight view of block ``index`` (copied only if the view would be unaligned)."""
    from .quant import QuantizedWeight

    parts: dict[str, np.ndarray | None] = {"scales": None, "zeros": None}
    for part, (shape, dtype) in packed_shapes(scheme, out_features, in_features).items():
        offset, length = (int(v) for v in segments[index, _PARTS.index(part)])
        if length != _nbytes(shape, dtype) or offset < 0 or offset + length > packed.size:
            raise ValueError(f"corrupt packed layout: block {index} {part} has bytes [{offset}, {offset + length}) "
                             f"in a {packed.size}-byte buffer, {scheme} [{out_features}, {in_features}] needs "
                             f"{_nbytes(shape, dtype)}")
        view = packed[offset: offset + length].view(dtype).reshape(shape)
        parts[part] = view if view.flags.aligned else view.copy()
    return QuantizedWeight(scheme=scheme, out_features=out_features, in_features=in_features,
                           qweight=parts["qweight"], scales=parts["scales"], zeros=parts["zeros"])


def _cpu_numpy(buffer: torch.Tensor) -> np.ndarray:
    return buffer.detach().numpy()


def _hadamard_rows(x: np.ndarray, seed: int) -> np.ndarray:
    from .hadamard import hadamard_transform
    return np.ascontiguousarray(hadamard_transform(x, seed=seed), dtype=np.float32)


def _require_cpu_or_cuda_build(tensor: torch.Tensor, what: str) -> bool:
    """True when the tensor is on CUDA and mxmoe's kernels can run it; RuntimeError on CUDA without them."""
    if tensor.device.type == "cpu":
        return False
    if tensor.device.type == "cuda":
        from ._cuda_status import cuda_available, cuda_status
        if cuda_available():
            return True
        raise RuntimeError(f"{what} got CUDA tensors but mxmoe's GPU kernels cannot run: {cuda_status()}. "
                           "Rebuild with nvcc on the PATH, or move the model to the CPU (model.to('cpu')).")
    raise RuntimeError(f"{what} runs on CPU or CUDA tensors, got device {tensor.device}")


class MxMoEExperts(nn.Module):
    """Packed mixed-precision experts with the transformers experts call signature.

    ``schemes[e] = (gate, up, down)`` scheme names of expert e.  Gate and up are [I, H], down is [H, I].
    ``down_hadamard[e]`` says that expert e's down weights were packed as ``W_down H_Iᵀ``, so its input is rotated
    online by ``hadamard_transform(x, seed=hadamard_seed)`` (needed where down quantizes activations).
    """

    def __init__(self, num_experts: int, hidden_size: int, intermediate_size: int,
                 schemes: Sequence[Sequence[str]], act_fn: str = "silu",
                 down_hadamard: Sequence[bool] | None = None, hadamard_seed: int = 0):
        super().__init__()
        if len(schemes) != num_experts or any(len(s) != 3 for s in schemes):
            raise ValueError(f"schemes must list (gate, up, down) for each of the {num_experts} experts")
        self.num_experts = int(num_experts)
        self.hidden_size = int(hidden_size)
        self.intermediate_size = int(intermediate_size)
        self.schemes = [tuple(as_scheme(s).name for s in row) for row in schemes]
        self._scheme_objects = [tuple(as_scheme(s) for s in row) for row in self.schemes]
        if not isinstance(act_fn, str):
            raise TypeError(f"act_fn is the transformers activation name (config.hidden_act), got {act_fn!r}")
        from transformers.activations import ACT2FN
        self.act_name = act_fn
        self.act_fn = ACT2FN[act_fn]
        self.hadamard_seed = int(hadamard_seed)
        flags = [False] * num_experts if down_hadamard is None else [bool(f) for f in down_hadamard]
        if len(flags) != num_experts:
            raise ValueError(f"down_hadamard has {len(flags)} flags for {num_experts} experts")
        self.register_buffer("down_hadamard", torch.tensor(flags, dtype=torch.bool))
        segments, total = layout_segments(self._block_specs())
        self.register_buffer("packed", torch.zeros(total, dtype=torch.uint8))
        self.register_buffer("segments", torch.from_numpy(segments))

    def _block_specs(self) -> list[tuple[Scheme, int, int]]:
        H, I = self.hidden_size, self.intermediate_size
        shapes = {"gate": (I, H), "up": (I, H), "down": (H, I)}
        return [(self._scheme_objects[e][b], *shapes[block]) for e in range(self.num_experts)
                for b, block in enumerate(BLOCKS)]

    @classmethod
    def from_quantized(cls, weights: Sequence[Sequence[Any]], act_fn: str = "silu",
                       down_hadamard: Sequence[bool] | None = None, hadamard_seed: int = 0) -> "MxMoEExperts":
        """Build from QuantizedWeights ``weights[e] = (gate [I, H], up [I, H], down [H, I])``."""
        if not weights:
            raise ValueError("no experts given")
        gate0, _, down0 = weights[0]
        module = cls(len(weights), gate0.in_features, gate0.out_features,
                     [[w.scheme.name for w in row] for row in weights], act_fn, down_hadamard, hadamard_seed)
        flat = [w for row in weights for w in row]
        for (scheme, n, k), w in zip(module._block_specs(), flat):
            if (w.out_features, w.in_features) != (n, k):
                raise ValueError(f"expert block {w.scheme} has shape [{w.out_features}, {w.in_features}], "
                                 f"expected [{n}, {k}]")
        packed, segments = pack_blocks(flat)
        if not np.array_equal(segments, module.segments.numpy()):
            raise ValueError("packed layout does not match the schemes (internal error)")
        module.packed.copy_(torch.from_numpy(packed))
        return module

    def spec(self) -> dict:
        """JSON description from which :meth:`from_spec` rebuilds an empty module of the same layout."""
        return {"kind": "experts", "num_experts": self.num_experts, "hidden_size": self.hidden_size,
                "intermediate_size": self.intermediate_size, "schemes": [list(s) for s in self.schemes],
                "act_fn": self.act_name, "hadamard_seed": self.hadamard_seed}

    @classmethod
    def from_spec(cls, spec: dict) -> "MxMoEExperts":
        return cls(spec["num_experts"], spec["hidden_size"], spec["intermediate_size"], spec["schemes"],
                   spec["act_fn"], None, spec["hadamard_seed"])

    def block(self, expert: int, block: str) -> Any:
        """QuantizedWeight view of one block (``block`` in gate/up/down)."""
        index = expert * 3 + BLOCKS.index(block)
        scheme, n, k = self._block_specs()[index]
        return unpack_block(_cpu_numpy(self.packed), self.segments.numpy(), index, scheme, n, k)

    def extra_repr(self) -> str:
        names = sorted({s for row in self.schemes for s in row})
        return (f"experts={self.num_experts}, hidden={self.hidden_size}, intermediate={self.intermediate_size}, "
                f"schemes={names}, packed_bytes={self.packed.numel()}")

    def forward(self, hidden_states: torch.Tensor, top_k_index: torch.Tensor,
                top_k_weights: torch.Tensor) -> torch.Tensor:
        if _require_cpu_or_cuda_build(hidden_states, "MxMoEExperts"):
            # routing, activation quantization, one fused GEMM launch for all gate/up problems and one for all
            # down problems, over zero-copy views of `packed` (mxmoe.cuda_ops caches the device tables on self)
            from .cuda_ops import experts_forward
            return experts_forward(self, hidden_states, top_k_index, top_k_weights)
        if hidden_states.dim() != 2 or hidden_states.shape[1] != self.hidden_size:
            raise ValueError(f"hidden_states must be [T, {self.hidden_size}], got {tuple(hidden_states.shape)}")
        if top_k_index.shape != top_k_weights.shape or top_k_index.shape[0] != hidden_states.shape[0]:
            raise ValueError(f"top_k_index {tuple(top_k_index.shape)} and top_k_weights "
                             f"{tuple(top_k_weights.shape)} must both be [T={hidden_states.shape[0]}, k]")
        output = torch.zeros_like(hidden_states)
        n_tokens, top_k = top_k_index.shape
        if n_tokens == 0 or top_k == 0:
            return output

        # route: group the (token, slot) pairs by expert; indices outside [0, E) are padding and skipped
        flat_expert = top_k_index.reshape(-1).to(torch.int64)
        valid = (flat_expert >= 0) & (flat_expert < self.num_experts)
        pair_order = torch.argsort(torch.where(valid, flat_expert, self.num_experts), stable=True)
        pair_order = pair_order[: int(valid.sum())]
        token_of_pair = pair_order // top_k
        slot_of_pair = pair_order % top_k
        expert_token_counts = torch.bincount(flat_expert[pair_order], minlength=self.num_experts).tolist()
        x_routed = hidden_states.detach()[token_of_pair].float().numpy()

        packed = _cpu_numpy(self.packed)
        segments = self.segments.numpy()
        specs = self._block_specs()
        active, starts, start = [], [], 0
        for expert, count in enumerate(expert_token_counts):
            if count:
                active.append(expert)
                starts.append(start)
            start += count

        def weight(expert: int, block_index: int) -> Any:
            index = expert * 3 + block_index
            return unpack_block(packed, segments, index, *specs[index])

        from .gemm import ref_group_gemm
        # one GroupGEMM for every active expert's gate and up
        gate_up_problems = []
        for expert, first in zip(active, starts):
            x_expert = x_routed[first: first + expert_token_counts[expert]]
            gate_up_problems += [(x_expert, weight(expert, 0)), (x_expert, weight(expert, 1))]
        gate_up_out = ref_group_gemm(gate_up_problems)

        # activation, the online Hadamard where the down weights expect it, then one GroupGEMM for all downs
        down_flags = self.down_hadamard.tolist()
        down_problems = []
        for slot, expert in enumerate(active):
            gate = torch.from_numpy(np.asarray(gate_up_out[2 * slot], dtype=np.float32))
            up = torch.from_numpy(np.asarray(gate_up_out[2 * slot + 1], dtype=np.float32))
            inner = np.ascontiguousarray((self.act_fn(gate) * up).numpy(), dtype=np.float32)
            if down_flags[expert]:
                inner = _hadamard_rows(inner, self.hadamard_seed)
            down_problems.append((inner, weight(expert, 2)))
        down_out = ref_group_gemm(down_problems)

        # combine: y * routing weight in the model's dtypes (as the transformers experts do), summed per token
        expert_out = torch.from_numpy(np.concatenate([np.asarray(y, dtype=np.float32) for y in down_out], axis=0))
        routing = top_k_weights[token_of_pair, slot_of_pair, None]
        weighted = expert_out.to(hidden_states.dtype) * routing
        output.index_add_(0, token_of_pair, weighted.to(output.dtype))
        return output


class MxMoELinear(nn.Module):
    """A packed quantized ``nn.Linear`` (shared experts): ``y = x Wᵀ (+ bias)`` through the same C GroupGEMM.
    With ``input_hadamard`` the packed weight is ``W H_Kᵀ`` and the input is rotated online (seed
    ``hadamard_seed``)."""

    def __init__(self, in_features: int, out_features: int, scheme: str, bias: bool = False,
                 input_hadamard: bool = False, hadamard_seed: int = 0, dtype: torch.dtype = torch.float32):
        super().__init__()
        self.in_features = int(in_features)
        self.out_features = int(out_features)
        self.scheme = as_scheme(scheme).name
        self._scheme = as_scheme(scheme)
        self.hadamard_seed = int(hadamard_seed)
        self.register_buffer("input_hadamard", torch.tensor(bool(input_hadamard)))
        segments, total = layout_segments([(self._scheme, self.out_features, self.in_features)])
        self.register_buffer("packed", torch.zeros(total, dtype=torch.uint8))
        self.register_buffer("segments", torch.from_numpy(segments))
        self.bias = nn.Parameter(torch.zeros(self.out_features, dtype=dtype), requires_grad=False) if bias else None

    @classmethod
    def from_quantized(cls, weight: Any, bias: torch.Tensor | None = None, input_hadamard: bool = False,
                       hadamard_seed: int = 0) -> "MxMoELinear":
        module = cls(weight.in_features, weight.out_features, weight.scheme.name, bias is not None, input_hadamard,
                     hadamard_seed, bias.dtype if bias is not None else torch.float32)
        packed, _ = pack_blocks([weight])
        module.packed.copy_(torch.from_numpy(packed))
        if bias is not None:
            module.bias.data.copy_(bias.detach())
        return module

    def spec(self) -> dict:
        return {"kind": "linear", "in_features": self.in_features, "out_features": self.out_features,
                "scheme": self.scheme, "bias": self.bias is not None, "hadamard_seed": self.hadamard_seed}

    @classmethod
    def from_spec(cls, spec: dict, dtype: torch.dtype = torch.float32) -> "MxMoELinear":
        return cls(spec["in_features"], spec["out_features"], spec["scheme"], spec["bias"], False,
                   spec["hadamard_seed"], dtype)

    @property
    def weight_quantized(self) -> Any:
        return unpack_block(_cpu_numpy(self.packed), self.segments.numpy(), 0, self._scheme, self.out_features,
                            self.in_features)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, scheme={self.scheme}"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if _require_cpu_or_cuda_build(x, "MxMoELinear"):
            from .cuda_ops import linear_forward
            return linear_forward(self, x)
        return self._forward_cpu(x)

    def _forward_cpu(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[-1] != self.in_features:
            raise ValueError(f"input has {x.shape[-1]} features, expected {self.in_features}")
        from .gemm import ref_group_gemm
        lead = x.shape[:-1]
        x2d = np.ascontiguousarray(x.detach().reshape(-1, self.in_features).float().numpy())
        if x2d.shape[0] == 0:
            return x.new_zeros(*lead, self.out_features)
        if bool(self.input_hadamard):
            x2d = _hadamard_rows(x2d, self.hadamard_seed)
        (y,) = ref_group_gemm([(x2d, self.weight_quantized)])
        out = torch.from_numpy(np.asarray(y, dtype=np.float32)).to(x.dtype).reshape(*lead, self.out_features)
        if self.bias is not None:
            out = out + self.bias
        return out
