"""rotate_model: QuaRot-style rotation leaves the model's function unchanged (up to rounding)."""
from __future__ import annotations

import copy

import numpy as np
import pytest
import torch

from tiny_models import TINY_MODEL_TYPES, random_token_windows, tiny_model

# fp32 forward through 6 layers with a float64 rotation: the spec'd bound for "rotation alone"
ROTATION_REL_TOL = 1e-3
# tiny models: 2-3 layers, fp32; measured ~1e-6, bound leaves room for BLAS order differences
TINY_ROTATION_REL_TOL = 1e-4


def _relative_change(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).norm() / b.norm())


def _random_orthogonal(n: int, seed: int) -> np.ndarray:
    q, r = np.linalg.qr(np.random.default_rng(seed).standard_normal((n, n)))
    return q * np.sign(np.diag(r))


def _randomize_norms(model: torch.nn.Module, seed: int) -> None:
    """Non-trivial RMSNorm weights so that folding them is exercised (tiny models start with ones)."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, module in model.named_modules():
            if "norm" in type(module).__name__.lower() and getattr(module, "weight", None) is not None:
                module.weight.copy_(0.5 + torch.rand(module.weight.shape, generator=generator))


def test_rotate_model(mini_model, mini_tokenizer):
    from mxmoe.rotate import rotate_model

    text = open("data/wikitext-2/valid.txt").read()[:4000]
    ids = torch.tensor([mini_tokenizer(text)["input_ids"][:256]])
    model = copy.deepcopy(mini_model)
    with torch.no_grad():
        reference = model(ids).logits
        embed_before = model.get_input_embeddings().weight.clone()
        rotate_model(model, seed=0)
        rotated = model(ids).logits
    assert _relative_change(rotated, reference) < ROTATION_REL_TOL
    # the rotation really happened: embeddings changed, norms folded to one, lm_head untied
    assert not torch.allclose(model.get_input_embeddings().weight, embed_before)
    assert torch.all(model.model.layers[0].input_layernorm.weight == 1)
    assert model.lm_head.weight.data_ptr() != model.get_input_embeddings().weight.data_ptr()
    assert model.config.tie_word_embeddings is False


@pytest.mark.parametrize("model_type", TINY_MODEL_TYPES)
def test_rotate_model_tiny(model_type):
    from mxmoe.rotate import rotate_model

    model = tiny_model(model_type)
    _randomize_norms(model, seed=1)
    ids = random_token_windows(2, 24)
    with torch.no_grad():
        reference = model(ids).logits
        rotate_model(model, Q=_random_orthogonal(model.config.hidden_size, seed=2))
        rotated = model(ids).logits
    assert _relative_change(rotated, reference) < TINY_ROTATION_REL_TOL


def test_rotate_model_rejects_bad_matrix():
    from mxmoe.rotate import rotate_model

    model = tiny_model("qwen2_moe")
    with pytest.raises(ValueError, match="shape"):
        rotate_model(model, Q=np.eye(3))
    with pytest.raises(ValueError, match="orthogonal"):
        rotate_model(model, Q=2 * np.eye(model.config.hidden_size))


def test_rotate_down_input():
    from mxmoe.hadamard import hadamard_matrix
    from mxmoe.rotate import rotate_down_input

    rng = np.random.default_rng(0)
    W = rng.standard_normal((48, 64)).astype(np.float32)
    x = rng.standard_normal((5, 64)).astype(np.float32)
    H = hadamard_matrix(64, 3)
    W_rot = rotate_down_input(W, seed=3)
    np.testing.assert_allclose(W_rot, W @ H.T, rtol=1e-5, atol=1e-5)
    # W_rot applied to the online-rotated input gives the unrotated product
    np.testing.assert_allclose((x @ H.T) @ W_rot.T, x @ W.T, rtol=1e-4, atol=1e-4)
