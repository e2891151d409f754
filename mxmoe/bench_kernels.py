"""`python -m mxmoe bench kernels`: the whole MoE layer (routing -> combine) and the GEMMs alone on real MoE shapes,
ours (uniform per scheme, mixed fused, mixed per-scheme sequential) against torch's bf16 grouped_mm (transformers'
default experts path) and torch's fp8 _scaled_grouped_mm, with skewed (Zipf-like) routing.

Timing: each configuration is captured once in a CUDA graph (eager when capture fails) and replayed `--reps` times,
each replay timed alone with CUDA events after writing a buffer twice the L2 size (weights come from HBM); the
median is reported.  The roofline is measured at start: device-to-device copy bandwidth (bytes read + written) and
a dense bf16 matmul.  Per record: µs, ratio vs torch bf16 (same shape, tokens and scope), achieved TB/s on the
bytes the layer must move (weights of the experts that received tokens + activations in/out), TFLOPS, and the
fraction of the roofline time max(bytes / BW, flops / bf16 peak) reached.

Weights are random packed codes generated on the device (timing does not depend on their values); correctness of
the same kernels is tests/test_cuda_route.py's job.
"""
from __future__ import annotations

import argparse
import datetime as _dt
import json
import math
import os
import statistics
import sys
from dataclasses import dataclass
from typing import Any, Callable, Optional, Sequence

MODEL_SHAPES = {
    # name: (routed experts, top_k, hidden, intermediate, shared intermediate sizes, shared sigmoid gate, weights dtype)
    "qwen1.5-moe": (60, 4, 2048, 1408, (5632,), True, "bfloat16"),
    "deepseek-v2-lite": (64, 6, 2048, 1408, (2816,), False, "float32"),  # 2 shared experts fused as one MLP
    "mixtral-8x7b": (8, 2, 4096, 14336, (), False, "float32"),
}
DEFAULT_TOKENS = (1, 16, 64, 256, 1024, 4096, 8192)
DEFAULT_SCHEMES = ("w16a16", "w8a16_g-1_sym", "w4a16_g128_asym", "w3a16_g128_asym", "w2a16_g128_asym",
                   "w8a8_g-1_sym", "w8a8_g-1_sym_fp8", "w4a8_g128_asym")
# Mixed plans: share of (expert, block) slots per scheme.  Decode: ~3.25 weight bits, weight-only; prefill: int8
# tensor cores throughout (w8a8 / w4a8).  Shared experts take the plan's first (most precise) scheme.
MIXED_PLANS = {
    "decode-3.25bit": (("w4a16_g128_asym", 0.25), ("w3a16_g128_asym", 0.5), ("w2a16_g128_asym", 0.25)),
    "prefill-w8a8-w4a8": (("w8a8_g-1_sym", 0.5), ("w4a8_g128_asym", 0.5)),
}
DECODE_MAX_TOKENS = 256  # the decode plan up to here, the prefill plan above
# Token counts of the per-block kernel profile (CostModel's kernel_profile "entries").
PROFILE_TOKENS = (1, 4, 16, 64, 256, 1024, 4096, 16384)
ZIPF_EXPONENT = 1.1


@dataclass
class Roofline:
    copy_tb_s: float
    bf16_tflops: float


def _torch():
    import torch

    return torch


def _event_time_us(fn: Callable[[], Any], flush: Any, reps: int) -> float:
    torch = _torch()
    starts = [torch.cuda.Event(enable_timing=True) for _ in range(reps)]
    ends = [torch.cuda.Event(enable_timing=True) for _ in range(reps)]
    for i in range(reps):
        flush.zero_()  # evict the L2
        starts[i].record()
        fn()
        ends[i].record()
    torch.cuda.synchronize()
    return statistics.median(s.elapsed_time(e) * 1e3 for s, e in zip(starts, ends))


def time_us(fn: Callable[[], Any], flush: Any, reps: int, use_graph: bool = True) -> tuple[float, bool]:
    """Median µs of fn (graph-replayed when capturable); returns (µs, whether a graph was used)."""
    torch = _torch()
    fn()
    fn()
    torch.cuda.synchronize()
    if use_graph:
        try:
            stream = torch.cuda.Stream()
            stream.wait_stream(torch.cuda.current_stream())
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.stream(stream):
                fn()  # warm-up on the capture stream
                torch.cuda.synchronize()
                with torch.cuda.graph(graph, stream=stream):
                    fn()
            torch.cuda.current_stream().wait_stream(stream)
            graph.replay()
            torch.cuda.synchronize()
            return _event_time_us(graph.replay, flush, reps), True
        except Exception:  # some torch ops refuse capture: time them eagerly
            torch.cuda.synchronize()
    return _event_time_us(fn, flush, reps), False


def measure_roofline(flush: Any) -> Roofline:
    torch = _torch()
    n = 1 << 28  # 512 MiB of bf16 each way
    a = torch.randn(n, device="cuda", dtype=torch.bfloat16)
    b = torch.empty_like(a)
    us, _ = time_us(lambda: b.copy_(a), flush, 20, use_graph=False)
    copy = 2 * a.numel() * 2 / (us * 1e-6) / 1e12
    del a, b
    m = 8192
    x = torch.randn(m, m, device="cuda", dtype=torch.bfloat16)
    y = torch.randn(m, m, device="cuda", dtype=torch.bfloat16)
    us, _ = time_us(lambda: torch.mm(x, y), flush, 20, use_graph=False)
    return Roofline(copy_tb_s=copy, bf16_tflops=2 * m ** 3 / (us * 1e-6) / 1e12)


# ---------------------------------------------------------------------------------------------------------------
# routing and problem data
# ---------------------------------------------------------------------------------------------------------------

def zipf_routing(tokens: int, n_experts: int, top_k: int, weights_dtype: str, seed: int) -> tuple[Any, Any]:
    """top_k_index [T, k] int64 drawn without replacement from p_e ∝ 1/rank^s (ranks shuffled over experts) and
    top_k_weights [T, k] (softmax of random logits over the k) in the model's routing-weight dtype."""
    torch = _torch()
    g = torch.Generator(device="cuda").manual_seed(seed)
    ranks = torch.randperm(n_experts, generator=g, device="cuda").float() + 1
    probs = ranks.pow(-ZIPF_EXPONENT)
    idx = torch.multinomial(probs.expand(tokens, n_experts), top_k, replacement=False, generator=g)
    w = torch.softmax(torch.randn(tokens, top_k, device="cuda", generator=g), dim=-1)
    return idx.to(torch.int64).contiguous(), w.to(getattr(torch, weights_dtype)).contiguous()


def random_block(scheme_name: str, N: int, K: int, gen: Any) -> Any:
    """A PackedBlock of random codes on the device, in the scheme's packed layout."""
    torch = _torch()
    from ._scheme import as_scheme
    from .cuda_ops import PackedBlock

    s = as_scheme(scheme_name)
    if s.w_bits == 16:
        w = (torch.randn(N, K, device="cuda", generator=gen) * 0.02).to(torch.bfloat16).view(torch.int16)
        return PackedBlock(s, N, K, w.contiguous(), None, None)
    qweight = torch.randint(-2 ** 31, 2 ** 31 - 1, (N, K // 32 * s.w_bits), device="cuda", dtype=torch.int32,
                            generator=gen)
    if s.fmt == "fp8" and s.w_bits == 8:
        qweight &= -1077952577  # 0xBFBFBFBF: clear bit 6 of every byte, so no e4m3 byte is NaN
    rows = K // s.group_size if s.group_size > 0 else 1
    scales = (torch.rand(rows, N, device="cuda", generator=gen) * 1e-3 + 1e-3).to(torch.float16)
    zeros = None if s.symmetric else torch.randint(0, 1 << s.w_bits, (rows, N), device="cuda", dtype=torch.uint8,
                                                   generator=gen)
    return PackedBlock(s, N, K, qweight, scales, zeros)


def build_layer(shape: tuple, assign: Callable[[int, int], str], seed: int) -> Any:
    """MoELayerCUDA of random packed weights; assign(expert, block) -> scheme (expert >= E: shared)."""
    torch = _torch()
    from .cuda_ops import MoELayerCUDA

    E, k, H, I, shared, _, _ = shape
    gen = torch.Generator(device="cuda").manual_seed(seed)
    experts = [(random_block(assign(e, 0), I, H, gen), random_block(assign(e, 1), I, H, gen),
                random_block(assign(e, 2), H, I, gen)) for e in range(E)]
    shared_experts = [(random_block(assign(E + j, 0), I_s, H, gen), random_block(assign(E + j, 1), I_s, H, gen),
                       random_block(assign(E + j, 2), H, I_s, gen)) for j, I_s in enumerate(shared)]
    return MoELayerCUDA(experts, top_k=k, shared_experts=shared_experts)


def mixed_assign(plan: str, n_experts: int, seed: int) -> Callable[[int, int], str]:
    import random

    parts = MIXED_PLANS[plan]
    rng = random.Random(seed)
    slots = [(e, b) for e in range(n_experts) for b in range(3)]
    rng.shuffle(slots)
    table: dict[tuple[int, int], str] = {}
    start = 0
    for i, (scheme, share) in enumerate(parts):
        count = len(slots) - start if i == len(parts) - 1 else round(share * len(slots))
        for slot in slots[start:start + count]:
            table[slot] = scheme
        start += count
    return lambda e, b: table.get((e, b), parts[0][0])


# ---------------------------------------------------------------------------------------------------------------
# torch baselines (transformers' grouped_mm experts path, and its fp8 twin)
# ---------------------------------------------------------------------------------------------------------------

class TorchLayer:
    """bf16 (or fp8 rowwise) weights and the transformers grouped_mm forward, shared expert(s) through F.linear."""

    def __init__(self, shape: tuple, fp8: bool, seed: int) -> None:
        torch = _torch()
        E, k, H, I, shared, self.gated, _ = shape
        g = torch.Generator(device="cuda").manual_seed(seed)
        self.E, self.k, self.H, self.I, self.fp8 = E, k, H, I, fp8
        gate_up = (torch.randn(E, 2 * I, H, device="cuda", generator=g) * 0.02).to(torch.bfloat16)
        down = (torch.randn(E, H, I, device="cuda", generator=g) * 0.02).to(torch.bfloat16)
        self.shared = [((torch.randn(2 * I_s, H, device="cuda", generator=g) * 0.02).to(torch.bfloat16),
                        (torch.randn(H, I_s, device="cuda", generator=g) * 0.02).to(torch.bfloat16))
                       for I_s in shared]
        self.shared_gate = (torch.randn(1, H, device="cuda", generator=g) * 0.02).to(torch.bfloat16)
        if fp8:
            self.gate_up_q, self.gate_up_s = self._quant_weight(gate_up)
            self.down_q, self.down_s = self._quant_weight(down)
            self.shared_q = [(self._quant_weight(a[None]), self._quant_weight(b[None])) for a, b in self.shared]
        else:
            self.gate_up_t, self.down_t = gate_up.transpose(-2, -1), down.transpose(-2, -1)  # [E, K, N] views

    @staticmethod
    def _quant_weight(w: Any) -> tuple[Any, Any]:
        """[E, N, K] bf16 -> e4m3 as a column-major [E, K, N] view and f32 scales [E, N] (rowwise of W)."""
        torch = _torch()
        amax = w.float().abs().amax(dim=-1).clamp(min=1e-12)
        scale = amax / 448.0
        q = (w.float() / scale[..., None]).to(torch.float8_e4m3fn)
        return q.transpose(-2, -1), scale.contiguous()

    @staticmethod
    def _quant_rows(x: Any) -> tuple[Any, Any]:
        torch = _torch()
        amax = x.float().abs().amax(dim=-1).clamp(min=1e-12)
        scale = amax / 448.0
        return (x.float() / scale[:, None]).to(torch.float8_e4m3fn), scale.contiguous()

    def _mm(self, x: Any, which: str, offs: Any) -> Any:
        torch = _torch()
        if not self.fp8:
            w = self.gate_up_t if which == "gate_up" else self.down_t
            grouped_mm = getattr(torch.nn.functional, "grouped_mm", None) or torch._grouped_mm
            return grouped_mm(x, w, offs=offs)
        wq, ws = (self.gate_up_q, self.gate_up_s) if which == "gate_up" else (self.down_q, self.down_s)
        xq, xs = self._quant_rows(x)
        return torch._scaled_grouped_mm(xq, wq, xs, ws, offs=offs, out_dtype=torch.bfloat16)

    def _dense(self, x: Any, j: int, which: int) -> Any:
        torch = _torch()
        if not self.fp8:
            return torch.nn.functional.linear(x, self.shared[j][which])
        (wq, ws) = self.shared_q[j][which]
        xq, xs = self._quant_rows(x)
        return torch._scaled_mm(xq, wq[0], xs[:, None], ws[0][None, :], out_dtype=torch.bfloat16)

    def prepare(self, hidden: Any, idx: Any, w: Any) -> None:
        """Routing done once for the gemm scope: permuted rows and offsets."""
        torch = _torch()
        ids, perm = torch.sort(idx.reshape(-1))
        self.x_perm = hidden[perm // self.k].contiguous()
        counts = torch.bincount(ids, minlength=self.E)
        self.offs = torch.cumsum(counts, 0, dtype=torch.int32)
        self.h_perm = torch.randn(self.x_perm.shape[0], self.I, device="cuda").to(torch.bfloat16)
        self.h_shared = [torch.randn(hidden.shape[0], down.shape[1], device="cuda").to(torch.bfloat16)
                         for _, down in self.shared]
        self.hidden = hidden

    def gemm(self) -> None:
        self._mm(self.x_perm, "gate_up", self.offs)
        self._mm(self.h_perm, "down", self.offs)
        for j in range(len(self.shared)):
            self._dense(self.hidden, j, 0)
            self._dense(self.h_shared[j], j, 1)

    def forward(self, hidden: Any, idx: Any, w: Any) -> Any:
        torch = _torch()
        T = hidden.shape[0]
        ids, perm = torch.sort(idx.reshape(-1))
        x = hidden[perm // self.k]
        offs = torch.cumsum(torch.histc(ids.int(), bins=self.E, min=0, max=self.E - 1), 0, dtype=torch.int32)
        gu = self._mm(x, "gate_up", offs)
        h = torch.nn.functional.silu(gu[:, :self.I]) * gu[:, self.I:]
        y = self._mm(h, "down", offs) * w.reshape(-1)[perm].unsqueeze(-1)  # f32 weights promote, as transformers
        inv = torch.empty_like(perm)
        inv[perm] = torch.arange(perm.numel(), device=perm.device)
        out = y[inv].view(T, self.k, self.H).sum(dim=1).to(hidden.dtype)
        for j in range(len(self.shared)):
            gu_s = self._dense(hidden, j, 0)
            I_s = gu_s.shape[1] // 2
            s = self._dense(torch.nn.functional.silu(gu_s[:, :I_s]) * gu_s[:, I_s:], j, 1)
            if self.gated:
                s = s * torch.sigmoid(torch.nn.functional.linear(hidden, self.shared_gate))
            out = out + s
        return out


# ---------------------------------------------------------------------------------------------------------------
# the run
# ---------------------------------------------------------------------------------------------------------------

def _layer_work(shape: tuple, tokens: int, idx: Any, bytes_per_weight_fn: Callable[[set], float]) -> tuple[float, float]:
    """(bytes, flops) the layer must move / compute for this routing."""
    E, k, H, I, shared, _, _ = shape
    touched = set(int(e) for e in idx.unique().tolist())
    weight_bytes = bytes_per_weight_fn(touched)
    act_bytes = 2 * tokens * H * 2  # hidden in, out
    rows = tokens * k
    flops = 2.0 * rows * 3 * H * I + sum(2.0 * tokens * 3 * H * I_s for I_s in shared)
    return weight_bytes + act_bytes, flops


def run(args: argparse.Namespace) -> dict:
    torch = _torch()
    from ._scheme import as_scheme

    if not torch.cuda.is_available():
        raise SystemExit("bench kernels needs a CUDA GPU (torch.cuda.is_available() is False)")
    props = torch.cuda.get_device_properties(0)
    flush = torch.empty(2 * max(int(getattr(props, "L2_cache_size", 50 << 20)), 50 << 20), dtype=torch.uint8,
                        device="cuda")
    roof = measure_roofline(flush)
    print(f"# {props.name}: copy {roof.copy_tb_s:.2f} TB/s, bf16 mm {roof.bf16_tflops:.0f} TFLOPS", flush=True)
    records: list[dict] = []
    baseline: dict[tuple, float] = {}
    args.out_path = args.out or os.path.join("bench", "results", f"kernels-{gpu_tag(props.name)}.json")
    started = _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")

    def payload(entries: Sequence[dict] = (), complete: bool = False) -> dict:
        summary, gains = geometric_means(records), fused_gains(records)
        return {"gpu": props.name, "date": started, "complete": complete,
                "command": " ".join(["python -m mxmoe bench kernels"] + list(args.argv)),
                "roofline": {"copy_tb_s": roof.copy_tb_s, "bf16_tflops": roof.bf16_tflops},
                "geomean_speedup_vs_bf16": [{"impl": i, "scope": s, "geomean": g, "configs": n}
                                            for i, s, g, n in summary],
                "geomean_mixed_fused_over_sequential": [{"scope": s, "geomean": g, "configs": n}
                                                        for s, g, n in gains],
                "records": list(records), "entries": list(entries)}

    def record(model: str, tokens: int, impl: str, scope: str, us: float, nbytes: float, flops: float,
               graph: bool, **extra: Any) -> None:
        key = (model, tokens, scope)
        if impl == "torch_bf16_grouped_mm":
            baseline[key] = us
        ratio = baseline[key] / us if key in baseline and math.isfinite(us) else float("nan")
        floor = max(nbytes / (roof.copy_tb_s * 1e12), flops / (roof.bf16_tflops * 1e12)) * 1e6
        rec = {"model_shape": model, "tokens": tokens, "impl": impl, "scope": scope, "us": round(us, 2),
               "speedup_vs_bf16": round(ratio, 3), "tb_s": round(nbytes / (us * 1e-6) / 1e12, 3),
               "tflops": round(flops / (us * 1e-6) / 1e12, 2), "roofline_fraction": round(floor / us, 3),
               "bytes": int(nbytes), "flops": flops, "cuda_graph": graph, **extra}
        records.append(rec)
        print(f"{model:17s} T={tokens:5d} {scope:5s} {impl:32s} {us:10.1f} us  x{ratio:5.2f}  "
              f"{rec['tb_s']:5.2f} TB/s  {rec['tflops']:7.1f} TFLOPS  {rec['roofline_fraction']:.2f} roof", flush=True)

    for model in args.models:
        shape = MODEL_SHAPES[model]
        E, k, H, I, shared, gated, wdtype = shape
        for fp8 in (False, True):
            impl = "torch_fp8_grouped_mm" if fp8 else "torch_bf16_grouped_mm"
            if fp8 and impl not in args.impls:
                continue
            try:
                tl = TorchLayer(shape, fp8, args.seed)
            except Exception as exc:  # e.g. no fp8 support in this torch build
                print(f"# {model} {impl}: unavailable ({type(exc).__name__}: {exc})")
                continue
            wb = (1.0 if fp8 else 2.0)
            for tokens in args.tokens:
                idx, w = zipf_routing(tokens, E, k, wdtype, args.seed + tokens)
                hidden = torch.randn(tokens, H, device="cuda").to(torch.bfloat16)
                per_expert = 3 * H * I * wb
                nbytes, flops = _layer_work(shape, tokens, idx, lambda t: len(t) * per_expert + sum(
                    3 * H * I_s * wb for I_s in shared))
                try:
                    us, graph = time_us(lambda: tl.forward(hidden, idx, w), flush, args.reps)
                    record(model, tokens, impl, "layer", us, nbytes, flops, graph)
                    if "gemm" in args.scopes:
                        tl.prepare(hidden, idx, w)
                        us, graph = time_us(tl.gemm, flush, args.reps)
                        record(model, tokens, impl, "gemm", us, nbytes - 4 * tokens * H, flops, graph)
                except Exception as exc:
                    print(f"# {model} T={tokens} {impl}: failed ({type(exc).__name__}: {exc})")
                    records.append({"model_shape": model, "tokens": tokens, "impl": impl, "scope": "layer",
                                    "us": None, "error": f"{type(exc).__name__}: {exc}"})
            del tl
            torch.cuda.empty_cache()

        variants: list[tuple[str, str, Callable, bool, Optional[str]]] = []
        if "uniform" in args.impls:
            for scheme in args.schemes:
                name = as_scheme(scheme).name
                variants.append((f"mxmoe_{name}", name, (lambda e, b, n=name: n), False, None))
        plans_needed = sorted({("decode-3.25bit" if t <= DECODE_MAX_TOKENS else "prefill-w8a8-w4a8")
                               for t in args.tokens})
        for variant in variants + [(p, p, mixed_assign(p, E, args.seed), True, p)
                                   for p in plans_needed if "mixed" in args.impls]:
            label, scheme_or_plan, assign, mixed, plan = variant
            try:
                layer = build_layer(shape, assign, args.seed)
            except Exception as exc:
                print(f"# {model} {label}: cannot build ({type(exc).__name__}: {exc})")
                continue
            n_shared_groups = layer.n_shared_groups
            for tokens in args.tokens:
                if mixed and ("decode-3.25bit" if tokens <= DECODE_MAX_TOKENS else "prefill-w8a8-w4a8") != plan:
                    continue
                idx, w = zipf_routing(tokens, E, k, wdtype, args.seed + tokens)
                hidden = torch.randn(tokens, H, device="cuda").to(torch.bfloat16)
                gate = torch.randn(tokens, device="cuda") if gated else None
                touched_groups = lambda t: [g for g in range(E) if g in t] + list(range(E, E + n_shared_groups))
                nbytes, flops = _layer_work(shape, tokens, idx, lambda t: layer.weight_bytes(touched_groups(t)))
                for sequential in ((False, True) if mixed else (False,)):
                    impl = (("mxmoe_mixed_sequential" if sequential else "mxmoe_mixed_fused") if mixed else label)
                    extra = {"plan": plan} if mixed else {"scheme": scheme_or_plan}
                    try:
                        us, graph = time_us(lambda: layer(hidden, idx, w, shared_gate_logits=gate,
                                                          sequential=sequential), flush, args.reps)
                        record(model, tokens, impl, "layer", us, nbytes, flops, graph,
                               two_stage=not sequential and layer.two_stage(tokens), **extra)
                        if "gemm" in args.scopes:
                            us, graph = time_us(lambda: layer.gemm_only(tokens, sequential), flush, args.reps)
                            record(model, tokens, impl, "gemm", us, nbytes - 4 * tokens * H, flops, graph, **extra)
                    except Exception as exc:
                        print(f"# {model} T={tokens} {impl}: failed ({type(exc).__name__}: {exc})")
                        records.append({"model_shape": model, "tokens": tokens, "impl": impl, "scope": "layer",
                                        "us": None, "error": f"{type(exc).__name__}: {exc}", **extra})
            del layer
            torch.cuda.empty_cache()
        write_json_atomic(args.out_path, payload())  # partial results survive a time limit

    entries = kernel_profile(args, flush) if "profile" in args.impls else []
    summary = geometric_means(records)
    for impl, scope, g, n in summary:
        print(f"# geomean speedup vs torch bf16 grouped_mm, {scope:5s} {impl:32s} x{g:.2f} over {n} configs")
    gains = fused_gains(records)
    for scope, g, n in gains:
        print(f"# geomean mixed fused over per-scheme sequential launches, {scope:5s} x{g:.2f} over {n} configs")
    return payload(entries, complete=True)


def kernel_profile(args: argparse.Namespace, flush: Any) -> list[dict]:
    """Per (scheme, n, k, m): µs of one block alone inside the fused kernel (the allocator's CostModel reads these
    "entries").  One expert, top-1, m tokens: the gate|up launch holds two [I, H] blocks (half its time each), the
    down launch one [H, I] block."""
    torch = _torch()
    from ._scheme import as_scheme

    entries: list[dict] = []
    shapes = sorted({(MODEL_SHAPES[m][2], MODEL_SHAPES[m][3]) for m in args.models})
    for H, I in shapes:
        for scheme in args.schemes:
            name = as_scheme(scheme).name
            try:
                layer = build_layer((1, 1, H, I, (), False, "float32"), lambda e, b: name, args.seed)
            except Exception as exc:
                print(f"# profile {name} H={H} I={I}: cannot build ({type(exc).__name__}: {exc})")
                continue
            for m in PROFILE_TOKENS:
                hidden = torch.randn(m, H, device="cuda").to(torch.bfloat16)
                idx = torch.zeros(m, 1, dtype=torch.int64, device="cuda")
                w = torch.ones(m, 1, device="cuda")
                try:
                    layer(hidden, idx, w)
                    gu, _ = time_us(lambda: layer.gemm_only(m, stage="gate_up"), flush, args.reps)
                    dn, _ = time_us(lambda: layer.gemm_only(m, stage="down"), flush, args.reps)
                except Exception as exc:
                    print(f"# profile {name} H={H} I={I} m={m}: failed ({type(exc).__name__}: {exc})")
                    continue
                entries.append({"scheme": name, "n": I, "k": H, "m": m, "us": round(gu / 2, 3)})
                entries.append({"scheme": name, "n": H, "k": I, "m": m, "us": round(dn, 3)})
                print(f"# profile {name:18s} m={m:5d}  [{I}x{H}] {gu / 2:9.1f} us  [{H}x{I}] {dn:9.1f} us",
                      flush=True)
            del layer
            torch.cuda.empty_cache()
    return entries


def geometric_means(records: Sequence[dict]) -> list[tuple[str, str, float, int]]:
    """Per (impl, scope): geometric mean of speedup_vs_bf16 over the configs that have one."""
    groups: dict[tuple[str, str], list[float]] = {}
    for r in records:
        s = r.get("speedup_vs_bf16")
        if isinstance(s, (int, float)) and math.isfinite(s) and s > 0:
            groups.setdefault((r["impl"], r["scope"]), []).append(float(s))
    return [(impl, scope, math.exp(sum(map(math.log, v)) / len(v)), len(v))
            for (impl, scope), v in sorted(groups.items())]


def gpu_tag(gpu_name: str) -> str:
    """Short file tag of a GPU name: "NVIDIA H100 80GB HBM3" -> "h100"; unknown names are slugged."""
    lower = gpu_name.lower()
    for tag in ("h200", "h100", "a100", "4090", "l40"):
        if tag in lower:
            return "rtx4090" if tag == "4090" else tag
    return "".join(c if c.isalnum() else "-" for c in lower).strip("-") or "gpu"


def fused_gains(records: Sequence[dict]) -> list[tuple[str, float, int]]:
    """Per scope: geometric mean over (model, tokens) of mxmoe_mixed_sequential µs / mxmoe_mixed_fused µs."""
    times: dict[tuple, dict[str, float]] = {}
    for r in records:
        if r["impl"] in ("mxmoe_mixed_fused", "mxmoe_mixed_sequential") and r.get("us"):
            times.setdefault((r["model_shape"], r["tokens"], r["scope"]), {})[r["impl"]] = float(r["us"])
    per_scope: dict[str, list[float]] = {}
    for (_, _, scope), t in times.items():
        if len(t) == 2:
            per_scope.setdefault(scope, []).append(t["mxmoe_mixed_sequential"] / t["mxmoe_mixed_fused"])
    return [(scope, math.exp(sum(map(math.log, v)) / len(v)), len(v)) for scope, v in sorted(per_scope.items())]


def write_json_atomic(path: str, payload: dict) -> None:
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    tmp = f"{path}.tmp.{os.getpid()}"
    with open(tmp, "w") as f:
        json.dump(payload, f, indent=1)
    os.replace(tmp, path)


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m mxmoe bench kernels", description=__doc__.split("\n\n")[0])
    p.add_argument("--models", nargs="+", default=list(MODEL_SHAPES), choices=list(MODEL_SHAPES))
    p.add_argument("--tokens", nargs="+", type=int, default=list(DEFAULT_TOKENS))
    p.add_argument("--schemes", nargs="+", default=list(DEFAULT_SCHEMES), help="uniform schemes to time")
    p.add_argument("--impls", nargs="+", default=["torch_fp8_grouped_mm", "uniform", "mixed"],
                   choices=["torch_fp8_grouped_mm", "uniform", "mixed", "profile"],
                   help="what to time besides the torch bf16 baseline (always timed: ratios are against it); "
                        "profile = the per-block kernel profile the allocator's cost model reads (\"entries\"; "
                        "bench/bench_gemm.py --profile-out writes the same from the GEMM alone)")
    p.add_argument("--scopes", nargs="+", default=["layer", "gemm"], choices=["layer", "gemm"])
    p.add_argument("--reps", type=int, default=30)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default=None, help="JSON output (default bench/results/kernels-<gpu>.json)")
    p.add_argument("--plot", default=None, metavar="PNG", help="also draw the speed-ups (mxmoe.plot_kernels) here")
    args = p.parse_args(list(argv))
    if any(t < 1 for t in args.tokens):
        p.error(f"--tokens must be positive, got {args.tokens}")
    if args.reps < 1:
        p.error("--reps must be >= 1")
    args.argv = list(argv)
    return args


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    result = run(args)
    write_json_atomic(args.out_path, result)
    print(f"# wrote {len(result['records'])} records and {len(result['entries'])} profile entries to "
          f"{args.out_path}")
    if args.plot:
        from .plot import plot_kernels

        scopes = [s for s in args.scopes if any(r.get("scope") == s for r in result["records"])]
        for scope in scopes:
            root, ext = os.path.splitext(args.plot)
            path = args.plot if len(scopes) == 1 else f"{root}-{scope}{ext or '.png'}"
            tmp = f"{path}.tmp.{os.getpid()}.png"  # written whole or not at all, as the JSON
            try:
                plot_kernels(result, scope=scope).savefig(tmp, dpi=110)
                os.replace(tmp, path)
            finally:
                if os.path.exists(tmp):
                    os.remove(tmp)
            print(f"# plot: {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
