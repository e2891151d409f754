"""Scheme allocation: the GLPK allocator (``allocate_blocks``), the model-level ``allocate`` and the ``Plan``.

    plan = mxmoe.allocate(profile, wbits=3.25, r=0.75)          # loss from mxmoe.loss, time from mxmoe.cost
    plan.scheme_for(layer=0, expert=3, block="down")             # -> Scheme
    print(plan.summary()); plan.save("plan.json"); Plan.load("plan.json") == plan

The optimisation itself runs in C (csrc/ilp.c, problem statement and exactness argument in csrc/mx_ilp.h).
"""
from __future__ import annotations

import json
import math
import os
import tempfile
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Sequence

import numpy as np

from . import _C
from ._scheme import Scheme, SchemeLike, as_scheme, schemes

PLAN_SCHEMA = "mxmoe.plan"
PLAN_SCHEMA_VERSION = 1
BLOCK_NAMES = ("gate", "up", "down")
SCOPES = ("layer", "model")
SOLVERS = {"auto": 0, "glpk": 1}   # enum mx_ilp_solver


# ---------------------------------------------------------------------------------------------------------------
# low level
# ---------------------------------------------------------------------------------------------------------------

@dataclass
class BlockAllocation:
    """What the C allocator returns: the choice, its L and T, and the supported Pareto points it visited."""
    choice: np.ndarray                    # int64 [n_blocks]
    loss: float
    time: float
    frontier: list[tuple[float, float]]   # (L, T), increasing L
    n_milps: int


def _float_array(name: str, value: Any, ndim: int | tuple[int, ...]) -> np.ndarray:
    array = np.asarray(value)
    if array.dtype == object or not (np.issubdtype(array.dtype, np.floating) or np.issubdtype(array.dtype, np.integer)):
        raise TypeError(f"{name} must be a real numeric array, got dtype {array.dtype}")
    ndims = (ndim,) if isinstance(ndim, int) else ndim
    if array.ndim not in ndims:
        raise ValueError(f"{name} must be {' or '.join(map(str, ndims))}-dimensional, got shape {array.shape}")
    array = np.ascontiguousarray(array, dtype=np.float64)
    if np.isnan(array).any():
        raise ValueError(f"{name} contains NaN")
    return array


def _optional_limit(name: str, value: float | None) -> float:
    if value is None:
        return math.inf
    value = float(value)
    if math.isnan(value) or value < 0:
        raise ValueError(f"{name}={value} must be >= 0 (or None for no limit)")
    return value


def allocate_blocks_detail(loss, time, bits, params, wbits: float, r: float = 1.0, max_time: float | None = None,
                           max_loss: float | None = None, tie=None, act_bits=None, abits: float | None = None,
                           prune: bool = True, solver: str = "auto") -> BlockAllocation:
    """``allocate_blocks`` plus L, T and the frontier points visited (``prune=False``: the whole supported hull).
    ``solver="glpk"`` sends every MILP to GLPK instead of the exact knapsack search (see csrc/mx_ilp.h)."""
    if solver not in SOLVERS:
        raise ValueError(f"solver={solver!r} must be one of {tuple(SOLVERS)}")
    loss = _float_array("loss", loss, 2)
    time = _float_array("time", time, 2)
    n_blocks, n_schemes = loss.shape
    if time.shape != loss.shape:
        raise ValueError(f"time has shape {time.shape}, loss has {loss.shape}: they must match")
    bits = _float_array("bits", bits, (1, 2))
    if bits.shape not in ((n_schemes,), (n_blocks, n_schemes)):
        raise ValueError(f"bits has shape {bits.shape}; expected ({n_schemes},) or ({n_blocks}, {n_schemes})")
    params = _float_array("params", params, 1)
    if params.shape != (n_blocks,):
        raise ValueError(f"params has shape {params.shape}; expected ({n_blocks},)")
    if (params < 0).any():
        raise ValueError(f"params must be >= 0; params[{int(np.argmax(params < 0))}]={params[params < 0][0]}")
    if not 0.0 <= float(r) <= 1.0:
        raise ValueError(f"r={r} must be in [0, 1]")
    if tie is not None:
        tie_array = np.asarray(tie)
        if not (np.issubdtype(tie_array.dtype, np.integer) or tie_array.dtype == bool):
            raise TypeError(f"tie must be an integer array of group ids, got dtype {tie_array.dtype}")
        if tie_array.shape != (n_blocks,):
            raise ValueError(f"tie has shape {tie_array.shape}; expected ({n_blocks},)")
        if (tie_array < 0).any():
            raise ValueError(f"tie group ids must be >= 0, got {int(tie_array.min())}")
        tie = np.ascontiguousarray(tie_array, dtype=np.int64)
    if (act_bits is None) != (abits is None):
        raise ValueError("act_bits and abits go together: pass both or neither")
    if act_bits is not None:
        act_bits = _float_array("act_bits", act_bits, 1)
        if act_bits.shape != (n_schemes,):
            raise ValueError(f"act_bits has shape {act_bits.shape}; expected ({n_schemes},)")
    wbits = float(wbits)
    if not math.isfinite(wbits) or wbits <= 0:
        raise ValueError(f"wbits={wbits} must be finite and > 0")
    choice, total_loss, total_time, frontier, n_milps = _C.ilp_solve(
        loss, time, bits, params, wbits, float(r), _optional_limit("max_time", max_time),
        _optional_limit("max_loss", max_loss), tie, act_bits, float(abits) if abits is not None else 0.0,
        bool(prune), SOLVERS[solver])
    return BlockAllocation(choice, total_loss, total_time, [(float(a), float(b)) for a, b in frontier], n_milps)


def allocate_blocks(loss, time, bits, params, wbits: float, r: float = 1.0, max_time: float | None = None,
                    max_loss: float | None = None, tie=None, act_bits=None, abits: float | None = None) -> np.ndarray:
    """Optimal scheme index per block (int64 [n_blocks]) for the problem in csrc/mx_ilp.h.

    loss, time: [n_blocks, n_schemes] (>= 0; +inf forbids a scheme for a block); bits: [n_schemes] (or
    [n_blocks, n_schemes]) bits charged per weight; params: [n_blocks] weights per block; budget
    sum params*bits <= wbits * sum params (and the same with act_bits / abits).  r = 1 minimises total loss,
    r = 0 total time, 0 < r < 1 minimises L^r * T^(1-r) exactly.  tie: group ids; blocks of a group share a scheme.
    Infeasible limits raise ValueError stating the smallest feasible budget."""
    return allocate_blocks_detail(loss, time, bits, params, wbits, r, max_time, max_loss, tie, act_bits,
                                  abits).choice


# ---------------------------------------------------------------------------------------------------------------
# the plan
# ---------------------------------------------------------------------------------------------------------------

BlockKey = tuple[int, int, str]   # (layer, expert, block)


@dataclass
class Plan:
    """The scheme of every linear block of a model (layer, expert, block), with what the allocator predicted.

    The model signature (``model_type``, ``num_layers``, ``num_experts``, ``blocks`` with their shapes) lets a
    later stage check that the plan belongs to the model it is applied to (``check_signature``).  Shared experts
    use expert index ``num_experts + j``.  ``seed`` is the Hadamard rotation seed quantization must use."""

    model_type: str
    num_layers: int
    num_experts: int
    blocks: list[tuple[int, int, str, int, int]]   # (layer, expert, block, out_features, in_features)
    schemes: list[str]                             # one per block, same order
    candidates: list[str]
    wbits: float                                   # the budget asked for
    abits: float | None = None
    r: float | None = None
    scope: str = "layer"
    tokens: int | None = None
    gpu: str | None = None
    seed: int = 0
    block_loss: list[float] | None = None          # predicted loss of each block under its scheme
    block_time: list[float] | None = None          # predicted time (s) of each block under its scheme
    frontiers: dict[str, list[tuple[float, float]]] = field(default_factory=dict)   # "model" or str(layer)
    _index: dict[BlockKey, int] = field(default=None, init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if len(self.schemes) != len(self.blocks):
            raise ValueError(f"{len(self.schemes)} schemes for {len(self.blocks)} blocks")
        if self.scope not in SCOPES:
            raise ValueError(f"scope={self.scope!r} must be one of {SCOPES}")
        for name in (self.block_loss, self.block_time):
            if name is not None and len(name) != len(self.blocks):
                raise ValueError("block_loss / block_time need one value per block")
        self.blocks = [(int(l), int(e), str(b), int(n), int(k)) for l, e, b, n, k in self.blocks]
        self.schemes = [as_scheme(s).name for s in self.schemes]
        self.candidates = [as_scheme(s).name for s in self.candidates]
        self.frontiers = {str(k): [(float(a), float(b)) for a, b in v] for k, v in self.frontiers.items()}
        self._index = {(l, e, b): i for i, (l, e, b, _, _) in enumerate(self.blocks)}
        if len(self._index) != len(self.blocks):
            raise ValueError("duplicate (layer, expert, block) in the plan")

    # -- queries --------------------------------------------------------------------------------------------
    def scheme_for(self, layer: int, expert: int, block: str) -> Scheme:
        """The scheme of one block; KeyError naming the block if the plan has no such block."""
        i = self._index.get((int(layer), int(expert), str(block)))
        if i is None:
            raise KeyError(f"the plan has no block layer={layer}, expert={expert}, block={block!r}")
        return Scheme.parse(self.schemes[i])

    @property
    def params(self) -> np.ndarray:
        return np.array([n * k for _, _, _, n, k in self.blocks], dtype=np.float64)

    @property
    def average_bits(self) -> float:
        """Parameter-weighted average weight bits, with scale/zero overhead (Scheme.bits_for(in_features))."""
        params = self.params
        if params.sum() == 0:
            return 0.0
        bits = np.array([Scheme.parse(s).bits_for(k) for s, (_, _, _, _, k) in zip(self.schemes, self.blocks)])
        return float((params * bits).sum() / params.sum())

    @property
    def average_act_bits(self) -> float:
        params = self.params
        bits = np.array([Scheme.parse(s).a_bits for s in self.schemes], dtype=np.float64)
        return float((params * bits).sum() / params.sum()) if params.sum() else 0.0

    @property
    def predicted_loss(self) -> float | None:
        return None if self.block_loss is None else float(math.fsum(self.block_loss))

    @property
    def predicted_time(self) -> float | None:
        return None if self.block_time is None else float(math.fsum(self.block_time))

    def signature(self) -> dict:
        """What identifies the model this plan was made for."""
        return {"model_type": self.model_type, "num_layers": self.num_layers, "num_experts": self.num_experts,
                "blocks": [list(b) for b in self.blocks]}

    def check_signature(self, other: "dict | Plan | Any") -> None:
        """ValueError describing the first difference between this plan's model and `other` (a signature dict,
        a Plan or a Profile)."""
        theirs = other.signature() if isinstance(other, Plan) else (
            other if isinstance(other, dict) else _signature_of(other))
        mine = self.signature()
        for key in ("model_type", "num_layers", "num_experts"):
            if mine[key] != theirs[key]:
                raise ValueError(f"plan was made for {key}={mine[key]!r}, the model has {theirs[key]!r}")
        a, b = [tuple(x) for x in mine["blocks"]], [tuple(x) for x in theirs["blocks"]]
        if a != b:
            missing = sorted(set(a) - set(b))[:3]
            extra = sorted(set(b) - set(a))[:3]
            raise ValueError(f"plan blocks differ from the model's: plan-only {missing}, model-only {extra}")

    def pareto(self, layer: int | None = None) -> list[tuple[float, float]]:
        """The supported Pareto points (loss, time) the allocator visited, by increasing loss: the global frontier
        for scope="model", one frontier per layer for scope="layer" (pass `layer`).  Empty for uniform plans."""
        if layer is None:
            if self.scope == "layer" and self.frontiers:
                raise ValueError(f"scope='layer' plans have one frontier per layer; pass layer= one of "
                                 f"{sorted(int(k) for k in self.frontiers)}")
            return list(self.frontiers.get("model", []))
        key = "model" if self.scope == "model" else str(int(layer))
        if key not in self.frontiers:
            raise KeyError(f"no frontier for layer={layer}")
        return list(self.frontiers[key])

    def summary(self) -> str:
        """Per-layer table: layer, experts, average bits, histogram of schemes, predicted loss and time."""
        params = self.params
        rows = [f"{'layer':>5} {'experts':>7} {'avg bits':>8} {'loss':>11} {'time (us)':>10}  schemes"]
        for layer in sorted({l for l, *_ in self.blocks}):
            idx = [i for i, (l, *_) in enumerate(self.blocks) if l == layer]
            experts = len({self.blocks[i][1] for i in idx})
            p = params[idx]
            bits = np.array([Scheme.parse(self.schemes[i]).bits_for(self.blocks[i][4]) for i in idx])
            avg = float((p * bits).sum() / p.sum()) if p.sum() else 0.0
            histogram = ", ".join(f"{name}:{count}" for name, count in
                                  sorted(Counter(self.schemes[i] for i in idx).items(), key=lambda kv: -kv[1]))
            loss = f"{math.fsum(self.block_loss[i] for i in idx):11.4g}" if self.block_loss else f"{'-':>11}"
            time = f"{1e6 * math.fsum(self.block_time[i] for i in idx):10.2f}" if self.block_time else f"{'-':>10}"
            rows.append(f"{layer:>5} {experts:>7} {avg:>8.3f} {loss} {time}  {histogram}")
        total_loss = f"{self.predicted_loss:.4g}" if self.block_loss else "-"
        total_time = f"{1e6 * self.predicted_time:.2f} us" if self.block_time else "-"
        rows.append(f"total: {len(self.blocks)} blocks, {self.average_bits:.3f} bits/weight (budget {self.wbits:g}"
                    f"{'' if self.abits is None else f', act {self.average_act_bits:.2f}/{self.abits:g}'}), "
                    f"loss {total_loss}, time {total_time}, r={self.r}, scope={self.scope}")
        return "\n".join(rows)

    # -- serialisation ----------------------------------------------------------------------------------------
    def to_dict(self) -> dict:
        return {"schema": PLAN_SCHEMA, "version": PLAN_SCHEMA_VERSION, "model_type": self.model_type,
                "num_layers": self.num_layers, "num_experts": self.num_experts,
                "blocks": [list(b) for b in self.blocks], "schemes": list(self.schemes),
                "candidates": list(self.candidates), "wbits": self.wbits, "abits": self.abits, "r": self.r,
                "scope": self.scope, "tokens": self.tokens, "gpu": self.gpu, "seed": self.seed,
                "block_loss": self.block_loss, "block_time": self.block_time,
                "frontiers": {k: [list(p) for p in v] for k, v in self.frontiers.items()}}

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True, allow_nan=True)

    @classmethod
    def from_dict(cls, data: dict) -> "Plan":
        if not isinstance(data, dict) or data.get("schema") != PLAN_SCHEMA:
            raise ValueError(f"not an mxmoe plan (schema={data.get('schema') if isinstance(data, dict) else None!r})")
        if data.get("version") != PLAN_SCHEMA_VERSION:
            raise ValueError(f"plan schema version {data.get('version')!r} is not supported (this mxmoe reads "
                             f"version {PLAN_SCHEMA_VERSION})")
        fields = {k: v for k, v in data.items() if k not in ("schema", "version")}
        unknown = set(fields) - {f for f in cls.__dataclass_fields__ if not f.startswith("_")}
        if unknown:
            raise ValueError(f"unknown plan fields {sorted(unknown)}")
        fields["blocks"] = [tuple(b) for b in fields["blocks"]]
        return cls(**fields)

    @classmethod
    def from_json(cls, text: str) -> "Plan":
        return cls.from_dict(json.loads(text))

    def save(self, path: str | os.PathLike) -> None:
        """Write the JSON atomically (temp file + os.replace)."""
        path = os.fspath(path)
        directory = os.path.dirname(os.path.abspath(path))
        fd, tmp = tempfile.mkstemp(prefix=".plan-", suffix=".json", dir=directory)
        try:
            with os.fdopen(fd, "w") as f:
                f.write(self.to_json())
            os.replace(tmp, path)
        except BaseException:
            if os.path.exists(tmp):
                os.unlink(tmp)
            raise

    @classmethod
    def load(cls, path: str | os.PathLike) -> "Plan":
        with open(path) as f:
            return cls.from_json(f.read())

    @classmethod
    def uniform(cls, profile_or_signature: Any, scheme: SchemeLike, seed: int = 0) -> "Plan":
        """Every block gets `scheme` (the uniform baseline).  Accepts a Profile, a Plan or a signature dict."""
        signature = (profile_or_signature.signature() if isinstance(profile_or_signature, Plan)
                     else profile_or_signature if isinstance(profile_or_signature, dict)
                     else _signature_of(profile_or_signature))
        name = as_scheme(scheme).name
        blocks = [tuple(b) for b in signature["blocks"]]
        plan = cls(signature["model_type"], signature["num_layers"], signature["num_experts"], blocks,
                   [name] * len(blocks), [name], wbits=0.0, r=None, seed=seed)
        plan.wbits = plan.average_bits
        plan.abits = None if not as_scheme(name).quantizes_activations else float(as_scheme(name).a_bits)
        return plan


def _signature_of(profile: Any) -> dict:
    """Model signature of a Profile (or any object with model_type, num_layers, num_experts and BlockInfo-like
    blocks)."""
    try:
        blocks = [(int(b.layer), int(b.expert), str(b.block), int(b.out_features), int(b.in_features))
                  for b in profile.blocks]
        return {"model_type": str(profile.model_type), "num_layers": int(profile.num_layers),
                "num_experts": int(profile.num_experts), "blocks": blocks}
    except AttributeError as e:
        raise TypeError(f"expected a Profile, a Plan or a signature dict, got {type(profile).__name__} ({e})") from None


# ---------------------------------------------------------------------------------------------------------------
# high level
# ---------------------------------------------------------------------------------------------------------------

def _scheme_fits(scheme: Scheme, in_features: int) -> bool:
    """Whether the packed layout can hold a [N, K] matrix (K multiple of 32 and of the group; w16 always)."""
    if scheme.w_bits == 16:
        return True
    if in_features % 32:
        return False
    return scheme.group_size <= 0 or in_features % scheme.group_size == 0


def _tie_ids(blocks: Sequence[tuple[int, int, str, int, int]], tie_gate_up: bool) -> np.ndarray | None:
    if not tie_gate_up:
        return None
    ids: dict[tuple, int] = {}
    tie = np.empty(len(blocks), dtype=np.int64)
    for i, (layer, expert, block, _, _) in enumerate(blocks):
        key = (layer, expert, "gate_up") if block in ("gate", "up") else (layer, expert, block, i)
        tie[i] = ids.setdefault(key, len(ids))
    return tie


def allocate(profile: Any, wbits: float, abits: float | None = None, r: float = 0.75,
             candidates: Sequence[SchemeLike] | None = None, tokens: int = 512, gpu: str = "h100",
             tie_gate_up: bool = True, scope: str = "layer", loss=None, time=None, kernel_profile=None,
             seed: int = 0) -> Plan:
    """Choose a scheme per (layer, expert, block) of `profile` (an mxmoe.Profile).

    Budget: parameter-weighted average weight bits <= wbits (scale/zero overhead included via
    Scheme.bits_for(in_features)); with `abits`, also average activation bits <= abits.  `scope="layer"` solves one
    problem per layer with its own budget, `"model"` one global problem.  `loss` / `time` ([n_blocks, n_schemes])
    default to mxmoe.estimate_loss(profile, candidates) and CostModel(gpu, kernel_profile).table(profile.blocks,
    candidates, tokens).  Candidates default to the weight-only schemes when `abits` is None, else all schemes.
    Schemes whose layout cannot hold a block (K not a multiple of 32 or of the group) are not allowed for it; when
    loss is estimated here, default candidates that do not fit every block are left out (estimate_loss quantizes
    every block with every candidate), explicit ones raise ValueError."""
    if scope not in SCOPES:
        raise ValueError(f"scope={scope!r} must be one of {SCOPES}")
    explicit_candidates = candidates is not None
    if candidates is None:
        candidates = schemes(weight_only=True) if abits is None else schemes()
    candidates = [as_scheme(c) for c in candidates]
    if not candidates:
        raise ValueError("candidates is empty")
    if len({c.name for c in candidates}) != len(candidates):
        raise ValueError(f"duplicate candidates: {[c.name for c in candidates]}")
    signature = _signature_of(profile)
    blocks = signature["blocks"]
    fits = np.array([[_scheme_fits(c, k) for c in candidates] for (_, _, _, _, k) in blocks],
                    dtype=bool).reshape(len(blocks), len(candidates))
    if loss is None and not fits.all():
        # estimate_loss quantizes every block with every candidate, so a scheme must fit every block's layout
        partial = [c.name for c, ok in zip(candidates, fits.all(axis=0)) if not ok]
        if explicit_candidates:
            raise ValueError(f"candidates {partial} do not fit every block (in_features must be a multiple of 32 "
                             f"and of the group size): pass loss= with +inf where a scheme does not fit, or leave "
                             f"them out of candidates")
        keep = fits.all(axis=0)
        candidates = [c for c, ok in zip(candidates, keep) if ok]
        fits = fits[:, keep]
        if not candidates:
            raise ValueError("no default candidate scheme fits every block of this model; pass candidates=")
    n_blocks, n_schemes = len(blocks), len(candidates)
    if loss is None:
        from .loss import estimate_loss
        loss = estimate_loss(profile, candidates)
    if time is None:
        from .cost import CostModel
        time = CostModel(gpu, kernel_profile).table(profile.blocks, candidates, tokens)
    loss = _float_array("loss", loss, 2).copy()
    time = _float_array("time", time, 2).copy()
    for name, table in (("loss", loss), ("time", time)):
        if table.shape != (n_blocks, n_schemes):
            raise ValueError(f"{name} has shape {table.shape}; expected ({n_blocks}, {n_schemes}) for "
                             f"{n_blocks} blocks and {n_schemes} candidates")
    loss[~fits] = np.inf
    params = np.array([n * k for _, _, _, n, k in blocks], dtype=np.float64)
    bits = np.array([[c.bits_for(k) for c in candidates] for (_, _, _, _, k) in blocks], dtype=np.float64)
    bits = bits.reshape(n_blocks, n_schemes)
    act_bits = None if abits is None else np.array([c.a_bits for c in candidates], dtype=np.float64)
    tie = _tie_ids(blocks, tie_gate_up)

    choice = np.zeros(n_blocks, dtype=np.int64)
    frontiers: dict[str, list[tuple[float, float]]] = {}
    if scope == "model":
        groups = {"model": np.arange(n_blocks)}
    else:
        layers = np.array([b[0] for b in blocks], dtype=np.int64)
        groups = {str(layer): np.flatnonzero(layers == layer) for layer in sorted(set(layers.tolist()))}
    for key, idx in groups.items():
        if len(idx) == 0:
            continue
        try:
            result = allocate_blocks_detail(loss[idx], time[idx], bits[idx], params[idx], wbits, r,
                                            tie=None if tie is None else tie[idx], act_bits=act_bits, abits=abits)
        except ValueError as e:
            raise ValueError(f"{'layer ' + key if scope == 'layer' else 'model'}: {e}") from None
        choice[idx] = result.choice
        frontiers[key] = result.frontier
    rows = np.arange(n_blocks)
    return Plan(signature["model_type"], signature["num_layers"], signature["num_experts"], blocks,
                [candidates[s].name for s in choice], [c.name for c in candidates], wbits=float(wbits),
                abits=None if abits is None else float(abits), r=float(r), scope=scope, tokens=int(tokens), gpu=gpu,
                seed=int(seed), block_loss=loss[rows, choice].tolist(), block_time=time[rows, choice].tolist(),
                frontiers=frontiers)
