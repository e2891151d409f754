"""Perplexity with the GPTQ / MxMoE protocol: the text tokenized once, non-overlapping windows, no BOS."""
from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any

import numpy as np


def tokenize_text(tokenizer: Any, text: str) -> np.ndarray:
    """The whole text tokenized once, nothing added (no BOS/EOS): int64 [n_tokens]."""
    if not isinstance(text, str):
        raise TypeError(f"text must be a str, got {type(text).__name__}")
    ids = tokenizer(text, add_special_tokens=False, return_attention_mask=False, verbose=False)["input_ids"]
    return np.asarray(ids, dtype=np.int64)


def perplexity(model: Any, tokenizer: Any, text: str, seq_len: int = 512, max_windows: int | None = None,
               progress: bool = True) -> float:
    """Perplexity of ``model`` on ``text``: exp of the mean next-token negative log-likelihood over
    ``n_tokens // seq_len`` non-overlapping windows of ``seq_len`` tokens (the first ``max_windows`` of them when
    given), each window scored on its own (``seq_len - 1`` predictions), no BOS.  This is the protocol of the GPTQ
    and MxMoE papers (their ``nlls = loss * seq_len`` weighting is equal-weight too)."""
    import torch
    from tqdm.auto import tqdm

    if seq_len < 2:
        raise ValueError(f"seq_len must be >= 2, got {seq_len}")
    ids = tokenize_text(tokenizer, text)
    n_windows = len(ids) // seq_len
    if max_windows is not None:
        if max_windows < 1:
            raise ValueError(f"max_windows must be >= 1, got {max_windows}")
        n_windows = min(n_windows, max_windows)
    if n_windows == 0:
        raise ValueError(f"text has {len(ids)} tokens, fewer than one window of seq_len={seq_len}")
    device = next(model.parameters()).device
    windows = torch.from_numpy(ids[: n_windows * seq_len].reshape(n_windows, seq_len))
    total_nll = 0.0
    model_was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            for window in tqdm(windows, desc="perplexity", unit="window", disable=not progress, leave=False):
                input_ids = window[None].to(device)
                logits = model(input_ids=input_ids, use_cache=False).logits[0, :-1].float()
                nll = torch.nn.functional.cross_entropy(logits, input_ids[0, 1:], reduction="mean")
                total_nll += float(nll)
    finally:
        model.train(model_was_training)
    return math.exp(total_nll / n_windows)


# ----------------------------------------------------------------------------------------------------------------
# Accuracy tables: `python -m mxmoe demo` and `python -m mxmoe bench accuracy` (mini model, WikiText-2)

UNIFORM_WEIGHT_SCHEMES = ("w4a16_g128_asym", "w3a16_g128_asym", "w2a16_g128_asym")
UNIFORM_ACT_SCHEMES = ("w8a8_g-1_sym", "w4a8_g-1_sym", "w4a4_g-1_sym")
MXMOE_WEIGHT_BUDGETS = (2.25, 2.5, 3.25, 4.25)
MXMOE_WA_BUDGETS = (5.0, 6.0)  # average bits of weights and of activations (mixing e.g. w4a4 .. w8a8)


def accuracy_configs() -> list[dict]:
    """The rows of the accuracy table, in order (name -> how to build the model)."""
    rows: list[dict] = [{"name": "bf16", "kind": "reference"}]
    for method in ("rtn", "gptq"):
        for scheme in UNIFORM_WEIGHT_SCHEMES:
            rows.append({"name": f"{method} {scheme}", "kind": "uniform", "scheme": scheme, "method": method,
                         "rotate": False})
    for scheme in UNIFORM_WEIGHT_SCHEMES:  # the same, with rotation: isolates what the allocation buys
        rows.append({"name": f"gptq+had {scheme}", "kind": "uniform", "scheme": scheme, "method": "gptq",
                     "rotate": True})
    for scheme in UNIFORM_ACT_SCHEMES:
        rows.append({"name": f"rtn+had {scheme}", "kind": "uniform", "scheme": scheme, "method": "rtn",
                     "rotate": True})
    for r in (1.0, 0.75):
        for wbits in MXMOE_WEIGHT_BUDGETS:
            rows.append({"name": f"mxmoe w{wbits} r{r}", "kind": "mxmoe", "wbits": wbits, "abits": None, "r": r,
                         "method": "gptq", "rotate": True})
        for bits in MXMOE_WA_BUDGETS:
            rows.append({"name": f"mxmoe w{bits}a{bits} r{r}", "kind": "mxmoe", "wbits": bits, "abits": bits,
                         "r": r, "method": "gptq", "rotate": True})
    return rows


# On a slow CPU the table fills in this order (the file is rewritten after every row): first what answers "does
# MxMoE beat uniform GPTQ at equal bits", then the remaining baselines.
RUN_PRIORITY = ("bf16", "gptq+had w3a16_g128_asym", "mxmoe w3.25 r1.0", "gptq+had w2a16_g128_asym",
                "mxmoe w2.25 r1.0", "rtn w3a16_g128_asym", "rtn w2a16_g128_asym", "mxmoe w3.25 r0.75",
                "mxmoe w2.25 r0.75", "rtn+had w4a8_g-1_sym", "mxmoe w6.0a6.0 r1.0", "gptq w3a16_g128_asym",
                "gptq w2a16_g128_asym")


def _run_priority(config: dict) -> int:
    return RUN_PRIORITY.index(config["name"]) if config["name"] in RUN_PRIORITY else len(RUN_PRIORITY)


class _Workbench:
    """A float32 base model, its rotated twin and one profile of each, reused by every configuration."""

    def __init__(self, model_dir: str, calib_text: str, n_samples: int, seq_len: int = 512, seed: int = 0,
                 cache_dir: str | None = None):
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        from .model import calibration_windows
        self.model_dir, self.seq_len, self.seed = model_dir, seq_len, seed
        self.tokenizer = AutoTokenizer.from_pretrained(model_dir)
        self.base = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
        self.windows = calibration_windows(calib_text, self.tokenizer, seq_len, n_samples, seed)
        self._rotated = None
        self._profiles: dict[bool, Any] = {}
        self._losses: dict[tuple, Any] = {}
        self.cache_dir = Path(cache_dir) if cache_dir else None  # profiles and loss tables survive restarts
        if self.cache_dir:
            self.cache_dir.mkdir(parents=True, exist_ok=True)

    def _cache_path(self, kind: str, rotated: bool, extra: str = "") -> Path | None:
        if self.cache_dir is None:
            return None
        key = f"{kind}-{'rot' if rotated else 'plain'}-n{self.windows.shape[0]}-s{self.seq_len}-seed{self.seed}{extra}"
        return self.cache_dir / key

    def loss(self, rotated: bool, candidates: list) -> Any:
        """The loss table of the (rotated) model for these candidates, computed once (and cached on disk)."""
        key = (rotated, tuple(c.name for c in candidates))
        if key not in self._losses:
            import hashlib
            digest = hashlib.sha1(",".join(key[1]).encode()).hexdigest()[:10]
            path = self._cache_path("loss", rotated, f"-{digest}.npy")
            if path is not None and path.exists():
                self._losses[key] = np.load(path)
            else:
                from .loss import estimate_loss
                self._losses[key] = estimate_loss(self.profile(rotated), candidates, model=self.model(rotated))
                if path is not None:
                    np.save(path, self._losses[key])
        return self._losses[key]

    def model(self, rotated: bool) -> Any:
        import copy
        if not rotated:
            return copy.deepcopy(self.base)
        if self._rotated is None:
            from .rotate import rotate_model
            self._rotated = rotate_model(copy.deepcopy(self.base), seed=self.seed)
        return copy.deepcopy(self._rotated)

    def profile(self, rotated: bool) -> Any:
        if rotated not in self._profiles:
            from .profiling import profile
            model = self._rotated if rotated else self.base
            if model is None:
                self.model(True)
                model = self._rotated
            path = self._cache_path("profile", rotated, ".npz")
            if path is not None and path.exists():
                from .profiling import Profile
                self._profiles[rotated] = Profile.load(str(path))
            else:
                self._profiles[rotated] = profile(model, self.windows, seq_len=self.seq_len,
                                                  n_samples=self.windows.shape[0])
                if path is not None:
                    self._profiles[rotated].save(str(path))
        return self._profiles[rotated]

    def build(self, config: dict) -> Any:
        """The quantized (or reference) model of one accuracy_configs() row."""
        from .model import quantize
        if config["kind"] == "reference":
            return self.base
        rotated = bool(config["rotate"])
        model = self.model(rotated)
        if config["kind"] == "uniform" and config["method"] == "rtn":  # RTN needs no calibration statistics
            from .allocation import Plan
            from .model import model_signature
            plan = Plan.uniform(model_signature(model), config["scheme"])
            return quantize(model, self.windows, plan=plan, method="rtn", rotate=False, prerotated=rotated,
                            seed=self.seed, progress=False)
        prof = self.profile(rotated)
        if config["kind"] == "uniform":
            from .allocation import Plan
            plan = Plan.uniform(prof, config["scheme"])
            return quantize(model, self.windows, plan=plan, method=config["method"], rotate=False,
                            prerotated=rotated, profile=prof, seed=self.seed)
        from .model import candidate_pool, make_plan
        candidates = candidate_pool(prof, config["abits"], config.get("candidates"))
        plan = make_plan(model, prof, config["wbits"], abits=config["abits"], r=config["r"], candidates=candidates,
                         seed=self.seed, loss=self.loss(rotated, candidates))
        return quantize(model, self.windows, plan=plan, method=config["method"], rotate=False, prerotated=rotated,
                        profile=prof, seed=self.seed)


def _machine() -> dict:
    import platform
    from ._cuda_status import cuda_status
    return {"cpu": platform.processor() or platform.machine(), "cpu_count": os.cpu_count(),
            "platform": platform.platform(), "cuda": cuda_status()}


def _write_json_atomic(path: Path, data: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(data, indent=2) + "\n")
    os.replace(tmp, path)


def _plan_fields(model: Any) -> dict:
    plan = getattr(model, "mxmoe_plan", None)
    if plan is None:
        return {}
    fields = {}
    for key in ("average_bits", "predicted_loss", "predicted_time"):
        value = getattr(plan, key, None)
        if value is not None:
            fields[key] = float(value)
    return fields


def _report_fields(model: Any) -> dict:
    report = getattr(model, "mxmoe_report", None)
    if not report:
        return {}
    plan = model.mxmoe_plan
    return {"n_starved": report["n_starved"],
            "scheme_histogram": {name: plan.schemes.count(name) for name in sorted(set(plan.schemes))}}


def run_accuracy_bench(out_path: str, max_windows: int | None = None, n_samples: int = 128,
                       only: list[str] | None = None, model_dir: str | None = None,
                       cache_dir: str | None = None, device: str = "cpu") -> int:
    """Every accuracy_configs() row on the mini model: PPL on WikiText-2 test (seq 512), written (atomically,
    after every row, so a long run can be followed) to ``out_path``.  Quantized rows run the packed weights through
    the C reference GroupGEMM (the CPU inference path) or, with ``device="cuda"``, mxmoe's CUDA kernels (quantization
    itself always runs on the CPU)."""
    import sys
    import time

    root = Path(__file__).resolve().parent.parent
    model_dir = model_dir or str(root / "models" / "qwen2moe-mini")
    test_text = (root / "data" / "wikitext-2" / "test.txt").read_text(encoding="utf-8")
    calib_text = (root / "data" / "wikitext-2" / "valid.txt").read_text(encoding="utf-8")
    bench = _Workbench(model_dir, calib_text, n_samples, cache_dir=cache_dir)
    out = Path(out_path)
    previous = json.loads(out.read_text()) if only and out.exists() else None
    result = {"date": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime()),
              "command": "python -m mxmoe " + " ".join(sys.argv[1:]) if sys.argv else "",
              "machine": _machine(), "device": device, "model": "models/qwen2moe-mini (fp32 compute)",
              "text": "data/wikitext-2/test.txt", "seq_len": 512, "max_windows": max_windows,
              "calibration": f"{bench.windows.shape[0]} x 512 tokens of data/wikitext-2/valid.txt",
              "reference_points_design_md": {"fp32": 68.99, "rtn w4": 69.43, "gptq w4": 69.79, "rtn w3": 72.08,
                                             "gptq w3": 71.99, "rtn w2": 105.89, "gptq w2": 98.21},
              "rows": [],
              "notes": ([f"PPL over the first {max_windows} of the 706 test windows (CPU time budget): compare rows "
                         "with each other, not with the full-set reference points"] if max_windows else [])}
    if previous is not None:  # --only: keep the other rows of the existing file, replace the named ones
        result["rows"] = [r for r in previous.get("rows", []) if r["name"] not in only]
    canonical = [c["name"] for c in accuracy_configs()]
    for config in sorted(accuracy_configs(), key=_run_priority):
        if only and config["name"] not in only:
            continue
        started = time.time()
        model = bench.build(config)
        if device != "cpu":
            model.to(device)
        built = time.time() - started
        ppl = perplexity(model, bench.tokenizer, test_text, seq_len=512, max_windows=max_windows)
        row = {**config, "ppl": round(ppl, 3), "quantize_s": round(built, 1),
               "eval_s": round(time.time() - started - built, 1),
               **_plan_fields(model), **_report_fields(model)}
        result["rows"].append(row)
        result["rows"].sort(key=lambda r: canonical.index(r["name"]) if r["name"] in canonical else len(canonical))
        print(f"{config['name']:<28} ppl {ppl:8.3f}   ({row['quantize_s']:.0f} s quantize, {row['eval_s']:.0f} s eval)",
              flush=True)
        _write_json_atomic(out, result)
        del model
    print(f"written {out}")
    return 0


# the demo's candidate set: the four weight-only schemes that matter at 2-4 bits (the loss table is computed per
# candidate, so fewer candidates keep the demo within minutes on a 2-core CPU)
DEMO_CANDIDATES = ("w2a16_g128_asym", "w3a16_g128_asym", "w4a16_g128_asym", "w8a16_g-1_sym")


def run_demo(out_dir: str = "out/qwen2moe-mini-mxmoe", wbits: float = 3.25, n_samples: int = 32,
             max_windows: int = 40) -> int:
    """The README's main job: quantize the bundled mini model at ``wbits`` and compare with bf16 and uniform GPTQ
    at the nearest uniform budget on the first ``max_windows`` windows of WikiText-2 test."""
    import time

    from .checkpoint import save_quantized

    root = Path(__file__).resolve().parent.parent
    model_dir = str(root / "models" / "qwen2moe-mini")
    test_text = (root / "data" / "wikitext-2" / "test.txt").read_text(encoding="utf-8")
    calib_text = (root / "data" / "wikitext-2" / "valid.txt").read_text(encoding="utf-8")
    started = time.time()
    print(f"[1/4] loading {model_dir} and {n_samples} calibration windows of WikiText-2 valid", flush=True)
    bench = _Workbench(model_dir, calib_text, n_samples)
    print("[2/4] rotating, profiling and allocating", flush=True)
    mx_config = {"name": f"mxmoe w{wbits} r0.75", "kind": "mxmoe", "wbits": wbits, "abits": None, "r": 0.75,
                 "method": "gptq", "rotate": True, "candidates": DEMO_CANDIDATES}
    mx_model = bench.build(mx_config)
    print(mx_model.mxmoe_plan.summary())
    uniform = {2.25: "w2a16_g128_asym", 3.25: "w3a16_g128_asym", 4.25: "w4a16_g128_asym"}
    nearest = min(uniform, key=lambda b: abs(b - wbits))
    print(f"[3/4] uniform GPTQ baseline ({uniform[nearest]}, {nearest} bits)", flush=True)
    uni_model = bench.build({"name": "gptq+had", "kind": "uniform", "scheme": uniform[nearest], "method": "gptq",
                             "rotate": True})
    print(f"[4/4] perplexity on the first {max_windows} windows of WikiText-2 test (seq 512)", flush=True)
    rows = [("bf16 weights (fp32 compute)", "16", bench.base),
            (f"uniform GPTQ {uniform[nearest]} (+Hadamard)", f"{nearest:.2f}", uni_model),
            (f"MxMoE (r=0.75)", f"{getattr(mx_model.mxmoe_plan, 'average_bits', wbits):.2f}", mx_model)]
    print(f"\n{'model':<40} {'weight bits':>11} {'PPL':>9}")
    for name, bits, model in rows:
        ppl = perplexity(model, bench.tokenizer, test_text, seq_len=512, max_windows=max_windows)
        print(f"{name:<40} {bits:>11} {ppl:9.2f}", flush=True)
    out = save_quantized(mx_model, out_dir, tokenizer=bench.tokenizer)
    print(f"\nsaved the MxMoE model to {out} (load: mxmoe.load_quantized, or AutoModelForCausalLM.from_pretrained "
          f"after import mxmoe); {time.time() - started:.0f} s in all")
    return 0
