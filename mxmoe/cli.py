"""``python -m mxmoe``: quantize | eval | plan | demo | bench accuracy | bench kernels.

    python -m mxmoe demo                                   # the bundled mini MoE, end to end (a few minutes on CPU)
    python -m mxmoe quantize --model DIR --calib valid.txt --wbits 3.25 --out out/q
    python -m mxmoe eval --model out/q --text test.txt
    python -m mxmoe plan --model DIR --calib valid.txt --wbits 3.25 --plan-out plan.json
    python -m mxmoe bench accuracy [--max-windows N]       # writes bench/results/accuracy-mini.json
    python -m mxmoe bench kernels ...                      # GPU kernel benchmark (needs mxmoe._cuda)
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from typing import Any, Sequence

REPO_ROOT = Path(__file__).resolve().parent.parent
MINI_MODEL = REPO_ROOT / "models" / "qwen2moe-mini"
WIKITEXT = REPO_ROOT / "data" / "wikitext-2"


def _read_text(path: str | os.PathLike) -> str:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"text file {path} does not exist")
    return path.read_text(encoding="utf-8")


def _dtype(name: str) -> Any:
    import torch
    dtypes = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
    if name not in dtypes:
        raise ValueError(f"--dtype must be one of {sorted(dtypes)}, got {name!r}")
    return dtypes[name]


def load_model(path: str | os.PathLike, dtype: str = "float32") -> tuple[Any, Any]:
    """(model, tokenizer) from a plain transformers directory or an mxmoe checkpoint."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = Path(path)
    if not (path / "config.json").exists():
        raise FileNotFoundError(f"{path} is not a model directory (no config.json)")
    config = json.loads((path / "config.json").read_text())
    if (config.get("quantization_config") or {}).get("quant_method") == "mxmoe":
        from .checkpoint import load_quantized
        model = load_quantized(path)
    else:
        model = AutoModelForCausalLM.from_pretrained(str(path), dtype=_dtype(dtype)).eval()
    tokenizer = AutoTokenizer.from_pretrained(str(path))
    return model, tokenizer


def _candidates(text: str | None) -> list[str] | None:
    return [c.strip() for c in text.split(",") if c.strip()] if text else None


def _add_quant_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", required=True, help="transformers model directory")
    parser.add_argument("--calib", required=True, help="calibration text file (e.g. data/wikitext-2/valid.txt)")
    parser.add_argument("--wbits", type=float, default=3.25, help="average weight bits incl. scales (default 3.25)")
    parser.add_argument("--abits", type=float, default=None, help="average activation bits (default: weight-only)")
    parser.add_argument("--r", type=float, default=0.75, help="accuracy/speed trade-off, 1 = accuracy only")
    parser.add_argument("--candidates", default=None, help="comma-separated scheme names (one = uniform)")
    parser.add_argument("--seq-len", type=int, default=512)
    parser.add_argument("--n-samples", type=int, default=128, help="calibration windows")
    parser.add_argument("--no-rotate", action="store_true", help="skip the Hadamard rotation")
    parser.add_argument("--gpu", default="h100", help="cost model preset (h100, h200, a100, rtx4090)")
    parser.add_argument("--seed", type=int, default=0)


def cmd_quantize(args: argparse.Namespace) -> int:
    from .checkpoint import save_quantized
    from .model import quantize

    model, tokenizer = load_model(args.model, args.dtype)
    plan = None
    if args.plan:
        from .allocation import Plan
        plan = Plan.from_json(_read_text(args.plan))
    quantize(model, _read_text(args.calib), wbits=args.wbits, abits=args.abits, r=args.r,
             candidates=_candidates(args.candidates), plan=plan, method=args.method, rotate=not args.no_rotate,
             tokenizer=tokenizer, seq_len=args.seq_len, n_samples=args.n_samples, seed=args.seed, gpu=args.gpu)
    print(model.mxmoe_plan.summary())
    report = model.mxmoe_report
    if report["n_starved"]:
        print(f"{report['n_starved']} starved experts quantized with the Hessian fallback: "
              f"{report['starved_experts']}")
    out = save_quantized(model, args.out, tokenizer=tokenizer)
    print(f"saved {out}")
    return 0


def cmd_eval(args: argparse.Namespace) -> int:
    from .evaluate import perplexity

    model, tokenizer = load_model(args.model, args.dtype)
    started = time.time()
    ppl = perplexity(model, tokenizer, _read_text(args.text), seq_len=args.seq_len, max_windows=args.max_windows)
    print(f"perplexity {ppl:.3f}  ({args.text}, seq_len {args.seq_len}, {time.time() - started:.0f} s)")
    return 0


def cmd_plan(args: argparse.Namespace) -> int:
    from .model import calibration_windows, make_plan
    from .profiling import profile
    from .rotate import rotate_model

    model, tokenizer = load_model(args.model, args.dtype)
    windows = calibration_windows(_read_text(args.calib), tokenizer, args.seq_len, args.n_samples, args.seed)
    if not args.no_rotate:
        rotate_model(model, seed=args.seed)
    prof = profile(model, windows, seq_len=windows.shape[1], n_samples=windows.shape[0])
    plan = make_plan(model, prof, args.wbits, abits=args.abits, r=args.r, candidates=_candidates(args.candidates),
                     gpu=args.gpu, seed=args.seed)
    print(plan.summary())
    out = Path(args.plan_out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.tmp")
    tmp.write_text(plan.to_json())
    os.replace(tmp, out)
    print(f"plan written to {out}")
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from .evaluate import run_demo
    return run_demo(out_dir=args.out, wbits=args.wbits, n_samples=args.n_samples, max_windows=args.max_windows)


def cmd_bench_accuracy(args: argparse.Namespace) -> int:
    from .evaluate import run_accuracy_bench
    return run_accuracy_bench(out_path=args.out, max_windows=args.max_windows, n_samples=args.n_samples,
                              only=_candidates(args.only), cache_dir=args.cache_dir, device=args.device)


def cmd_bench_kernels(args: argparse.Namespace, rest: Sequence[str]) -> int:
    from ._cuda_status import cuda_available, cuda_status
    if not cuda_available():
        print(f"bench kernels needs mxmoe's CUDA kernels and a GPU: {cuda_status()}", file=sys.stderr)
        return 2
    from .bench_kernels import main
    return int(main(list(rest)) or 0)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m mxmoe", description="MxMoE mixed-precision MoE quantization")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("quantize", help="profile, allocate, quantize and save a model")
    _add_quant_args(p)
    p.add_argument("--method", choices=("gptq", "rtn"), default="gptq")
    p.add_argument("--plan", default=None, help="use this plan JSON instead of allocating")
    p.add_argument("--dtype", default="float32", help="dtype to load the model in (float32 recommended)")
    p.add_argument("--out", required=True, help="output checkpoint directory")
    p.set_defaults(func=cmd_quantize)

    p = sub.add_parser("eval", help="WikiText-style perplexity (non-overlapping windows, no BOS)")
    p.add_argument("--model", required=True)
    p.add_argument("--text", required=True)
    p.add_argument("--seq-len", type=int, default=512)
    p.add_argument("--max-windows", type=int, default=None)
    p.add_argument("--dtype", default="float32")
    p.set_defaults(func=cmd_eval)

    p = sub.add_parser("plan", help="profile + allocate; print the plan table and write the plan JSON")
    _add_quant_args(p)
    p.add_argument("--dtype", default="float32")
    p.add_argument("--plan-out", default="plan.json")
    p.set_defaults(func=cmd_plan)

    p = sub.add_parser("demo", help="quantize the bundled mini model and print an accuracy table")
    p.add_argument("--out", default="out/qwen2moe-mini-mxmoe", help="where to save the quantized model")
    p.add_argument("--wbits", type=float, default=3.25)
    p.add_argument("--n-samples", type=int, default=32, help="calibration windows of 512 tokens")
    p.add_argument("--max-windows", type=int, default=24, help="WikiText-2 test windows for the table")
    p.set_defaults(func=cmd_demo)

    p = sub.add_parser("bench", help="benchmarks: accuracy (CPU ok) or kernels (GPU)")
    bench = p.add_subparsers(dest="bench", required=True)
    b = bench.add_parser("accuracy", help="the accuracy table on the mini model (full WikiText-2 test)")
    b.add_argument("--out", default=str(REPO_ROOT / "bench" / "results" / "accuracy-mini.json"))
    b.add_argument("--max-windows", type=int, default=None, help="limit test windows (default: all 706)")
    b.add_argument("--n-samples", type=int, default=128)
    b.add_argument("--only", default=None, help="comma-separated config names to run (merged into --out)")
    b.add_argument("--cache-dir", default=None, help="keep profiles and loss tables here across runs")
    b.add_argument("--device", default="cpu", help="where the quantized models run for the PPL: cpu (C reference "
                                                     "GroupGEMM) or cuda (mxmoe's kernels)")
    b.set_defaults(func=cmd_bench_accuracy)
    b = bench.add_parser("kernels", help="GPU kernel benchmark (mxmoe.bench_kernels)", add_help=False)
    b.set_defaults(func=None)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:2] == ["bench", "kernels"]:
        return cmd_bench_kernels(argparse.Namespace(), argv[2:])
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except (ValueError, FileNotFoundError, FileExistsError, RuntimeError) as exc:
        print(f"mxmoe {args.command}: error: {exc}", file=sys.stderr)
        return 1
