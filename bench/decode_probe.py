"""Where the decode GEMM's time goes: the fused GEMM's compute launch alone (its schedule computed beforehand) vs the
schedule + compute pair, with and without an L2 flush, over a growing number of active experts of one shape.

    python bench/decode_probe.py [--scheme w4a16_g128_asym] [--rows 1 16] [--out probe.json]

A line per (active experts, rows per expert): µs of compute alone (flushed / warm L2), of schedule + compute, and the
weight bytes per µs of the flushed compute launch.  The intercept of µs over active experts is the launch's fixed
cost; the slope its streaming rate."""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile

import numpy as np
import torch

from bench_gemm import FusedCall, MODELS, activations, scheme_weights, weight_bytes
from mxmoe import _cuda
from mxmoe.bench_kernels import time_us


class PartCall(FusedCall):
    def __init__(self, *args, part: str, **kwargs):
        super().__init__(*args, **kwargs)
        self.part = part
        self.saved_tables = None  # compute alone: the schedule's tables, restored before every call

    def __call__(self):
        if self.saved_tables is not None:  # the claim counter and the split tail's arrivals start at 0
            self.workspace[:self.saved_tables.numel()].copy_(self.saved_tables)
        _cuda.gemm_fused(**self.args, stream=torch.cuda.current_stream().cuda_stream, part=self.part)


def schedule_table_bytes(n_problems: int) -> int:
    """The workspace's head (counters, tile groups, prefix sums, arrivals): cuda/sm90_mixed_grouped_gemm.cu
    schedule_bytes without the split tail's slots."""
    max_ctas = 2 * torch.cuda.get_device_properties(0).multi_processor_count
    return (64 + 96 * n_problems + 8 * (n_problems + 1) + 4 * 2 * max_ctas + 255) // 256 * 256  # arrivals: 2 per CTA


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="qwen1.5-moe")
    parser.add_argument("--proj", default="gate_up", choices=["gate_up", "down"])
    parser.add_argument("--scheme", default="w4a16_g128_asym")
    parser.add_argument("--rows", nargs="+", type=int, default=[1, 16])
    parser.add_argument("--active", nargs="+", type=int, default=[1, 2, 4, 8, 16, 25, 50])
    parser.add_argument("--reps", type=int, default=30)
    parser.add_argument("--out", default=None)
    args = parser.parse_args(argv)
    experts, _, hidden, inter = MODELS[args.model]
    n, k = (2 * inter, hidden) if args.proj == "gate_up" else (hidden, inter)
    w = scheme_weights(args.scheme, max(args.active), n, k)
    flush = torch.empty(256 * 1024 * 1024, dtype=torch.uint8, device="cuda")
    no_flush = torch.empty(16, dtype=torch.uint8, device="cuda")
    out = []
    print(f"{args.model} {args.proj} n={n} k={k} {args.scheme}: µs compute (flushed, warm L2), schedule+compute "
          f"(flushed), TB/s of the flushed compute")
    for m in args.rows:
        for active in args.active:
            counts = np.full(active, m)
            rows = int(counts.sum())
            row_offsets = torch.tensor(np.concatenate([[0], np.cumsum(counts)]), dtype=torch.int32, device="cuda")
            acts = activations(rows, k)
            y = torch.empty(rows, n, dtype=torch.bfloat16, device="cuda")
            problems = [(args.scheme, e, n, k, 0, w) for e in range(active)]
            whole = PartCall(problems, row_offsets, active, rows, acts, y, part="all")
            schedule = PartCall(problems, row_offsets, active, rows, acts, y, part="schedule")
            compute = PartCall(problems, row_offsets, active, rows, acts, y, part="compute")
            compute.workspace, compute.args = schedule.workspace, dict(compute.args)
            compute.args["workspace"] = schedule.workspace.data_ptr()
            schedule()
            torch.cuda.synchronize()
            compute.saved_tables = schedule.workspace[:schedule_table_bytes(active)].clone()
            restore = compute.saved_tables.clone()
            rec = {"model_shape": args.model, "proj": args.proj, "scheme": args.scheme, "n": n, "k": k,
                   "rows_per_expert": m, "active_experts": active,
                   "restore_us": time_us(lambda: restore.copy_(compute.saved_tables), flush, args.reps)[0],
                   "compute_us": time_us(compute, flush, args.reps)[0],
                   "compute_warm_us": time_us(compute, no_flush, args.reps)[0],
                   "all_us": time_us(whole, flush, args.reps)[0],
                   "schedule_us": time_us(schedule, flush, args.reps)[0]}
            rec["compute_us"] -= rec["restore_us"]  # the table copy before each compute launch
            rec["compute_warm_us"] -= rec["restore_us"]
            rec["compute_tbps"] = active * weight_bytes(args.scheme, n, k) / rec["compute_us"] / 1e6
            out.append(rec)
            print(f"m={m:3d} experts={active:3d}: compute {rec['compute_us']:7.1f} / {rec['compute_warm_us']:7.1f}"
                  f"  all {rec['all_us']:7.1f}  schedule {rec['schedule_us']:5.1f}  {rec['compute_tbps']:.2f} TB/s",
                  flush=True)
    if args.out:
        fd, tmp = tempfile.mkstemp(dir=os.path.dirname(os.path.abspath(args.out)) or ".")
        with os.fdopen(fd, "w") as f:
            json.dump({"gpu": torch.cuda.get_device_name(), "command": " ".join(sys.argv), "records": out}, f,
                      indent=1)
        os.replace(tmp, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
