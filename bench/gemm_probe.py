"""Representative fused-GEMM launches for Nsight Compute (bench/gemm_device_run.sh runs it under ncu), Qwen1.5-MoE
gate_up shape.  Default: decode (16 tokens, w4a16_g128_asym) and prefill (8192 tokens, w8a8_g-1_sym); or name
them: python gemm_probe.py 1:w4a16_g128_asym 16:w4a16_g128_asym"""
from __future__ import annotations

import sys

import numpy as np
import torch

from bench_gemm import MODELS, FusedCall, activations, scheme_weights, zipf_expert_rows


def launch(tokens: int, scheme_name: str) -> None:
    experts, top_k, hidden, inter = MODELS["qwen1.5-moe"]
    n, k = 2 * inter, hidden
    counts = zipf_expert_rows(tokens, experts, top_k, seed=tokens)
    rows = int(counts.sum())
    row_offsets = torch.tensor(np.concatenate([[0], np.cumsum(counts)]), dtype=torch.int32, device="cuda")
    acts = activations(rows, k)
    y = torch.empty(rows, n, dtype=torch.bfloat16, device="cuda")
    w = scheme_weights(scheme_name, experts, n, k)
    call = FusedCall([(scheme_name, e, n, k, 0, w) for e in range(experts)], row_offsets, experts, rows, acts, y)
    call()
    torch.cuda.synchronize()


if __name__ == "__main__":
    for spec in sys.argv[1:] or ["16:w4a16_g128_asym", "8192:w8a8_g-1_sym"]:
        tokens, scheme_name = spec.split(":")
        launch(int(tokens), scheme_name)
