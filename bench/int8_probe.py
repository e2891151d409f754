"""The w8a8 GEMM alone at 8192 tokens (Qwen1.5-MoE gate_up), int8 and fp8, on random, all-zero and small-code
operands: whether the data (the power it draws) changes the time.

    python bench/int8_probe.py
"""
import sys

import numpy as np
import torch

from bench_gemm import FusedCall, MODELS, Timer, activations, scheme_weights, zipf_expert_rows

if not torch.cuda.is_available():
    sys.exit("no CUDA device")
experts, top_k, hidden, inter = MODELS["qwen1.5-moe"]
n, k = 2 * inter, hidden
counts = zipf_expert_rows(8192, experts, top_k, seed=8192)
rows = int(counts.sum())
row_offsets = torch.tensor(np.concatenate([[0], np.cumsum(counts)]), dtype=torch.int32, device="cuda")
timer = Timer(20)
for scheme in ("w8a8_g-1_sym", "w8a8_g-1_sym_fp8"):
    for data in ("random", "zero", "small"):
        acts = activations(rows, k)
        w = scheme_weights(scheme, experts, n, k)
        if data == "zero":
            acts["int8"].zero_()
            acts["fp8"].zero_()
            acts["rowsum_int8"].zero_()
            if scheme.endswith("fp8"):
                w["qweight"].zero_()
            else:
                w["qweight"].fill_(0x80808080 - (1 << 32))  # code 128 = weight 0
        if data == "small":  # int8 codes of quantized randn-like data: mostly small magnitudes
            acts["int8"].copy_((torch.randn(rows, k, device="cuda") * 32).clamp(-127, 127).to(torch.int8))
            acts["rowsum_int8"].copy_(acts["int8"].sum(dim=1, dtype=torch.int32))
        y = torch.empty(rows, n, dtype=torch.bfloat16, device="cuda")
        call = FusedCall([(scheme, e, n, k, 0, w) for e in range(experts)], row_offsets, experts, rows, acts, y)
        us = timer(call)
        print(f"{scheme:18s} {data:7s} {us:8.1f} us", flush=True)
