"""Where the two-stage decode launch stops paying: the layer with and without it over intermediate sizes.

    python bench/two_stage_threshold.py --out bench/results/two-stage-threshold-h100.json

`mxmoe.cuda_ops.two_stage_advised` runs a decode call (<= 16 tokens) of a layer as one launch (gate_up, SiLU·mul,
down) only for layers of many experts (TWO_STAGE_MIN_EXPERTS) with I <= TWO_STAGE_MAX_INTERMEDIATE.  This times the
whole layer (routing -> combine, CUDA graph, L2 flushed before each replay: mxmoe.bench_kernels.time_us) with the
launch forced on and off (MXMOE_LAYER_FUSED=1 / 0) for two layer families whose I is swept: Mixtral-like (8
experts, top-2, H 4096) and Qwen1.5-MoE-like (60 experts, top-4, H 2048, no shared expert), random packed weights of
one scheme, Zipf-skewed routing.  Writes one record per (family, I, tokens) with both times and their ratio; prints a
table.
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import sys

import torch

from mxmoe.bench_kernels import build_layer, time_us, write_json_atomic, zipf_routing

FAMILIES = {  # name: (routed experts, top_k, hidden)
    "mixtral-like": (8, 2, 4096),
    "qwen-like": (60, 4, 2048),
}
DEFAULT_INTERMEDIATE = (1408, 2816, 4096, 5632, 8192, 14336)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--families", nargs="+", default=list(FAMILIES), choices=list(FAMILIES))
    p.add_argument("--intermediate", nargs="+", type=int, default=list(DEFAULT_INTERMEDIATE))
    p.add_argument("--tokens", nargs="+", type=int, default=[1, 4, 8, 16])
    p.add_argument("--scheme", default="w4a16_g128_asym")
    p.add_argument("--reps", type=int, default=10)
    p.add_argument("--out", default=None, help="JSON output")
    args = p.parse_args(argv)
    if not torch.cuda.is_available():
        print("two_stage_threshold: needs a CUDA device", file=sys.stderr)
        return 1
    flush = torch.empty(256 << 20, dtype=torch.uint8, device="cuda")
    records = []
    saved = os.environ.get("MXMOE_LAYER_FUSED")
    print(f"{'family':13} {'I':>6} {'tokens':>6} {'two launches':>13} {'one launch':>11} {'ratio':>6}")
    try:
        for family in args.families:
            E, k, H = FAMILIES[family]
            for I in args.intermediate:
                layer = build_layer((E, k, H, I, (), False, "bfloat16"), lambda e, b: args.scheme, seed=0)
                for tokens in args.tokens:
                    idx, w = zipf_routing(tokens, E, k, "bfloat16", seed=tokens)
                    hidden = torch.randn(tokens, H, device="cuda").to(torch.bfloat16)
                    us = {}
                    for switch in ("0", "1"):
                        os.environ["MXMOE_LAYER_FUSED"] = switch
                        us[switch], _ = time_us(lambda: layer(hidden, idx, w), flush, args.reps)
                    records.append({"family": family, "experts": E, "top_k": k, "hidden": H, "intermediate": I,
                                    "tokens": tokens, "scheme": args.scheme, "us_two_launches": us["0"],
                                    "us_one_launch": us["1"], "one_over_two": us["1"] / us["0"]})
                    print(f"{family:13} {I:6d} {tokens:6d} {us['0']:13.1f} {us['1']:11.1f} {us['1'] / us['0']:6.3f}")
                del layer
                torch.cuda.empty_cache()
    finally:
        if saved is None:
            os.environ.pop("MXMOE_LAYER_FUSED", None)
        else:
            os.environ["MXMOE_LAYER_FUSED"] = saved
    if args.out:
        write_json_atomic(args.out, {
            "gpu": torch.cuda.get_device_name(), "date": datetime.datetime.now(datetime.timezone.utc).isoformat(),
            "command": "python bench/two_stage_threshold.py " + " ".join(argv if argv is not None else sys.argv[1:]),
            "torch": torch.__version__, "records": records})
    return 0


if __name__ == "__main__":
    sys.exit(main())
