"""Allocation benchmark: a DeepSeek-V2-Lite-sized problem solved by mxmoe.allocate (GLPK), CPU only.

26 MoE layers x 66 experts (64 routed + 2 shared) x 3 blocks (gate, up, down) x 10 candidate schemes, hidden 2048,
expert intermediate 1408, top-6 routing.  Synthetic but structured inputs:
  - tokens per routed expert: `tokens * top_k` routed slots spread by a Zipf(1.1) law over a random expert order
    per layer (some experts starve); shared experts see every token;
  - loss: per-block sensitivity (log-normal) x routing share x (4^-W weight error, 0.6x for group-128, + 0.3 x
    4^-A activation error); 0 for w16a16;
  - time: roofline on an H100 (3.0 TB/s; bf16 638 TFLOPS, int8/fp8 1258 TOPS from mma.sync, DESIGN section 3):
    max(weight + scale bytes / bandwidth, 2*M*N*K / peak) + activation read/quantize traffic + 3 us launch share.

    python bench/bench_allocate.py                 # writes bench/results/allocate-cpu.json
    (scopes: "layer" = 26 per-layer problems, the 5 s target; "model" = one global problem; "model:N" = one global
    problem over the first N layers)
    python bench/bench_allocate.py --scopes layer --no-write --timeout 600
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))   # run from a checkout
import mxmoe  # noqa: E402
from mxmoe.allocation import allocate  # noqa: E402

LAYERS, ROUTED, SHARED, TOP_K, HIDDEN, INTER = 26, 64, 2, 6, 2048, 1408
CANDIDATES = ["w16a16", "w8a16_g-1_sym", "w4a16_g-1_asym", "w4a16_g128_asym", "w3a16_g128_asym",
              "w2a16_g128_asym", "w8a8_g-1_sym", "w8a8_g-1_sym_fp8", "w4a8_g-1_sym", "w4a8_g128_asym"]
BANDWIDTH = 3.0e12                      # bytes/s, H100 SXM copy bandwidth (measured 3.03 TB/s)
PEAK = {16: 6.38e14, 8: 1.258e15}       # tensor throughput by activation bits (mma.sync, measured)
LAUNCH_SHARE = 3e-6                     # s per block: scheduling / tile tail


@dataclass(frozen=True)
class Block:
    layer: int
    expert: int
    block: str
    out_features: int
    in_features: int
    tokens: int


@dataclass
class SyntheticProfile:
    model_type: str
    num_layers: int
    num_experts: int
    top_k: int
    blocks: list


def make_problem(tokens: int, seed: int) -> tuple[SyntheticProfile, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    zipf = 1.0 / np.arange(1, ROUTED + 1) ** 1.1
    blocks = []
    for layer in range(LAYERS):
        counts = rng.multinomial(tokens * TOP_K, zipf / zipf.sum())[rng.permutation(ROUTED)]
        for expert in range(ROUTED + SHARED):
            m = tokens if expert >= ROUTED else int(counts[expert])
            for name in ("gate", "up", "down"):
                n, k = (INTER, HIDDEN) if name != "down" else (HIDDEN, INTER)
                blocks.append(Block(layer, expert, name, n, k, m))
    profile = SyntheticProfile("deepseek_v2", LAYERS, ROUTED, TOP_K, blocks)
    candidates = [mxmoe.Scheme.parse(c) for c in CANDIDATES]
    n_blocks = len(blocks)
    sensitivity = rng.lognormal(0.0, 1.0, (n_blocks, 1))
    share = np.array([[b.tokens / tokens] for b in blocks]) + 1e-3
    weight_error = np.array([0.0 if c.w_bits == 16 else 4.0 ** -c.w_bits * (0.6 if c.group_size > 0 else 1.0)
                             for c in candidates])
    act_error = np.array([0.0 if c.a_bits == 16 else 0.3 * 4.0 ** -c.a_bits for c in candidates])
    loss = sensitivity * share * (weight_error + act_error) * rng.uniform(0.9, 1.1, (n_blocks, len(candidates)))
    time_table = np.empty((n_blocks, len(candidates)))
    for i, b in enumerate(blocks):
        for j, c in enumerate(candidates):
            weight_bytes = b.out_features * b.in_features * c.bits_for(b.in_features) / 8
            flops = 2.0 * b.tokens * b.out_features * b.in_features
            act_bytes = b.tokens * b.in_features * (2 + (c.a_bits / 8 if c.a_bits < 16 else 0))
            time_table[i, j] = max(weight_bytes / BANDWIDTH, flops / PEAK[16 if c.a_bits == 16 else 8]) \
                + act_bytes / BANDWIDTH + LAUNCH_SHARE
    return profile, loss, time_table


def run_scope(args: argparse.Namespace, scope: str) -> dict:
    profile, loss, time_table = make_problem(args.tokens, args.seed)
    if args.layers < LAYERS:   # the first `layers` layers only (model scope on a smaller model)
        keep = np.array([b.layer < args.layers for b in profile.blocks])
        profile = SyntheticProfile(profile.model_type, args.layers, ROUTED, TOP_K,
                                   [b for b, k in zip(profile.blocks, keep) if k])
        loss, time_table = loss[keep], time_table[keep]
    seconds = []
    for _ in range(args.repeat):
        start = time.perf_counter()
        plan = allocate(profile, args.wbits, r=args.r, candidates=CANDIDATES, tokens=args.tokens,
                        scope=scope, loss=loss, time=time_table)
        seconds.append(time.perf_counter() - start)
    frontier_sizes = {k: len(v) for k, v in plan.frontiers.items()}
    return {"seconds": min(seconds), "seconds_all": seconds, "frontier_sizes": frontier_sizes,
            "average_bits": plan.average_bits, "predicted_loss": plan.predicted_loss,
            "predicted_time_s": plan.predicted_time,
            "schemes": {name: plan.schemes.count(name) for name in sorted(set(plan.schemes))}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--wbits", type=float, default=3.25)
    parser.add_argument("--r", type=float, default=0.75)
    parser.add_argument("--tokens", type=int, default=512)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--repeat", type=int, default=1, help="timed runs per scope (the minimum is reported)")
    parser.add_argument("--scopes", nargs="+", default=["layer", "model", "model:2", "model:4"],
                        help="layer | model | model:N (model scope on the first N layers)")
    parser.add_argument("--layers", type=int, default=LAYERS, help=argparse.SUPPRESS)
    parser.add_argument("--timeout", type=float, default=900.0, help="wall-clock limit per scope (s)")
    parser.add_argument("--out", default=os.path.join(os.path.dirname(os.path.abspath(__file__)), "results",
                                                      "allocate-cpu.json"))
    parser.add_argument("--no-write", action="store_true")
    parser.add_argument("--worker", choices=["layer", "model"], help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:   # one scope in a child process, so that the parent can enforce --timeout
        print(json.dumps(run_scope(args, args.worker)))
        return

    print(f"problem: {LAYERS} layers x {ROUTED + SHARED} experts x 3 blocks x {len(CANDIDATES)} schemes "
          f"= {LAYERS * (ROUTED + SHARED) * 3} blocks, wbits={args.wbits}, r={args.r}", flush=True)
    results = {}
    for scope in args.scopes:
        kind, _, layers = scope.partition(":")
        if kind not in ("layer", "model"):
            raise SystemExit(f"unknown scope {scope!r}")
        child = [sys.executable, os.path.abspath(__file__), "--worker", kind, "--wbits", str(args.wbits), "--r",
                 str(args.r), "--tokens", str(args.tokens), "--seed", str(args.seed), "--repeat", str(args.repeat),
                 "--layers", layers or str(LAYERS)]
        start = time.perf_counter()
        try:
            done = subprocess.run(child, capture_output=True, text=True, timeout=args.timeout, check=True)
            result = json.loads(done.stdout.strip().splitlines()[-1])
        except subprocess.TimeoutExpired:
            result = {"seconds": None, "timed_out_after_s": args.timeout, "layers": int(layers or LAYERS)}
            print(f"scope={scope:5s}: did not finish within {args.timeout:.0f} s", flush=True)
            results[scope] = result
            continue
        except subprocess.CalledProcessError as e:
            raise SystemExit(f"scope={scope} failed:\n{e.stderr}") from None
        result["wall_seconds_incl_setup"] = time.perf_counter() - start
        result["layers"] = int(layers or LAYERS)
        results[scope] = result
        sizes = list(result["frontier_sizes"].values())
        print(f"scope={scope:5s}: {result['seconds']:8.3f} s, frontier points per problem: min {min(sizes)} / "
              f"max {max(sizes)} / total {sum(sizes)}, avg bits {result['average_bits']:.4f}, "
              f"L={result['predicted_loss']:.5g}, T={result['predicted_time_s'] * 1e3:.4f} ms", flush=True)
    if args.no_write:
        return
    record = {"benchmark": "allocate", "cpu": platform.processor() or platform.machine(),
              "cpu_model": _cpu_model(), "logical_cpus": os.cpu_count(), "glpk": mxmoe._C.glpk_version(),
              "python": sys.version.split()[0],
              "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
              "command": "python " + " ".join([os.path.relpath(sys.argv[0])] + sys.argv[1:]),
              "problem": {"layers": LAYERS, "experts": ROUTED + SHARED, "blocks_per_expert": 3,
                          "schemes": CANDIDATES, "hidden": HIDDEN, "intermediate": INTER, "top_k": TOP_K,
                          "tokens": args.tokens, "wbits": args.wbits, "r": args.r, "seed": args.seed,
                          "tie_gate_up": True},
              "target_seconds_layer_scope": 5.0, "results": results}
    os.makedirs(os.path.dirname(args.out), exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=os.path.dirname(args.out), suffix=".json.tmp")
    with os.fdopen(fd, "w") as f:
        json.dump(record, f, indent=2)
        f.write("\n")
    os.replace(tmp, args.out)
    print(f"wrote {args.out}")


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor()


if __name__ == "__main__":
    main()
