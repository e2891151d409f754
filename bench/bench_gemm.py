"""GEMM-only benchmark of the fused mixed-precision grouped GEMM against torch's grouped GEMMs, and the per-GPU
kernel profile that the allocator's cost model reads.

    python bench/bench_gemm.py --out bench/results/kernels-gemm-h100.json \\
        --profile-out bench/results/kernel-profile-h100.json

Problems: the MoE GEMMs of real layer shapes (gate_up: N = 2I, K = H; down: N = H, K = I) with rows per expert drawn
from a Zipf-skewed routing (each token picks top_k distinct experts, expert popularity ∝ 1/rank).  Timing: each call
is captured once in a CUDA graph and replayed (mxmoe.bench_kernels.time_us; eager where capture fails), so the
number is GPU time without the host's launch overhead, as inside the layer's graph; L2 flushed (a 256 MiB memset)
before every repetition, median of --reps.  Weights are
random codes in each scheme's canonical layout (csrc/mx_scheme.h): the kernel's speed does not depend on values.

Records (--out, a JSON list; the first ones, scope "device", hold the measured copy bandwidth and GEMM rates): model_shape, proj, tokens, impl, scope="gemm", us, tbps (bytes it must read + write
over time), tflops, x_bf16 (torch bf16 grouped_mm time / this time).  impl: torch_bf16_grouped_mm,
torch_fp8_grouped_mm, mxmoe_<scheme>, mxmoe_mixed_fused, mxmoe_mixed_sequential.
"""
from __future__ import annotations

import argparse
import datetime
import json
import math
import os
import sys
import tempfile

import numpy as np
import torch

import mxmoe
from mxmoe import _cuda
from mxmoe.bench_kernels import time_us

MODELS = {  # name: (experts, top_k, hidden H, expert intermediate I)
    "qwen1.5-moe": (60, 4, 2048, 1408),
    "deepseek-v2-lite": (64, 6, 2048, 1408),
    "mixtral-8x7b": (8, 2, 4096, 14336),
}
TOKENS = [1, 16, 64, 256, 1024, 4096, 8192]
SCHEMES = [name for _, name, *_ in mxmoe._C.SCHEME_TABLE]
# Mixed plans: decode ~3.25 weight bits (w4/w3/w2 g128 in 1:2:1), prefill a w8a8 / w4a8 mix.
DECODE_MIX = ["w4a16_g128_asym", "w3a16_g128_asym", "w3a16_g128_asym", "w2a16_g128_asym"]
PREFILL_MIX = ["w8a8_g-1_sym", "w4a8_g128_asym"]
PREFILL_FROM_TOKENS = 1024


# ---------------------------------------------------------------- timing

class Timer:
    def __init__(self, reps: int):
        self.reps = reps
        self.flush_buffer = torch.empty(256 * 1024 * 1024, dtype=torch.uint8, device="cuda")

    def __call__(self, fn, use_graph: bool = True) -> float:
        """Median µs of fn(), graph-replayed unless use_graph=False, with L2 flushed before each repetition."""
        return time_us(fn, self.flush_buffer, self.reps, use_graph)[0]


def measure_ceilings(timer: Timer) -> dict:
    """Device-to-device copy bandwidth (read + write) and dense bf16 / fp8 GEMM rates, on random data."""
    src = torch.empty(1 << 30, dtype=torch.uint8, device="cuda").random_()
    dst = torch.empty_like(src)
    # eager: a captured device-to-device copy becomes a graph memcpy node, which ran at 2.4 instead of 3.0 TB/s
    us = timer(lambda: dst.copy_(src), use_graph=False)
    copy_tbps = 2 * src.numel() / us / 1e6
    del src, dst
    a = torch.randn(8192, 8192, dtype=torch.bfloat16, device="cuda")
    b = torch.randn(8192, 8192, dtype=torch.bfloat16, device="cuda")
    us = timer(lambda: a @ b)
    bf16_tflops = 2 * 8192 ** 3 / us / 1e6
    out = {"copy_tbps": copy_tbps, "bf16_matmul_tflops": bf16_tflops}
    try:
        a8 = a.to(torch.float8_e4m3fn)
        b8 = b.to(torch.float8_e4m3fn).t().contiguous().t()
        one = torch.ones((), device="cuda")
        us = timer(lambda: torch._scaled_mm(a8, b8, one, one, out_dtype=torch.bfloat16))
        out["fp8_matmul_tflops"] = 2 * 8192 ** 3 / us / 1e6
    except Exception as exc:  # report, do not fail the run
        out["fp8_matmul_error"] = repr(exc)[:200]
    return out


# ---------------------------------------------------------------- problem data

def zipf_expert_rows(tokens: int, experts: int, top_k: int, seed: int) -> np.ndarray:
    """Rows per expert when every token picks top_k distinct experts with popularity ∝ 1/rank (random ranks)."""
    rng = np.random.default_rng(seed)
    popularity = 1.0 / np.arange(1, experts + 1)
    popularity = popularity[rng.permutation(experts)]
    popularity /= popularity.sum()
    counts = np.zeros(experts, dtype=np.int64)
    for _ in range(tokens):
        counts[rng.choice(experts, size=top_k, replace=False, p=popularity)] += 1
    return counts


def scheme_weights(scheme_name: str, experts: int, n: int, k: int) -> dict:
    """Random device buffers of E weight matrices [n, k] in the scheme's canonical layout."""
    s = mxmoe.as_scheme(scheme_name)
    dev = "cuda"
    if s.w_bits == 16:
        qweight = torch.randn(experts, n, k, dtype=torch.bfloat16, device=dev)
    elif s.name.endswith("_fp8") and s.w_bits == 8:
        qweight = (torch.randn(experts, n, k, device=dev) * 16).to(torch.float8_e4m3fn).view(torch.uint8)
    else:
        words = k // 32 * s.w_bits
        qweight = torch.randint(-2 ** 31, 2 ** 31 - 1, (experts, n, words), dtype=torch.int32, device=dev)
    out = {"qweight": qweight, "scales": None, "zeros": None}
    if s.w_bits < 16:
        rows = 1 if s.group_size < 0 else k // s.group_size
        out["scales"] = (torch.rand(experts, rows, n, device=dev) * 0.01 + 1e-3).to(torch.float16)
        if not s.symmetric:
            out["zeros"] = torch.randint(0, 2 ** s.w_bits, (experts, rows, n), dtype=torch.uint8, device=dev)
    return out


def activations(rows: int, k: int) -> dict:
    dev = "cuda"
    rows = max(rows, 1)
    acts = {
        "bf16": torch.randn(rows, k, dtype=torch.bfloat16, device=dev),
        "int8": torch.randint(-127, 128, (rows, k), dtype=torch.int8, device=dev),
        "fp8": torch.randn(rows, k, device=dev).to(torch.float8_e4m3fn).view(torch.uint8),
        "int4": torch.randint(0, 256, (rows, k // 2), dtype=torch.uint8, device=dev),
        "scale": torch.rand(rows, device=dev) * 0.01 + 1e-3,
    }
    # the int8 rows' code sums, which the layer's quantizing gather / act-mul write beside the codes
    acts["rowsum_int8"] = acts["int8"].sum(dim=1, dtype=torch.int32)
    return acts


class FusedCall:
    """One fused launch over a list of problems (scheme, expert, n, k, out_col, weights dict, expert index)."""

    def __init__(self, problems, row_offsets: torch.Tensor, n_groups: int, rows: int, acts: dict, y: torch.Tensor):
        records = []
        for scheme_name, expert, n, k, out_col, w in problems:
            def ptr(t, e=expert):
                return 0 if t is None else t[e].data_ptr()
            records.append((scheme_name, expert, n, k, out_col, ptr(w["qweight"]), ptr(w["scales"]),
                            ptr(w["zeros"])))
        table, self.info = _cuda.gemm_problems_pack(records)
        self.d_table = torch.frombuffer(bytearray(table), dtype=torch.uint8).cuda()
        self.workspace_bytes = _cuda.gemm_workspace_bytes(rows, len(records))
        self.workspace = torch.empty(self.workspace_bytes, dtype=torch.uint8, device="cuda")
        scale = acts["scale"].data_ptr()
        k = acts["bf16"].shape[1]
        self.args = dict(problems=self.d_table.data_ptr(), info=self.info, row_offsets=row_offsets.data_ptr(),
                         n_groups=n_groups, max_rows=rows,
                         acts=(acts["bf16"].data_ptr(), acts["int8"].data_ptr(), acts["fp8"].data_ptr(),
                               acts["int4"].data_ptr(), scale, scale, scale, k, acts["rowsum_int8"].data_ptr()),
                         y=y.data_ptr(), ldy=y.shape[1], workspace=self.workspace.data_ptr(),
                         workspace_bytes=self.workspace_bytes)

    def __call__(self):
        # the stream of the moment: a graph capture runs the call on its own stream
        _cuda.gemm_fused(**self.args, stream=torch.cuda.current_stream().cuda_stream)


def weight_bytes(scheme_name: str, n: int, k: int) -> float:
    s = mxmoe.as_scheme(scheme_name)
    if s.w_bits == 16:
        return 2.0 * n * k
    rows = 1 if s.group_size < 0 else k // s.group_size
    return n * k * s.w_bits / 8 + rows * n * (2 + (0 if s.symmetric else 1))


def act_bytes(scheme_name: str) -> float:
    s = mxmoe.as_scheme(scheme_name)
    return s.a_bits / 8


# ---------------------------------------------------------------- benchmark

def bench_gemm(timer: Timer, models: list[str], tokens_list: list[int], schemes: list[str], seed: int) -> list:
    records = []
    for model in models:
        experts, top_k, hidden, inter = MODELS[model]
        for proj, n, k in (("gate_up", 2 * inter, hidden), ("down", hidden, inter)):
            weights = {}
            bf16_w = torch.randn(experts, n, k, dtype=torch.bfloat16, device="cuda")
            fp8_w = bf16_w.to(torch.float8_e4m3fn)
            for tokens in tokens_list:
                counts = zipf_expert_rows(tokens, experts, top_k, seed + tokens)
                rows = int(counts.sum())
                active = int((counts > 0).sum())
                row_offsets = torch.tensor(np.concatenate([[0], np.cumsum(counts)]), dtype=torch.int32, device="cuda")
                offs = row_offsets[1:].contiguous()
                acts = activations(rows, k)
                y = torch.empty(rows, n, dtype=torch.bfloat16, device="cuda")
                flops = 2.0 * rows * n * k

                def record(impl, us, w_bytes, a_bytes_per_el):
                    moved = active * w_bytes + rows * k * a_bytes_per_el + rows * n * 2
                    rec = {"model_shape": model, "proj": proj, "n": n, "k": k, "tokens": tokens, "rows": rows,
                           "active_experts": active, "impl": impl, "scope": "gemm", "us": round(us, 2),
                           "tbps": round(moved / us / 1e6, 3), "tflops": round(flops / us / 1e6, 2)}
                    records.append(rec)
                    return rec

                # torch bf16 grouped_mm (transformers' default path)
                w_t = bf16_w.transpose(-2, -1)
                x = acts["bf16"][:rows]
                try:
                    t_bf16 = timer(lambda: torch._grouped_mm(x, w_t, offs=offs))
                    base = record("torch_bf16_grouped_mm", t_bf16, 2.0 * n * k, 2)
                except Exception as exc:
                    print(f"torch_bf16_grouped_mm failed: {exc!r}"[:300], flush=True)
                    t_bf16 = float("nan")
                # torch fp8 rowwise _scaled_grouped_mm
                try:
                    x8 = acts["fp8"][:rows].view(torch.float8_e4m3fn)
                    w8 = fp8_w.transpose(-2, -1)
                    sa = acts["scale"][:rows].contiguous()
                    sb = torch.rand(experts, n, device="cuda") * 0.01
                    t = timer(lambda: torch._scaled_grouped_mm(x8, w8, sa, sb, offs=offs, out_dtype=torch.bfloat16))
                    record("torch_fp8_grouped_mm", t, 1.0 * n * k, 1)
                except Exception as exc:
                    print(f"torch_fp8_grouped_mm failed: {exc!r}"[:300], flush=True)

                for scheme_name in schemes:
                    if scheme_name not in weights:
                        weights[scheme_name] = scheme_weights(scheme_name, experts, n, k)
                    call = FusedCall([(scheme_name, e, n, k, 0, weights[scheme_name]) for e in range(experts)],
                                     row_offsets, experts, rows, acts, y)
                    t = timer(call)
                    record("mxmoe_" + scheme_name, t, weight_bytes(scheme_name, n, k), act_bytes(scheme_name))

                # mixed plan: every expert's two halves (gate | up, or two row halves of down) in different schemes
                mix = PREFILL_MIX if tokens >= PREFILL_FROM_TOKENS else DECODE_MIX
                rng = np.random.default_rng(seed)
                half = n // 2
                problems, mixed_bytes = [], 0.0
                for e in range(experts):
                    s0, s1 = mix[rng.integers(len(mix))], mix[rng.integers(len(mix))]
                    for scheme_name in (s0, s1):
                        if scheme_name not in weights:
                            weights[scheme_name] = scheme_weights(scheme_name, experts, n, k)
                    problems += [(s0, e, half, k, 0, weights[s0]), (s1, e, half, k, half, weights[s1])]
                    if counts[e] > 0:
                        mixed_bytes += weight_bytes(s0, half, k) + weight_bytes(s1, half, k)
                fused = FusedCall(problems, row_offsets, experts, rows, acts, y)
                by_scheme = {}
                for p in problems:
                    by_scheme.setdefault(p[0], []).append(p)
                sequential = [FusedCall(ps, row_offsets, experts, rows, acts, y) for ps in by_scheme.values()]
                a_el = max(act_bytes(s) for s in mix)
                for impl, fn in (("mxmoe_mixed_fused", fused),
                                 ("mxmoe_mixed_sequential", lambda: [c() for c in sequential])):
                    t = timer(fn)
                    rec = record(impl, t, mixed_bytes / max(active, 1), a_el)
                    rec["plan"] = "+".join(sorted(set(mix)))
                for rec in records:
                    if rec["model_shape"] == model and rec["proj"] == proj and rec["tokens"] == tokens:
                        rec["x_bf16"] = round(t_bf16 / rec["us"], 3) if math.isfinite(t_bf16) else None
                line = [r for r in records if r["model_shape"] == model and r["proj"] == proj and r["tokens"] == tokens]
                print(f"{model:17s} {proj:7s} T={tokens:5d} rows={rows:6d} active={active:3d} | " + "  ".join(
                    f"{r['impl'].replace('mxmoe_', '')}={r['us']:.1f}" for r in line), flush=True)
                del acts, y
            del weights, bf16_w, fp8_w
            torch.cuda.empty_cache()
    return records


def kernel_profile(timer: Timer, schemes: list[str], m_list: list[int], batch: int) -> list:
    """Per-block time of one GEMM [m, k] x [n, k]ᵀ in each scheme, measured as a batch of `batch` experts of the same
    shape in one fused launch (the GPU is filled the way a real layer fills it) divided by `batch`."""
    shapes = sorted({(2 * i, h) for _, _, h, i in MODELS.values()} | {(i, h) for _, _, h, i in MODELS.values()}
                    | {(h, i) for _, _, h, i in MODELS.values()})
    entries = []
    for n, k in shapes:
        for scheme_name in schemes:
            w = scheme_weights(scheme_name, batch, n, k)
            for m in m_list:
                counts = np.full(batch, m)
                rows = int(counts.sum())
                row_offsets = torch.tensor(np.concatenate([[0], np.cumsum(counts)]), dtype=torch.int32, device="cuda")
                acts = activations(rows, k)
                y = torch.empty(rows, n, dtype=torch.bfloat16, device="cuda")
                call = FusedCall([(scheme_name, e, n, k, 0, w) for e in range(batch)], row_offsets, batch, rows, acts,
                                 y)
                us = timer(call) / batch
                entries.append({"scheme": scheme_name, "n": n, "k": k, "m": m, "us": round(us, 3)})
                del acts, y
            print(f"profile n={n} k={k} {scheme_name}: " + " ".join(
                f"m{e['m']}={e['us']:.1f}" for e in entries[-len(m_list):]), flush=True)
            del w
        torch.cuda.empty_cache()
    return entries


def write_json(path: str, obj) -> None:
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=directory, suffix=".tmp")
    with os.fdopen(fd, "w") as f:
        json.dump(obj, f, indent=1)
    os.replace(tmp, path)


def summarize(path: str) -> None:
    """Print the issue's targets from a records file: T=16 w4a16_g128 vs bf16 and vs HBM copy bandwidth, T=8192
    w8a8 vs bf16 and fp8, mixed fused vs sequential; then a geometric mean of ×bf16 per impl."""
    records = json.load(open(path))
    copy_tbps = next((r["value"] for r in records if r.get("impl") == "ceiling_copy_tbps"), float("nan"))
    gemm = [r for r in records if r.get("scope") == "gemm"]
    by = {(r["model_shape"], r["proj"], r["tokens"], r["impl"]): r for r in gemm}
    print(f"copy bandwidth {copy_tbps:.2f} TB/s")
    for (model, proj, tokens, impl), r in sorted(by.items()):
        if (tokens, impl) in ((16, "mxmoe_w4a16_g128_asym"), (8192, "mxmoe_w8a8_g-1_sym"), (8192, "mxmoe_w8a8_g-1_sym_fp8")):
            fp8 = by.get((model, proj, tokens, "torch_fp8_grouped_mm"))
            print(f"{model:17s} {proj:7s} T={tokens:5d} {impl:24s} {r['us']:9.1f} us  x_bf16={r.get('x_bf16')}  "
                  f"TB/s={r['tbps']:.2f} ({r['tbps'] / copy_tbps:.0%} of copy)  "
                  f"x_fp8={fp8['us'] / r['us'] if fp8 else float('nan'):.2f}")
        if impl == "mxmoe_mixed_fused":
            seq = by.get((model, proj, tokens, "mxmoe_mixed_sequential"))
            if seq:
                print(f"{model:17s} {proj:7s} T={tokens:5d} mixed fused {r['us']:9.1f} us vs sequential "
                      f"{seq['us']:9.1f} us: x{seq['us'] / r['us']:.2f}")
    impls = sorted({r["impl"] for r in gemm})
    for impl in impls:
        ratios = [r["x_bf16"] for r in gemm if r["impl"] == impl and r.get("x_bf16")]
        if ratios:
            print(f"geomean x_bf16 {impl:28s} {math.exp(sum(map(math.log, ratios)) / len(ratios)):.3f}")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", help="GEMM records JSON (kernels-gemm-<gpu>.json)")
    parser.add_argument("--summarize", metavar="JSON", help="print the targets of an existing records file, run nothing")
    parser.add_argument("--profile-out", help="kernel profile JSON for the cost model (kernel-profile-<gpu>.json)")
    parser.add_argument("--models", default=",".join(MODELS))
    parser.add_argument("--tokens", default=",".join(map(str, TOKENS)))
    parser.add_argument("--schemes", default=",".join(SCHEMES))
    parser.add_argument("--profile-m", default="1,4,16,64,256,1024,4096")
    parser.add_argument("--profile-batch", type=int, default=8)
    parser.add_argument("--reps", type=int, default=20)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    if args.summarize:
        summarize(args.summarize)
        return 0
    if not args.out:
        parser.error("--out is required")
    if not mxmoe.cuda_available():
        print(mxmoe.cuda_status(), file=sys.stderr)
        return 2
    timer = Timer(args.reps)
    gpu = torch.cuda.get_device_name()
    command = "python " + " ".join([os.path.relpath(__file__)] + (argv if argv is not None else sys.argv[1:]))
    date = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
    ceilings = measure_ceilings(timer)
    print(f"{gpu}: {ceilings}", flush=True)
    schemes = args.schemes.split(",")
    records = bench_gemm(timer, args.models.split(","), [int(t) for t in args.tokens.split(",")], schemes,
                         args.seed)
    for rec in records:
        rec.update(gpu=gpu, date=date)
    # the measured roofline rides along as records of scope "device" (copy TB/s, dense GEMM TFLOPS)
    ceiling_records = [{"impl": "ceiling_" + key, "scope": "device", "value": value, "gpu": gpu, "date": date,
                        "command": command, "torch": torch.__version__} for key, value in ceilings.items()]
    write_json(args.out, ceiling_records + records)
    if args.profile_out:
        entries = kernel_profile(timer, schemes, [int(m) for m in args.profile_m.split(",")], args.profile_batch)
        write_json(args.profile_out, {"gpu": gpu, "date": date, "command": command,
                                      "note": f"us per block: one fused launch of {args.profile_batch} experts of "
                                              "the same shape and m rows each, divided by that count; L2 flushed",
                                      "entries": entries})
    return 0


if __name__ == "__main__":
    sys.exit(main())
