"""Hooks into transformers' experts dispatch, and a reference experts forward in plain PyTorch.

transformers 5.x routes every MoE layer's experts call through ``ALL_EXPERTS_FUNCTIONS[config._experts_implementation]``
with the contract::

    experts_forward(experts_module, hidden [T, H], top_k_index [T, k] int64, top_k_weights [T, k]) -> [T, H]

(the routing weights are applied inside).  The model's own router has already chosen ``top_k_index`` and
``top_k_weights`` when this function runs, so hooking here sees exactly the routing the model uses — including
DeepSeek's grouped routing, scaling factors and Qwen's un-normalised top-k probabilities.

Public pieces:

* :func:`route_and_combine` — the dispatch/combine skeleton of that contract around any per-expert callable
  ``expert_forward(e, x [n, H]) -> [n, H]`` (the e2e module swap plugs quantized experts into it);
* :func:`dense_expert_forward` / :func:`reference_experts_forward` — the original full-precision experts;
* :func:`experts_implementation` — a context manager that switches a model to a registered implementation and
  restores the previous one (also on exceptions);
* :func:`observed_experts` — the ``"mxmoe_profile"`` implementation: computes the experts exactly like the
  reference forward and reports each expert's inputs / intermediate activations to an observer object.
"""
from __future__ import annotations

import contextlib
from typing import Callable, Iterator, Protocol

import torch
from torch import nn

PROFILE_IMPLEMENTATION = "mxmoe_profile"
_OBSERVER_ATTRIBUTE = "_mxmoe_observer"

ExpertForward = Callable[[int, torch.Tensor], torch.Tensor]


def route_and_combine(hidden: torch.Tensor, top_k_index: torch.Tensor, top_k_weights: torch.Tensor,
                      expert_forward: ExpertForward, num_experts: int) -> torch.Tensor:
    """``out[t] = sum_k top_k_weights[t, k] * expert_forward(top_k_index[t, k], hidden[t])``.

    hidden: [T, H]; top_k_index: [T, k] int64 (entries >= num_experts are expert-parallel sentinels and are
    skipped); top_k_weights: [T, k] (any float dtype).  ``expert_forward(e, x [n, H]) -> [n, H]`` is called once
    per expert that received tokens, with that expert's rows in token order.  Accumulation is in float32 (as
    transformers' grouped_mm path does); the result has hidden's dtype.
    """
    if hidden.dim() != 2 or top_k_index.shape != top_k_weights.shape or top_k_index.shape[0] != hidden.shape[0]:
        raise ValueError(f"expected hidden [T, H], top_k_index and top_k_weights [T, k]; got {tuple(hidden.shape)}, "
                         f"{tuple(top_k_index.shape)}, {tuple(top_k_weights.shape)}")
    output = torch.zeros(hidden.shape, dtype=torch.float32, device=hidden.device)
    for expert, token_rows, slot_weights in _tokens_by_expert(top_k_index, top_k_weights, num_experts):
        expert_out = expert_forward(expert, hidden[token_rows])
        output.index_add_(0, token_rows, expert_out.float() * slot_weights[:, None])
    return output.to(hidden.dtype)


def _tokens_by_expert(top_k_index: torch.Tensor, top_k_weights: torch.Tensor,
                      num_experts: int) -> Iterator[tuple[int, torch.Tensor, torch.Tensor]]:
    """(expert, token rows [n] int64 ascending, routing weight of each row [n] f32) for experts with tokens."""
    top_k = top_k_index.shape[1]
    flat_experts = top_k_index.reshape(-1)
    order = torch.argsort(flat_experts, stable=True)  # stable: each expert's rows stay in token order
    counts = torch.bincount(flat_experts.clamp(max=num_experts), minlength=num_experts + 1)[:num_experts]
    flat_weights = top_k_weights.reshape(-1).float()
    start = 0
    for expert, count in enumerate(counts.tolist()):
        if count:
            slots = order[start:start + count]
            yield expert, slots // top_k, flat_weights[slots]
        start += count


def dense_expert_forward(experts: nn.Module) -> ExpertForward:
    """``expert_forward(e, x)`` of a fused experts module with its own (full-precision) weights."""
    width = experts.down_proj.shape[2]

    def forward(expert: int, x: torch.Tensor) -> torch.Tensor:
        gate_up = nn.functional.linear(x, experts.gate_up_proj[expert])
        hidden_act = experts.act_fn(gate_up[:, :width]) * gate_up[:, width:]
        return nn.functional.linear(hidden_act, experts.down_proj[expert])

    return forward


def reference_experts_forward(experts: nn.Module, hidden: torch.Tensor, top_k_index: torch.Tensor,
                              top_k_weights: torch.Tensor) -> torch.Tensor:
    """The experts contract computed per expert in plain PyTorch (the oracle for swapped-in experts)."""
    return route_and_combine(hidden, top_k_index, top_k_weights, dense_expert_forward(experts),
                             int(experts.gate_up_proj.shape[0]))


class ExpertObserver(Protocol):
    """What the ``mxmoe_profile`` implementation reports for every expert that received tokens.

    x: [n, H] the expert's input rows; routing_weights: [n] f32; gate, up: [n, I] pre-activation outputs;
    hidden_act: [n, I] = act(gate) * up, the down projection's input.  All computed with the original weights.
    """

    def observe_routed(self, experts: nn.Module, expert: int, x: torch.Tensor, routing_weights: torch.Tensor,
                       gate: torch.Tensor, up: torch.Tensor, hidden_act: torch.Tensor) -> None: ...


def observed_experts_forward(experts: nn.Module, hidden: torch.Tensor, top_k_index: torch.Tensor,
                             top_k_weights: torch.Tensor) -> torch.Tensor:
    """The ``mxmoe_profile`` experts implementation: the reference forward plus observer callbacks.

    Modules without an attached observer (see :func:`observed_experts`) compute the plain reference forward.
    """
    observer = getattr(experts, _OBSERVER_ATTRIBUTE, None)
    width = experts.down_proj.shape[2]
    num_experts = int(experts.gate_up_proj.shape[0])
    output = torch.zeros(hidden.shape, dtype=torch.float32, device=hidden.device)
    for expert, token_rows, slot_weights in _tokens_by_expert(top_k_index, top_k_weights, num_experts):
        x = hidden[token_rows]
        gate_up = nn.functional.linear(x, experts.gate_up_proj[expert])
        gate, up = gate_up[:, :width], gate_up[:, width:]
        hidden_act = experts.act_fn(gate) * up
        expert_out = nn.functional.linear(hidden_act, experts.down_proj[expert])
        if observer is not None:
            observer.observe_routed(experts, expert, x, slot_weights, gate, up, hidden_act)
        output.index_add_(0, token_rows, expert_out.float() * slot_weights[:, None])
    return output.to(hidden.dtype)


def register_experts_function(name: str, function: Callable) -> None:
    """Register ``function`` under ``name`` in transformers' ALL_EXPERTS_FUNCTIONS (idempotent)."""
    from transformers.integrations.moe import ALL_EXPERTS_FUNCTIONS

    ALL_EXPERTS_FUNCTIONS.register(name, function)


@contextlib.contextmanager
def experts_implementation(model: nn.Module, name: str) -> Iterator[nn.Module]:
    """Run ``model`` with experts implementation ``name`` inside the block; the previous one is restored after.

    ``name`` must be registered (``register_experts_function``) or built in ("eager", "grouped_mm", ...).
    """
    previous = model.get_experts_implementation()
    model.set_experts_implementation(name)
    try:
        yield model
    finally:
        model.set_experts_implementation(previous)


@contextlib.contextmanager
def observed_experts(model: nn.Module, observers: dict[nn.Module, ExpertObserver]) -> Iterator[nn.Module]:
    """Switch ``model`` to the ``mxmoe_profile`` implementation with ``observers[experts_module]`` attached.

    Experts modules not in ``observers`` compute normally.  On exit the observers are detached and the previous
    implementation is restored.
    """
    register_experts_function(PROFILE_IMPLEMENTATION, observed_experts_forward)
    for experts, observer in observers.items():
        setattr(experts, _OBSERVER_ATTRIBUTE, observer)
    try:
        with experts_implementation(model, PROFILE_IMPLEMENTATION):
            yield model
    finally:
        for experts in observers:
            if hasattr(experts, _OBSERVER_ATTRIBUTE):
                delattr(experts, _OBSERVER_ATTRIBUTE)
