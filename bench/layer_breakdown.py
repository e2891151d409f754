"""Where the time of one mxmoe MoE layer call goes: GPU kernel time per kernel (torch.profiler / CUPTI), for the
bench's model shapes and a uniform scheme, at a few token counts.

    python bench/layer_breakdown.py --tokens 1 16 --scheme w4a16_g128_asym

The layer is mxmoe.bench_kernels.build_layer (random packed weights, Zipf-skewed routing, the same as `python -m
mxmoe bench kernels`), called eagerly --reps times after a warm-up; no L2 flush between calls (the touched weights of
every shape here exceed the 50 MB L2 of an H100 at 16 tokens, less so at 1 token).  Prints, per shape and token
count, each kernel's µs per call and share, and the sum; the sum is GPU busy time, not the wall time of a call (gaps
between kernels are not in it).
"""
from __future__ import annotations

import argparse
import collections
import sys

import torch

from mxmoe.bench_kernels import MODEL_SHAPES, build_layer, zipf_routing


def kernel_times(fn, reps: int) -> dict[str, float]:
    """µs per call of every GPU kernel fn launches, keyed by (shortened) kernel name."""
    from torch.profiler import ProfilerActivity, profile

    fn()
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        for _ in range(reps):
            fn()
        torch.cuda.synchronize()
    out: dict[str, float] = collections.defaultdict(float)
    for evt in prof.key_averages():
        us = getattr(evt, "self_device_time_total", None)
        if us is None:
            us = evt.self_cuda_time_total
        if us > 0:
            name = evt.key.replace("(anonymous namespace)::", "").split("(")[0]
            out[name.removeprefix("void ")[:70]] += us / reps
    return dict(out)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", nargs="+", default=list(MODEL_SHAPES))
    parser.add_argument("--tokens", nargs="+", type=int, default=[1, 16])
    parser.add_argument("--scheme", default="w4a16_g128_asym")
    parser.add_argument("--reps", type=int, default=20)
    args = parser.parse_args(argv)
    if not torch.cuda.is_available():
        print("no CUDA device", file=sys.stderr)
        return 1
    for model in args.models:
        shape = MODEL_SHAPES[model]
        E, k, H, _, _, gated, wdtype = shape
        layer = build_layer(shape, lambda e, b: args.scheme, seed=0)
        for tokens in args.tokens:
            idx, w = zipf_routing(tokens, E, k, wdtype, seed=tokens)
            hidden = torch.randn(tokens, H, device="cuda").to(torch.bfloat16)
            gate = torch.randn(tokens, device="cuda") if gated else None
            times = kernel_times(lambda: layer(hidden, idx, w, shared_gate_logits=gate), args.reps)
            total = sum(times.values())
            print(f"== {model} T={tokens} {args.scheme}: {total:.1f} µs of kernels per call")
            for name, us in sorted(times.items(), key=lambda kv: -kv[1]):
                print(f"   {us:8.1f} µs {100 * us / total:5.1f} %  {name}")
        del layer
        torch.cuda.empty_cache()
    return 0


if __name__ == "__main__":
    sys.exit(main())
