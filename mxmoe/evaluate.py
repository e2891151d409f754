"""Perplexity with the GPTQ / MxMoE protocol: the text tokenized once, non-overlapping windows, no BOS."""
from __future__ import annotations

import math
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
