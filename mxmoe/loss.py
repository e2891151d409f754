"""Per-block quantization loss: Delta[block, scheme] for the allocator.

    loss = mxmoe.estimate_loss(profile, candidates, model)                           # fast Hessian proxy
    exact = mxmoe.estimate_loss(profile, candidates, model, method="layer_out",
                                calib=token_ids_or_texts, tokenizer=tok, n_windows=2)  # slow, exact

Both return f64 [n_blocks, n_schemes] in the SAME units — the squared L2 change of the MoE layer's output
summed over calibration tokens — so entries are comparable across experts, blocks and layers and add up (errors of
different blocks are treated as uncorrelated, the ILP's assumption).  ``model`` must be the model the profile was
taken from (its weights are what gets quantized; ``model=None`` uses ``profile.model``, the profiled model while
it is alive in this process); each block is quantized with ``mxmoe.quantize_rtn`` (the
allocator's candidates are compared under RTN; GPTQ lowers all of them roughly alike).

Proxy (``method="proxy"``).  The MoE output is ``y = sum_k w_k expert_k(x)`` (+ shared experts), so an error on
expert e's block changes y by ``w_e * (error at that block, carried to the output)``:

* down (W [H, I], input h = act(gate x) * up x): ``dy = w * dW h``, hence
  ``sum_t |dy_t|^2 = tr(dW Hw dW^T)`` with the routing-weighted Hessian ``Hw = sum_t w_t^2 h_t h_t^T``.
* gate / up (W [I, H]): an error ``e_i = dW_i x`` on intermediate channel i reaches the down input as
  ``d_i * e_i`` with ``d = act'(gate) * up`` (gate) or ``act(gate)`` (up), then the output through column i of
  W_down.  Treating different channels' errors as uncorrelated (independent rows of the quantization error) and
  the slope ``d_i^2`` as independent of ``(dW_i x)^2``:
  ``sum_t |dy_t|^2 ~ sum_i |W_down[:, i]|^2 * g_i * (dW Hw dW^T)_ii`` with ``g_i`` the w^2-weighted mean of
  ``d_i^2`` over the calibration rows (``Profile.channel_gain``).
* schemes that quantize activations add ``sum_t w_t^2 |G (W_hat (Q(x_t) - x_t))|^2`` (G the same channel
  gains), estimated on the profile's uniform sample of the block's input rows and scaled to all rows
  (``Profile.act_sample``); the cross term with the weight error is dropped (independent errors).

Exact (``method="layer_out"``, the paper's ``layer_out_norm`` squared).  Each MoE layer is run in float32 on
``n_windows`` calibration windows; then for every block and scheme only that block is quantized (RTN weights, and
its input quantized per token when the scheme says so) and ``|y_q - y|^2`` is summed over tokens.  The decoder
layer's output is ``residual + mlp(norm(residual))`` and quantizing an expert changes only the ``mlp`` term, so
the MoE block is re-run on its cached input instead of the whole decoder layer: the same change, without
recomputing attention.  The inputs of layer l come from the full-precision model (no error propagation).
"""
from __future__ import annotations

import copy
from typing import Sequence

import numpy as np

from ._scheme import Scheme, SchemeLike, as_scheme

METHODS = ("proxy", "layer_out")


def estimate_loss(profile, candidates: Sequence[SchemeLike], model=None, method: str = "proxy", *, calib=None,
                  tokenizer=None, n_windows: int = 2, seq_len: int | None = None, progress: bool = True
                  ) -> np.ndarray:
    """Delta f64 [n_blocks, n_schemes] (rows in ``profile.blocks`` order); see the module docstring."""
    schemes = [as_scheme(c) for c in candidates]
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}")
    if model is None:
        model = getattr(profile, "model", None)
    if model is None:
        raise ValueError("estimate_loss needs the model the profile was taken from (its weights are quantized): "
                         "pass model=, or call it while the model mxmoe.profile ran on is still alive")
    if not schemes:
        raise ValueError("candidates is empty")
    refs = _check_model(profile, model)
    if method == "proxy":
        return _proxy(profile, schemes, refs, progress)
    if calib is None:
        raise ValueError("method='layer_out' needs calib= (token ids or texts, as for mxmoe.profile)")
    return _layer_out(profile, schemes, model, refs, calib, tokenizer, n_windows,
                      seq_len or int(profile.meta.get("seq_len", 512)), progress)


def _check_model(profile, model):
    from . import arch

    refs = arch.moe_layers(model)
    signature = {"model_type": model.config.model_type, "layers": [r.layer_index for r in refs],
                 "num_experts": refs[0].num_experts, "num_shared": refs[0].num_shared}
    expected = {k: profile.signature()[k] for k in signature}
    if signature != expected:
        raise ValueError(f"the model does not match the profile: model {signature}, profile {expected}")
    return {r.layer_index: r for r in refs}


def _weight(ref, expert: int, block: str) -> np.ndarray:
    from . import arch

    return np.ascontiguousarray(arch.expert_block_weight(ref, expert, block).detach().float().cpu().numpy())


def _quantize(W: np.ndarray, scheme: Scheme) -> np.ndarray:
    from .quant import quantize_rtn

    return quantize_rtn(W, scheme).dequantize()


def _quantize_rows(rows: np.ndarray, scheme: Scheme) -> np.ndarray:
    from .quant import dequantize_activations, quantize_activations

    if len(rows) == 0:
        return rows
    return dequantize_activations(quantize_activations(np.ascontiguousarray(rows, dtype=np.float32), scheme))


def output_gains(profile, ref, expert: int, block: str) -> np.ndarray:
    """f64 [out_features]: weight of a squared error on each output channel of the block, in layer-output units
    (|W_down[:, i]|^2 * channel_gain_i for gate/up, ones for down)."""
    gains = profile.channel_gain(ref.layer_index, expert, block)
    if block == "down":
        return gains
    down = _weight(ref, expert, "down").astype(np.float64)
    return np.sum(down * down, axis=0) * gains


def proxy_block_loss(profile, ref, expert: int, block: str, scheme: SchemeLike) -> float:
    """The proxy Delta of one block and scheme (see the module docstring)."""
    s = as_scheme(scheme)
    W = _weight(ref, expert, block)
    return _proxy_terms(profile, ref, expert, block, W, output_gains(profile, ref, expert, block), s)


def _proxy_terms(profile, ref, expert, block, W, gains, s: Scheme, Hw=None) -> float:
    # float64 matrix products in torch: it honours torch.set_num_threads, where NumPy's BLAS threads can stall
    # on a busy machine (measured 20x slower on 2 shared cores)
    import torch

    W_hat = _quantize(W, s)
    dW = torch.from_numpy(W_hat - W).double()
    if Hw is None:
        Hw = torch.tensor(profile.weighted_hessian(ref.layer_index, expert, block))
    row_errors = ((dW @ Hw) * dW).sum(dim=1)  # (dW Hw dW^T)_ii
    gains_t = torch.from_numpy(gains)
    loss = float(gains_t @ row_errors)
    if s.quantizes_activations:
        rows, weights, scale = profile.act_sample(ref.layer_index, expert, block)
        if len(rows):
            delta = torch.from_numpy(_quantize_rows(rows, s) - rows).double()
            err = delta @ torch.from_numpy(W_hat).double().T
            w2 = torch.from_numpy(weights).double() ** 2
            loss += scale * float((w2[:, None] * err * err * gains_t[None, :]).sum())
    return max(loss, 0.0)


def _proxy(profile, schemes, refs, progress) -> np.ndarray:
    import torch
    from tqdm.auto import tqdm

    out = np.zeros((len(profile.blocks), len(schemes)))
    for i, info in enumerate(tqdm(profile.blocks, desc="mxmoe loss (proxy)", unit="block", disable=not progress)):
        ref = refs[info.layer]
        W = _weight(ref, info.expert, info.block)
        gains = output_gains(profile, ref, info.expert, info.block)
        Hw = torch.tensor(profile.weighted_hessian(info.layer, info.expert, info.block))
        for j, s in enumerate(schemes):
            out[i, j] = _proxy_terms(profile, ref, info.expert, info.block, W, gains, s, Hw)
    return out


# ---------------------------------------------------------------------------------------------------------------
# exact: layer output change with one block quantized


_ACT_QUANT_ATTRIBUTE = "_mxmoe_act_quant"
LOSS_IMPLEMENTATION = "mxmoe_loss"


def _act_quant_experts_forward(experts, hidden, top_k_index, top_k_weights):
    """Experts forward that quantizes the input of one (expert, block) per token when asked (else reference)."""
    import torch

    from .hooks import route_and_combine

    target = getattr(experts, _ACT_QUANT_ATTRIBUTE, None)
    width = experts.down_proj.shape[2]

    def expert_forward(expert: int, x):
        quantized = target if target is not None and target[0] == expert else None

        def maybe_q(rows, block):
            if quantized is None or quantized[1] != block:
                return rows
            quantized_rows = _quantize_rows(rows.detach().float().cpu().numpy(), quantized[2])
            return torch.from_numpy(quantized_rows).to(rows.device, rows.dtype)

        if quantized is not None and quantized[1] in ("gate", "up"):
            gate = torch.nn.functional.linear(maybe_q(x, "gate"), experts.gate_up_proj[expert, :width])
            up = torch.nn.functional.linear(maybe_q(x, "up"), experts.gate_up_proj[expert, width:])
        else:
            gate_up = torch.nn.functional.linear(x, experts.gate_up_proj[expert])
            gate, up = gate_up[:, :width], gate_up[:, width:]
        hidden_act = experts.act_fn(gate) * up
        return torch.nn.functional.linear(maybe_q(hidden_act, "down"), experts.down_proj[expert])

    return route_and_combine(hidden, top_k_index, top_k_weights, expert_forward, int(experts.gate_up_proj.shape[0]))


def _layer_out(profile, schemes, model, refs, calib, tokenizer, n_windows, seq_len, progress) -> np.ndarray:
    import torch
    from tqdm.auto import tqdm

    from . import arch, hooks
    from .profiling import calibration_windows, first_layer_inputs

    windows = calibration_windows(calib, seq_len, n_windows, tokenizer, getattr(model.config, "vocab_size", None))
    hooks.register_experts_function(LOSS_IMPLEMENTATION, _act_quant_experts_forward)
    out = np.zeros((len(profile.blocks), len(schemes)))
    layers = arch.decoder_layers(model)
    bar = tqdm(total=len(profile.blocks), desc="mxmoe loss (layer_out)", unit="block", disable=not progress)
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            hidden, layer_kwargs = first_layer_inputs(model, windows, batch_size=len(windows))
            kwargs = layer_kwargs[len(windows)]
            for index in range(max(refs) + 1):
                ref = refs.get(index)
                if ref is not None:
                    _layer_out_of_layer(profile, schemes, model, ref, hidden, kwargs, out, bar)
                result = layers[index](hidden, **kwargs)
                hidden = result[0] if isinstance(result, tuple) else result
    finally:
        bar.close()
        model.train(was_training)
    return out


def _float_kwargs(kwargs):
    import torch

    def convert(value):
        if isinstance(value, torch.Tensor) and value.is_floating_point():
            return value.float()
        if isinstance(value, tuple):
            return tuple(convert(v) for v in value)
        return value

    return {k: convert(v) for k, v in kwargs.items()}


def _layer_out_of_layer(profile, schemes, model, ref, hidden, kwargs, out, bar) -> None:
    import torch

    from . import arch

    layer32 = copy.deepcopy(ref.decoder_layer).float()
    ref32 = arch.moe_layer_ref(model, ref.layer_index, layer32)
    config32 = ref32.experts.config if hasattr(ref32.experts, "config") else None
    if config32 is not None and config32 is model.config:  # never switch the live model's implementation
        raise RuntimeError("the float32 layer copy shares the model's config")
    if config32 is not None:
        config32._experts_implementation_internal = LOSS_IMPLEMENTATION
    captured = {}

    def capture(module, args, output):
        captured["x"], captured["y"] = args[0], output

    handle = ref32.mlp.register_forward_hook(capture)
    try:
        layer32(hidden.float(), **_float_kwargs(kwargs))
    finally:
        handle.remove()
    mlp_input, reference = captured["x"], captured["y"].double()
    for expert in range(ref32.num_total_experts):
        for block in arch.BLOCKS:
            row = profile.block_index(ref.layer_index, expert, block)
            view = arch.expert_block_weight(ref32, expert, block)
            original = view.clone()
            W = original.float().cpu().numpy()
            shared_linear = getattr(ref32.shared_experts[expert - ref32.num_experts], f"{block}_proj") \
                if expert >= ref32.num_experts else None
            for j, s in enumerate(schemes):
                view.copy_(torch.from_numpy(_quantize(W, s)).to(view.device, view.dtype))
                handle = None
                if s.quantizes_activations:
                    if shared_linear is None:
                        setattr(ref32.experts, _ACT_QUANT_ATTRIBUTE, (expert, block, s))
                    else:
                        handle = shared_linear.register_forward_pre_hook(_input_quantizer(s))
                try:
                    changed = ref32.mlp(mlp_input).double()
                finally:
                    if handle is not None:
                        handle.remove()
                    if hasattr(ref32.experts, _ACT_QUANT_ATTRIBUTE):
                        delattr(ref32.experts, _ACT_QUANT_ATTRIBUTE)
                out[row, j] = float(((changed - reference) ** 2).sum())
            view.copy_(original)
            bar.update(1)


def _input_quantizer(scheme: Scheme):
    """A forward pre-hook that replaces a Linear's input by its per-token quantized-dequantized version."""
    import torch

    def hook(module, args):
        x = args[0]
        rows = x.reshape(-1, x.shape[-1]).detach().float().cpu().numpy()
        return (torch.from_numpy(_quantize_rows(rows, scheme)).to(x.device, x.dtype).reshape(x.shape),) + args[1:]

    return hook


def spearman(a: np.ndarray, b: np.ndarray) -> float:
    """Spearman rank correlation (average ranks for ties); NaN when either input is constant."""
    a, b = np.asarray(a, dtype=np.float64).ravel(), np.asarray(b, dtype=np.float64).ravel()
    if a.shape != b.shape or a.size < 2:
        raise ValueError(f"need two equal-length inputs of >= 2 values, got {a.size} and {b.size}")
    ra, rb = _average_ranks(a), _average_ranks(b)
    ra, rb = ra - ra.mean(), rb - rb.mean()
    denominator = np.sqrt(np.sum(ra * ra) * np.sum(rb * rb))
    return float(np.sum(ra * rb) / denominator) if denominator > 0 else float("nan")


def _average_ranks(values: np.ndarray) -> np.ndarray:
    order = np.argsort(values, kind="stable")
    ranks = np.empty(len(values))
    sorted_values = values[order]
    start = 0
    while start < len(values):
        stop = start
        while stop + 1 < len(values) and sorted_values[stop + 1] == sorted_values[start]:
            stop += 1
        ranks[order[start:stop + 1]] = (start + stop) / 2.0
        start = stop + 1
    return ranks
