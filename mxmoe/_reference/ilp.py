"""Brute-force reference of the allocator (mx_ilp_solve): enumerate every assignment of schemes to tie groups.

Written from the problem statement, not from the C code: no LP, no frontier, just all S^G assignments evaluated
with vectorised NumPy.  Meant for small instances (S^G up to about 10^5)."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

# Same slack on hard limits as the C allocator (MX_ILP_LIMIT_RTOL): a limit hit exactly stays feasible whatever
# the summation order.
LIMIT_RTOL = 1e-9
MAX_ASSIGNMENTS = 1 << 20


@dataclass
class BruteForceResult:
    choice: np.ndarray | None   # int64 [n_blocks], None if infeasible
    loss: float
    time: float
    objective: float            # r=1: L, r=0: T, else L^r T^(1-r)
    smallest_wbits: float       # min over *all* assignments of the average weight bits (ignores every limit)


def _groups(n_blocks: int, tie: np.ndarray | None) -> np.ndarray:
    """group index per block, groups numbered by first appearance."""
    if tie is None:
        return np.arange(n_blocks)
    _, first, inverse = np.unique(tie, return_index=True, return_inverse=True)
    rank = np.argsort(np.argsort(first))  # order groups by their first block
    return rank[inverse]


def objective_value(loss: float, time: float, r: float) -> float:
    if r == 1.0:
        return loss
    if r == 0.0:
        return time
    return float(loss ** r * time ** (1.0 - r))


def enumerate_assignments(loss, time, bits, params, tie=None):
    """Every assignment of a scheme to each tie group, expanded to blocks, with its totals.

    Returns (per_block int [A, n_blocks], L [A], T [A], average weight bits [A]); L or T is +inf where a
    forbidden (+inf) choice is used."""
    loss = np.asarray(loss, np.float64)
    time = np.asarray(time, np.float64)
    params = np.asarray(params, np.float64)
    n_blocks, n_schemes = loss.shape
    bits = np.asarray(bits, np.float64)
    bits = np.broadcast_to(bits, (n_blocks, n_schemes)) if bits.ndim == 1 else bits
    group = _groups(n_blocks, None if tie is None else np.asarray(tie))
    n_groups = int(group.max()) + 1 if n_blocks else 0
    if n_schemes ** n_groups > MAX_ASSIGNMENTS:
        raise ValueError(f"{n_schemes}^{n_groups} assignments is too many for brute force")
    assignments = np.stack(np.meshgrid(*[np.arange(n_schemes)] * n_groups, indexing="ij"), -1).reshape(-1, n_groups)
    per_block = assignments[:, group]                            # [A, n_blocks]
    rows = np.arange(n_blocks)
    total_loss = loss[rows, per_block].sum(1)
    total_time = time[rows, per_block].sum(1)
    weight_bits = (params * bits[rows, per_block]).sum(1) / params.sum()
    return per_block, total_loss, total_time, weight_bits


def feasible_mask(per_block, total_loss, total_time, weight_bits, params, wbits, max_time=None, max_loss=None,
                  act_bits=None, abits=None) -> np.ndarray:
    """Which assignments satisfy every limit (same LIMIT_RTOL slack as the C allocator)."""
    feasible = np.isfinite(total_loss) & np.isfinite(total_time) & (weight_bits <= wbits * (1 + LIMIT_RTOL))
    if act_bits is not None:
        params = np.asarray(params, np.float64)
        act = np.asarray(act_bits, np.float64)[per_block]
        feasible &= (params * act).sum(1) / params.sum() <= abits * (1 + LIMIT_RTOL)
    if max_time is not None:
        feasible &= total_time <= max_time * (1 + LIMIT_RTOL)
    if max_loss is not None:
        feasible &= total_loss <= max_loss * (1 + LIMIT_RTOL)
    return feasible


def allocate_blocks_bruteforce(loss, time, bits, params, wbits, r=1.0, max_time=None, max_loss=None, tie=None,
                               act_bits=None, abits=None) -> BruteForceResult:
    per_block, total_loss, total_time, weight_bits = enumerate_assignments(loss, time, bits, params, tie)
    allowed = np.isfinite(total_loss) & np.isfinite(total_time)
    smallest_wbits = float(weight_bits[allowed].min()) if allowed.any() else np.inf
    feasible = feasible_mask(per_block, total_loss, total_time, weight_bits, params, wbits, max_time, max_loss,
                             act_bits, abits)
    if not feasible.any():
        return BruteForceResult(None, np.inf, np.inf, np.inf, smallest_wbits)
    candidates = np.flatnonzero(feasible)
    L, T = total_loss[candidates], total_time[candidates]
    if r == 1.0:
        best = candidates[np.lexsort((T, L))[0]]
    elif r == 0.0:
        best = candidates[np.lexsort((L, T))[0]]
    else:
        with np.errstate(divide="ignore"):
            value = r * np.log(L) + (1 - r) * np.log(T)
        best = candidates[np.lexsort((T, L, value))[0]]
    return BruteForceResult(per_block[best].astype(np.int64), float(total_loss[best]), float(total_time[best]),
                            objective_value(float(total_loss[best]), float(total_time[best]), r), smallest_wbits)
