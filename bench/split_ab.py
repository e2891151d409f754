"""The split tail (stream-K) of the fused GEMM on and off, on the same launches: w4a16_g128 GEMMs of real MoE shapes
at 1, 4 and 16 tokens (Zipf-skewed routing), each timed graph-replayed and eager, twice, with the environment switch
MXMOE_GEMM_SPLIT_TAIL=1 / 0 (read by mx_cuda_gemm_fused at every call, also when a graph is captured).

    python bench/split_ab.py            (on a GPU machine, repository root, extension built)

Prints one line per launch: µs for split=1 / split=0 / split=1 / split=0, graph and eager.  Results of the H100 run
are in bench/NOTES-gpu.md (session 3).
"""
from __future__ import annotations

import os
import sys

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from bench_gemm import FusedCall, activations, scheme_weights, zipf_expert_rows  # noqa: E402
from mxmoe.bench_kernels import time_us  # noqa: E402

SHAPES = [  # name, experts, top_k, n, k
    ("mixtral down", 8, 2, 4096, 14336),
    ("mixtral gate_up", 8, 2, 28672, 4096),
    ("qwen gate_up", 60, 4, 2816, 2048),
    ("qwen down", 60, 4, 2048, 1408),
]


def main() -> int:
    flush = torch.empty(256 << 20, dtype=torch.uint8, device="cuda")
    scheme = "w4a16_g128_asym"
    for name, experts, top_k, n, k in SHAPES:
        weights = scheme_weights(scheme, experts, n, k)
        for tokens in (1, 4, 16):
            counts = zipf_expert_rows(tokens, experts, top_k, seed=tokens)
            rows = int(counts.sum())
            row_offsets = torch.tensor(np.concatenate([[0], np.cumsum(counts)]), dtype=torch.int32, device="cuda")
            y = torch.empty(rows, n, dtype=torch.bfloat16, device="cuda")
            call = FusedCall([(scheme, e, n, k, 0, weights) for e in range(experts)], row_offsets, experts, rows,
                             activations(rows, k), y)
            results = []
            for split in ("1", "0", "1", "0"):
                os.environ["MXMOE_GEMM_SPLIT_TAIL"] = split
                graph_us = time_us(call, flush, 30)[0]
                eager_us = time_us(call, flush, 30, use_graph=False)[0]
                results.append(f"split={split} graph {graph_us:6.1f} eager {eager_us:6.1f}")
            print(f"{name:16s} T={tokens:2d} | " + " | ".join(results), flush=True)
    os.environ.pop("MXMOE_GEMM_SPLIT_TAIL", None)
    return 0


if __name__ == "__main__":
    sys.exit(main())
