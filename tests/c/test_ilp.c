/* test_ilp.c — mx_ilp_solve without Python: optimum vs an in-test brute force, ties, limits, every error path.
 * Run under valgrind by `make memcheck` (no errors, no definite/indirect leaks). */
#include <glpk.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "mx_ilp.h"

#define CHECK(cond, ...)                                      \
    do {                                                      \
        if (!(cond)) {                                        \
            printf("  test_ilp %s:%d: ", __FILE__, __LINE__); \
            printf(__VA_ARGS__);                              \
            printf("\n");                                     \
            failures++;                                       \
        }                                                     \
    } while (0)

/* objective tolerance: the allocator is exact up to MX_ILP_EPS in normalised units; 1e-6 relative is 10x that */
#define TEST_OBJECTIVE_RTOL 1e-6

static unsigned long long rng_state = 88172645463325252ULL;
static double uniform01(void) {
    rng_state ^= rng_state << 13, rng_state ^= rng_state >> 7, rng_state ^= rng_state << 17;
    return (double)(rng_state >> 11) / 9007199254740992.0;
}

static double objective(double r, double l, double t) { return r == 1 ? l : r == 0 ? t : pow(l, r) * pow(t, 1 - r); }

/* Smallest objective over all S^B assignments within the budget and max_time (ties: every block its own group or
 * tie[] groups), or +inf.  B <= 8. */
// loss, time: [B, S]; bits: [S]; params, tie: [B]
static double brute_force(int B, int S, const double *loss, const double *time, const double *bits,
                          const double *params, double wbits, double max_time, const int64_t *tie, double r) {
    double best = INFINITY, total_params = 0;
    for (int b = 0; b < B; b++) total_params += params[b];
    long count = 1;
    for (int b = 0; b < B; b++) count *= S;
    for (long code = 0; code < count; code++) {
        int choice[8];
        long c = code;
        for (int b = 0; b < B; b++) choice[b] = (int)(c % S), c /= S;
        int ok = 1;
        for (int b = 0; b < B && ok && tie; b++)
            for (int o = 0; o < b; o++)
                if (tie[o] == tie[b] && choice[o] != choice[b]) ok = 0;
        if (!ok) continue;
        double l = 0, t = 0, w = 0;
        for (int b = 0; b < B; b++) l += loss[b * S + choice[b]], t += time[b * S + choice[b]],
                                    w += params[b] * bits[choice[b]];
        if (w > wbits * total_params * (1 + MX_ILP_LIMIT_RTOL) || t > max_time * (1 + MX_ILP_LIMIT_RTOL)) continue;
        if (!isfinite(l) || !isfinite(t)) continue;
        double v = objective(r, l, t);
        if (v < best) best = v;
    }
    return best;
}

static int test_random_vs_brute_force(void) {
    int failures = 0;
    const double rs[4] = {0.0, 0.3, 0.75, 1.0};
    for (int trial = 0; trial < 64; trial++) {
        int B = 1 + (int)(uniform01() * 7), S = 1 + (int)(uniform01() * 3);
        double loss[8 * 3], time[8 * 3], bits[3] = {2.25, 4.25, 8.0}, params[8];
        int64_t tie[8], choice[8];
        for (int b = 0; b < B; b++) {
            params[b] = 1 + (int)(uniform01() * 4);
            tie[b] = (int64_t)(uniform01() * B);
            for (int s = 0; s < S; s++) {
                loss[b * S + s] = uniform01() / bits[s];
                time[b * S + s] = uniform01() * bits[s];
            }
        }
        double r = rs[trial % 4], wbits = 2.25 + uniform01() * (bits[S - 1] - 2.25);
        double max_time = trial % 3 == 0 ? 0.5 * B * bits[S - 1] * uniform01() : INFINITY;
        const int64_t *ties = trial % 2 ? tie : NULL;
        /* trials alternate between the knapsack search and GLPK-only (max_time always goes to GLPK) */
        mx_ilp_problem p = {.n_blocks = B, .n_schemes = S, .loss = loss, .time = time, .bits = bits,
                            .params = params, .wbits = wbits, .r = r, .max_time = max_time, .max_loss = INFINITY,
                            .tie = ties, .prune = 1,
                            .solver = (trial / 4) % 2 ? MX_ILP_SOLVER_GLPK : MX_ILP_SOLVER_AUTO};
        mx_ilp_solution sol = {.choice = choice};
        mx_error err = {MX_OK, ""};
        enum mx_status st = mx_ilp_solve(&p, &sol, &err);
        double expected = brute_force(B, S, loss, time, bits, params, wbits, max_time, ties, r);
        if (!isfinite(expected)) {
            CHECK(st == MX_ERR_INFEASIBLE, "trial %d: expected infeasible, got %d (%s)", trial, st, err.message);
        } else {
            CHECK(st == MX_OK, "trial %d: status %d (%s)", trial, st, err.message);
            if (st == MX_OK) {
                double got = objective(r, sol.loss, sol.time);
                CHECK(fabs(got - expected) <= TEST_OBJECTIVE_RTOL * fmax(expected, 1e-12),
                      "trial %d r=%g: objective %.17g, brute force %.17g", trial, r, got, expected);
                CHECK(sol.n_frontier >= 1 && sol.frontier != NULL, "trial %d: empty frontier", trial);
                for (int b = 0; b < B; b++)
                    for (int o = 0; o < b && ties; o++)
                        CHECK(tie[o] != tie[b] || choice[o] == choice[b], "trial %d: tie %d/%d split", trial, o, b);
            }
        }
        mx_ilp_solution_free(&sol);
    }
    return failures;
}

static int test_errors(void) {
    int failures = 0;
    double loss[4] = {1, 0.5, 1, 0.5}, time[4] = {1, 2, 1, 2}, bits[2] = {2, 4}, params[2] = {1, 1};
    int64_t choice[2];
    mx_ilp_problem base = {.n_blocks = 2, .n_schemes = 2, .loss = loss, .time = time, .bits = bits, .params = params,
                           .wbits = 3, .r = 0.5, .max_time = INFINITY, .max_loss = INFINITY, .prune = 1};
    mx_ilp_solution sol = {.choice = choice};
    mx_error err = {MX_OK, ""};

    CHECK(mx_ilp_solve(NULL, &sol, &err) == MX_ERR_INVALID_ARG, "NULL problem");
    CHECK(mx_ilp_solve(&base, NULL, &err) == MX_ERR_INVALID_ARG, "NULL solution");
    mx_ilp_problem p = base;
    p.r = 1.5;
    CHECK(mx_ilp_solve(&p, &sol, &err) == MX_ERR_INVALID_ARG && strstr(err.message, "r=1.5"), "r: %s", err.message);
    p = base, p.r = NAN;
    CHECK(mx_ilp_solve(&p, &sol, &err) == MX_ERR_INVALID_ARG, "r NaN");
    double nan_loss[4] = {1, NAN, 1, 1};
    p = base, p.loss = nan_loss;
    CHECK(mx_ilp_solve(&p, &sol, &err) == MX_ERR_NONFINITE && strstr(err.message, "loss[0, 1]"), "NaN: %s",
          err.message);
    double neg_params[2] = {1, -1};
    p = base, p.params = neg_params;
    CHECK(mx_ilp_solve(&p, &sol, &err) == MX_ERR_INVALID_ARG && strstr(err.message, "params[1]"), "params: %s",
          err.message);
    double zero_params[2] = {0, 0};
    p = base, p.params = zero_params;
    CHECK(mx_ilp_solve(&p, &sol, &err) == MX_ERR_INVALID_ARG, "zero params");
    int64_t bad_tie[2] = {0, -3};
    p = base, p.tie = bad_tie;
    CHECK(mx_ilp_solve(&p, &sol, &err) == MX_ERR_INVALID_ARG && strstr(err.message, "tie[1]=-3"), "tie: %s",
          err.message);
    p = base, p.wbits = 1.0;
    CHECK(mx_ilp_solve(&p, &sol, &err) == MX_ERR_INFEASIBLE &&
              strstr(err.message, "smallest feasible budget is wbits=2"), "budget: %s", err.message);
    double act_bits[2] = {8, 16};
    p = base, p.act_bits = act_bits, p.abits = 4;
    CHECK(mx_ilp_solve(&p, &sol, &err) == MX_ERR_INFEASIBLE && strstr(err.message, "abits=8"), "abits: %s",
          err.message);
    p = base, p.max_time = 1.0;
    CHECK(mx_ilp_solve(&p, &sol, &err) == MX_ERR_INFEASIBLE &&
              strstr(err.message, "smallest feasible max_time under the bit budget is 2"), "max_time: %s",
          err.message);
    double forbidden[4] = {INFINITY, INFINITY, 1, 1};
    p = base, p.loss = forbidden;
    CHECK(mx_ilp_solve(&p, &sol, &err) == MX_ERR_INFEASIBLE && strstr(err.message, "block 0 has no allowed"),
          "forbidden: %s", err.message);
    p = base, p.n_blocks = 0;
    CHECK(mx_ilp_solve(&p, &sol, &err) == MX_OK && sol.n_frontier == 0, "empty problem");
    p = base, p.r = 1.0, p.wbits = 4;
    CHECK(mx_ilp_solve(&p, &sol, &err) == MX_OK && choice[0] == 1 && choice[1] == 1 && sol.loss == 1.0,
          "r=1 picks the 4-bit scheme everywhere: %lld %lld (%s)", (long long)choice[0], (long long)choice[1],
          err.message);
    mx_ilp_solution_free(&sol);
    mx_ilp_solution_free(&sol); /* idempotent */
    mx_ilp_solution_free(NULL);
    return failures;
}

int mx_test_ilp(void) {
    int failures = test_random_vs_brute_force() + test_errors();
    /* The driver owns this thread: release GLPK's per-thread environment so valgrind sees no leak.  (The library
     * itself never does this on the normal path: see mx_ilp.h.) */
    glp_free_env();
    return failures;
}
