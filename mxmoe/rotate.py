"""QuaRot-style rotation of a transformers MoE model (DESIGN section 2.5).

The residual stream x (a row vector per token) is replaced by x' = x Q with Q an orthogonal random Hadamard matrix
(``mxmoe.hadamard_matrix(hidden, seed)``).  RMSNorm commutes with Q once its weight is folded away (rms(x Q) =
rms(x)), so the model computes exactly the same function after

    every RMSNorm weight w  -> folded into the linears that read the normed stream: W <- W diag(w), then w <- 1
    embedding        W_E    -> W_E Q                 (rows are residual vectors)
    readers          W      -> W Q                   (q/k/v, MLA q_a/kv_a, router, expert gate/up, shared gate/up,
                                                      shared_expert_gate, lm_head; W is [out, hidden])
    writers          W, b   -> Qᵀ W, Qᵀ b            (o_proj, expert down, shared down, dense MLP down)

so rotation alone changes the logits only by rounding.  Tied embeddings are untied (lm_head gets the final norm
folded in, the embedding does not).  All arithmetic runs in float64 and is cast back to each parameter's dtype.

The second, *online* rotation (before down_proj, whose input space has size I) is not a model-level change: the
quantizer folds ``H_Iᵀ`` into the packed down weights and :class:`mxmoe.MxMoEExperts` applies ``H_I`` to the
activations at run time (``rotate_down_input`` below gives the offline half).
"""
from __future__ import annotations

from typing import Any

import numpy as np

# attention projections that read the normed residual stream (Llama-style and DeepSeek MLA names)
_ATTENTION_READERS = ("q_proj", "k_proj", "v_proj", "qkv_proj", "q_a_proj", "kv_a_proj_with_mqa")
_ATTENTION_WRITERS = ("o_proj",)
_SHARED_EXPERT_NAMES = ("shared_expert", "shared_experts")


def _torch():
    import torch
    return torch


def _decoder_layers(model: Any) -> list:
    base = getattr(model, "model", None)
    layers = getattr(base, "layers", None)
    if layers is None:
        raise ValueError(f"cannot rotate {type(model).__name__}: no model.model.layers (a transformers decoder-only "
                         "causal LM is expected)")
    return list(layers)


def _check_rmsnorm(norm: Any, where: str) -> None:
    weight = getattr(norm, "weight", None)
    if weight is None or getattr(norm, "bias", None) is not None:
        raise ValueError(f"cannot rotate: {where} ({type(norm).__name__}) is not an RMSNorm with a weight and no bias")
    if "gemma" in type(norm).__name__.lower():
        raise ValueError(f"cannot rotate: {where} is a Gemma-style (1 + w) norm")


def _set(param: Any, value_f64: Any) -> None:
    """Write a float64 tensor into a parameter in place, cast to the parameter's dtype."""
    with _torch().no_grad():
        param.data.copy_(value_f64.to(param.dtype))


def _read_in(weight: Any, norm_f64: Any, Q: Any) -> Any:
    """Reader [..., out, hidden]: W diag(w) Q (float64)."""
    return (weight.detach().double() * norm_f64) @ Q


def _write_out(weight: Any, Q: Any, axis: int) -> Any:
    """Writer with the hidden axis at `axis` (-2 for [.., hidden, in], -1 for a bias [hidden]): Qᵀ W."""
    w = weight.detach().double()
    if w.dim() == 1:
        return Q.T @ w
    return Q.T @ w  # matmul broadcasts over leading (expert) dims: [H, H] @ [E, H, I]


def _mlp_parts(mlp: Any) -> tuple[list, list, list]:
    """(2-D readers, 3-D readers [E, out, H], writers (param, is_3d)) of an MoE block or a dense MLP."""
    readers2d, readers3d, writers = [], [], []
    experts = getattr(mlp, "experts", None)
    if experts is not None:
        gate_up = getattr(experts, "gate_up_proj", None)
        down = getattr(experts, "down_proj", None)
        if not (hasattr(gate_up, "dim") and gate_up.dim() == 3 and hasattr(down, "dim") and down.dim() == 3):
            raise ValueError(f"cannot rotate {type(experts).__name__}: fused 3-D gate_up_proj [E, 2I, H] and "
                             "down_proj [E, H, I] expected (already quantized, or a transposed layout?)")
        if getattr(experts, "is_transposed", False):
            raise ValueError(f"cannot rotate {type(experts).__name__}: transposed expert layout is not supported")
        readers3d.append(gate_up)
        writers.append(down)
        router = getattr(mlp, "gate", None)
        if router is None or getattr(router, "weight", None) is None:
            raise ValueError(f"cannot rotate {type(mlp).__name__}: no router `gate.weight`")
        readers2d.append(router.weight)
        for name in _SHARED_EXPERT_NAMES:
            shared = getattr(mlp, name, None)
            if shared is not None:
                readers2d += [shared.gate_proj.weight, shared.up_proj.weight]
                writers.append(shared.down_proj.weight)
                if getattr(shared.down_proj, "bias", None) is not None:
                    writers.append(shared.down_proj.bias)
        shared_gate = getattr(mlp, "shared_expert_gate", None)
        if shared_gate is not None:
            readers2d.append(shared_gate.weight)
    else:
        for name in ("gate_proj", "up_proj", "down_proj"):
            if getattr(mlp, name, None) is None:
                raise ValueError(f"cannot rotate {type(mlp).__name__}: no {name}")
        readers2d += [mlp.gate_proj.weight, mlp.up_proj.weight]
        writers.append(mlp.down_proj.weight)
    return readers2d, readers3d, writers


def rotate_model(model: Any, seed: int = 0, Q: np.ndarray | None = None) -> Any:
    """Fold RMSNorm weights and rotate the residual stream of ``model`` in place by ``Q`` (default: the random
    Hadamard ``mxmoe.hadamard_matrix(hidden, seed)``).  Returns the model; the function it computes is unchanged up
    to rounding.  ValueError for layouts it cannot rotate (already rotated models are not detected: rotate once)."""
    torch = _torch()
    hidden = model.config.hidden_size
    if Q is None:
        from .hadamard import hadamard_matrix
        Q = hadamard_matrix(hidden, seed)
    Q = np.asarray(Q, dtype=np.float64)
    if Q.shape != (hidden, hidden):
        raise ValueError(f"rotation matrix has shape {Q.shape}, expected ({hidden}, {hidden})")
    if not np.allclose(Q @ Q.T, np.eye(hidden), atol=1e-8):
        raise ValueError("rotation matrix is not orthogonal")
    layers = _decoder_layers(model)
    embed = model.get_input_embeddings()
    lm_head = model.get_output_embeddings()
    final_norm = getattr(model.model, "norm", None)
    if lm_head is None or final_norm is None:
        raise ValueError(f"cannot rotate {type(model).__name__}: needs an lm_head and a final model.model.norm")
    _check_rmsnorm(final_norm, "model.norm")
    Qt = torch.from_numpy(Q).to(embed.weight.device)

    with torch.no_grad():
        # untie first: lm_head gets the final norm folded in, the embedding must not
        if lm_head.weight is embed.weight or lm_head.weight.data_ptr() == embed.weight.data_ptr():
            lm_head.weight = torch.nn.Parameter(embed.weight.detach().clone())
        model.config.tie_word_embeddings = False
        if hasattr(model.config, "get_text_config"):
            model.config.get_text_config().tie_word_embeddings = False
        _set(embed.weight, embed.weight.detach().double() @ Qt)

        for index, layer in enumerate(layers):
            attn, mlp = layer.self_attn, layer.mlp
            _check_rmsnorm(layer.input_layernorm, f"layer {index} input_layernorm")
            _check_rmsnorm(layer.post_attention_layernorm, f"layer {index} post_attention_layernorm")
            w_in = layer.input_layernorm.weight.detach().double()
            readers = [getattr(attn, n) for n in _ATTENTION_READERS if getattr(attn, n, None) is not None]
            if not readers:
                raise ValueError(f"cannot rotate layer {index}: no attention projection among {_ATTENTION_READERS}")
            for linear in readers:
                _set(linear.weight, _read_in(linear.weight, w_in, Qt))
            for name in _ATTENTION_WRITERS:
                linear = getattr(attn, name)
                _set(linear.weight, _write_out(linear.weight, Qt, -2))
                if linear.bias is not None:
                    _set(linear.bias, _write_out(linear.bias, Qt, -1))
            layer.input_layernorm.weight.data.fill_(1.0)

            w_post = layer.post_attention_layernorm.weight.detach().double()
            readers2d, readers3d, writers = _mlp_parts(mlp)
            for weight in readers2d + readers3d:
                _set(weight, _read_in(weight, w_post, Qt))
            for weight in writers:
                _set(weight, _write_out(weight, Qt, -2))
            layer.post_attention_layernorm.weight.data.fill_(1.0)

        _set(lm_head.weight, _read_in(lm_head.weight, final_norm.weight.detach().double(), Qt))
        final_norm.weight.data.fill_(1.0)
    return model


def rotate_down_input(W_down: np.ndarray, seed: int) -> np.ndarray:
    """Offline half of the online Hadamard before down_proj: W [H, I] -> W H_Iᵀ (float32), to pair with
    ``x <- hadamard_transform(x, seed=seed)`` on the down input at run time (x H_Iᵀ per row, so W x is unchanged)."""
    from .hadamard import hadamard_transform
    # W H_Iᵀ = (H_I Wᵀ)ᵀ, and hadamard_transform applies H_I to each row: rows of W are exactly what it rotates
    return np.ascontiguousarray(hadamard_transform(np.asarray(W_down, dtype=np.float32), seed=seed), np.float32)
