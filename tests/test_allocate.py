"""Tests of mxmoe.allocate: allocate_blocks against brute force, infeasibility messages, bad input, and the Plan."""
from __future__ import annotations

import json
import re
from dataclasses import dataclass

import numpy as np
import pytest

import mxmoe
from mxmoe._reference.ilp import (LIMIT_RTOL, allocate_blocks_bruteforce, enumerate_assignments, feasible_mask,
                                  objective_value)
from mxmoe.allocation import Plan, allocate, allocate_blocks, allocate_blocks_detail
from mxmoe.profiling import BlockInfo

# The C allocator is exact up to MX_ILP_EPS = 1e-7 in normalised objective units (csrc/mx_ilp.h) plus GLPK's
# 1e-9 branch-and-bound tolerance; 1e-6 relative leaves a 10x margin and is far below any real gap between two
# different assignments of these random instances.
OBJECTIVE_RTOL = 1e-6
# Hard limits: the same slack the C side and the reference use (summation order only).
BUDGET_RTOL = LIMIT_RTOL
MAX_ASSIGNMENTS = 4 ** 8   # keeps each brute force at a few ms
R_VALUES = (0.0, 0.3, 0.75, 1.0)
VARIANTS = ("plain", "max_time", "tie", "tie+max_time")
INSTANCES_PER_CASE = 14   # 4 r x 4 variants x 14 = 224 instances


def random_instance(rng: np.random.Generator, variant: str) -> dict:
    """A small problem with awkward features: zero losses (a lossless 16-bit scheme), zero times, forbidden
    (+inf) choices, zero-parameter blocks, per-block bits, and a budget anywhere from infeasible to loose."""
    n_schemes = int(rng.integers(1, 5))
    with_tie = "tie" in variant
    max_free = max(1, int(np.floor(np.log(MAX_ASSIGNMENTS) / np.log(max(n_schemes, 2)))))
    n_blocks = int(rng.integers(1, 13 if with_tie else min(12, max_free) + 1))
    bits = np.sort(rng.choice([2.25, 2.5, 3.25, 4.0, 4.25, 8.0, 16.0], n_schemes, replace=False))
    sensitivity = rng.lognormal(0, 1, (n_blocks, 1))
    loss = sensitivity * rng.uniform(0.5, 1.5, (n_blocks, n_schemes)) * 2.0 ** -bits
    loss[:, bits == 16.0] = 0.0                                    # lossless scheme
    time = rng.uniform(0.2, 1.0, (n_blocks, n_schemes)) * (bits / 16 + rng.uniform(0, 0.5, (n_blocks, 1)))
    if rng.random() < 0.2:
        time[rng.integers(0, n_blocks)] = 0.0                      # an expert that gets no tokens
    if rng.random() < 0.25 and n_schemes > 1:
        loss[rng.integers(0, n_blocks), rng.integers(0, n_schemes)] = np.inf   # forbidden choice
    params = rng.integers(1, 6, n_blocks).astype(np.float64)
    if rng.random() < 0.2 and n_blocks > 1:
        params[rng.integers(0, n_blocks)] = 0.0
    if rng.random() < 0.3:   # per-block bits: the per-channel scale overhead depends on K
        bits = bits[None, :] + rng.choice([0.0, 0.125, 0.25], (n_blocks, 1))
    tie = None
    if with_tie:
        n_groups = int(rng.integers(1, min(n_blocks, max_free) + 1))
        tie = rng.permutation(np.concatenate([np.arange(n_groups), rng.integers(0, n_groups, n_blocks - n_groups)]))
        tie = (tie * 7 + 3).astype(np.int64)                      # ids need not be 0..G-1
    lo, hi = float(np.min(bits)), float(np.max(bits))
    wbits = float(rng.uniform(lo - 0.05 * (hi - lo), hi)) if hi > lo else lo
    max_time = None
    if "max_time" in variant:
        per_block, total_loss, total_time, _ = enumerate_assignments(loss, time, bits, params, tie)
        finite = total_time[np.isfinite(total_loss) & np.isfinite(total_time)]
        if finite.size:
            max_time = float(np.quantile(finite, rng.uniform(0.0, 0.7)))
            if rng.random() < 0.3:
                max_time = float(rng.choice(finite))            # a limit hit exactly by some assignment
    return dict(loss=loss, time=time, bits=bits, params=params, wbits=wbits, max_time=max_time, tie=tie)


def check_against_bruteforce(instance: dict, r: float, solver: str = "auto") -> None:
    reference = allocate_blocks_bruteforce(r=r, **instance)
    if reference.choice is None:
        with pytest.raises(ValueError, match="infeasible"):
            allocate_blocks_detail(r=r, solver=solver, **instance)
        return
    result = allocate_blocks_detail(r=r, solver=solver, **instance)
    choice = result.choice
    loss, time, bits, params = instance["loss"], instance["time"], instance["bits"], instance["params"]
    n_blocks = len(params)
    assert choice.dtype == np.int64 and choice.shape == (n_blocks,)
    rows = np.arange(n_blocks)
    block_bits = bits[rows, choice] if bits.ndim == 2 else bits[choice]
    assert (params * block_bits).sum() <= instance["wbits"] * params.sum() * (1 + BUDGET_RTOL)
    assert np.isfinite(loss[rows, choice]).all() and np.isfinite(time[rows, choice]).all()
    total_loss, total_time = loss[rows, choice].sum(), time[rows, choice].sum()
    assert result.loss == pytest.approx(total_loss, rel=1e-12, abs=1e-300)
    assert result.time == pytest.approx(total_time, rel=1e-12, abs=1e-300)
    if instance["max_time"] is not None:
        assert total_time <= instance["max_time"] * (1 + BUDGET_RTOL)
    if instance["tie"] is not None:
        tie = instance["tie"]
        for group in np.unique(tie):
            assert len(set(choice[tie == group].tolist())) == 1, f"tie group {group} split: {choice}"
    got = objective_value(total_loss, total_time, r)
    scale = max(reference.objective, objective_value(np.abs(loss[np.isfinite(loss)]).max(initial=0) * n_blocks,
                                                     time.max() * n_blocks, r) * 1e-3, 1e-300)
    assert got >= reference.objective - OBJECTIVE_RTOL * scale, (got, reference.objective)
    assert got <= reference.objective + OBJECTIVE_RTOL * scale, (r, got, reference.objective, choice,
                                                                   reference.choice)
    if r == 1.0:   # ties in L broken by T
        assert total_time <= reference.time + OBJECTIVE_RTOL * max(reference.time, 1e-300) + 1e-12
    if r == 0.0:
        assert total_loss <= reference.loss + OBJECTIVE_RTOL * max(reference.loss, 1e-300) + 1e-12
    # every frontier point is achieved by a feasible assignment and no feasible assignment dominates it
    per_block, all_loss, all_time, weight_bits = enumerate_assignments(loss, time, bits, params, instance["tie"])
    feasible = feasible_mask(per_block, all_loss, all_time, weight_bits, params, instance["wbits"],
                             instance["max_time"])
    fl, ft = all_loss[feasible], all_time[feasible]
    assert result.frontier, "the chosen point must be on the frontier"
    for point_loss, point_time in result.frontier:
        assert np.any(np.isclose(fl, point_loss, rtol=1e-12, atol=0) & np.isclose(ft, point_time, rtol=1e-12, atol=0))
        tol_l, tol_t = OBJECTIVE_RTOL * max(point_loss, fl.max()), OBJECTIVE_RTOL * max(point_time, ft.max())
        dominated = (fl < point_loss - tol_l) & (ft < point_time - tol_t)
        assert not dominated.any(), (point_loss, point_time)


@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("r", R_VALUES)
def test_allocate_blocks(r: float, variant: str) -> None:
    """Both paths: the knapsack search (only the budget binds: plain and tie) and GLPK for every MILP."""
    rng = np.random.default_rng([int(r * 100), VARIANTS.index(variant)])
    for _ in range(INSTANCES_PER_CASE):
        instance = random_instance(rng, variant)
        check_against_bruteforce(instance, r, "auto")
        check_against_bruteforce(instance, r, "glpk")


@pytest.mark.parametrize("r", R_VALUES)
def test_allocate_blocks_activation_budget(r: float) -> None:
    rng = np.random.default_rng(7)
    for _ in range(10):
        instance = random_instance(rng, "plain")
        n_schemes = instance["loss"].shape[1]
        act_bits = rng.choice([4.0, 8.0, 16.0], n_schemes)
        abits = float(rng.uniform(4.0, 16.0))
        reference = allocate_blocks_bruteforce(r=r, act_bits=act_bits, abits=abits, **instance)
        if reference.choice is None:
            with pytest.raises(ValueError, match="infeasible"):
                allocate_blocks(r=r, act_bits=act_bits, abits=abits, **instance)
            continue
        choice = allocate_blocks(r=r, act_bits=act_bits, abits=abits, **instance)
        params = instance["params"]
        assert (params * act_bits[choice]).sum() <= abits * params.sum() * (1 + BUDGET_RTOL)
        rows = np.arange(len(params))
        got = objective_value(instance["loss"][rows, choice].sum(), instance["time"][rows, choice].sum(), r)
        assert got == pytest.approx(reference.objective, rel=OBJECTIVE_RTOL, abs=1e-12)


def test_allocate_blocks_max_loss() -> None:
    rng = np.random.default_rng(11)
    for _ in range(20):
        instance = random_instance(rng, "plain")
        per_block, all_loss, all_time, weight_bits = enumerate_assignments(
            instance["loss"], instance["time"], instance["bits"], instance["params"])
        ok = np.isfinite(all_loss) & np.isfinite(all_time)
        max_loss = float(np.quantile(all_loss[ok], 0.5))
        reference = allocate_blocks_bruteforce(r=0.0, max_loss=max_loss, **instance)
        if reference.choice is None:
            with pytest.raises(ValueError, match="max_loss|infeasible"):
                allocate_blocks(r=0.0, max_loss=max_loss, **instance)
            continue
        result = allocate_blocks_detail(r=0.0, max_loss=max_loss, **instance)
        assert result.loss <= max_loss * (1 + BUDGET_RTOL)
        assert result.time == pytest.approx(reference.time, rel=OBJECTIVE_RTOL, abs=1e-12)


def test_allocate_blocks_prune_false_same_optimum() -> None:
    """Without pruning the search visits the whole supported hull: same optimum, a superset of points."""
    rng = np.random.default_rng(3)
    n_blocks, n_schemes = 40, 6
    bits = np.array([2.25, 3.25, 4.25, 4.5, 8.25, 16.0])
    loss = rng.lognormal(0, 1, (n_blocks, 1)) * 2.0 ** -bits * rng.uniform(0.8, 1.2, (n_blocks, n_schemes))
    time = rng.uniform(0.5, 1.5, (n_blocks, 1)) * (0.2 + bits / 16) * rng.uniform(0.9, 1.1, (n_blocks, n_schemes))
    params = rng.integers(1, 4, n_blocks).astype(float)
    pruned = allocate_blocks_detail(loss, time, bits, params, 4.0, r=0.75)
    full = allocate_blocks_detail(loss, time, bits, params, 4.0, r=0.75, prune=False)
    glpk = allocate_blocks_detail(loss, time, bits, params, 4.0, r=0.75, solver="glpk")
    assert objective_value(glpk.loss, glpk.time, 0.75) == pytest.approx(
        objective_value(pruned.loss, pruned.time, 0.75), rel=OBJECTIVE_RTOL)
    assert objective_value(pruned.loss, pruned.time, 0.75) == pytest.approx(
        objective_value(full.loss, full.time, 0.75), rel=OBJECTIVE_RTOL)
    assert set(pruned.frontier) <= set(full.frontier)
    assert len(full.frontier) >= len(pruned.frontier)
    # the hull is convex: slopes between consecutive points increase (loss up, time down)
    points = np.array(full.frontier)
    assert (np.diff(points[:, 0]) > 0).all() and (np.diff(points[:, 1]) < 0).all()
    slopes = np.diff(points[:, 1]) / np.diff(points[:, 0])
    assert (np.diff(slopes) >= -1e-6 * np.abs(slopes[:-1])).all()


def test_allocate_blocks_awkward_shapes() -> None:
    # no blocks
    empty = allocate_blocks(np.zeros((0, 3)), np.zeros((0, 3)), [2.0, 4.0, 8.0], np.zeros(0), 4.0, r=0.75)
    assert empty.dtype == np.int64 and empty.shape == (0,)
    # one block, one scheme
    one = allocate_blocks([[1.0]], [[2.0]], [4.0], [10.0], 4.0, r=0.5)
    assert one.tolist() == [0]
    # one block holds (almost) all parameters: it alone decides the budget
    loss = np.array([[4.0, 1.0, 0.0], [4.0, 1.0, 0.0], [4.0, 1.0, 0.0]])
    time = np.ones((3, 3))
    choice = allocate_blocks(loss, time, [2.0, 4.0, 16.0], [1e6, 1.0, 1.0], 2.1, r=1.0)
    assert choice[0] == 0 and choice[1] == 2 and choice[2] == 2
    # everything lossless: L = 0 and the objective L^r T^(1-r) is 0 whatever T; ties go to the fastest
    zero = allocate_blocks_detail(np.zeros((4, 2)), np.array([[1.0, 2.0]] * 4), [4.0, 8.0], np.ones(4), 8.0, r=0.75)
    assert zero.loss == 0.0 and zero.time == 4.0
    # float16 / float32 / int inputs are converted
    choice = allocate_blocks(np.ones((2, 2), np.float16), np.ones((2, 2), np.float32), np.array([2, 4]),
                             np.array([1, 1]), 4)
    assert choice.shape == (2,)


def test_allocate_blocks_infeasible_budget_message() -> None:
    rng = np.random.default_rng(5)
    for variant in ("plain", "tie"):
        for _ in range(10):
            instance = random_instance(rng, variant)
            reference = allocate_blocks_bruteforce(**instance)
            smallest = reference.smallest_wbits
            if not np.isfinite(smallest):
                continue
            instance["wbits"] = smallest * 0.999
            with pytest.raises(ValueError, match="smallest feasible budget") as info:
                allocate_blocks(**instance)
            stated = float(re.search(r"smallest feasible budget is wbits=([0-9.eE+-]+)", str(info.value)).group(1))
            assert stated == pytest.approx(smallest, rel=1e-12)
            instance["wbits"] = stated   # the stated budget is feasible
            allocate_blocks(**instance)


def test_allocate_blocks_infeasible_limits_message() -> None:
    rng = np.random.default_rng(9)
    bits = np.array([2.0, 4.0, 8.0])
    loss = rng.uniform(0, 1, (6, 3)) * 2.0 ** -bits
    time = rng.uniform(0.5, 1.0, (6, 3)) * bits
    params = np.ones(6)
    per_block, all_loss, all_time, weight_bits = enumerate_assignments(loss, time, bits, params)
    within = weight_bits <= 4.0 * (1 + LIMIT_RTOL)
    fastest = all_time[within].min()
    with pytest.raises(ValueError, match="max_time") as info:
        allocate_blocks(loss, time, bits, params, 4.0, r=0.5, max_time=fastest * 0.99)
    stated = float(re.search(r"smallest feasible max_time under the bit budget is ([0-9.eE+-]+)",
                             str(info.value)).group(1))
    assert stated == pytest.approx(fastest, rel=1e-12)
    lowest = all_loss[within].min()
    with pytest.raises(ValueError, match="max_loss") as info:
        allocate_blocks(loss, time, bits, params, 4.0, r=0.5, max_loss=lowest * 0.99)
    stated = float(re.search(r"smallest feasible max_loss under the bit budget is ([0-9.eE+-]+)",
                             str(info.value)).group(1))
    assert stated == pytest.approx(lowest, rel=1e-12)
    # jointly infeasible, each alone feasible
    slowest_fast = np.quantile(all_time[within], 0.1)
    with pytest.raises(ValueError, match="together"):
        allocate_blocks(loss, time, bits, params, 4.0, r=0.5, max_time=slowest_fast, max_loss=lowest)
    # activation budget infeasible
    with pytest.raises(ValueError, match="abits=") as info:
        allocate_blocks(loss, time, bits, params, 4.0, act_bits=[4.0, 8.0, 16.0], abits=3.0)
    assert "smallest feasible budget is abits=4" in str(info.value)
    # a block with no allowed scheme
    forbidden = loss.copy()
    forbidden[2] = np.inf
    with pytest.raises(ValueError, match="block 2 has no allowed scheme"):
        allocate_blocks(forbidden, time, bits, params, 8.0)


def test_allocate_blocks_bad_input() -> None:
    loss, time, bits, params = np.ones((3, 2)), np.ones((3, 2)), np.array([2.0, 4.0]), np.ones(3)
    cases = [
        (dict(loss=np.ones((3, 3))), ValueError, "time has shape"),
        (dict(loss=np.ones(3)), ValueError, "2-dimensional"),
        (dict(bits=np.ones(3)), ValueError, "bits has shape"),
        (dict(params=np.ones(4)), ValueError, "params has shape"),
        (dict(loss=np.array([[1, np.nan]] * 3)), ValueError, "NaN"),
        (dict(time=np.array([[1, -1.0]] * 3)), ValueError, "time"),
        (dict(loss=np.array([[1, -np.inf]] * 3)), ValueError, "loss"),
        (dict(params=np.array([1.0, -1.0, 1.0])), ValueError, "params must be >= 0"),
        (dict(params=np.zeros(3)), ValueError, "sum of params"),
        (dict(bits=np.array([0.0, 4.0])), ValueError, "bits"),
        (dict(r=1.5), ValueError, "r=1.5"),
        (dict(r=-0.1), ValueError, "r=-0.1"),
        (dict(r=float("nan")), ValueError, "r="),
        (dict(wbits=float("nan")), ValueError, "wbits"),
        (dict(wbits=0.0), ValueError, "wbits"),
        (dict(tie=np.array([0, -1, 0])), ValueError, "tie group ids"),
        (dict(tie=np.array([0.0, 1.0, 0.0])), TypeError, "integer"),
        (dict(tie=np.array([0, 1])), ValueError, "tie has shape"),
        (dict(max_time=-1.0), ValueError, "max_time"),
        (dict(act_bits=np.array([4.0, 8.0])), ValueError, "act_bits and abits"),
        (dict(act_bits=np.array([4.0, 8.0, 16.0]), abits=8.0), ValueError, "act_bits has shape"),
        (dict(loss=np.array([["a", "b"]] * 3)), TypeError, "numeric"),
        (dict(solver="cplex"), ValueError, "solver="),
    ]
    for override, exception, message in cases:
        args = dict(loss=loss, time=time, bits=bits, params=params, wbits=4.0)
        args.update(override)
        with pytest.raises(exception, match=re.escape(message)):
            allocate_blocks_detail(**args)


def test_allocate_blocks_binding_checks() -> None:
    """The C binding validates too (dtype, contiguity) when called directly."""
    from mxmoe import _C
    good = (np.ones((2, 2)), np.ones((2, 2)), np.ones(2), np.ones(2), 4.0, 1.0, np.inf, np.inf, None, None, 0.0, True)
    _C.ilp_solve(*good)
    with pytest.raises(TypeError, match="loss must have dtype"):
        _C.ilp_solve(np.ones((2, 2), np.float32), *good[1:])
    with pytest.raises(ValueError, match="C-contiguous"):
        _C.ilp_solve(np.ones((2, 4))[:, ::2], *good[1:])


# ---------------------------------------------------------------------------------------------------------------
# allocate() and Plan, on a Profile-like object with precomputed loss and time
# ---------------------------------------------------------------------------------------------------------------

@dataclass
class FakeProfile:
    model_type: str
    num_layers: int
    num_experts: int
    top_k: int
    blocks: list


def make_profile(num_layers: int = 3, num_experts: int = 4, hidden: int = 256, inter: int = 128,
                 shared_inter: int = 512, seed: int = 0) -> FakeProfile:
    rng = np.random.default_rng(seed)
    blocks = []
    for layer in range(num_layers):
        tokens = rng.multinomial(512 * 2, np.full(num_experts, 1 / num_experts))
        tokens[0] = 0   # a starved expert
        for expert in range(num_experts + 1):
            shared = expert == num_experts
            width = shared_inter if shared else inter
            count = 512 if shared else int(tokens[expert])
            for block in ("gate", "up", "down"):
                out_features, in_features = (width, hidden) if block != "down" else (hidden, width)
                blocks.append(BlockInfo(layer, expert, block, out_features, in_features, count, float(count),
                                            count == 0, shared))
    return FakeProfile("qwen2_moe", num_layers, num_experts, 4, blocks)


def synthetic_tables(profile: FakeProfile, candidates, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    n = len(profile.blocks)
    bits = np.array([c.bits_per_weight for c in candidates])
    act = np.array([c.a_bits for c in candidates])
    sensitivity = rng.lognormal(0, 1, (n, 1))
    loss = sensitivity * (2.0 ** -bits + 0.3 * 2.0 ** -act) * rng.uniform(0.8, 1.2, (n, len(candidates)))
    weights = np.array([[b.out_features * b.in_features] for b in profile.blocks], dtype=float)
    tokens = np.array([[b.tokens] for b in profile.blocks], dtype=float)
    time = weights * bits / 8 / 3e12 + 2 * weights * tokens / (act / 16 * 8e14) + 2e-6
    return loss, time


def test_allocate_layer_scope() -> None:
    profile = make_profile()
    candidates = mxmoe.schemes(weight_only=True)
    loss, time = synthetic_tables(profile, candidates)
    plan = allocate(profile, 3.25, r=0.75, loss=loss, time=time)
    assert plan.candidates == [c.name for c in candidates]
    assert plan.scope == "layer" and plan.r == 0.75 and plan.wbits == 3.25
    for layer in range(profile.num_layers):
        idx = [i for i, b in enumerate(profile.blocks) if b.layer == layer]
        params = np.array([profile.blocks[i].out_features * profile.blocks[i].in_features for i in idx], float)
        bits = np.array([mxmoe.Scheme.parse(plan.schemes[i]).bits_for(profile.blocks[i].in_features) for i in idx])
        assert (params * bits).sum() <= 3.25 * params.sum() * (1 + BUDGET_RTOL)
        assert plan.pareto(layer)
        for expert in range(profile.num_experts + 1):   # gate and up tied by default
            assert plan.scheme_for(layer, expert, "gate") == plan.scheme_for(layer, expert, "up")
    assert plan.average_bits <= 3.25 * (1 + BUDGET_RTOL)
    rows = np.arange(len(profile.blocks))
    chosen = np.array([plan.candidates.index(s) for s in plan.schemes])
    assert plan.predicted_loss == pytest.approx(loss[rows, chosen].sum(), rel=1e-12)
    assert plan.predicted_time == pytest.approx(time[rows, chosen].sum(), rel=1e-12)
    with pytest.raises(ValueError, match="pass layer="):
        plan.pareto()
    with pytest.raises(KeyError, match="expert=99"):
        plan.scheme_for(0, 99, "up")
    summary = plan.summary()
    assert all(re.search(rf"^\s+{layer}\s+{profile.num_experts + 1}\s", summary, re.M)
               for layer in range(profile.num_layers))
    assert "bits/weight" in summary


def test_allocate_layer_matches_allocate_blocks() -> None:
    """Layer scope = one allocate_blocks per layer with per-block bits (bits_for(K)) and gate/up tied."""
    profile = make_profile(num_layers=2, num_experts=3)
    candidates = [mxmoe.Scheme.parse(n) for n in ("w2a16_g128_asym", "w3a16_g128_asym", "w4a16_g-1_asym",
                                                  "w8a16_g-1_sym")]
    loss, time = synthetic_tables(profile, candidates, seed=1)
    plan = allocate(profile, 3.5, r=1.0, loss=loss, time=time, candidates=candidates)
    for layer in range(2):
        idx = np.array([i for i, b in enumerate(profile.blocks) if b.layer == layer])
        blocks = [profile.blocks[i] for i in idx]
        params = np.array([b.out_features * b.in_features for b in blocks], float)
        bits = np.array([[c.bits_for(b.in_features) for c in candidates] for b in blocks])
        tie = np.array([b.expert * 2 + (b.block == "down") for b in blocks])
        reference = allocate_blocks_bruteforce(loss[idx], time[idx], bits, params, 3.5, r=1.0, tie=tie)
        got = loss[idx, [plan.candidates.index(plan.schemes[i]) for i in idx]].sum()
        assert got == pytest.approx(reference.loss, rel=OBJECTIVE_RTOL)


def test_allocate_model_scope_vs_layer() -> None:
    profile = make_profile(num_layers=3)
    candidates = mxmoe.schemes(weight_only=True)
    loss, time = synthetic_tables(profile, candidates, seed=2)
    by_layer = allocate(profile, 3.0, r=1.0, loss=loss, time=time, scope="layer")
    global_ = allocate(profile, 3.0, r=1.0, loss=loss, time=time, scope="model")
    assert global_.scope == "model"
    # one global budget relaxes the per-layer budgets: never worse, same overall budget
    assert global_.predicted_loss <= by_layer.predicted_loss * (1 + OBJECTIVE_RTOL)
    assert global_.average_bits <= 3.0 * (1 + BUDGET_RTOL)
    assert global_.pareto() and global_.pareto(0) == global_.pareto()
    with pytest.raises(ValueError, match="scope"):
        allocate(profile, 3.0, loss=loss, time=time, scope="expert")


def test_allocate_activation_budget_and_fit() -> None:
    profile = make_profile(num_layers=1, inter=96)   # K = 96: no group-128 scheme fits the down blocks
    candidates = mxmoe.schemes()
    loss, time = synthetic_tables(profile, candidates, seed=3)
    plan = allocate(profile, 6.0, abits=10.0, r=0.5, loss=loss, time=time)
    assert plan.abits == 10.0
    assert plan.average_act_bits <= 10.0 * (1 + BUDGET_RTOL)
    for (layer, expert, block, out_features, in_features), name in zip(plan.blocks, plan.schemes):
        scheme = mxmoe.Scheme.parse(name)
        if scheme.w_bits != 16:
            assert in_features % 32 == 0 and (scheme.group_size <= 0 or in_features % scheme.group_size == 0)
    with pytest.raises(ValueError, match="smallest feasible budget"):
        allocate(profile, 1.5, r=0.5, loss=loss[:, :6], time=time[:, :6], candidates=candidates[:6])


def test_allocate_bad_tables() -> None:
    profile = make_profile(num_layers=1)
    candidates = mxmoe.schemes(weight_only=True)
    loss, time = synthetic_tables(profile, candidates)
    with pytest.raises(ValueError, match="expected"):
        allocate(profile, 3.0, loss=loss[:, :2], time=time)
    with pytest.raises(ValueError, match="duplicate"):
        allocate(profile, 3.0, loss=loss[:, :2], time=time[:, :2], candidates=["w4a16_g128_asym"] * 2)
    with pytest.raises(TypeError, match="Profile"):
        allocate(object(), 3.0, loss=loss, time=time)


def test_plan_json_round_trip(tmp_path) -> None:
    profile = make_profile(num_layers=2)
    loss, time = synthetic_tables(profile, mxmoe.schemes(weight_only=True))
    plan = allocate(profile, 3.25, r=0.75, loss=loss, time=time, seed=1234)
    assert plan.seed == 1234
    again = Plan.from_json(plan.to_json())
    assert again == plan and again.to_json() == plan.to_json()
    path = tmp_path / "plan.json"
    plan.save(path)
    loaded = Plan.load(path)
    assert loaded == plan
    assert loaded.scheme_for(1, 2, "down") == plan.scheme_for(1, 2, "down")
    assert loaded.pareto(1) == plan.pareto(1)
    data = json.loads(plan.to_json())
    assert data["schema"] == "mxmoe.plan" and data["version"] == 1
    data["version"] = 99
    with pytest.raises(ValueError, match="version 99"):
        Plan.from_json(json.dumps(data))
    with pytest.raises(ValueError, match="not an mxmoe plan"):
        Plan.from_json("{}")
    data["version"] = 1
    data["schemes"] = data["schemes"][:-1]
    with pytest.raises(ValueError, match="schemes for"):
        Plan.from_json(json.dumps(data))


def test_allocate_deterministic() -> None:
    profile = make_profile(num_layers=2)
    loss, time = synthetic_tables(profile, mxmoe.schemes(weight_only=True), seed=4)
    first = allocate(profile, 3.25, r=0.75, loss=loss, time=time)
    second = allocate(profile, 3.25, r=0.75, loss=loss.copy(), time=time.copy())
    assert first.to_json() == second.to_json()


def test_plan_uniform_and_signature() -> None:
    profile = make_profile(num_layers=2)
    plan = Plan.uniform(profile, "w4a16_g128_asym")
    assert set(plan.schemes) == {"w4a16_g128_asym"}
    expected = mxmoe.Scheme.parse("w4a16_g128_asym").bits_for(256)   # every K here is a multiple of 128
    assert plan.average_bits == pytest.approx(expected, rel=1e-12)
    assert plan.wbits == plan.average_bits and plan.predicted_loss is None and plan.pareto() == []
    assert "-" in plan.summary()
    plan.check_signature(profile)
    plan.check_signature(plan.signature())
    assert Plan.from_json(plan.to_json()) == plan
    other = make_profile(num_layers=3)
    with pytest.raises(ValueError, match="num_layers"):
        plan.check_signature(other)
    wider = make_profile(num_layers=2, inter=256)
    with pytest.raises(ValueError, match="blocks differ"):
        plan.check_signature(wider)
    w8a8 = Plan.uniform(plan, "w8a8_g-1_sym")
    assert w8a8.abits == 8.0 and w8a8.average_act_bits == 8.0


# ---------------------------------------------------------------------------------------------------------------
# allocate() on a real (tiny, random) model: loss from mxmoe.loss, time from mxmoe.cost
# ---------------------------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def tiny_profile():
    pytest.importorskip("torch")
    pytest.importorskip("transformers")
    from tiny_models import random_token_windows, tiny_model
    model = tiny_model("qwen2_moe")
    profile = mxmoe.profile(model, random_token_windows(2, 16, seed=5), min_tokens=0, progress=False)
    return model, profile


def test_allocate_profiled_model(tiny_profile) -> None:
    from mxmoe.cost import CostModel
    from mxmoe.loss import estimate_loss
    model, profile = tiny_profile
    plan = allocate(profile, 5.0, r=0.75)
    plan.check_signature(profile)
    assert len(plan.schemes) == len(profile.blocks)
    assert plan.average_bits <= 5.0 * (1 + BUDGET_RTOL)
    # K = 32 / 64 here: the default group-128 candidates fit no block and are left out
    assert plan.candidates and all(mxmoe.Scheme.parse(c).group_size != 128 for c in plan.candidates)
    candidates = plan.candidates
    loss = estimate_loss(profile, candidates)
    time = CostModel("h100").table(profile.blocks, candidates, 512)
    assert allocate(profile, 5.0, r=0.75, candidates=candidates, loss=loss, time=time) == plan
    with pytest.raises(ValueError, match="do not fit every block"):
        allocate(profile, 5.0, candidates=["w4a16_g128_asym", "w8a16_g-1_sym"])
    with pytest.raises(ValueError, match="smallest feasible budget is wbits=4.6"):
        allocate(profile, 4.0, r=0.75, candidates=candidates, loss=loss, time=time)
    with_act = allocate(profile, 6.0, abits=12.0, r=0.5)
    assert with_act.average_act_bits <= 12.0 * (1 + BUDGET_RTOL)
    assert with_act.average_bits <= 6.0 * (1 + BUDGET_RTOL)
