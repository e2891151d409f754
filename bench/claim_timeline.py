"""Per-claim timeline of the fused GEMM: where a decode tile's time goes, and how the claims spread over the CTAs.

    python bench/timeline_patch.py cuda/sm90_mixed_grouped_gemm.cu /tmp/diag.cu   # then build a copy of the
    python bench/claim_timeline.py [--out timeline.json]                            # tree with it; run this there

Needs the diagnostic build (bench/timeline_patch.py): its kernel appends one record per claim to the workspace tail.
Per launch (w4a16_g128, Zipf-skewed routing as in bench_gemm.py) it prints the graph-replayed µs, then from one
eager launch: when the CTAs finish, the whole tiles' and split pieces' durations, and for whole decode stream tiles
the three phases of a claim: start -> ready (claim, lookup, first chunk and activation slice landed and prepared),
ready -> loop end (the chunks), loop end -> next claim (epilogue).  Each launch runs with the split tail's cost model
at its default and switched off (MXMOE_GEMM_SPLIT_COST), or at 0 (split wherever possible) where named.
"""
from __future__ import annotations

import argparse
import json
import os
import sys

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from bench_gemm import FusedCall, activations, scheme_weights, zipf_expert_rows  # noqa: E402
from timeline_patch import DIAG_RECORDS  # noqa: E402
from mxmoe.bench_kernels import time_us  # noqa: E402

RECORD = np.dtype([("tile", "<i4"), ("cta", "<i4"), ("smid", "<i4"), ("kind", "<i4"),
                   ("t0", "<u8"), ("t1", "<u8"), ("t_ready", "<u8"), ("t_loop", "<u8")])
NEVER = "1000000"

# name, [(n, k, rows per expert or None for Zipf, experts, top_k)], tokens, split costs
CASES = [
    ("qwen1.5-moe gate_up T=16", [(2816, 2048, None, 60, 4)], 16, (None, "0")),
    ("qwen1.5-moe down T=16", [(2048, 1408, None, 60, 4)], 16, (None,)),
    ("qwen1.5-moe gate_up T=1", [(2816, 2048, None, 60, 4)], 1, (None, "0")),
    ("mixtral-8x7b gate_up T=16", [(28672, 4096, None, 8, 2)], 16, (None,)),
    ("qwen1.5-moe down T=16 + one 16-row problem of K=5632", [(2048, 1408, None, 60, 4), (2048, 5632, 16, 1, 0)],
     16, (NEVER, None)),
]


def launch(groups, tokens: int, scheme: str = "w4a16_g128_asym") -> FusedCall:
    """The fused call of one case (bench_gemm.FusedCall over every group's experts; workspace: call.workspace)."""
    problems, expert_rows, weights = [], [], {"qweight": [], "scales": [], "zeros": []}
    max_k, max_n = max(g[1] for g in groups), max(g[0] for g in groups)
    for n, k, rows, count, top_k in groups:
        w = scheme_weights(scheme, count, n, k)
        counts = zipf_expert_rows(tokens, count, top_k, seed=tokens) if rows is None else np.full(count, rows)
        for i in range(count):
            for name in weights:  # indexed by expert below, as FusedCall reads them
                weights[name].append(w[name][i])
            problems.append((scheme, len(expert_rows), n, k, 0, weights))
            expert_rows.append(int(counts[i]))
    rows = sum(expert_rows)
    row_offsets = torch.tensor(np.concatenate([[0], np.cumsum(expert_rows)]), dtype=torch.int32, device="cuda")
    y = torch.empty(rows, max_n, dtype=torch.bfloat16, device="cuda")
    acts = activations(rows, max_k)
    call = FusedCall(problems, row_offsets, len(problems), rows, acts, y)
    call.keep = (weights, row_offsets, acts, y)  # the device buffers its table and arguments point to
    return call


def summarize(workspace: torch.Tensor) -> dict:
    tail = workspace[workspace.numel() - (64 + RECORD.itemsize * DIAG_RECORDS):].cpu().numpy()
    count = min(int(tail[:4].view(np.int32)[0]), DIAG_RECORDS)
    r = tail[64:64 + RECORD.itemsize * count].view(RECORD)
    head = workspace[:20].cpu().numpy().view(np.int32)
    base = int(r["t0"].min())
    work = r[r["kind"] != 2]
    end = {}
    for x in work:
        end[int(x["cta"])] = max(end.get(int(x["cta"]), 0), int(x["t1"]) - base)
    ends = np.array(sorted(end.values())) / 1e3
    out = {"claims": int(len(work)), "tail_start": int(head[2]), "pieces": int(head[3]),
           "cta_end_us": {"min": ends.min(), "median": float(np.median(ends)), "max": ends.max()},
           "claims_per_cta": np.bincount(np.bincount(work["cta"])).tolist()}
    for kind, name in ((0, "whole_tile_us"), (1, "piece_us")):
        d = (work["t1"] - work["t0"])[work["kind"] == kind] / 1e3
        if len(d):
            out[name] = {"n": int(len(d)), "mean": float(d.mean()), "min": float(d.min()), "max": float(d.max())}
    tiles = work[(work["kind"] == 0) & (work["t_ready"] > 0)]
    if len(tiles):
        t0, ready, loop, t1 = (tiles[f].astype(np.int64) for f in ("t0", "t_ready", "t_loop", "t1"))
        first = np.zeros(len(tiles), bool)
        for cta in np.unique(tiles["cta"]):
            idx = np.where(tiles["cta"] == cta)[0]
            first[idx[np.argmin(t0[idx])]] = True
        for name, v in (("start_to_ready_us", (ready - t0) / 1e3), ("ready_to_loop_end_us", (loop - ready) / 1e3),
                        ("loop_end_to_next_us", (t1 - loop) / 1e3)):
            out[name] = {"mean": float(v.mean()), "first_claims": float(v[first].mean()),
                         "later_claims": float(v[~first].mean()) if (~first).any() else None}
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.strip().splitlines()[0])
    parser.add_argument("--out", help="JSON of every summary")
    args = parser.parse_args()
    flush = torch.empty(256 << 20, dtype=torch.uint8, device="cuda")
    results = []
    for name, groups, tokens, costs in CASES:
        call = launch(groups, tokens)
        for cost in costs:
            if cost is None:
                os.environ.pop("MXMOE_GEMM_SPLIT_COST", None)
            else:
                os.environ["MXMOE_GEMM_SPLIT_COST"] = cost
            us = time_us(call, flush, 10)[0]
            flush.zero_()
            call()
            torch.cuda.synchronize()
            summary = {"case": name, "split_cost": cost or "default", "graph_us": us, **summarize(call.workspace)}
            results.append(summary)
            print(json.dumps(summary, default=float), flush=True)
    os.environ.pop("MXMOE_GEMM_SPLIT_COST", None)
    if args.out:
        with open(args.out, "w") as f:
            json.dump(results, f, indent=1, default=float)
    return 0


if __name__ == "__main__":
    sys.exit(main())
