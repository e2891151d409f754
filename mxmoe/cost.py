"""Kernel time model: how long one linear block takes with a given scheme at M tokens, on a given GPU.

    cm = mxmoe.CostModel("h100")                          # roofline from the preset
    cm = mxmoe.CostModel("h100", kernel_profile="bench/results/kernels-h100.json")   # measured, roofline-scaled
    cm.block_time(out_features=2816, in_features=2048, tokens=64, scheme="w4a16_g128_asym")   # seconds
    T = cm.table(profile, candidates, tokens=512)         # [n_blocks, n_schemes] seconds

Roofline (``kernel_profile=None``).  For a block W [N, K] applied to M tokens with scheme s::

    weight bytes     N*K*bits_for(K)/8        (Scheme.bits_for: weight bits + f16 scales (+ zero points))
    activation in    M*K*2  (bf16)             or, when s quantizes activations, M*K*a/8 + 4*M (per-token scales)
    activation out   M*N*2  (bf16)
    act-quant pass   (M*K*2 + M*K*a/8 + 4*M) / bandwidth      (read bf16, write codes; only if a < 16)
    math             2*M*N*K / throughput[unit(s)]
    overhead         ceil(M/128)*ceil(N/128) tiles * tile_overhead / SMs   (prologue/epilogue per output tile)

    time = act-quant pass + max(bytes / bandwidth, math) + overhead            (0 when M == 0)

The arithmetic unit of a scheme: a16 -> bf16 tensor cores (weights are dequantized in registers); a8 int ->
int8; a8 fp8 (``_fp8``) -> fp8; a4 -> int4 where the GPU has fast int4 (Ada, Ampere) and the int8 path
otherwise (Hopper emulates int4 mma at ~49 TOPS, so our sm_90 kernels unpack a4 to int8).  GPUs without fp8
(A100) run fp8 schemes at the bf16 rate.

Presets (``GPU_PRESETS``): H100 figures are our own measurements (DESIGN.md section 3: 3.03 TB/s copy bandwidth,
library GEMMs at 8192^3: 796 TFLOPS bf16, 1464 fp8, 918 int8); H200 has the same compute and ~4.3 TB/s measured.
A100 and RTX 4090 use datasheet dense throughput times ``DATASHEET_EFFICIENCY`` (0.8, about the fraction of
datasheet our H100 library GEMMs reached: 796/989) and datasheet bandwidth times 0.9 (H100: 3.03/3.35).

Measured profile (``kernel_profile``: a path or a dict), written by the CUDA kernel benchmark::

    {"gpu": "NVIDIA H100 80GB HBM3", "date": "2026-11-23",
     "entries": [{"scheme": "w4a16_g128_asym", "n": 2816, "k": 2048, "m": 16, "us": 21.3}, ...]}

``us`` is the time of that block alone inside the grouped kernel (microseconds).  Lookup for (scheme, N, K, M):

* the (scheme, N, K) was measured: piecewise-linear interpolation of log(us) over log(M) between the measured M;
  outside the measured range the nearest measurement is scaled by the roofline ratio roof(M) / roof(M_edge);
* only other shapes of that scheme were measured: the nearest shape (in |log N - log N'| + |log K - log K'|),
  interpolated at M, times roof(N, K, M) / roof(N', K', M);
* the scheme was never measured: the roofline.

M == 0 always costs 0 (the grouped kernel skips experts without tokens).
"""
from __future__ import annotations

import json
import math
from collections import defaultdict
from typing import Any, Sequence

import numpy as np

from ._scheme import Scheme, SchemeLike, as_scheme

DATASHEET_EFFICIENCY = 0.8
BANDWIDTH_EFFICIENCY = 0.9
TILE_M = 128
TILE_N = 128

# bandwidth in bytes/s, throughput in FLOP/s (or OP/s) of dense tensor-core GEMMs; None: no such unit
GPU_PRESETS: dict[str, dict[str, Any]] = {
    "h100": {"name": "NVIDIA H100 SXM (measured)", "arch": "sm90", "sms": 132, "bandwidth": 3.03e12,
             "bf16": 796e12, "fp16": 796e12, "fp8": 1464e12, "int8": 918e12, "int4": 48.6e12,
             "tile_overhead": 1.0e-6},
    "h200": {"name": "NVIDIA H200 SXM (H100 compute, measured bandwidth)", "arch": "sm90", "sms": 132,
             "bandwidth": 4.3e12, "bf16": 796e12, "fp16": 796e12, "fp8": 1464e12, "int8": 918e12,
             "int4": 48.6e12, "tile_overhead": 1.0e-6},
    "a100": {"name": "NVIDIA A100 SXM 80GB (datasheet x efficiency)", "arch": "sm80", "sms": 108,
             "bandwidth": 2.039e12 * BANDWIDTH_EFFICIENCY, "bf16": 312e12 * DATASHEET_EFFICIENCY,
             "fp16": 312e12 * DATASHEET_EFFICIENCY, "fp8": None, "int8": 624e12 * DATASHEET_EFFICIENCY,
             "int4": 1248e12 * DATASHEET_EFFICIENCY, "tile_overhead": 1.0e-6},
    "rtx4090": {"name": "NVIDIA GeForce RTX 4090 (datasheet x efficiency, fp32 accumulation)", "arch": "sm89",
                "sms": 128, "bandwidth": 1.008e12 * BANDWIDTH_EFFICIENCY, "bf16": 165.2e12 * DATASHEET_EFFICIENCY,
                "fp16": 165.2e12 * DATASHEET_EFFICIENCY, "fp8": 330.3e12 * DATASHEET_EFFICIENCY,
                "int8": 660.6e12 * DATASHEET_EFFICIENCY, "int4": 1321.2e12 * DATASHEET_EFFICIENCY,
                "tile_overhead": 1.0e-6},
}

_ALIASES = {"h100": "h100", "h200": "h200", "a100": "a100", "4090": "rtx4090", "rtx4090": "rtx4090"}


def resolve_gpu(gpu: str) -> str:
    """Preset key of a GPU name ("h100", "NVIDIA H100 80GB HBM3", "RTX 4090", ...); ValueError otherwise."""
    key = gpu.lower().replace(" ", "").replace("-", "").replace("_", "")
    for alias, preset in _ALIASES.items():
        if alias in key:
            return preset
    raise ValueError(f"unknown GPU {gpu!r}; presets: {sorted(GPU_PRESETS)}")


def arithmetic_unit(scheme: SchemeLike, gpu: str) -> str:
    """The tensor-core unit a scheme's kernel runs on: "bf16", "int8", "fp8" or "int4" (see module docstring)."""
    s, preset = as_scheme(scheme), GPU_PRESETS[resolve_gpu(gpu)]
    if s.a_bits == 16:
        return "bf16"
    if s.a_bits == 8:
        if s.fmt == "fp8":
            return "fp8" if preset["fp8"] else "bf16"
        return "int8"
    return "int4" if preset["arch"] in ("sm80", "sm89") else "int8"


class CostModel:
    """Time of one block at M tokens: roofline from a preset, or a measured kernel profile scaled by it."""

    def __init__(self, gpu: str = "h100", kernel_profile: str | dict | None = None):
        self.gpu = resolve_gpu(gpu)
        self.preset = dict(GPU_PRESETS[self.gpu])
        self.kernel_profile = _load_kernel_profile(kernel_profile) if kernel_profile is not None else None
        # (scheme name) -> {(n, k): (log m [sorted], log us)}
        self._measured: dict[str, dict[tuple[int, int], tuple[np.ndarray, np.ndarray]]] = {}
        if self.kernel_profile is not None:
            grouped: dict[str, dict[tuple[int, int], list[tuple[float, float]]]] = defaultdict(lambda: defaultdict(list))
            for entry in self.kernel_profile["entries"]:
                grouped[entry["scheme"]][(entry["n"], entry["k"])].append((entry["m"], entry["us"]))
            for name, shapes in grouped.items():
                self._measured[name] = {}
                for shape, points in shapes.items():
                    points.sort()
                    m, us = np.array(points, dtype=np.float64).T
                    self._measured[name][shape] = (np.log(m), np.log(us))

    # ---- roofline ----
    def roofline_time(self, out_features: int, in_features: int, tokens: float, scheme: SchemeLike) -> float:
        """Seconds by the roofline formula of the module docstring."""
        s = as_scheme(scheme)
        n, k, m = int(out_features), int(in_features), float(tokens)
        _check_shape(n, k, m)
        if m == 0:
            return 0.0
        p = self.preset
        weight_bytes = n * k * s.bits_for(k) / 8.0
        if s.quantizes_activations:
            act_in = m * k * s.a_bits / 8.0 + 4.0 * m
            quant_pass = (m * k * 2.0 + act_in) / p["bandwidth"]
        else:
            act_in, quant_pass = m * k * 2.0, 0.0
        act_out = m * n * 2.0
        memory = (weight_bytes + act_in + act_out) / p["bandwidth"]
        math_time = 2.0 * m * n * k / p[arithmetic_unit(s, self.gpu)]
        tiles = math.ceil(m / TILE_M) * math.ceil(n / TILE_N)
        overhead = tiles * p["tile_overhead"] / p["sms"]
        return quant_pass + max(memory, math_time) + overhead

    # ---- public ----
    def block_time(self, out_features: int, in_features: int, tokens: float, scheme: SchemeLike) -> float:
        """Seconds for one [out_features, in_features] block at ``tokens`` rows with ``scheme``."""
        s = as_scheme(scheme)
        n, k, m = int(out_features), int(in_features), float(tokens)
        _check_shape(n, k, m)
        if m == 0:
            return 0.0
        shapes = self._measured.get(s.name)
        if not shapes:
            return self.roofline_time(n, k, m, s)
        if (n, k) in shapes:
            return self._measured_time(s, n, k, m)
        nearest = min(shapes, key=lambda nk: abs(math.log(nk[0] / n)) + abs(math.log(nk[1] / k)))
        return self._measured_time(s, *nearest, m) * self.roofline_time(n, k, m, s) / \
            self.roofline_time(nearest[0], nearest[1], m, s)

    def _measured_time(self, s: Scheme, n: int, k: int, m: float) -> float:
        log_m, log_us = self._measured[s.name][(n, k)]
        x = math.log(m)
        if x < log_m[0] or x > log_m[-1]:
            edge = 0 if x < log_m[0] else -1
            edge_m = math.exp(log_m[edge])
            return math.exp(log_us[edge]) * 1e-6 * self.roofline_time(n, k, m, s) / self.roofline_time(n, k, edge_m, s)
        return math.exp(float(np.interp(x, log_m, log_us))) * 1e-6

    def table(self, blocks, candidates: Sequence[SchemeLike], tokens: int, top_k: int | None = None) -> np.ndarray:
        """T [n_blocks, n_schemes] seconds at the expected token count of each block.

        ``blocks``: a Profile, its ``blocks`` (which carry ``top_k``) or a plain sequence of BlockInfo.  Routed expert e of a layer gets
        ``M_e = tokens * top_k * freq_e`` with ``freq_e`` = its share of the layer's routed assignments in
        calibration (so the layer's M_e sum to tokens * top_k); shared experts get ``tokens``.  ``top_k`` comes
        from the Profile; with bare BlockInfos it is taken from ``top_k=`` or, when the layer has shared experts,
        derived from their token count (= calibration tokens); otherwise ValueError.
        """
        source = getattr(blocks, "blocks", blocks)  # a Profile, its BlockList, or plain BlockInfos
        infos = list(source)
        if top_k is None:
            top_k = getattr(blocks, "top_k", None) or getattr(source, "top_k", None)
        schemes = [as_scheme(c) for c in candidates]
        expected = expected_tokens(infos, tokens, top_k)
        out = np.zeros((len(infos), len(schemes)))
        cache: dict[tuple[int, int, float, str], float] = {}
        for i, (info, m) in enumerate(zip(infos, expected)):
            for j, s in enumerate(schemes):
                key = (info.out_features, info.in_features, m, s.name)
                if key not in cache:
                    cache[key] = self.block_time(info.out_features, info.in_features, m, s)
                out[i, j] = cache[key]
        return out


def expected_tokens(blocks: Sequence, tokens: int, top_k: int | None = None) -> np.ndarray:
    """Expected rows per block (f64 [n_blocks]) at ``tokens`` tokens per layer (see :meth:`CostModel.table`)."""
    if tokens < 0:
        raise ValueError(f"tokens must be >= 0, got {tokens}")
    routed_total: dict[int, float] = defaultdict(float)
    calib_tokens: dict[int, int] = {}
    for b in blocks:
        if b.block != "gate":
            continue
        if b.shared:
            calib_tokens[b.layer] = b.tokens
        else:
            routed_total[b.layer] += b.tokens
    out = np.zeros(len(blocks))
    for i, b in enumerate(blocks):
        if b.shared:
            out[i] = tokens
            continue
        total = routed_total[b.layer]
        if total == 0:
            continue
        if top_k is not None:
            out[i] = tokens * top_k * b.tokens / total
        elif b.layer in calib_tokens and calib_tokens[b.layer] > 0:
            out[i] = tokens * b.tokens / calib_tokens[b.layer]  # = tokens * top_k * b.tokens / total
        else:
            raise ValueError(f"layer {b.layer} has no shared expert to infer top_k from: pass top_k= or a Profile")
    return out


def _check_shape(n: int, k: int, m: float) -> None:
    if n <= 0 or k <= 0 or not m >= 0 or not math.isfinite(m):
        raise ValueError(f"need out_features > 0, in_features > 0 and finite tokens >= 0; got N={n}, K={k}, M={m}")


def _load_kernel_profile(source: str | dict) -> dict:
    if isinstance(source, str):
        with open(source) as f:
            source = json.load(f)
    if not isinstance(source, dict) or not isinstance(source.get("entries"), list) or "gpu" not in source:
        raise ValueError("kernel_profile must be {'gpu': ..., 'date': ..., 'entries': [{'scheme', 'n', 'k', 'm', "
                         "'us'}, ...]}")
    entries = []
    for i, entry in enumerate(source["entries"]):
        try:
            scheme = as_scheme(entry["scheme"]).name
            n, k, m, us = int(entry["n"]), int(entry["k"]), float(entry["m"]), float(entry["us"])
        except (KeyError, TypeError) as exc:
            raise ValueError(f"kernel_profile entry {i} needs scheme, n, k, m, us: {entry!r}") from exc
        if n <= 0 or k <= 0 or not m > 0 or not us > 0 or not math.isfinite(us):
            raise ValueError(f"kernel_profile entry {i} needs n, k > 0, m > 0 and a finite us > 0: {entry!r}")
        entries.append({"scheme": scheme, "n": n, "k": k, "m": m, "us": us})
    seen = set()
    for entry in entries:
        key = (entry["scheme"], entry["n"], entry["k"], entry["m"])
        if key in seen:
            raise ValueError(f"kernel_profile has duplicate entries for {key}")
        seen.add(key)
    return {"gpu": source["gpu"], "date": source.get("date"), "entries": entries}
