"""Tiny random-config MoE models of every architecture mxmoe supports, built from configs (no downloads).

    from tiny_models import tiny_model, TINY_MODEL_TYPES
    model = tiny_model("deepseek_v2")           # eval mode, float32, deterministic weights (seed 0)

Shapes are small (hidden 64, experts of width 32, 8 routed experts top-2, vocab 128) but keep each
architecture's quirks: Qwen2-MoE's shared expert with a sigmoid gate, DeepSeek's wider shared expert
(moe_intermediate * n_shared_experts), DeepSeek-V2's group-limited greedy routing with a routed scaling factor,
DeepSeek-V3's sigmoid grouped routing, a dense first layer for DeepSeek (first_k_dense_replace) and a dense layer
in Qwen3 (mlp_only_layers), so callers see MoE layer indices that are not 0..L-1.

Router weights are drawn with a large std so that routing is skewed as in trained models (and, with few tokens,
some experts starve), which is the interesting case for profiling.
"""
from __future__ import annotations

import torch

TINY_MODEL_TYPES: tuple[str, ...] = ("qwen2_moe", "qwen3_moe", "mixtral", "deepseek_v2", "deepseek_v3", "olmoe")

TINY_HIDDEN = 64
TINY_EXPERT_WIDTH = 32
TINY_EXPERTS = 8
TINY_TOP_K = 2
TINY_VOCAB = 128

_COMMON = dict(vocab_size=TINY_VOCAB, hidden_size=TINY_HIDDEN, num_attention_heads=4, num_key_value_heads=2,
               max_position_embeddings=256, rms_norm_eps=1e-6, tie_word_embeddings=False, pad_token_id=0,
               bos_token_id=0, eos_token_id=0)


def tiny_config(model_type: str):
    """The config of a tiny model of ``model_type`` (one of TINY_MODEL_TYPES)."""
    from transformers import (DeepseekV2Config, DeepseekV3Config, MixtralConfig, OlmoeConfig, Qwen2MoeConfig,
                              Qwen3MoeConfig)

    if model_type == "qwen2_moe":
        return Qwen2MoeConfig(**_COMMON, num_hidden_layers=2, intermediate_size=96,
                              moe_intermediate_size=TINY_EXPERT_WIDTH, shared_expert_intermediate_size=96,
                              num_experts=TINY_EXPERTS, num_experts_per_tok=TINY_TOP_K, norm_topk_prob=False,
                              qkv_bias=True)
    if model_type == "qwen3_moe":
        return Qwen3MoeConfig(**_COMMON, num_hidden_layers=3, head_dim=16, intermediate_size=96,
                              moe_intermediate_size=TINY_EXPERT_WIDTH, num_experts=TINY_EXPERTS,
                              num_experts_per_tok=TINY_TOP_K, norm_topk_prob=True, mlp_only_layers=[1])
    if model_type == "mixtral":
        return MixtralConfig(**_COMMON, num_hidden_layers=2, intermediate_size=TINY_EXPERT_WIDTH,
                             num_local_experts=TINY_EXPERTS, num_experts_per_tok=TINY_TOP_K)
    if model_type == "olmoe":
        return OlmoeConfig(**_COMMON, num_hidden_layers=2, intermediate_size=TINY_EXPERT_WIDTH,
                           num_experts=TINY_EXPERTS, num_experts_per_tok=TINY_TOP_K, norm_topk_prob=False)
    # MLA attention: every head has its own K/V (num_key_value_heads == num_attention_heads)
    mla = dict(kv_lora_rank=32, q_lora_rank=48, qk_nope_head_dim=16, qk_rope_head_dim=8, v_head_dim=16,
               head_dim=8)
    common = dict(_COMMON, num_key_value_heads=_COMMON["num_attention_heads"])
    if model_type == "deepseek_v2":
        return DeepseekV2Config(**common, **mla, num_hidden_layers=3, intermediate_size=96,
                                moe_intermediate_size=TINY_EXPERT_WIDTH, n_routed_experts=TINY_EXPERTS,
                                n_shared_experts=2, num_experts_per_tok=TINY_TOP_K, first_k_dense_replace=1,
                                topk_method="group_limited_greedy", n_group=4, topk_group=2,
                                routed_scaling_factor=1.5)
    if model_type == "deepseek_v3":
        return DeepseekV3Config(**common, **mla, num_hidden_layers=3, intermediate_size=96,
                                moe_intermediate_size=TINY_EXPERT_WIDTH, n_routed_experts=TINY_EXPERTS,
                                n_shared_experts=1, num_experts_per_tok=TINY_TOP_K, first_k_dense_replace=1,
                                n_group=2, topk_group=1, routed_scaling_factor=2.5, norm_topk_prob=True)
    raise ValueError(f"no tiny config for model_type {model_type!r}; known: {TINY_MODEL_TYPES}")


def tiny_model(model_type: str, seed: int = 0, dtype: torch.dtype = torch.float32, router_std: float = 0.5):
    """A tiny randomly initialised ``*ForCausalLM`` of ``model_type`` in eval mode (deterministic in ``seed``)."""
    from transformers import AutoModelForCausalLM

    config = tiny_config(model_type)
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(config, dtype=dtype)
    generator = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if name.endswith("mlp.gate.weight"):  # routers: skewed routing as in trained models
                parameter.copy_(torch.randn(parameter.shape, generator=generator) * router_std)
            elif parameter.dim() >= 2:  # experts get larger weights than the 0.02 default so errors are visible
                parameter.copy_(torch.randn(parameter.shape, generator=generator) * 0.08)
    return model.eval()


def random_token_windows(n_windows: int, seq_len: int, seed: int = 0, vocab: int = TINY_VOCAB) -> torch.Tensor:
    """Token ids [n_windows, seq_len] int64 (ids >= 1, so the pad id 0 never appears)."""
    generator = torch.Generator().manual_seed(seed)
    return torch.randint(1, vocab, (n_windows, seq_len), generator=generator)
