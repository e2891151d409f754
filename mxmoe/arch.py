"""Architecture adapter: where the MoE parts of a transformers 5.x model live, for the six supported model types.

Every other part of mxmoe (profiling, quantization, the module swap) reaches a model's experts only through
:func:`moe_layers` and :func:`expert_block_weight`, so supporting another architecture means extending this file.

Layouts (read from transformers 5.17 and checked at run time by :func:`moe_layers`):

* Routed experts are ONE module per MoE layer (``mlp.experts``, decorated with ``@use_experts_implementation``)
  holding fused 3-D parameters::

      gate_up_proj  [E, 2*I, H]   rows 0..I-1 are expert e's gate_proj weight, rows I..2I-1 its up_proj weight
      down_proj     [E, H, I]

  Each slice is an ``nn.Linear``-style ``[out, in]`` matrix; the expert computes
  ``down @ (act(gate @ x) * (up @ x))``.  The module is called as
  ``experts(hidden [T, H], top_k_index [T, k] int64, top_k_weights [T, k]) -> [T, H]`` and applies the routing
  weights itself.  (gpt-oss and Llama4 store the transposed layout and are out of scope; any experts module with
  ``is_transposed``, ``has_bias``, no gate or an interleaved gate/up layout is rejected with a ValueError.)

* Shared experts, treated as always-active extra experts with indices ``num_experts + j``:

  ============  =============================================  ==========================================
  model_type    shared experts                                  shared gate
  ============  =============================================  ==========================================
  qwen2_moe     ``mlp.shared_expert`` (gate/up/down nn.Linear)   ``mlp.shared_expert_gate``: output is
                                                                 ``sigmoid(gate(x)) * shared_expert(x)``
  deepseek_v2   ``mlp.shared_experts`` (one MLP of width        none (added with weight 1)
  deepseek_v3   ``moe_intermediate_size * n_shared_experts``)
  qwen3_moe, mixtral, olmoe   none                              none
  ============  =============================================  ==========================================

* Dense layers are skipped: DeepSeek's first ``first_k_dense_replace`` layers and Qwen's ``mlp_only_layers`` /
  ``decoder_sparse_step`` layers have a plain MLP and are not MoE layers; :attr:`MoELayerRef.layer_index` is the
  decoder-layer index, so it need not equal the position in the list :func:`moe_layers` returns.

Importing this module imports torch (``import mxmoe`` alone does not).
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn

SUPPORTED_MODEL_TYPES: tuple[str, ...] = ("qwen2_moe", "qwen3_moe", "mixtral", "deepseek_v2", "deepseek_v3",
                                          "olmoe")

BLOCKS: tuple[str, ...] = ("gate", "up", "down")

# model_type -> (attribute of the MoE block holding its shared expert(s), attribute of the shared gate or None)
_SHARED_ATTRIBUTES: dict[str, tuple[str | None, str | None]] = {
    "qwen2_moe": ("shared_expert", "shared_expert_gate"),
    "qwen3_moe": (None, None),
    "mixtral": (None, None),
    "deepseek_v2": ("shared_experts", None),
    "deepseek_v3": ("shared_experts", None),
    "olmoe": (None, None),
}


@dataclass(eq=False)
class MoELayerRef:
    """The MoE parts of one decoder layer (references into the live model, nothing copied).

    ``experts`` holds fused ``gate_up_proj [E, 2I, H]`` (gate rows first) and ``down_proj [E, H, I]``;
    ``shared_experts`` are modules with ``gate_proj`` / ``up_proj`` / ``down_proj`` ``nn.Linear`` children
    (expert indices ``num_experts + j``); ``shared_gate`` is Qwen2-MoE's sigmoid gate (None elsewhere).
    ``router`` is the module that turns hidden states into ``(logits, top_k_weights, top_k_index)``.
    """

    layer_index: int
    decoder_layer: nn.Module
    mlp: nn.Module
    experts: nn.Module
    num_experts: int
    top_k: int
    shared_experts: list[nn.Module] = field(default_factory=list)
    shared_gate: nn.Module | None = None
    router: nn.Module | None = None

    @property
    def hidden_size(self) -> int:
        return int(self.experts.gate_up_proj.shape[2])

    @property
    def intermediate_size(self) -> int:
        """Width I of one routed expert."""
        return int(self.experts.down_proj.shape[2])

    @property
    def num_shared(self) -> int:
        return len(self.shared_experts)

    @property
    def num_total_experts(self) -> int:
        """Routed plus shared experts (the expert index range of this layer)."""
        return self.num_experts + self.num_shared

    def expert_intermediate_size(self, expert: int) -> int:
        """Width of expert ``expert`` (shared experts are usually wider)."""
        _check_expert(self, expert)
        if expert < self.num_experts:
            return self.intermediate_size
        return int(self.shared_experts[expert - self.num_experts].down_proj.weight.shape[1])

    def block_shape(self, expert: int, block: str) -> tuple[int, int]:
        """``(out_features, in_features)`` of a block."""
        _check_block(block)
        width = self.expert_intermediate_size(expert)
        return (self.hidden_size, width) if block == "down" else (width, self.hidden_size)

    def is_shared(self, expert: int) -> bool:
        _check_expert(self, expert)
        return expert >= self.num_experts


def _check_block(block: str) -> None:
    if block not in BLOCKS:
        raise ValueError(f"block must be one of {BLOCKS}, got {block!r}")


def _check_expert(layer: MoELayerRef, expert: int) -> None:
    if not 0 <= int(expert) < layer.num_total_experts:
        raise ValueError(f"expert={expert} is out of range for layer {layer.layer_index} with "
                         f"{layer.num_experts} routed and {layer.num_shared} shared experts")


def model_type(model: nn.Module) -> str:
    """The ``config.model_type`` of a supported model; ValueError naming the supported types otherwise."""
    config = getattr(model, "config", None)
    kind = getattr(config, "model_type", None)
    if kind not in SUPPORTED_MODEL_TYPES:
        raise ValueError(f"model_type {kind!r} is not supported by mxmoe; supported model types: "
                         f"{', '.join(SUPPORTED_MODEL_TYPES)}")
    return kind


def decoder_layers(model: nn.Module) -> nn.ModuleList:
    """The decoder layers of a ``*ForCausalLM`` model or of its base ``*Model``."""
    model_type(model)
    base = getattr(model, "model", model)
    layers = getattr(base, "layers", None)
    if not isinstance(layers, nn.ModuleList):
        raise ValueError(f"{type(model).__name__} has no decoder layer list at .model.layers or .layers")
    return layers


def _check_experts_layout(experts: nn.Module, layer_index: int) -> None:
    flags = {"is_transposed": False, "has_bias": False, "has_gate": True, "is_concatenated": True}
    for name, wanted in flags.items():
        if getattr(experts, name, wanted) != wanted:
            raise ValueError(f"layer {layer_index}: experts module {type(experts).__name__} has {name}="
                             f"{not wanted}; mxmoe supports fused [E, 2I, H] gate-first experts only")
    gate_up, down = getattr(experts, "gate_up_proj", None), getattr(experts, "down_proj", None)
    if not isinstance(gate_up, torch.Tensor) or not isinstance(down, torch.Tensor) or gate_up.dim() != 3 \
            or down.dim() != 3:
        raise ValueError(f"layer {layer_index}: experts module {type(experts).__name__} lacks 3-D gate_up_proj / "
                         f"down_proj parameters")
    num_experts, two_i, hidden = gate_up.shape
    if two_i % 2 or tuple(down.shape) != (num_experts, hidden, two_i // 2):
        raise ValueError(f"layer {layer_index}: gate_up_proj {tuple(gate_up.shape)} and down_proj "
                         f"{tuple(down.shape)} are not [E, 2I, H] and [E, H, I]")


def moe_layers(model: nn.Module) -> list[MoELayerRef]:
    """One :class:`MoELayerRef` per MoE decoder layer, in layer order (dense layers are skipped).

    ValueError for unsupported model types (naming the supported ones) or unexpected expert layouts.
    """
    kind = model_type(model)
    refs = [moe_layer_ref(model, index, decoder_layer)
            for index, decoder_layer in enumerate(decoder_layers(model))
            if getattr(getattr(decoder_layer, "mlp", None), "experts", None) is not None]
    if not refs:
        raise ValueError(f"{type(model).__name__} ({kind}) has no MoE layer")
    return refs


def moe_layer_ref(model: nn.Module, layer_index: int, decoder_layer: nn.Module | None = None) -> MoELayerRef:
    """The :class:`MoELayerRef` of decoder layer ``layer_index``; pass ``decoder_layer`` to describe a copy of
    that layer (e.g. a float32 deep copy) with the model's architecture rules.  ValueError for a dense layer."""
    kind = model_type(model)
    if decoder_layer is None:
        decoder_layer = decoder_layers(model)[layer_index]
    shared_attribute, gate_attribute = _SHARED_ATTRIBUTES[kind]
    mlp = getattr(decoder_layer, "mlp", None)
    experts = getattr(mlp, "experts", None)
    if experts is None:
        raise ValueError(f"decoder layer {layer_index} is a dense layer, not an MoE layer")
    _check_experts_layout(experts, layer_index)
    router = getattr(mlp, "gate", None)
    top_k = getattr(router, "top_k", None)
    if top_k is None:
        top_k = getattr(model.config, "num_experts_per_tok")
    shared = getattr(mlp, shared_attribute, None) if shared_attribute else None
    shared_experts = [shared] if shared is not None else []
    for module in shared_experts:
        if not all(isinstance(getattr(module, n, None), nn.Linear) for n in ("gate_proj", "up_proj", "down_proj")):
            raise ValueError(f"layer {layer_index}: shared expert {type(module).__name__} lacks gate_proj/up_proj/"
                             f"down_proj nn.Linear children")
        if any(getattr(module, n).bias is not None for n in ("gate_proj", "up_proj", "down_proj")):
            raise ValueError(f"layer {layer_index}: shared expert linears with bias are not supported")
    return MoELayerRef(layer_index=layer_index, decoder_layer=decoder_layer, mlp=mlp, experts=experts,
                       num_experts=int(experts.gate_up_proj.shape[0]), top_k=int(top_k),
                       shared_experts=shared_experts,
                       shared_gate=getattr(mlp, gate_attribute, None) if gate_attribute else None, router=router)


def expert_block_weight(layer: MoELayerRef, expert: int, block: str) -> torch.Tensor:
    """The ``[out, in]`` weight of one block as a VIEW into the model's parameter (writes go to the model).

    ``expert < num_experts``: a slice of the fused tensors (gate: ``gate_up_proj[e, :I]``, up:
    ``gate_up_proj[e, I:]``, down: ``down_proj[e]``); ``expert == num_experts + j``: shared expert j's
    ``{gate,up,down}_proj.weight``.
    """
    _check_block(block)
    _check_expert(layer, expert)
    if expert >= layer.num_experts:
        module = layer.shared_experts[expert - layer.num_experts]
        return getattr(module, f"{block}_proj").weight.data
    width = layer.intermediate_size
    if block == "gate":
        return layer.experts.gate_up_proj.data[expert, :width]
    if block == "up":
        return layer.experts.gate_up_proj.data[expert, width:]
    return layer.experts.down_proj.data[expert]


def expert_activation(layer: MoELayerRef, expert: int):
    """The activation function applied to the gate output of an expert (``act(gate) * up``)."""
    _check_expert(layer, expert)
    if expert >= layer.num_experts:
        return layer.shared_experts[expert - layer.num_experts].act_fn
    return layer.experts.act_fn
