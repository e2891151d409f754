"""Instruction counts of the decode stream tile's 128-group loop in SASS (no GPU needed).

    nvcc -cubin cuda/sm90_mixed_grouped_gemm.cu -o k.cubin -O3 -std=c++17 --expt-relaxed-constexpr -Icsrc -Icuda \\
        -gencode=arch=compute_90a,code=sm_90a
    nvdisasm -c k.cubin > k.sass            # nvdisasm: PyPI wheel nvidia-cuda-nvdisasm
    python bench/sass_counts.py k.sass [--scheme 3]

For each instantiation of run_thin_stream of one scheme id in the decode variant (<= 8 rows and 9-16 rows), the loop
body is taken from the last WARPSYNC.ALL before the first HMMA to the first branch after the last HMMA (the group
loop is `#pragma unroll 1`, one 128-group per iteration); prints its instruction count, register moves (IMAD.MOV /
MOV) and the opcode histogram.
"""
from __future__ import annotations

import argparse
import collections
import json
import re
import sys

INSTRUCTION = re.compile(r"\s*/\*[0-9a-f]+\*/\s+(?:@!?U?P\w+\s+)?([A-Z][A-Z0-9_.]*)")
LABEL = re.compile(r"^(\S+):\s*$")


def functions(sass: str) -> dict[str, list[str]]:
    """Function label -> its instruction lines (nvdisasm -c output)."""
    out: dict[str, list[str]] = {}
    name = None
    for line in sass.splitlines():
        m = LABEL.match(line)
        if m and "_ZN" in m.group(1):
            name = m.group(1)
            out[name] = []
        elif name is not None:
            if line.strip().startswith((".type", ".size")):
                name = None
            elif INSTRUCTION.match(line):
                out[name].append(line)
    return out


def group_loop(lines: list[str]) -> list[str]:
    ops = [INSTRUCTION.match(line).group(1) for line in lines]
    mma = [i for i, op in enumerate(ops) if op.startswith("HMMA")]
    if not mma:
        raise ValueError("no HMMA in this function")
    start = max(i for i in range(mma[0]) if ops[i] == "WARPSYNC.ALL")
    end = next(i for i in range(mma[-1], len(ops)) if ops[i] == "BRA")
    return ops[start + 1:end + 1]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("sass")
    p.add_argument("--scheme", type=int, default=3, help="scheme id (mx_scheme.h); 3 = w4a16_g128_asym")
    args = p.parse_args(argv)
    with open(args.sass) as f:
        funcs = functions(f.read())
    result = {}
    for name, lines in sorted(funcs.items()):
        m = re.search(rf"run_thin_streamILi{args.scheme}ENS_4TileILi16ELi1ELi112640EEELb([01])E", name)
        if not m or "DecodeVariant" not in name:
            continue
        body = group_loop(lines)
        hist = collections.Counter(op.split(".")[0] + (".MOV" if op.startswith("IMAD.MOV") else "") for op in body)
        rows = "9-16 rows" if m.group(1) == "1" else "<= 8 rows"
        result[rows] = {"instructions": len(body), "moves": hist["IMAD.MOV"] + hist["MOV"], "hmma": hist["HMMA"],
                        "histogram": dict(hist.most_common())}
    if not result:
        print(f"no decode-variant run_thin_stream of scheme {args.scheme} in {args.sass}", file=sys.stderr)
        return 1
    print(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
