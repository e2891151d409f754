/* mx_ilp.h — the scheme allocator: choose one candidate scheme per linear block under a bit budget (exact MILPs:
 * GLPK, and a specialised knapsack search for the MILPs whose only constraint is the weight budget).
 *
 * Problem (blocks b, schemes s, binary x[b,s]):
 *
 *     sum_s x[b,s] = 1                                          one scheme per block
 *     sum_{b,s} params[b] * bits[b|s] * x[b,s] <= wbits * sum_b params[b]      weight-bit budget
 *     sum_{b,s} params[b] * act_bits[s] * x[b,s] <= abits * sum_b params[b]    optional activation-bit budget
 *     T = sum time[b,s] x[b,s] <= max_time,   L = sum loss[b,s] x[b,s] <= max_loss      optional
 *     x[b,s] = x[b',s] whenever tie[b] == tie[b']                               optional tie groups
 *
 *   objective:  r = 1: min L (ties broken by min T);  r = 0: min T (ties by min L), each as one MILP
 *               min L + eta*T with eta = MX_ILP_EPS / (upper bound of T) (normalised units), so L is within
 *               MX_ILP_EPS of its minimum and exact ties go to the smaller T;
 *               0 < r < 1: min L^r * T^(1-r)   (equivalently r log L + (1-r) log T, with log 0 = -inf).
 *
 * How 0 < r < 1 is solved exactly with linear MILPs only.  g(L, T) = L^r T^(1-r) is concave and increasing on
 * [0, inf)^2 (a weighted geometric mean).  A concave function takes its minimum over a finite point set at a
 * vertex of the set's convex hull, and an increasing one at a vertex of the lower-left hull: a *supported* Pareto
 * point, i.e. the optimum of min wL*L + wT*T for some weights wL, wT > 0, or one of the two lexicographic ends.
 * We enumerate those by dichotomic (Aneja-Nair) search: start from lexmin(L, T) and lexmin(T, L); for a segment
 * (A, B) solve min with the weights normal to AB; a point strictly below AB splits the segment, otherwise the
 * segment is done.  A segment can be skipped once its best conceivable value g(L_A, T_B) (every point found
 * inside it has L >= L_A and T >= T_B) is no better than the best point so far.  This needs far fewer MILPs than
 * walking the whole non-supported frontier by epsilon-constraints and is exact by the argument above.
 *
 * Exactness, tolerances (all documented constants below):
 *   - hard constraints (budgets, max_time, max_loss) are checked on the returned assignment with the plain double
 *     sums in block order: feasible iff sum <= limit * (1 + MX_ILP_LIMIT_RTOL).  If GLPK's own feasibility
 *     tolerance (1e-7) let a violation through, the row is tightened and the MILP re-solved.
 *   - L and T are normalised by their scale (sum over tie groups of the smallest allowed value, at least 1e-3 x
 *     the sum of the mean allowed value); the objective is optimal up to MX_ILP_EPS in those normalised units
 *     (GLPK's tol_obj 1e-9 and the knapsack search's 1e-12 relative pruning are below it).
 *
 * Which solver.  Each MILP of the search is "min c.x, one scheme per tie group, budget row(s), optional L/T rows".
 * When only the weight budget binds (no act_bits, max_time, max_loss: the default of mxmoe.allocate) it is a
 * multiple-choice knapsack, solved by an exact LP-based branch and bound with Lagrangian reduction (ilp.c), ~10x
 * to 100x faster than GLPK's simplex branch and bound on these problems; otherwise, or if that search exceeds its
 * node limit, GLPK's glp_intopt (presolve on).  `solver = MX_ILP_SOLVER_GLPK` forces GLPK (tests cross-check
 * both against brute force).  Known limit: one global problem over many layers (thousands of groups with nearly
 * equal efficiencies) can need exponentially many nodes in either solver; per-layer problems solve in ~0.1 s.
 *
 * Disallowed choices: loss[b,s] = +inf or time[b,s] = +inf forbids scheme s for block b (NaN and -inf are errors).
 * Infeasible problems return MX_ERR_INFEASIBLE with a message stating the smallest feasible budget (wbits, abits,
 * max_time or max_loss, whichever is binding), computed exactly for the separable budgets and by a MILP otherwise.
 *
 * GLPK state.  GLPK keeps a thread-local environment (Debian's libglpk is built with TLS).  Each call silences the
 * terminal (glp_term_out is per-thread: set and restored inside the call) and installs an error hook that
 * longjmps back, so GLPK never aborts the process.  We never call glp_free_env on the normal path: it frees every
 * GLPK object of the calling thread, including other libraries' problems.  Only if GLPK reports an internal error
 * (the hook fired) is the environment in an undefined state; then, as GLPK's manual requires, glp_free_env is
 * called and MX_ERR_SOLVER returned.  The few hundred bytes of the per-thread environment stay allocated until
 * the thread ends (or the application calls glp_free_env). */
#ifndef MX_ILP_H
#define MX_ILP_H

#include "mx_common.h"

#ifdef __cplusplus
extern "C" {
#endif

/* Relative slack of every hard limit (rounding of the sums; budgets like 3.25 are usually hit exactly). */
#define MX_ILP_LIMIT_RTOL 1e-9
/* Optimality tolerance in normalised objective units: the objective is exact up to this; also the weight of the
 * tie-breaking objective of a lexicographic solve and the minimum improvement of a dichotomic step. */
#define MX_ILP_EPS 1e-7

/* Every MILP whose only constraint is the weight budget (no act budget, max_time, max_loss) is a multiple-choice
 * knapsack; AUTO solves those with an exact specialised branch and bound (ilp.c) and everything else with GLPK.
 * GLPK forces GLPK for all (cross-checks, benchmarks). */
enum mx_ilp_solver { MX_ILP_SOLVER_AUTO = 0, MX_ILP_SOLVER_GLPK = 1 };

typedef struct mx_ilp_problem {
    int64_t n_blocks;       /* >= 0 */
    int64_t n_schemes;      /* >= 1 */
    const double *loss;     /* [n_blocks, n_schemes] >= 0, +inf = not allowed */
    const double *time;     /* [n_blocks, n_schemes] >= 0, +inf = not allowed */
    const double *bits;     /* [n_schemes] > 0, bits charged per weight ([n_blocks, n_schemes] if bits_per_block) */
    int bits_per_block;     /* 1: bits depends on the block too (per-channel scale overhead depends on K) */
    const double *params;   /* [n_blocks] >= 0, weights per block (sum > 0) */
    double wbits;           /* > 0, average weight-bit budget */
    const double *act_bits; /* [n_schemes] > 0 or NULL (no activation budget) */
    double abits;           /* > 0, average activation-bit budget (used when act_bits != NULL) */
    const int64_t *tie;     /* [n_blocks] >= 0 group ids or NULL */
    double r;               /* in [0, 1] */
    double max_time;        /* +inf = no limit */
    double max_loss;        /* +inf = no limit */
    int prune;              /* 1: skip frontier segments that cannot beat the best point (0: whole hull) */
    int solver;             /* enum mx_ilp_solver: MX_ILP_SOLVER_AUTO (0) or MX_ILP_SOLVER_GLPK (1) */
} mx_ilp_problem;

typedef struct mx_ilp_solution {
    int64_t *choice;        /* [n_blocks], caller-allocated: the scheme index of each block */
    double loss, time;      /* L and T of the choice */
    /* Supported Pareto points visited, sorted by increasing loss: frontier[2i] = L, frontier[2i+1] = T.
     * Allocated by mx_ilp_solve (NULL when empty), released by mx_ilp_solution_free. */
    double *frontier;
    int64_t n_frontier;
    int64_t n_milps;        /* MILPs solved (diagnostics) */
} mx_ilp_solution;

/* loss, time: [n_blocks, n_schemes] f64; bits, act_bits: [n_schemes] f64; params: [n_blocks] f64;
 * tie: [n_blocks] i64; sol->choice: [n_blocks] i64 (out).
 * MX_ERR_INVALID_ARG / MX_ERR_NONFINITE for bad input, MX_ERR_INFEASIBLE (message: smallest feasible limit),
 * MX_ERR_SOLVER (GLPK's return code in the message), MX_ERR_NOMEM. */
MX_API enum mx_status mx_ilp_solve(const mx_ilp_problem *problem, mx_ilp_solution *sol, mx_error *err);

/* Frees sol->frontier (not sol->choice, which the caller owns); safe on a zeroed or already-freed solution. */
MX_API void mx_ilp_solution_free(mx_ilp_solution *sol);

#ifdef __cplusplus
}
#endif
#endif /* MX_ILP_H */
