"""Tests of mxmoe.arch (architecture adapter) and mxmoe.hooks (experts dispatch hooks, reference forward)."""
from __future__ import annotations

import pytest
import torch
from torch import nn

from mxmoe import arch, hooks
from tiny_models import TINY_EXPERT_WIDTH, TINY_EXPERTS, TINY_HIDDEN, TINY_TOP_K, random_token_windows, tiny_model

# float32 forward of the same maths in a different summation order (tiny models, |logits| ~ 1)
FORWARD_ATOL = 1e-5

# model_type -> (MoE decoder-layer indices, shared expert widths, has a shared gate)
EXPECTED_LAYOUT = {
    "qwen2_moe": ([0, 1], [96], True),
    "qwen3_moe": ([0, 2], [], False),
    "mixtral": ([0, 1], [], False),
    "deepseek_v2": ([1, 2], [2 * TINY_EXPERT_WIDTH], False),
    "deepseek_v3": ([1, 2], [TINY_EXPERT_WIDTH], False),
    "olmoe": ([0, 1], [], False),
}


def test_moe_layers(tiny_moe_model):
    kind = tiny_moe_model.config.model_type
    layer_indices, shared_widths, has_gate = EXPECTED_LAYOUT[kind]
    refs = arch.moe_layers(tiny_moe_model)
    assert [r.layer_index for r in refs] == layer_indices
    for ref in refs:
        assert ref.decoder_layer is arch.decoder_layers(tiny_moe_model)[ref.layer_index]
        assert ref.num_experts == TINY_EXPERTS and ref.top_k == TINY_TOP_K
        assert ref.hidden_size == TINY_HIDDEN and ref.intermediate_size == TINY_EXPERT_WIDTH
        assert [ref.expert_intermediate_size(ref.num_experts + j) for j in range(ref.num_shared)] == shared_widths
        assert (ref.shared_gate is not None) == has_gate
        for expert in range(ref.num_total_experts):
            for block in arch.BLOCKS:
                assert tuple(arch.expert_block_weight(ref, expert, block).shape) == ref.block_shape(expert, block)


def test_expert_block_weight(tiny_moe_model):
    """gate/up/down views reproduce the model's own eager experts forward for every routed expert."""
    ref = arch.moe_layers(tiny_moe_model)[-1]
    generator = torch.Generator().manual_seed(3)
    x = torch.randn(5, ref.hidden_size, generator=generator)
    act = arch.expert_activation(ref, 0)
    with hooks.experts_implementation(tiny_moe_model, "eager"):
        for expert in range(ref.num_experts):
            gate, up, down = (arch.expert_block_weight(ref, expert, b) for b in arch.BLOCKS)
            ours = (act(x @ gate.T) * (x @ up.T)) @ down.T
            index = torch.full((5, 1), expert, dtype=torch.int64)
            theirs = ref.experts(x, index, torch.ones(5, 1))
            torch.testing.assert_close(ours, theirs, atol=FORWARD_ATOL, rtol=0)
    # shared experts: the views are the modules' own Linear weights
    for j, module in enumerate(ref.shared_experts):
        assert arch.expert_block_weight(ref, ref.num_experts + j, "down").data_ptr() == module.down_proj.weight.data_ptr()


def test_expert_block_weight_is_a_view():
    model = tiny_model("mixtral")
    ref = arch.moe_layers(model)[0]
    arch.expert_block_weight(ref, 3, "up")[0, 0] = 123.0
    assert ref.experts.gate_up_proj[3, TINY_EXPERT_WIDTH, 0].item() == 123.0


def test_expert_block_weight_bad_arguments():
    ref = arch.moe_layers(tiny_model("olmoe"))[0]
    with pytest.raises(ValueError, match="block must be one of"):
        arch.expert_block_weight(ref, 0, "gate_up")
    with pytest.raises(ValueError, match="out of range"):
        arch.expert_block_weight(ref, TINY_EXPERTS, "gate")  # olmoe has no shared expert


def test_moe_layers_unsupported_model_type():
    from transformers import LlamaConfig, LlamaForCausalLM

    model = LlamaForCausalLM(LlamaConfig(vocab_size=32, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                                         num_attention_heads=2, num_key_value_heads=2))
    with pytest.raises(ValueError, match="supported model types: qwen2_moe, qwen3_moe, mixtral, deepseek_v2"):
        arch.moe_layers(model)
    with pytest.raises(ValueError, match="'llama' is not supported"):
        arch.model_type(model)


def test_moe_layers_rejects_transposed_experts():
    model = tiny_model("qwen3_moe")
    arch.moe_layers(model)[0].experts.is_transposed = True
    with pytest.raises(ValueError, match="is_transposed=True"):
        arch.moe_layers(model)


def test_reference_experts_forward(tiny_moe_model):
    """The per-expert reference equals the model's eager experts forward on the model's own routing."""
    ref = arch.moe_layers(tiny_moe_model)[0]
    generator = torch.Generator().manual_seed(4)
    hidden = torch.randn(37, ref.hidden_size, generator=generator)
    _, weights, index = ref.router(hidden)
    with hooks.experts_implementation(tiny_moe_model, "eager"):
        theirs = ref.experts(hidden, index, weights)
    ours = hooks.reference_experts_forward(ref.experts, hidden, index, weights)
    torch.testing.assert_close(ours, theirs, atol=FORWARD_ATOL, rtol=0)


def test_route_and_combine():
    """Brute force per token on awkward routings: one expert takes everything, sentinels, zero tokens."""
    generator = torch.Generator().manual_seed(5)
    num_experts, hidden_size = 4, 6
    scales = torch.arange(1.0, num_experts + 1)

    def expert_forward(expert, x):
        return x * scales[expert]

    for tokens, index in [(9, torch.full((9, 2), 2)), (7, torch.randint(0, num_experts + 1, (7, 3), generator=generator)),
                          (0, torch.zeros(0, 2, dtype=torch.int64)), (1, torch.tensor([[0, 3]]))]:
        hidden = torch.randn(tokens, hidden_size, generator=generator)
        weights = torch.rand(index.shape, generator=generator)
        out = hooks.route_and_combine(hidden, index, weights, expert_forward, num_experts)
        brute = torch.zeros(tokens, hidden_size)
        for t in range(tokens):
            for k in range(index.shape[1]):
                if index[t, k] < num_experts:  # index == num_experts is an expert-parallel sentinel
                    brute[t] += weights[t, k] * hidden[t] * scales[index[t, k]]
        torch.testing.assert_close(out, brute, atol=FORWARD_ATOL, rtol=0)
    with pytest.raises(ValueError, match="expected hidden"):
        hooks.route_and_combine(torch.zeros(3, 2), torch.zeros(2, 1, dtype=torch.int64), torch.zeros(2, 1),
                                expert_forward, num_experts)


class _CountingObserver:
    def __init__(self):
        self.rows = 0

    def observe_routed(self, experts, expert, x, routing_weights, gate, up, hidden_act):
        self.rows += x.shape[0]


def test_observed_experts(tiny_moe_model):
    """The mxmoe_profile implementation leaves logits unchanged, sees T*k rows, restores the implementation."""
    ids = random_token_windows(2, 11)
    before = tiny_moe_model.get_experts_implementation()
    reference = tiny_moe_model(ids).logits
    refs = arch.moe_layers(tiny_moe_model)
    observers = {r.experts: _CountingObserver() for r in refs}
    with hooks.observed_experts(tiny_moe_model, observers):
        assert tiny_moe_model.config._experts_implementation == hooks.PROFILE_IMPLEMENTATION
        observed = tiny_moe_model(ids).logits
    torch.testing.assert_close(observed, reference, atol=FORWARD_ATOL, rtol=0)
    assert [o.rows for o in observers.values()] == [2 * 11 * TINY_TOP_K] * len(refs)
    assert tiny_moe_model.get_experts_implementation() == before
    assert not any(hasattr(r.experts, "_mxmoe_observer") for r in refs)


def test_experts_implementation_restores_on_error():
    model = tiny_model("olmoe")
    before = model.get_experts_implementation()
    with pytest.raises(RuntimeError, match="boom"):
        with hooks.experts_implementation(model, "eager"):
            assert model.config._experts_implementation == "eager"
            raise RuntimeError("boom")
    assert model.get_experts_implementation() == before
    assert isinstance(arch.decoder_layers(model), nn.ModuleList)


def test_moe_layer_ref():
    """A ref of a float64 deep copy of a layer points into the copy; dense layers are rejected."""
    import copy

    model = tiny_model("deepseek_v2")  # layer 0 is dense (first_k_dense_replace=1)
    with pytest.raises(ValueError, match="dense layer"):
        arch.moe_layer_ref(model, 0)
    layer_copy = copy.deepcopy(arch.decoder_layers(model)[2]).double()
    ref = arch.moe_layer_ref(model, 2, layer_copy)
    original = arch.moe_layer_ref(model, 2)
    assert ref.decoder_layer is layer_copy and ref.layer_index == 2 and ref.num_shared == original.num_shared == 1
    for expert, block in ((0, "gate"), (TINY_EXPERTS, "down")):
        copied = arch.expert_block_weight(ref, expert, block)
        assert copied.dtype == torch.float64
        torch.testing.assert_close(copied.float(), arch.expert_block_weight(original, expert, block), rtol=0, atol=0)
        assert copied.data_ptr() != arch.expert_block_weight(original, expert, block).data_ptr()
