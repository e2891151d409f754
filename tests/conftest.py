"""Shared pytest fixtures.  Tiny random-config MoE models live in tests/tiny_models.py (importable by any test)."""
from __future__ import annotations

import os
import sys

import pytest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

# The test machines have 2 cores shared with other jobs: torch's multi-threaded intra-op kernels then spend
# milliseconds waiting for descheduled threads on tiny tensors (measured: a [512, 128] mean took 12 ms with 2
# threads vs 10 us with 1).  One thread keeps the suite fast; set MXMOE_TEST_TORCH_THREADS to override.
try:
    import torch as _torch

    _torch.set_num_threads(int(os.environ.get("MXMOE_TEST_TORCH_THREADS", "1")))
except ImportError:  # the C-only parts of the suite run without torch
    pass

from tiny_models import TINY_MODEL_TYPES, random_token_windows, tiny_model  # noqa: E402

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MINI_MODEL_DIR = os.path.join(REPO_ROOT, "models", "qwen2moe-mini")
WIKITEXT_DIR = os.path.join(REPO_ROOT, "data", "wikitext-2")


@pytest.fixture(params=TINY_MODEL_TYPES)
def tiny_moe_model(request):
    """A tiny random model of each supported architecture (parametrized over TINY_MODEL_TYPES)."""
    return tiny_model(request.param)


@pytest.fixture(scope="session")
def tiny_model_factory():
    """``tiny_model_factory(model_type, seed=0, dtype=torch.float32)`` -> a fresh tiny model."""
    return tiny_model


@pytest.fixture(scope="session")
def mini_model():
    """The bundled qwen2moe-mini model (bf16 weights loaded as float32, eval mode), shared by the session."""
    torch = pytest.importorskip("torch")
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(MINI_MODEL_DIR, dtype=torch.float32).eval()


@pytest.fixture(scope="session")
def mini_tokenizer():
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(MINI_MODEL_DIR)


__all__ = ["random_token_windows", "tiny_model", "TINY_MODEL_TYPES", "MINI_MODEL_DIR", "WIKITEXT_DIR"]
