"""mxmoe.quantize: rotate -> profile -> allocate -> GPTQ/RTN every expert block -> swap in packed modules.

    qmodel = mxmoe.quantize(model, open("valid.txt").read(), tokenizer=tok, wbits=3.25, r=0.75)

Order of the steps and why:

1. **Rotate** (QuaRot-style, :mod:`mxmoe.rotate`) first, so that the profile's Hessians and token counts are those of
   the model that gets quantized (the rotation does not change routing: router weights are rotated with the stream).
2. **Profile** (:func:`mxmoe.profile`) on ``n_samples`` windows of ``seq_len`` calibration tokens.
3. **Allocate** (:func:`mxmoe.allocate`) one scheme per (layer, expert, block) under the bit budget, or take the
   given ``plan`` after checking that it describes this model.
4. **Quantize** each block with its scheme from the profile's Hessian (GPTQ) or by RTN.  Where the down block
   quantizes its activations, the layer's down inputs are rotated too (online Hadamard of size I, for every expert
   of that layer, as the GPU layer applies it): the weights are packed as
   ``W_down H_Iᵀ`` with the Hessian ``H_I H H_Iᵀ`` and the module rotates the activations at run time.  Starved
   experts (too few calibration tokens) get the profile's documented Hessian fallback and are reported.
5. **Swap**: each experts module becomes an :class:`mxmoe.MxMoEExperts`, each shared-expert projection an
   :class:`mxmoe.experts.MxMoELinear`, both running the packed weights (C reference GroupGEMM on CPU).
"""
from __future__ import annotations

import logging
from typing import Any, Sequence

import numpy as np

from .hf_quantizer import register as _hf_register

from ._scheme import SchemeLike, as_scheme

logger = logging.getLogger("mxmoe")

METHODS = ("gptq", "rtn")

_hf_register()  # quantized models must reload through AutoModelForCausalLM.from_pretrained


def calibration_windows(calib: Any, tokenizer: Any = None, seq_len: int = 512, n_samples: int = 128,
                        seed: int = 0) -> Any:
    """Calibration token windows, int64 tensor [n, seq_len] with n = min(n_samples, available windows).

    ``calib`` is a text (tokenized whole, nothing added), a list of texts (joined by newlines), a 1-D sequence of
    token ids, or a 2-D tensor/array of windows (used as given, at most ``n_samples`` rows).  Windows are
    non-overlapping and drawn at random (seeded) from the whole text.  ValueError when there is not one full window.
    """
    import torch

    if isinstance(calib, (list, tuple)) and calib and all(isinstance(t, str) for t in calib):
        calib = "\n".join(calib)
    if isinstance(calib, str):
        if tokenizer is None:
            raise ValueError("calibration text needs a tokenizer (pass tokenizer=...)")
        from .evaluate import tokenize_text
        ids = tokenize_text(tokenizer, calib)
    else:
        ids = calib.detach().cpu().numpy() if isinstance(calib, torch.Tensor) else np.asarray(calib)
        if ids.dtype.kind not in "iu":
            raise TypeError(f"calibration token ids must be integers, got dtype {ids.dtype}")
        if ids.ndim == 2:
            if ids.shape[1] < 2 or ids.shape[0] == 0:
                raise ValueError(f"calibration windows have shape {ids.shape}; need at least one window of >= 2 "
                                 "tokens")
            return torch.as_tensor(ids[:n_samples].astype(np.int64))
        if ids.ndim != 1:
            raise ValueError(f"calibration token ids must be 1-D or 2-D [n, seq_len], got shape {ids.shape}")
    available = len(ids) // seq_len
    if available == 0:
        raise ValueError(f"calibration data has {len(ids)} tokens, shorter than one window of seq_len={seq_len}; "
                         "give more text or a smaller seq_len")
    order = np.random.default_rng(seed).permutation(available)[: min(n_samples, available)]
    windows = ids[: available * seq_len].reshape(available, seq_len)[np.sort(order)]
    return torch.as_tensor(windows.astype(np.int64))


def _check_device(model: Any) -> None:
    device = next(model.parameters()).device
    if device.type == "cuda":
        from ._cuda_status import cuda_available, cuda_status
        if not cuda_available():
            raise RuntimeError(f"model is on {device} but mxmoe's CUDA kernels are not usable ({cuda_status()}); "
                               "quantize on the CPU (model.to('cpu')) or build mxmoe with nvcc")
    elif device.type != "cpu":
        raise RuntimeError(f"mxmoe runs models on CPU or CUDA, got device {device}")


def _check_not_quantized(model: Any) -> None:
    from .experts import MxMoEExperts
    if any(isinstance(m, MxMoEExperts) for m in model.modules()):
        raise ValueError("model is already quantized by mxmoe (it contains MxMoEExperts)")


def _check_budget(candidates: Sequence[Any], wbits: float, blocks: Sequence[tuple[int, int]]) -> None:
    """ValueError when even the cheapest candidate exceeds the weight-bit budget (parameter-weighted)."""
    params = np.array([n * k for n, k in blocks], dtype=np.float64)
    cheapest = min(float(np.dot([s.bits_for(k) for _, k in blocks], params) / params.sum()) for s in candidates)
    if wbits + 1e-9 < cheapest:
        raise ValueError(f"wbits={wbits} is below the cheapest candidate scheme ({cheapest:.3f} bits per weight "
                         f"with scale overhead, candidates {[s.name for s in candidates]})")


def model_blocks(layers: Sequence[Any]) -> list[tuple[int, int, str, tuple[int, int]]]:
    """(layer_index, expert, block, (out, in)) for every expert block of the model, routed then shared."""
    from .arch import BLOCKS
    out = []
    for layer in layers:
        for expert in range(layer.num_total_experts):
            for block in BLOCKS:
                out.append((layer.layer_index, expert, block, layer.block_shape(expert, block)))
    return out


def model_signature(model: Any, layers: Sequence[Any] | None = None) -> dict:
    """The signature a Plan records (model_type, MoE layer count, routed experts, every block with its shape)."""
    from .arch import model_type, moe_layers
    layers = moe_layers(model) if layers is None else layers
    return {"model_type": model_type(model), "num_layers": len(layers), "num_experts": layers[0].num_experts,
            "blocks": [(l, e, b, n, k) for l, e, b, (n, k) in model_blocks(layers)]}


def validate_plan(plan: Any, model: Any, layers: Sequence[Any] | None = None) -> None:
    """ValueError naming the first mismatch when ``plan`` does not describe ``model``'s expert blocks."""
    if not hasattr(plan, "scheme_for") or not hasattr(plan, "check_signature"):
        raise TypeError(f"plan must be an mxmoe.Plan, got {type(plan).__name__}")
    try:
        plan.check_signature(model_signature(model, layers))
    except ValueError as exc:
        raise ValueError(f"plan does not match the model: {exc}") from None


def candidate_pool(profile: Any, abits: float | None = None,
                   candidates: Sequence[SchemeLike] | None = None) -> list:
    """The candidate schemes make_plan uses: the given ones, else the weight-only schemes (all schemes when
    ``abits`` is given), keeping those whose group divides every block's in_features (the layout must fit)."""
    from ._scheme import schemes as all_schemes
    pool = [as_scheme(s) for s in candidates] if candidates else \
        all_schemes(weight_only=True) if abits is None else all_schemes()
    in_features = {block.in_features for block in profile.blocks}
    fitting = [s for s in pool if s.w_bits == 16 or s.group_size == -1 or all(k % s.group_size == 0
                                                                             for k in in_features)]
    if not fitting:
        raise ValueError(f"no candidate scheme fits every block (in_features {sorted(in_features)}): "
                         f"{[s.name for s in pool]}")
    return fitting


def make_plan(model: Any, profile: Any, wbits: float, abits: float | None = None, r: float = 0.75,
              candidates: Sequence[SchemeLike] | None = None, tokens: int = 512, gpu: str = "h100", seed: int = 0,
              progress: bool = True, **allocate_kwargs: Any) -> Any:
    """Loss table (:func:`mxmoe.estimate_loss`, Hessian proxy, on ``model`` as profiled) + :func:`mxmoe.allocate`.
    Candidates default to the weight-only schemes, or all schemes when ``abits`` is given."""
    from .allocation import allocate
    from .loss import estimate_loss

    pool = candidate_pool(profile, abits, candidates)
    loss = allocate_kwargs.pop("loss", None)
    if loss is None:
        loss = estimate_loss(profile, pool, model=model, progress=progress)
    return allocate(profile, wbits, abits=abits, r=r, candidates=pool, tokens=tokens, gpu=gpu, loss=loss, seed=seed,
                    **allocate_kwargs)


def _quantize_block(W: np.ndarray, H: np.ndarray | None, scheme: Any, method: str) -> Any:
    if method == "gptq":
        from .gptq_solver import gptq
        return gptq(W, H, scheme)
    from .quant import quantize_rtn
    return quantize_rtn(W, scheme)


def quantize(model: Any, calib: Any, wbits: float = 3.25, abits: float | None = None, r: float = 0.75,
             candidates: Sequence[SchemeLike] | None = None, plan: Any = None, method: str = "gptq",
             rotate: bool = True, tokenizer: Any = None, seq_len: int = 512, n_samples: int = 128, seed: int = 0,
             gpu: str = "h100", tokens: int = 512, profile: Any = None, prerotated: bool = False,
             progress: bool = True,
             **allocate_kwargs: Any) -> Any:
    """Quantize the experts (routed and shared) of a transformers MoE model in place; returns it with
    ``model.mxmoe_plan`` (and ``model.mxmoe_report``: starved experts, average bits).

    ``abits=None`` keeps activations 16-bit (weight-only candidates); ``candidates`` restricts the schemes (one
    candidate = uniform quantization); ``plan`` skips profiling-driven allocation (the profile is still needed for
    GPTQ's Hessians unless ``method="rtn"``); ``profile`` reuses a :class:`mxmoe.Profile` of the *rotated* model.
    Extra keyword arguments go to :func:`mxmoe.allocate`.  Load the model in float32: the rotation is folded into
    the non-expert weights in their own dtype (bf16 storage would round every rotated weight once more).
    """
    import torch
    from tqdm.auto import tqdm

    from .arch import moe_layers, expert_block_weight
    from .experts import MxMoEExperts, MxMoELinear
    from .hf_quantizer import register
    from .rotate import rotate_down_input

    register()
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}")
    _check_not_quantized(model)
    layers = moe_layers(model)  # ValueError naming the supported architectures
    _check_device(model)
    blocks = model_blocks(layers)
    if candidates is not None:
        candidates = [as_scheme(s) for s in candidates]
        if not candidates:
            raise ValueError("candidates is empty")
    if plan is not None:
        validate_plan(plan, model, layers)
    else:
        from ._scheme import schemes as all_schemes
        pool = candidates or [s for s in all_schemes(weight_only=True if abits is None else None)]
        _check_budget(pool, wbits, [shape for *_, shape in blocks])
    need_profile = plan is None or method == "gptq"
    windows = calibration_windows(calib, tokenizer, seq_len, n_samples, seed) if need_profile and profile is None \
        else None

    if rotate and prerotated:
        raise ValueError("rotate=True and prerotated=True: the model would be rotated twice")
    if rotate:
        from .rotate import rotate_model
        logger.info("rotating the residual stream (random Hadamard, seed %d)", seed)
        rotate_model(model, seed=seed)
    if need_profile and profile is None:
        from .profiling import profile as run_profile
        profile = run_profile(model, windows, seq_len=windows.shape[1], n_samples=windows.shape[0], seed=seed,
                              progress=progress)
    if plan is None:
        plan = make_plan(model, profile, wbits, abits=abits, r=r, candidates=candidates, tokens=tokens, gpu=gpu,
                         seed=seed, progress=progress, **allocate_kwargs)

    starved: dict[int, list[int]] = {}
    total_blocks = len(blocks)
    with torch.no_grad(), tqdm(total=total_blocks, desc=f"mxmoe {method}", unit="block", disable=not progress) as bar:
        for layer in layers:
            li = layer.layer_index
            act = getattr(model.config, "hidden_act", "silu")
            weights, flags, shared_modules = [], [], []
            # online Hadamard before down: per layer (every expert's down or none, as the GPU layer runs it),
            # wherever some down block of the layer quantizes its activations
            online = bool((rotate or prerotated) and any(
                as_scheme(plan.scheme_for(li, e, "down")).quantizes_activations
                for e in range(layer.num_total_experts)))
            for expert in range(layer.num_total_experts):
                quantized = []
                for block in ("gate", "up", "down"):
                    scheme = as_scheme(plan.scheme_for(li, expert, block))
                    W = expert_block_weight(layer, expert, block).detach().float().cpu().numpy()
                    H = profile.hessian(li, expert, block) if method == "gptq" else None
                    if block == "down" and online:
                        from .hadamard import hadamard_matrix
                        W = rotate_down_input(W, seed)
                        if H is not None:
                            Hd = hadamard_matrix(W.shape[1], seed)
                            H = Hd @ H @ Hd.T
                    quantized.append(_quantize_block(np.ascontiguousarray(W, np.float32), H, scheme, method))
                    bar.update(1)
                if expert < layer.num_experts:
                    weights.append(quantized)
                    flags.append(online)
                else:
                    shared_modules.append((expert - layer.num_experts, quantized, online))
            layer.mlp.experts = MxMoEExperts.from_quantized(weights, act, flags, seed)
            for j, quantized, online in shared_modules:
                shared = layer.shared_experts[j]
                for block, qw in zip(("gate", "up", "down"), quantized):
                    linear = getattr(shared, f"{block}_proj")
                    setattr(shared, f"{block}_proj", MxMoELinear.from_quantized(
                        qw, linear.bias, input_hadamard=(block == "down" and online), hadamard_seed=seed))

    if profile is not None:
        starved = {int(layer): list(experts) for layer, experts in profile.coverage().items() if experts}
    model.mxmoe_plan = plan
    model.mxmoe_extra_config = {"rotation": {"rotated": bool(rotate or prerotated), "seed": int(seed)}, "method": method}
    model.mxmoe_report = {"starved_experts": starved,
                          "n_starved": sum(len(v) for v in starved.values()),
                          "fallback": getattr(profile, "fallback", None),
                          "average_bits": plan.average_bits}
    if starved and method == "gptq":
        logger.warning("%d experts got too few calibration tokens and were quantized with the profile's Hessian "
                       "fallback (%s): %s", model.mxmoe_report["n_starved"], model.mxmoe_report["fallback"],
                       "; ".join(f"layer {l}: {v}" for l, v in starved.items()))
    return model
