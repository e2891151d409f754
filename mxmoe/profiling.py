"""Calibration profiling: per MoE layer, which tokens reach which expert and what every linear block sees.

    prof = mxmoe.profile(model, token_ids_or_texts, tokenizer=tok, seq_len=512, n_samples=128)
    prof.hessian(layer, expert, "down")        # f64 [K, K], never NaN (starved experts: documented fallback)
    prof.coverage()                            # {layer: [starved experts]}
    prof.save("out/profile"); mxmoe.Profile.load("out/profile")

What is recorded, per MoE layer (``layer`` is always the decoder-layer index; ``Profile.layers`` lists them):

* ``expert_token_counts[l, e]``: (token, expert) assignments the model's own router made; shared experts
  (index ``num_experts + j``) count every token.
* ``routing_mass[l, e]``: the sum of the routing weights the layer applied to expert e (= tokens for shared).
* per expert and input space, ``H = sum_t x_t x_t^T`` over the rows the block really saw: gate and up share the
  expert's input rows; down sees ``act(gate x) * (up x)`` computed with the original weights.  Accumulated in
  float64 by the C core (csrc/stats.c, see mx_stats.h for why float64).
* the routing-weighted ``Hw = sum_t w_t^2 x_t x_t^T`` (w = the routing weight of that token for that expert;
  Qwen2-MoE's sigmoid shared gate for its shared expert; 1 for DeepSeek's shared experts).  The MoE output is
  ``sum_k w_k expert_k(x)``, so ``tr(dW Hw dW^T)`` is the squared error a weight error dW adds to the layer's
  output: the quantity mxmoe.loss ranks blocks with.
* ``channel_gain``: per intermediate channel i of each expert, ``sum_t w_t^2 (act'(gate)*up)_{t,i}^2`` and
  ``sum_t w_t^2 act(gate)_{t,i}^2``: how an error on gate / up output channel i reaches the down projection's
  input (mxmoe.loss uses it to put gate/up errors in the same output units as down errors).
* ``act_sample``: a uniform random sample (bottom-k of random keys, so it is one uniform sample however the
  batches fall) of up to ``act_sample_rows`` input rows per expert and input space, with their routing
  weights, for estimating activation-quantization error.

Streaming and memory: the decoder-layer-0 inputs (hidden states) of all windows are captured once, together with
the keyword arguments the layer needs (position embeddings, attention mask, position ids).  Windows all have the
same length and no padding, so those keyword arguments depend only on the batch size: they are captured once per
batch size.  Then each decoder layer runs over the windows in batches, collecting its statistics and overwriting
the hidden-state buffer in place with its outputs (the next layer's inputs).  Memory is therefore one
[n_samples, seq_len, hidden] buffer in the model's dtype plus one layer's statistics; it does not grow with the
number of layers processed beyond the profile's own results (float64 H and Hw of every block: 270 MiB for the
bundled mini model; tracemalloc shows the profiler's own allocations are exactly these, whatever n_samples).
Measured peak RSS on the mini model with 128 x 512 tokens: bench/results/profile-mini-cpu.json.  Part of the
remaining RSS growth is PyTorch's: on CPU, oneDNN caches one primitive per distinct matmul shape, and every
expert's row count is a new shape (``ONEDNN_PRIMITIVE_CACHE_CAPACITY=8`` measured about a third less growth).

Starved experts: an expert with fewer than ``min_tokens`` assignments is flagged (``BlockInfo.starved``) and
listed by :meth:`Profile.coverage`.  Its Hessians get ``m = min_tokens - tokens`` pseudo-tokens of prior added to
what it did see, so it is never empty or NaN, and its loss is that of an expert that would receive about
``min_tokens`` typical tokens.  The prior is chosen by ``fallback``:

* ``"pooled"`` (default): the layer's pooled input covariance ``C = sum_t x_t x_t^T / N`` over every token of the
  layer (gate/up), and for down the covariance of ``act(gate_e x) * up_e x`` over a uniform sample of the
  layer's tokens pushed through THIS expert's own gate/up weights (its intermediate space is its own);
  ``H += m * C``.
* ``"diag"``: ``H += m * mean(diag(C)) * I``, C as above: right scale, no correlations.
* ``"identity"``: ``H += m * I`` (GPTQ then behaves like RTN with error feedback; losses become
  ``m * ||dW||_F^2``).

``Hw`` gets the same prior times the layer's mean squared routing weight.  Shared experts see every token and are
never starved.
"""
from __future__ import annotations

import json
import math
import os
import resource
import tempfile
import time
import weakref
from dataclasses import asdict, dataclass, field
from typing import Any, Iterable, Sequence

import numpy as np

from .arch import BLOCKS

FALLBACKS = ("pooled", "diag", "identity")
DEFAULT_MIN_TOKENS = 128
DEFAULT_ACT_SAMPLE_ROWS = 64
DEFAULT_POOLED_SAMPLE_ROWS = 512
_SPACES = ("gate_up", "down")  # input spaces: gate and up share one, down has its own
_FORMAT_VERSION = 1


def _space(block: str) -> str:
    if block not in BLOCKS:
        raise ValueError(f"block must be one of {BLOCKS}, got {block!r}")
    return "down" if block == "down" else "gate_up"


@dataclass(frozen=True)
class BlockInfo:
    """One linear block (gate, up or down projection of one expert of one MoE layer)."""

    layer: int            # decoder-layer index
    expert: int           # routed 0..E-1, shared E + j
    block: str            # "gate" | "up" | "down"
    out_features: int
    in_features: int
    tokens: int           # (token, expert) assignments seen during calibration
    routing_mass: float   # sum of routing weights applied to this expert (= tokens for shared experts)
    starved: bool         # tokens < min_tokens: its Hessians carry the fallback prior
    shared: bool

    @property
    def params(self) -> int:
        return self.out_features * self.in_features


class BlockList(list):
    """``Profile.blocks``: a list of BlockInfo that also carries the routing facts a block alone lacks
    (``top_k``, ``calib_tokens``), so ``CostModel.table(profile.blocks, ...)`` can compute expected token counts."""

    def __init__(self, blocks: Iterable[BlockInfo], top_k: int, calib_tokens: int):
        super().__init__(blocks)
        self.top_k = int(top_k)
        self.calib_tokens = int(calib_tokens)


class Profile:
    """Calibration statistics of one model (see the module docstring for every field's meaning)."""

    def __init__(self, *, model_type: str, layers: Sequence[int], num_experts: int, num_shared: int, top_k: int,
                 hidden_size: int, intermediate_size: int, shared_intermediate_sizes: Sequence[int],
                 calib_tokens: int, min_tokens: int, fallback: str, expert_token_counts: np.ndarray,
                 routing_mass: np.ndarray, routing_weight_sq: np.ndarray,
                 hessians: dict[tuple[int, int, str], np.ndarray],
                 weighted_hessians: dict[tuple[int, int, str], np.ndarray],
                 channel_gains: dict[tuple[int, int], np.ndarray],
                 act_samples: dict[tuple[int, int, str], tuple[np.ndarray, np.ndarray]],
                 meta: dict[str, Any] | None = None):
        self.model_type = model_type
        self.layers = [int(l) for l in layers]
        self.num_layers = len(self.layers)
        self.num_experts = int(num_experts)
        self.num_shared = int(num_shared)
        self.top_k = int(top_k)
        self.hidden_size = int(hidden_size)
        self.intermediate_size = int(intermediate_size)
        self.shared_intermediate_sizes = [int(s) for s in shared_intermediate_sizes]
        self.calib_tokens = int(calib_tokens)
        self.min_tokens = int(min_tokens)
        self.fallback = fallback
        self.expert_token_counts = np.asarray(expert_token_counts, dtype=np.int64)
        self.routing_mass = np.asarray(routing_mass, dtype=np.float64)
        self.routing_weight_sq = np.asarray(routing_weight_sq, dtype=np.float64)
        self._hessians = hessians
        self._weighted_hessians = weighted_hessians
        self._channel_gains = channel_gains
        self._act_samples = act_samples
        self.meta = dict(meta or {})
        self._model_ref = None  # weakref to the profiled model (set by profile(); not saved)
        self._layer_row = {layer: row for row, layer in enumerate(self.layers)}
        self.blocks = self._make_blocks()
        self._block_index = {(b.layer, b.expert, b.block): i for i, b in enumerate(self.blocks)}

    # ---- structure ----
    @property
    def num_total_experts(self) -> int:
        return self.num_experts + self.num_shared

    def layer_row(self, layer: int) -> int:
        """Row of ``expert_token_counts`` (and friends) holding decoder layer ``layer``."""
        row = self._layer_row.get(int(layer))
        if row is None:
            raise ValueError(f"layer {layer} is not a profiled MoE layer; MoE layers: {self.layers}")
        return row

    def expert_width(self, expert: int) -> int:
        self._check_expert(expert)
        if expert < self.num_experts:
            return self.intermediate_size
        return self.shared_intermediate_sizes[expert - self.num_experts]

    def is_starved(self, layer: int, expert: int) -> bool:
        return expert < self.num_experts and self.expert_token_counts[self.layer_row(layer), expert] < self.min_tokens

    def _check_expert(self, expert: int) -> None:
        if not 0 <= int(expert) < self.num_total_experts:
            raise ValueError(f"expert={expert} out of range: {self.num_experts} routed + {self.num_shared} shared")

    def _make_blocks(self) -> BlockList:
        blocks = []
        for row, layer in enumerate(self.layers):
            for expert in range(self.num_total_experts):
                width, shared = self.expert_width(expert), expert >= self.num_experts
                tokens = int(self.expert_token_counts[row, expert])
                for block in BLOCKS:
                    out_f, in_f = (self.hidden_size, width) if block == "down" else (width, self.hidden_size)
                    blocks.append(BlockInfo(layer, expert, block, out_f, in_f, tokens,
                                            float(self.routing_mass[row, expert]),
                                            (not shared) and tokens < self.min_tokens, shared))
        return BlockList(blocks, self.top_k, self.calib_tokens)

    def block_index(self, layer: int, expert: int, block: str) -> int:
        index = self._block_index.get((int(layer), int(expert), block))
        if index is None:
            self.layer_row(layer), self._check_expert(expert), _space(block)
            raise ValueError(f"no block ({layer}, {expert}, {block!r})")
        return index

    def layer_blocks(self, layer: int) -> list[int]:
        """Indices into ``blocks`` of one layer's blocks (canonical order)."""
        row = self.layer_row(layer)
        per_layer = self.num_total_experts * len(BLOCKS)
        return list(range(row * per_layer, (row + 1) * per_layer))

    def signature(self) -> dict[str, Any]:
        """What a plan or checkpoint checks a model against."""
        return {"model_type": self.model_type, "layers": self.layers, "num_experts": self.num_experts,
                "num_shared": self.num_shared, "top_k": self.top_k, "hidden_size": self.hidden_size,
                "intermediate_size": self.intermediate_size,
                "shared_intermediate_sizes": self.shared_intermediate_sizes}

    # ---- statistics ----
    def hessian(self, layer: int, expert: int, block: str) -> np.ndarray:
        """``H = X^T X`` (f64 [K, K]) of the block's inputs; gate and up return the same (read-only) array."""
        return self._hessians[(self.layer_row(layer), self._expert(expert), _space(block))]

    def weighted_hessian(self, layer: int, expert: int, block: str) -> np.ndarray:
        """``Hw = X^T diag(w^2) X`` with the routing weights w (f64 [K, K], read-only)."""
        return self._weighted_hessians[(self.layer_row(layer), self._expert(expert), _space(block))]

    def channel_gain(self, layer: int, expert: int, block: str) -> np.ndarray:
        """f64 [I]: how strongly an error on output channel i of gate/up reaches the down input, per unit of
        ``sum w^2`` (i.e. the w^2-weighted mean of (act'(gate)*up)_i^2 resp. act(gate)_i^2).  Ones for down."""
        row, expert = self.layer_row(layer), self._expert(expert)
        if block == "down":
            return np.ones(self.hidden_size)
        gains = self._channel_gains[(row, expert)][0 if block == "gate" else 1]
        total = max(self.routing_weight_sq[row, expert], 0.0)
        if self.is_starved(layer, expert):  # the prior pseudo-tokens are part of the gains
            total += (self.min_tokens - self.expert_token_counts[row, expert]) * self._mean_routed_weight_sq(row)
        return gains / total if total > 0 else np.ones_like(gains)

    def act_sample(self, layer: int, expert: int, block: str) -> tuple[np.ndarray, np.ndarray, float]:
        """(rows f32 [n, K], routing weights f32 [n], scale) — a uniform sample of the block's inputs; ``scale``
        turns a sum over the sample of ``w^2 * err^2`` into an estimate of the sum over all calibration rows."""
        row, expert = self.layer_row(layer), self._expert(expert)
        rows, weights = self._act_samples[(row, expert, _space(block))]
        sample_mass = float(np.sum(weights.astype(np.float64) ** 2))
        total = float(self.routing_weight_sq[row, expert])
        if self.is_starved(layer, expert):
            total += (self.min_tokens - self.expert_token_counts[row, expert]) * self._mean_routed_weight_sq(row)
        return rows.astype(np.float32), weights, (total / sample_mass if sample_mass > 0 else 0.0)

    def _mean_routed_weight_sq(self, row: int) -> float:
        counts = self.expert_token_counts[row, :self.num_experts].sum()
        return float(self.routing_weight_sq[row, :self.num_experts].sum() / counts) if counts else 1.0

    def _expert(self, expert: int) -> int:
        self._check_expert(expert)
        return int(expert)

    def expert_frequency(self, layer: int) -> np.ndarray:
        """f64 [E + S]: share of the layer's tokens each expert received (routed sum to top_k, shared are 1)."""
        row = self.layer_row(layer)
        tokens_per_window = max(self.calib_tokens, 1)
        return self.expert_token_counts[row].astype(np.float64) / tokens_per_window

    def coverage(self) -> dict[int, list[int]]:
        """{decoder layer: [starved routed experts (tokens < min_tokens)]} for every MoE layer."""
        return {layer: [e for e in range(self.num_experts) if self.expert_token_counts[row, e] < self.min_tokens]
                for row, layer in enumerate(self.layers)}

    def coverage_summary(self) -> str:
        """A per-layer table: starved / zero-token expert counts and the busiest expert's share."""
        lines = [f"calibration tokens {self.calib_tokens}, min_tokens {self.min_tokens}, fallback {self.fallback!r}",
                 "layer  starved  zero  busiest-share  starved experts"]
        for row, layer in enumerate(self.layers):
            counts = self.expert_token_counts[row, :self.num_experts]
            starved = [e for e in range(self.num_experts) if counts[e] < self.min_tokens]
            share = counts.max() / max(counts.sum(), 1)
            lines.append(f"{layer:5d}  {len(starved):7d}  {int((counts == 0).sum()):4d}  {share:13.3f}  {starved}")
        return "\n".join(lines)

    # ---- persistence ----
    def save(self, path: str) -> None:
        """Write ``path/profile.npz`` (arrays) and ``path/profile.json`` (metadata), each atomically; the json
        is written last, so a directory with a json always has the matching arrays."""
        os.makedirs(path, exist_ok=True)
        arrays: dict[str, np.ndarray] = {"expert_token_counts": self.expert_token_counts,
                                         "routing_mass": self.routing_mass,
                                         "routing_weight_sq": self.routing_weight_sq}
        for (row, expert, space), matrix in self._hessians.items():
            arrays[f"H/{row}/{expert}/{space}"] = matrix
        for (row, expert, space), matrix in self._weighted_hessians.items():
            arrays[f"Hw/{row}/{expert}/{space}"] = matrix
        for (row, expert), gains in self._channel_gains.items():
            arrays[f"gain/{row}/{expert}"] = gains
        for (row, expert, space), (rows, weights) in self._act_samples.items():
            arrays[f"sample/{row}/{expert}/{space}"] = rows
            arrays[f"sample_w/{row}/{expert}/{space}"] = weights
        _atomic_write(os.path.join(path, "profile.npz"), lambda f: np.savez(f, **arrays))
        header = {"format_version": _FORMAT_VERSION, "model_type": self.model_type, "layers": self.layers,
                  "num_experts": self.num_experts, "num_shared": self.num_shared, "top_k": self.top_k,
                  "hidden_size": self.hidden_size, "intermediate_size": self.intermediate_size,
                  "shared_intermediate_sizes": self.shared_intermediate_sizes, "calib_tokens": self.calib_tokens,
                  "min_tokens": self.min_tokens, "fallback": self.fallback, "meta": self.meta}
        _atomic_write(os.path.join(path, "profile.json"),
                      lambda f: f.write(json.dumps(header, indent=1, sort_keys=True).encode()))

    @classmethod
    def load(cls, path: str) -> "Profile":
        with open(os.path.join(path, "profile.json")) as f:
            header = json.load(f)
        if header.get("format_version") != _FORMAT_VERSION:
            raise ValueError(f"{path}: profile format_version {header.get('format_version')} is not "
                             f"{_FORMAT_VERSION}")
        hessians, weighted, gains, samples, sample_weights = {}, {}, {}, {}, {}
        with np.load(os.path.join(path, "profile.npz")) as data:
            for key in data.files:
                parts = key.split("/")
                value = data[key]
                if parts[0] == "H":
                    hessians[(int(parts[1]), int(parts[2]), parts[3])] = _read_only(value)
                elif parts[0] == "Hw":
                    weighted[(int(parts[1]), int(parts[2]), parts[3])] = _read_only(value)
                elif parts[0] == "gain":
                    gains[(int(parts[1]), int(parts[2]))] = value
                elif parts[0] == "sample":
                    samples[(int(parts[1]), int(parts[2]), parts[3])] = value
                elif parts[0] == "sample_w":
                    sample_weights[(int(parts[1]), int(parts[2]), parts[3])] = value
            counts, mass, wsq = data["expert_token_counts"], data["routing_mass"], data["routing_weight_sq"]
        act_samples = {key: (rows, sample_weights[key]) for key, rows in samples.items()}
        return cls(model_type=header["model_type"], layers=header["layers"], num_experts=header["num_experts"],
                   num_shared=header["num_shared"], top_k=header["top_k"], hidden_size=header["hidden_size"],
                   intermediate_size=header["intermediate_size"],
                   shared_intermediate_sizes=header["shared_intermediate_sizes"],
                   calib_tokens=header["calib_tokens"], min_tokens=header["min_tokens"],
                   fallback=header["fallback"], expert_token_counts=counts, routing_mass=mass,
                   routing_weight_sq=wsq, hessians=hessians, weighted_hessians=weighted, channel_gains=gains,
                   act_samples=act_samples, meta=header.get("meta"))

    @property
    def model(self):
        """The model this profile was taken from, while it is alive in this process (None after load)."""
        return self._model_ref() if self._model_ref is not None else None

    def __repr__(self) -> str:
        return (f"Profile({self.model_type}, MoE layers {self.layers}, {self.num_experts} routed + "
                f"{self.num_shared} shared experts, top_k {self.top_k}, {self.calib_tokens} calibration tokens, "
                f"{sum(len(v) for v in self.coverage().values())} starved)")


def _read_only(array: np.ndarray) -> np.ndarray:
    array.setflags(write=False)
    return array


def _atomic_write(path: str, write) -> None:
    directory = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(dir=directory, prefix=os.path.basename(path) + ".", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


# ----------------------------------------------------------------------------------------------------------------
# calibration data


def calibration_windows(calib, seq_len: int = 512, n_samples: int = 128, tokenizer=None,
                        vocab_size: int | None = None):
    """Token windows [n, seq_len] int64 (torch) from token ids or texts.

    * a 2-D integer array/tensor [n, seq]: used as given (first ``n_samples`` rows; ``seq_len`` is ignored);
    * a 1-D integer array/tensor: a token stream, cut into non-overlapping windows of ``seq_len``;
    * a str or a list of str: tokenized with ``tokenizer`` (required; nothing added), concatenated, then cut.

    When the stream holds more than ``n_samples`` windows, ``n_samples`` evenly spaced ones are taken (covering
    the whole text deterministically).  ValueError when fewer than one full window exists or ids are out of range.
    """
    import torch

    if seq_len <= 0 or n_samples <= 0:
        raise ValueError(f"seq_len and n_samples must be positive, got seq_len={seq_len}, n_samples={n_samples}")
    if isinstance(calib, str) or (isinstance(calib, (list, tuple)) and calib and isinstance(calib[0], str)):
        if tokenizer is None:
            raise ValueError("calibration texts need a tokenizer (pass tokenizer=...)")
        texts = [calib] if isinstance(calib, str) else list(calib)
        ids: list[int] = []
        for text in texts:
            ids.extend(tokenizer(text, add_special_tokens=False)["input_ids"])
        calib = torch.tensor(ids, dtype=torch.int64)
    tokens = torch.as_tensor(np.asarray(calib) if not isinstance(calib, torch.Tensor) else calib)
    if tokens.is_floating_point() or tokens.is_complex() or tokens.dtype == torch.bool:
        raise TypeError(f"calibration token ids must be integers, got dtype {tokens.dtype}")
    tokens = tokens.to(torch.int64)
    if tokens.dim() == 1:
        n_windows = tokens.numel() // seq_len
        if n_windows == 0:
            raise ValueError(f"calibration stream has {tokens.numel()} tokens, fewer than one window of "
                             f"seq_len={seq_len}")
        windows = tokens[:n_windows * seq_len].reshape(n_windows, seq_len)
        if n_windows > n_samples:
            picks = np.linspace(0, n_windows - 1, n_samples).round().astype(np.int64)
            windows = windows[torch.from_numpy(picks)]
    elif tokens.dim() == 2:
        if tokens.shape[0] == 0 or tokens.shape[1] == 0:
            raise ValueError(f"calibration windows are empty: shape {tuple(tokens.shape)}")
        windows = tokens[:n_samples]
    else:
        raise ValueError(f"calibration token ids must be 1-D (a stream) or 2-D [n, seq], got {tokens.dim()}-D")
    if windows.min() < 0 or (vocab_size is not None and windows.max() >= vocab_size):
        raise ValueError(f"calibration token ids must lie in [0, {vocab_size}), got range "
                         f"[{int(windows.min())}, {int(windows.max())}]")
    return windows.contiguous()


# ----------------------------------------------------------------------------------------------------------------
# collection


class _Reservoir:
    """A uniform sample of up to ``capacity`` rows from a stream: keep the rows with the smallest random keys."""

    def __init__(self, capacity: int, generator: np.random.Generator):
        self.capacity, self.generator = capacity, generator
        self.keys = np.zeros(0)
        self.rows: list[np.ndarray] = []

    def add(self, *columns: np.ndarray) -> None:
        if self.capacity <= 0 or len(columns[0]) == 0:
            return
        keys = self.generator.random(len(columns[0]))
        if not self.rows:
            self.rows = [np.zeros((0,) + c.shape[1:], dtype=c.dtype) for c in columns]
        all_keys = np.concatenate([self.keys, keys])
        keep = np.argsort(all_keys, kind="stable")[:self.capacity]
        self.keys = all_keys[keep]
        self.rows = [np.concatenate([old, new])[keep] for old, new in zip(self.rows, columns)]


class _ExpertStats:
    """Running statistics of one expert of the layer being profiled."""

    def __init__(self, hidden: int, width: int, sample_rows: int, generator: np.random.Generator):
        self.tokens = 0
        self.mass = 0.0
        self.weight_sq = 0.0
        self.H = {"gate_up": np.zeros((hidden, hidden)), "down": np.zeros((width, width))}
        self.Hw: dict[str, np.ndarray] | None = None  # None while equal to H (all routing weights 1 so far)
        self.gains = np.zeros((2, width))
        self.samples = {space: _Reservoir(sample_rows, generator) for space in _SPACES}


class _LayerCollector:
    """Observer of one MoE layer: routed experts through the experts hook, shared experts through an mlp
    pre-hook (they see the MoE block's input, which is also pooled for the starved-expert fallback)."""

    def __init__(self, ref, act_sample_rows: int, pooled_sample_rows: int, seed: int):
        from . import _C

        self._accumulate = _C.stats_accumulate_xtx
        self.ref = ref
        generator = np.random.default_rng(seed)
        hidden = ref.hidden_size
        self.experts = [_ExpertStats(hidden, ref.expert_intermediate_size(e), act_sample_rows, generator)
                        for e in range(ref.num_total_experts)]
        self.pooled_H = np.zeros((hidden, hidden))
        self.pooled_tokens = 0
        self.pooled_sample = _Reservoir(pooled_sample_rows, generator)

    # experts hook (ExpertObserver protocol)
    def observe_routed(self, experts, expert, x, routing_weights, gate, up, hidden_act):
        self._add(expert, x, routing_weights, gate, up, hidden_act, self.ref.experts.act_fn)

    # forward pre-hook of the MoE block: shared experts and pooled statistics
    def observe_block_input(self, module, args, kwargs):
        import torch

        hidden = (args[0] if args else kwargs["hidden_states"])
        x = hidden.reshape(-1, hidden.shape[-1])
        x32 = _as_f32(x)
        self._accumulate(self.pooled_H, x32)
        self.pooled_tokens += x32.shape[0]
        self.pooled_sample.add(x32)
        for j, shared in enumerate(self.ref.shared_experts):
            gate, up = shared.gate_proj(x), shared.up_proj(x)
            hidden_act = shared.act_fn(gate) * up
            if self.ref.shared_gate is not None:
                weights = torch.sigmoid(self.ref.shared_gate(x).float()).reshape(-1)
            else:
                weights = torch.ones(x.shape[0], device=x.device)
            self._add(self.ref.num_experts + j, x, weights, gate, up, hidden_act, shared.act_fn)

    def _add(self, expert, x, routing_weights, gate, up, hidden_act, act_fn):
        import torch

        stats = self.experts[expert]
        weights = np.ascontiguousarray(routing_weights.detach().float().cpu().numpy())
        weights_sq = weights.astype(np.float64) ** 2
        x32, h32 = _as_f32(x), _as_f32(hidden_act)
        unit_weights = bool(np.all(weights == 1.0))
        for space, rows in (("gate_up", x32), ("down", h32)):
            # Hw is None while every weight so far was 1 (DeepSeek's shared experts): then Hw == H, not recomputed
            if not (unit_weights and stats.Hw is None):
                if stats.Hw is None:
                    stats.Hw = {k: v.copy() for k, v in stats.H.items()}
                self._accumulate(stats.Hw[space], rows, weights_sq.astype(np.float32))
            self._accumulate(stats.H[space], rows)
            stats.samples[space].add(rows, weights)
        stats.tokens += x32.shape[0]
        stats.mass += float(weights.sum(dtype=np.float64))
        stats.weight_sq += float(weights_sq.sum())
        slope, activated = (t.cpu() for t in _activation_slope(act_fn, gate))
        up32 = up.detach().float().cpu()
        w2 = torch.from_numpy(weights_sq).float()[:, None]
        stats.gains[0] += (w2 * (slope * up32) ** 2).sum(0).double().numpy()
        stats.gains[1] += (w2 * activated ** 2).sum(0).double().numpy()

    def finalize(self, min_tokens: int, fallback: str):
        """Apply the starved-expert fallback and return this layer's arrays."""
        import torch

        ref = self.ref
        routed = self.experts[:ref.num_experts]
        routed_tokens = sum(s.tokens for s in routed)
        mean_weight_sq = sum(s.weight_sq for s in routed) / routed_tokens if routed_tokens else 1.0
        pooled_cov = self.pooled_H / max(self.pooled_tokens, 1)
        pooled_x = torch.from_numpy(self.pooled_sample.rows[0]) if self.pooled_sample.rows \
            else torch.zeros(0, ref.hidden_size)
        for expert, stats in enumerate(routed):
            missing = min_tokens - stats.tokens
            if missing <= 0 or len(pooled_x) == 0:
                continue
            # the expert's own view of typical tokens: the pooled sample through its gate/up weights
            weight = ref.experts.gate_up_proj[expert]
            gate_up = torch.nn.functional.linear(pooled_x.to(weight.device, weight.dtype), weight).float().cpu()
            gate, up = gate_up[:, :ref.intermediate_size], gate_up[:, ref.intermediate_size:]
            slope, activated = _activation_slope(ref.experts.act_fn, gate)
            hidden_act = np.ascontiguousarray((activated * up).numpy())
            down_cov = np.zeros((ref.intermediate_size, ref.intermediate_size))
            self._accumulate(down_cov, hidden_act)
            covariances = {"gate_up": pooled_cov, "down": down_cov / len(hidden_act)}
            if stats.Hw is None:
                stats.Hw = {k: v.copy() for k, v in stats.H.items()}
            for space, cov in covariances.items():
                prior = _prior(cov, fallback) * missing
                stats.H[space] += prior
                stats.Hw[space] += prior * mean_weight_sq
            stats.gains[0] += missing * mean_weight_sq * ((slope * up) ** 2).mean(0).double().numpy()
            stats.gains[1] += missing * mean_weight_sq * (activated ** 2).mean(0).double().numpy()
            # top up the activation sample with pooled rows (weight = the layer's rms routing weight)
            take = min(stats.samples["gate_up"].capacity - len(stats.samples["gate_up"].keys), len(pooled_x))
            if take > 0:
                rms_weight = np.full(take, math.sqrt(mean_weight_sq), dtype=np.float32)
                stats.samples["gate_up"].add(pooled_x[:take].numpy(), rms_weight)
                stats.samples["down"].add(hidden_act[:take], rms_weight)
        return self.experts


def _activation_slope(act_fn, gate):
    """(act'(gate), act(gate)) as float32 tensors, by autograd (works for any elementwise activation)."""
    import torch

    with torch.enable_grad():
        probe = gate.detach().float().clone().requires_grad_(True)
        activated = act_fn(probe)
        (slope,) = torch.autograd.grad(activated.sum(), probe)
    return slope, activated.detach()


def _prior(cov: np.ndarray, fallback: str) -> np.ndarray:
    if fallback == "pooled":
        return cov
    if fallback == "diag":
        return float(np.mean(np.diag(cov))) * np.eye(len(cov))
    return np.eye(len(cov))


def _as_f32(t) -> np.ndarray:
    return np.ascontiguousarray(t.detach().float().cpu().numpy())


class _StopForward(Exception):
    """Raised by the layer-0 capture hook: the rest of the model need not run."""


def _peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # Linux reports KiB


def first_layer_inputs(model, windows, batch_size: int = 8):
    """(hidden [n, seq, H] in the embedding dtype, {batch size: keyword arguments of decoder layer 0}).

    Runs the model on ``windows`` [n, seq] in batches and stops each forward at decoder layer 0 (a pre-hook that
    records its inputs and raises).  The keyword arguments (position embeddings, mask, position ids, ...) are the
    same for every decoder layer and, with equal-length unpadded windows, depend only on the batch size.
    """
    import torch

    layers = _decoder_layers(model)
    device = next(model.parameters()).device
    n_windows, window_len = windows.shape
    hidden = torch.empty(n_windows, window_len, model.config.hidden_size,
                         dtype=model.get_input_embeddings().weight.dtype, device=device)
    layer_kwargs: dict[int, dict[str, Any]] = {}
    position = [0]

    def capture(module, args, kwargs):
        states = args[0] if args else kwargs["hidden_states"]
        hidden[position[0]:position[0] + states.shape[0]] = states.detach()
        if states.shape[0] not in layer_kwargs:
            layer_kwargs[states.shape[0]] = {k: v for k, v in kwargs.items() if k != "hidden_states"}
        raise _StopForward

    handle = layers[0].register_forward_pre_hook(capture, with_kwargs=True)
    try:
        with torch.no_grad():
            for start in range(0, n_windows, batch_size):
                position[0] = start
                try:
                    model(input_ids=windows[start:start + batch_size].to(device), use_cache=False)
                except _StopForward:
                    pass
    finally:
        handle.remove()
    return hidden, layer_kwargs


def _decoder_layers(model):
    from . import arch

    return arch.decoder_layers(model)


def profile(model, calib, seq_len: int = 512, n_samples: int = 128, tokenizer=None,
            min_tokens: int = DEFAULT_MIN_TOKENS, fallback: str = "pooled", batch_size: int = 8,
            act_sample_rows: int = DEFAULT_ACT_SAMPLE_ROWS, pooled_sample_rows: int = DEFAULT_POOLED_SAMPLE_ROWS,
            seed: int = 0, progress: bool = True) -> Profile:
    """Profile ``model`` on calibration data (token ids or texts + tokenizer; see :func:`calibration_windows`).

    Runs the model layer by layer over ``n_samples`` windows of ``seq_len`` tokens in batches of ``batch_size``
    (see the module docstring for what is recorded, the memory bound and the starved-expert ``fallback`` in
    ``("pooled", "diag", "identity")``).  The model is left unchanged (its experts implementation is restored).
    """
    import torch
    from tqdm.auto import tqdm

    from . import arch, hooks

    if fallback not in FALLBACKS:
        raise ValueError(f"fallback must be one of {FALLBACKS}, got {fallback!r}")
    if min_tokens < 0 or batch_size <= 0 or act_sample_rows < 0 or pooled_sample_rows < 0:
        raise ValueError(f"need min_tokens >= 0, batch_size > 0 and sample sizes >= 0; got min_tokens={min_tokens}, "
                         f"batch_size={batch_size}, act_sample_rows={act_sample_rows}, "
                         f"pooled_sample_rows={pooled_sample_rows}")
    started = time.perf_counter()
    refs = arch.moe_layers(model)
    layers = arch.decoder_layers(model)
    windows = calibration_windows(calib, seq_len, n_samples, tokenizer, getattr(model.config, "vocab_size", None))
    n_windows, window_len = windows.shape

    by_layer = {ref.layer_index: ref for ref in refs}
    last_moe = refs[-1].layer_index
    results: dict[int, list[_ExpertStats]] = {}
    batches = [(s, min(s + batch_size, n_windows)) for s in range(0, n_windows, batch_size)]
    bar = tqdm(total=(last_moe + 1) * len(batches), desc="mxmoe profile", unit="batch", disable=not progress)
    was_training = model.training
    model.eval()
    try:
        # 1. decoder-layer-0 inputs of every window, and the layer's keyword arguments per batch size
        hidden, layer_kwargs = first_layer_inputs(model, windows, batch_size)
        embed_dtype = hidden.dtype
        # 2. layer by layer: collect statistics, overwrite `hidden` with the layer's outputs
        with torch.no_grad():
            for index in range(last_moe + 1):
                ref = by_layer.get(index)
                collector = _LayerCollector(ref, act_sample_rows, pooled_sample_rows, seed + index) if ref else None
                observers = {ref.experts: collector} if ref else {}
                pre_hook = ref.mlp.register_forward_pre_hook(collector.observe_block_input, with_kwargs=True) \
                    if ref else None
                try:
                    with hooks.observed_experts(model, observers):
                        for start, stop in batches:
                            out = layers[index](hidden[start:stop], **layer_kwargs[stop - start])
                            hidden[start:stop] = out[0] if isinstance(out, tuple) else out
                            bar.update(1)
                finally:
                    if pre_hook is not None:
                        pre_hook.remove()
                if ref:
                    results[index] = collector.finalize(min_tokens, fallback)
                    bar.set_postfix(layer=index, rss_mib=round(_peak_rss_mib()))
    finally:
        bar.close()
        model.train(was_training)
    del hidden

    result = _assemble(model, refs, results, n_windows * window_len, min_tokens, fallback, {
        "seq_len": int(window_len), "n_samples": int(n_windows), "batch_size": batch_size, "seed": seed,
        "act_sample_rows": act_sample_rows, "pooled_sample_rows": pooled_sample_rows,
        "dtype": str(embed_dtype).replace("torch.", ""), "seconds": time.perf_counter() - started,
        "peak_rss_mib": _peak_rss_mib()})
    result._model_ref = weakref.ref(model)
    return result


def _assemble(model, refs, results, calib_tokens, min_tokens, fallback, meta) -> Profile:
    first = refs[0]
    n_total = first.num_total_experts
    counts = np.zeros((len(refs), n_total), dtype=np.int64)
    mass = np.zeros((len(refs), n_total))
    weight_sq = np.zeros((len(refs), n_total))
    hessians, weighted, gains, samples = {}, {}, {}, {}
    for row, ref in enumerate(refs):
        for expert, stats in enumerate(results[ref.layer_index]):
            counts[row, expert] = stats.tokens
            mass[row, expert] = stats.mass if expert < ref.num_experts else stats.tokens
            weight_sq[row, expert] = stats.weight_sq
            for space in _SPACES:
                hessians[(row, expert, space)] = _read_only(stats.H[space])
                weighted[(row, expert, space)] = _read_only(stats.Hw[space]) if stats.Hw is not None \
                    else hessians[(row, expert, space)]
                reservoir = stats.samples[space]
                rows = reservoir.rows[0] if reservoir.rows else \
                    np.zeros((0, stats.H[space].shape[0]), dtype=np.float32)
                weights = reservoir.rows[1] if reservoir.rows else np.zeros(0, dtype=np.float32)
                samples[(row, expert, space)] = (rows, weights.astype(np.float32))
            gains[(row, expert)] = stats.gains
    return Profile(model_type=model.config.model_type, layers=[r.layer_index for r in refs],
                   num_experts=first.num_experts, num_shared=first.num_shared, top_k=first.top_k,
                   hidden_size=first.hidden_size, intermediate_size=first.intermediate_size,
                   shared_intermediate_sizes=[first.expert_intermediate_size(first.num_experts + j)
                                              for j in range(first.num_shared)],
                   calib_tokens=calib_tokens, min_tokens=min_tokens, fallback=fallback,
                   expert_token_counts=counts, routing_mass=mass, routing_weight_sq=weight_sq, hessians=hessians,
                   weighted_hessians=weighted, channel_gains=gains, act_samples=samples, meta=meta)
