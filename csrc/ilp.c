/* ilp.c — the GLPK scheme allocator (problem statement, exactness argument and GLPK state: mx_ilp.h).
 *
 * Pipeline of mx_ilp_solve:
 *   validate -> merge tie groups (a group is one variable set: summed loss/time/params) -> drop dominated
 *   (group, scheme) columns -> cheap infeasibility checks of the separable budgets -> build one GLPK problem ->
 *   solve the MILPs the objective needs (lexicographic ends, then the dichotomic search) by changing only
 *   objective coefficients and row bounds -> map the best group choice back to blocks.
 *
 * Rows of the GLPK problem: one equality row per tie group (sum_s x = 1), the weight budget row, the activation
 * budget row (optional), the time row and the loss row (free unless max_time / max_loss bound it).
 * Coefficients are normalised (budget rows by sum params, time and loss by their scale) so that every row and the
 * objective are O(1), which is where GLPK's absolute-ish tolerances (1e-7 * (1 + |value|)) are meaningful. */
#include "mx_ilp.h"

#include <glpk.h>
#include <math.h>
#include <setjmp.h>
#include <stdlib.h>
#include <string.h>

/* How often a hard row is tightened after GLPK returned an assignment that violates it beyond our tolerance. */
#define ILP_MAX_TIGHTEN 8
/* GLPK's branch-and-bound prune tolerance, kept below MX_ILP_EPS so that our epsilon is the binding one. */
#define ILP_GLPK_TOL_OBJ 1e-9

typedef struct ilp_point {
    double loss, time; /* original units, block-order sums */
    double l, t;       /* normalised: loss / loss_scale, time / time_scale */
} ilp_point;

/* One MILP request: objective weights, the upper bounds of the time/loss rows (original units, +inf = none; checked
 * on the returned assignment), and which budget rows are active. */
typedef struct ilp_request {
    double w_loss, w_time, w_wbits;
    double time_hard, loss_hard;
    int use_budget, use_act;
} ilp_request;

typedef struct ilp_model {
    const mx_ilp_problem *p;
    int64_t n_groups;
    int64_t *group_of_block; /* [n_blocks] */
    int64_t *first_block;    /* [n_groups] the first block of each group (messages) */
    double *g_loss, *g_time; /* [n_groups, n_schemes] summed over the group; +inf = not allowed */
    double *g_params;        /* [n_groups] */
    double *g_wcost, *g_acost; /* [n_groups, n_schemes] sum params * (activation) bits; g_acost NULL if unused */
    double params_total;
    double loss_scale, time_scale;
    double loss_upper, time_upper; /* normalised sum over groups of the largest allowed value (>= 1e-300) */
    int n_cols;
    int *col_group, *col_scheme; /* [n_cols + 1], GLPK's 1-based column index */
    glp_prob *lp;
    int row_budget, row_act, row_time, row_loss;
    int64_t *choice_g;       /* [n_groups] scratch: group -> scheme of the last MILP */
    int64_t *best_g;         /* [n_groups] the best assignment so far */
    double *frontier;        /* [2 * frontier_cap] */
    int64_t n_frontier, frontier_cap;
    double *segments;        /* [4 * segment_cap] stack of (lA, tA, lB, tB) */
    int64_t n_segments, segment_cap;
    int64_t n_milps;
    int use_knapsack;        /* problem->solver allows the specialised search */
    double *wcol, *obj_scratch; /* [n_cols + 1] budget share per column, objective scratch */
    jmp_buf on_glpk_error;
} ilp_model;

static void glpk_error_hook(void *info) { longjmp(((ilp_model *)info)->on_glpk_error, 1); }

/* Bits charged per weight of block b under scheme s (bits is [n_schemes] or [n_blocks, n_schemes]). */
static double bits_of(const mx_ilp_problem *p, int64_t b, int64_t s) {
    return p->bits_per_block ? p->bits[b * p->n_schemes + s] : p->bits[s];
}

static int is_allowed(double loss, double time) { return loss != INFINITY && time != INFINITY; }

/* r log l + (1 - r) log t with log 0 = -inf (the log of g = L^r T^(1-r)). */
static double log_objective(double r, double l, double t) {
    double a = r > 0 ? r * (l > 0 ? log(l) : -INFINITY) : 0.0;
    double b = r < 1 ? (1 - r) * (t > 0 ? log(t) : -INFINITY) : 0.0;
    return a + b;
}

// loss, time: [n_blocks, n_schemes]; bits, act_bits: [n_schemes]; params, tie: [n_blocks]
static enum mx_status validate(const mx_ilp_problem *p, mx_error *err) {
    if (!p) return mx_error_set(err, MX_ERR_INVALID_ARG, "problem is NULL");
    if (p->n_blocks < 0) return mx_error_set(err, MX_ERR_INVALID_ARG, "n_blocks=%lld < 0", (long long)p->n_blocks);
    if (p->n_schemes < 1 || p->n_schemes > 100000)
        return mx_error_set(err, MX_ERR_INVALID_ARG, "n_schemes=%lld must be in [1, 100000]",
                            (long long)p->n_schemes);
    if (!p->bits) return mx_error_set(err, MX_ERR_INVALID_ARG, "bits is NULL");
    if (!(p->r >= 0.0 && p->r <= 1.0)) return mx_error_set(err, MX_ERR_INVALID_ARG, "r=%g must be in [0, 1]", p->r);
    if (!isfinite(p->wbits) || p->wbits <= 0)
        return mx_error_set(err, isfinite(p->wbits) ? MX_ERR_INVALID_ARG : MX_ERR_NONFINITE,
                            "wbits=%g must be finite and > 0", p->wbits);
    if (p->act_bits && (!isfinite(p->abits) || p->abits <= 0))
        return mx_error_set(err, isfinite(p->abits) ? MX_ERR_INVALID_ARG : MX_ERR_NONFINITE,
                            "abits=%g must be finite and > 0", p->abits);
    if (isnan(p->max_time) || p->max_time < 0)
        return mx_error_set(err, MX_ERR_INVALID_ARG, "max_time=%g must be >= 0 (or +inf for no limit)", p->max_time);
    if (isnan(p->max_loss) || p->max_loss < 0)
        return mx_error_set(err, MX_ERR_INVALID_ARG, "max_loss=%g must be >= 0 (or +inf for no limit)", p->max_loss);
    int64_t n_bits = p->bits_per_block ? p->n_blocks * p->n_schemes : p->n_schemes;
    for (int64_t i = 0; i < n_bits; i++)
        if (!isfinite(p->bits[i]) || p->bits[i] <= 0)
            return mx_error_set(err, MX_ERR_INVALID_ARG, "bits[%lld]=%g (flat index) must be finite and > 0",
                                (long long)i, p->bits[i]);
    for (int64_t s = 0; s < p->n_schemes; s++) {
        if (p->act_bits && (!isfinite(p->act_bits[s]) || p->act_bits[s] <= 0))
            return mx_error_set(err, MX_ERR_INVALID_ARG, "act_bits[%lld]=%g must be finite and > 0", (long long)s,
                                p->act_bits[s]);
    }
    if (p->n_blocks == 0) return MX_OK;
    if (!p->loss || !p->time || !p->params)
        return mx_error_set(err, MX_ERR_INVALID_ARG, "loss, time and params must not be NULL");
    if (p->n_blocks > (int64_t)1 << 40 || p->n_blocks * p->n_schemes > 100000000)
        return mx_error_set(err, MX_ERR_INVALID_ARG, "n_blocks=%lld x n_schemes=%lld is too large",
                            (long long)p->n_blocks, (long long)p->n_schemes);
    double total = 0;
    for (int64_t b = 0; b < p->n_blocks; b++) {
        if (!isfinite(p->params[b]) || p->params[b] < 0)
            return mx_error_set(err, MX_ERR_INVALID_ARG, "params[%lld]=%g must be finite and >= 0", (long long)b,
                                p->params[b]);
        total += p->params[b];
        if (p->tie && p->tie[b] < 0)
            return mx_error_set(err, MX_ERR_INVALID_ARG, "tie[%lld]=%lld: tie group ids must be >= 0", (long long)b,
                                (long long)p->tie[b]);
        for (int64_t s = 0; s < p->n_schemes; s++) {
            double l = p->loss[b * p->n_schemes + s], t = p->time[b * p->n_schemes + s];
            if (isnan(l) || l < 0)
                return mx_error_set(err, isnan(l) ? MX_ERR_NONFINITE : MX_ERR_INVALID_ARG,
                                    "loss[%lld, %lld]=%g must be >= 0 (+inf = not allowed)", (long long)b,
                                    (long long)s, l);
            if (isnan(t) || t < 0)
                return mx_error_set(err, isnan(t) ? MX_ERR_NONFINITE : MX_ERR_INVALID_ARG,
                                    "time[%lld, %lld]=%g must be >= 0 (+inf = not allowed)", (long long)b,
                                    (long long)s, t);
        }
    }
    if (!(total > 0) || !isfinite(total))
        return mx_error_set(err, MX_ERR_INVALID_ARG, "sum of params=%g must be finite and > 0", total);
    return MX_OK;
}

static void model_free(ilp_model *m) {
    if (!m) return;
    if (m->lp) glp_delete_prob(m->lp);
    free(m->group_of_block);
    free(m->first_block);
    free(m->g_loss);
    free(m->g_time);
    free(m->g_params);
    free(m->g_wcost);
    free(m->g_acost);
    free(m->col_group);
    free(m->col_scheme);
    free(m->choice_g);
    free(m->best_g);
    free(m->frontier);
    free(m->segments);
    free(m->wcol);
    free(m->obj_scratch);
    free(m);
}

static int cmp_tie(const void *a, const void *b, void *ctx) {
    const int64_t *tie = ctx;
    int64_t x = *(const int64_t *)a, y = *(const int64_t *)b;
    if (tie[x] != tie[y]) return tie[x] < tie[y] ? -1 : 1;
    return x < y ? -1 : x > y;
}

/* Groups numbered in order of their first block (deterministic, independent of the id values). */
// group_of_block: [n_blocks] out
static enum mx_status build_groups(ilp_model *m, mx_error *err) {
    const mx_ilp_problem *p = m->p;
    int64_t nb = p->n_blocks, ns = p->n_schemes;
    m->group_of_block = malloc(sizeof(int64_t) * nb);
    m->first_block = malloc(sizeof(int64_t) * nb);
    if (!m->group_of_block || !m->first_block) return mx_error_set(err, MX_ERR_NOMEM, "out of memory (groups)");
    if (!p->tie) {
        for (int64_t b = 0; b < nb; b++) m->group_of_block[b] = m->first_block[b] = b;
        m->n_groups = nb;
    } else {
        int64_t *order = malloc(sizeof(int64_t) * nb);
        if (!order) return mx_error_set(err, MX_ERR_NOMEM, "out of memory (tie order)");
        for (int64_t b = 0; b < nb; b++) order[b] = b;
        qsort_r(order, (size_t)nb, sizeof(int64_t), cmp_tie, (void *)p->tie);
        /* representative of each run of equal ids = its smallest block, which is first in the sorted run */
        int64_t *rep = m->first_block; /* borrowed as scratch, rewritten below */
        for (int64_t i = 0; i < nb; i++)
            rep[order[i]] = (i > 0 && p->tie[order[i - 1]] == p->tie[order[i]]) ? rep[order[i - 1]] : order[i];
        free(order);
        /* number groups by block order: a representative precedes every other block of its group */
        int64_t n = 0;
        for (int64_t b = 0; b < nb; b++)
            m->group_of_block[b] = rep[b] == b ? n++ : m->group_of_block[rep[b]];
        n = 0;
        for (int64_t b = 0; b < nb; b++)
            if (m->group_of_block[b] == n) m->first_block[n++] = b;
        m->n_groups = n;
    }
    int64_t ng = m->n_groups;
    m->g_loss = calloc((size_t)(ng * ns), sizeof(double));
    m->g_time = calloc((size_t)(ng * ns), sizeof(double));
    m->g_params = calloc((size_t)ng, sizeof(double));
    m->g_wcost = calloc((size_t)(ng * ns), sizeof(double));
    m->g_acost = p->act_bits ? calloc((size_t)(ng * ns), sizeof(double)) : NULL;
    if (!m->g_loss || !m->g_time || !m->g_params || !m->g_wcost || (p->act_bits && !m->g_acost)) return mx_error_set(err, MX_ERR_NOMEM, "out of memory (groups)");
    for (int64_t b = 0; b < nb; b++) {
        int64_t g = m->group_of_block[b];
        m->g_params[g] += p->params[b];
        m->params_total += p->params[b];
        for (int64_t s = 0; s < ns; s++) {
            m->g_loss[g * ns + s] += p->loss[b * ns + s]; /* +inf stays +inf: a tied block forbids the scheme */
            m->g_time[g * ns + s] += p->time[b * ns + s];
            m->g_wcost[g * ns + s] += p->params[b] * bits_of(p, b, s);
            if (p->act_bits) m->g_acost[g * ns + s] += p->params[b] * p->act_bits[s];
        }
    }
    return MX_OK;
}

/* Scale of L (or T): sum over groups of the smallest allowed value, but at least 1e-3 * sum of the mean allowed
 * value, and 1 when everything is 0.  A scale at or below the optimum keeps GLPK's tolerances relative. */
// values: [n_groups, n_schemes]
static double value_scale(const ilp_model *m, const double *values) {
    int64_t ns = m->p->n_schemes;
    double sum_min = 0, sum_mean = 0;
    for (int64_t g = 0; g < m->n_groups; g++) {
        double mn = INFINITY, sum = 0;
        int count = 0;
        for (int64_t s = 0; s < ns; s++) {
            if (!is_allowed(m->g_loss[g * ns + s], m->g_time[g * ns + s])) continue;
            double v = values[g * ns + s];
            mn = v < mn ? v : mn;
            sum += v;
            count++;
        }
        if (count) {
            sum_min += mn;
            sum_mean += sum / count;
        }
    }
    double scale = fmax(sum_min, 1e-3 * sum_mean);
    return scale > 0 && isfinite(scale) ? scale : 1.0;
}

/* Sum over groups of the largest allowed value: an upper bound of L (or T) of any assignment. */
// values: [n_groups, n_schemes]
static double upper_sum(const ilp_model *m, const double *values) {
    int64_t ns = m->p->n_schemes;
    double total = 0;
    for (int64_t g = 0; g < m->n_groups; g++) {
        double mx = 0;
        for (int64_t s = 0; s < ns; s++)
            if (is_allowed(m->g_loss[g * ns + s], m->g_time[g * ns + s])) mx = fmax(mx, values[g * ns + s]);
        total += mx;
    }
    return total;
}

/* True if scheme s of group g is dominated: another allowed scheme is no worse in bits, activation bits, loss
 * and time, and strictly better in one (or equal in all and of smaller index).  Dropping it keeps the optimum. */
static int dominated(const ilp_model *m, int64_t g, int64_t s) {
    const mx_ilp_problem *p = m->p;
    int64_t ns = p->n_schemes;
    double l = m->g_loss[g * ns + s], t = m->g_time[g * ns + s];
    for (int64_t o = 0; o < ns; o++) {
        if (o == s) continue;
        double lo = m->g_loss[g * ns + o], to = m->g_time[g * ns + o];
        if (!is_allowed(lo, to)) continue;
        double w = m->g_wcost[g * ns + s], wo = m->g_wcost[g * ns + o];
        double ab = p->act_bits ? m->g_acost[g * ns + s] : 0, abo = p->act_bits ? m->g_acost[g * ns + o] : 0;
        if (wo <= w && abo <= ab && lo <= l && to <= t) {
            int strictly = wo < w || abo < ab || lo < l || to < t;
            if (strictly || o < s) return 1;
        }
    }
    return 0;
}

/* The smallest achievable sum_b params_b * bits / sum params over allowed schemes (separable in the groups). */
// cost: [n_groups, n_schemes] (g_wcost or g_acost)
static double smallest_average(const ilp_model *m, const double *cost) {
    int64_t ns = m->p->n_schemes;
    double total = 0;
    for (int64_t g = 0; g < m->n_groups; g++) {
        double best = INFINITY;
        for (int64_t s = 0; s < ns; s++)
            if (is_allowed(m->g_loss[g * ns + s], m->g_time[g * ns + s]))
                best = fmin(best, cost[g * ns + s]);
        total += best;
    }
    return total / m->params_total;
}

static enum mx_status build_lp(ilp_model *m, mx_error *err) {
    const mx_ilp_problem *p = m->p;
    int64_t ng = m->n_groups, ns = p->n_schemes;
    int64_t max_cols = ng * ns;
    if (max_cols > 2000000000 / 6)
        return mx_error_set(err, MX_ERR_INVALID_ARG, "%lld tie groups x %lld schemes is too large for GLPK",
                            (long long)ng, (long long)ns);
    m->col_group = malloc(sizeof(int) * (size_t)(max_cols + 1));
    m->col_scheme = malloc(sizeof(int) * (size_t)(max_cols + 1));
    int *ia = malloc(sizeof(int) * (size_t)(5 * max_cols + 1));
    int *ja = malloc(sizeof(int) * (size_t)(5 * max_cols + 1));
    double *ar = malloc(sizeof(double) * (size_t)(5 * max_cols + 1));
    if (!m->col_group || !m->col_scheme || !ia || !ja || !ar) {
        free(ia), free(ja), free(ar);
        return mx_error_set(err, MX_ERR_NOMEM, "out of memory (GLPK matrix of %lld columns)", (long long)max_cols);
    }
    int n_cols = 0;
    for (int64_t g = 0; g < ng; g++)
        for (int64_t s = 0; s < ns; s++)
            if (is_allowed(m->g_loss[g * ns + s], m->g_time[g * ns + s]) && !dominated(m, g, s)) {
                n_cols++;
                m->col_group[n_cols] = (int)g;
                m->col_scheme[n_cols] = (int)s;
            }
    m->n_cols = n_cols;

    glp_prob *lp = m->lp = glp_create_prob();
    glp_set_obj_dir(lp, GLP_MIN);
    int n_rows = (int)ng;
    m->row_budget = ++n_rows;
    m->row_act = p->act_bits ? ++n_rows : 0;
    m->row_time = ++n_rows;
    m->row_loss = ++n_rows;
    glp_add_rows(lp, n_rows);
    for (int g = 1; g <= (int)ng; g++) glp_set_row_bnds(lp, g, GLP_FX, 1.0, 1.0);
    glp_set_row_bnds(lp, m->row_time, GLP_FR, 0, 0);
    glp_set_row_bnds(lp, m->row_loss, GLP_FR, 0, 0);
    glp_set_row_bnds(lp, m->row_budget, GLP_FR, 0, 0);
    if (m->row_act) glp_set_row_bnds(lp, m->row_act, GLP_FR, 0, 0);
    if (n_cols > 0) glp_add_cols(lp, n_cols);
    int nz = 0;
    for (int j = 1; j <= n_cols; j++) {
        int64_t g = m->col_group[j], s = m->col_scheme[j];
        glp_set_col_kind(lp, j, GLP_BV);
        double wc = m->g_wcost[g * ns + s] / m->params_total;
        nz++, ia[nz] = (int)g + 1, ja[nz] = j, ar[nz] = 1.0;
        if (wc > 0) nz++, ia[nz] = m->row_budget, ja[nz] = j, ar[nz] = wc;
        if (m->row_act && m->g_acost[g * ns + s] > 0)
            nz++, ia[nz] = m->row_act, ja[nz] = j, ar[nz] = m->g_acost[g * ns + s] / m->params_total;
        double t = m->g_time[g * ns + s] / m->time_scale, l = m->g_loss[g * ns + s] / m->loss_scale;
        if (t != 0) nz++, ia[nz] = m->row_time, ja[nz] = j, ar[nz] = t;
        if (l != 0) nz++, ia[nz] = m->row_loss, ja[nz] = j, ar[nz] = l;
    }
    glp_load_matrix(lp, nz, ia, ja, ar);
    m->wcol = malloc(sizeof(double) * (size_t)(n_cols + 1));
    m->obj_scratch = malloc(sizeof(double) * (size_t)(n_cols + 1));
    if (!m->wcol || !m->obj_scratch) {
        free(ia), free(ja), free(ar);
        return mx_error_set(err, MX_ERR_NOMEM, "out of memory (columns)");
    }
    for (int j = 1; j <= n_cols; j++)
        m->wcol[j] = m->g_wcost[m->col_group[j] * ns + m->col_scheme[j]] / m->params_total;
    free(ia), free(ja), free(ar);
    return MX_OK;
}

/* Sums of the assignment `choice_g` in original units, accumulated over blocks in block order. */
// choice_g: [n_groups]
static void evaluate(const ilp_model *m, const int64_t *choice_g, double *loss, double *time, double *wbits_sum,
                     double *abits_sum) {
    const mx_ilp_problem *p = m->p;
    int64_t ns = p->n_schemes;
    double l = 0, t = 0, w = 0, a = 0;
    for (int64_t b = 0; b < p->n_blocks; b++) {
        int64_t s = choice_g[m->group_of_block[b]];
        l += p->loss[b * ns + s];
        t += p->time[b * ns + s];
        w += p->params[b] * bits_of(p, b, s);
        if (p->act_bits) a += p->params[b] * p->act_bits[s];
    }
    *loss = l, *time = t, *wbits_sum = w, *abits_sum = a;
}

static void set_upper(glp_prob *lp, int row, double ub) {
    if (ub == INFINITY) glp_set_row_bnds(lp, row, GLP_FR, 0, 0);
    else glp_set_row_bnds(lp, row, GLP_UP, 0, ub);
}

/* ---- exact multiple-choice knapsack branch and bound (used when the weight budget is the only constraint) ----
 *
 * GLPK's simplex-based branch and bound needs about 1 ms per node and ~600 nodes for one DeepSeek-V2-Lite layer
 * (132 groups x 10 schemes): 0.7 s per MILP, minutes per model.  With one budget row the LP relaxation of a node
 * is a greedy walk over the groups' convex-hull segments sorted by efficiency (Sinha-Zoltners), a few
 * microseconds.  Before branching, the root's Lagrangian bound (multiplier = the LP's break efficiency) removes
 * every item whose reduced cost alone lifts the bound to the incumbent (rounded LP), repeatedly; what is left is
 * a small core, searched depth first (branch on the group the LP splits, one child per remaining item).
 * Pruning: bound >= best - MCKP_PRUNE_RTOL * (1 + |best|), i.e. exact up to 1e-12 relative, tighter than GLPK.
 * A search beyond MCKP_NODE_LIMIT nodes gives up and the MILP goes to GLPK. */
#define MCKP_PRUNE_RTOL 1e-12
#define MCKP_NODE_LIMIT 20000000LL
#define MCKP_REDUCE_ROUNDS 8

typedef struct mckp_seg {
    double ratio;  /* objective decrease per unit of budget (> 0) */
    double dw, dc; /* budget increase (> 0) and objective change (< 0) from item `from` to item `to` */
    int group, from, to;
} mckp_seg;

typedef struct mckp {
    int n_groups, n_cols;
    const double *wcol, *ccol; /* [n_cols + 1] budget share and objective per GLPK column */
    const int *col_group;      /* [n_cols + 1] */
    char *alive;               /* [n_cols + 1] column not eliminated */
    int *start;          /* [n_groups + 1] item offsets; items of a group by increasing w, strictly decreasing c */
    double *w, *c;       /* [n_items] */
    int *col;            /* [n_items] GLPK column of the item */
    int *hull;           /* [n_items] scratch */
    mckp_seg *segs;      /* hull segments of every group, by decreasing ratio */
    int n_segs;
    int *fixed;          /* [n_groups] item fixed by branching, or -1 */
    int *core;           /* [n_groups] groups with two or more items (the others are constants) */
    int n_core;
    int *lp_item;        /* [n_groups] item the node's LP takes in each free group */
    int *best_col;       /* [n_groups] incumbent, as GLPK columns */
    double *group_min;   /* [n_groups] scratch of the reduction */
    int *order;          /* [n_items] scratch for child ordering */
    double best_value, cap, fixed_w, fixed_c, free_w, free_c, lambda;
    long long nodes;
    int aborted, found;
} mckp;

static int cmp_seg(const void *x, const void *y) {
    const mckp_seg *a = x, *b = y;
    if (a->ratio != b->ratio) return a->ratio > b->ratio ? -1 : 1;
    if (a->group != b->group) return a->group < b->group ? -1 : 1;
    return (a->from > b->from) - (a->from < b->from);
}

static void mckp_free(mckp *k) {
    free(k->alive), free(k->start), free(k->w), free(k->c), free(k->col), free(k->hull), free(k->segs);
    free(k->fixed), free(k->lp_item), free(k->best_col), free(k->order), free(k->group_min), free(k->core);
}

/* (Re)build items and hull segments from the alive columns (columns are stored group by group, see build_lp). */
static void mckp_build(mckp *k) {
    int items = 0, j = 1;
    k->n_segs = 0, k->free_w = 0, k->free_c = 0, k->n_core = 0;
    for (int g = 0; g < k->n_groups; g++) {
        k->start[g] = items;
        int n = 0;
        for (; j <= k->n_cols && k->col_group[j] == g; j++) {
            if (!k->alive[j]) continue;
            int at = items + n++; /* insertion sort by (w, c): a handful of items per group */
            k->col[at] = j, k->w[at] = k->wcol[j], k->c[at] = k->ccol[j];
            while (at > items && (k->w[at - 1] > k->w[at] || (k->w[at - 1] == k->w[at] && k->c[at - 1] > k->c[at]))) {
                double tw = k->w[at], tc = k->c[at];
                int tcol = k->col[at];
                k->w[at] = k->w[at - 1], k->c[at] = k->c[at - 1], k->col[at] = k->col[at - 1];
                k->w[at - 1] = tw, k->c[at - 1] = tc, k->col[at - 1] = tcol, at--;
            }
        }
        int kept = items;
        for (int a = items; a < items + n; a++) /* heavier items must be strictly better (else dominated) */
            if (kept == items || k->c[a] < k->c[kept - 1])
                k->w[kept] = k->w[a], k->c[kept] = k->c[a], k->col[kept] = k->col[a], kept++;
            else
                k->alive[k->col[a]] = 0; /* dominated by a lighter, no worse item that stays */
        int h = 0; /* lower convex hull (monotone chain), collinear points dropped */
        for (int a = items; a < kept; a++) {
            while (h >= 2) {
                int o = k->hull[h - 2], b = k->hull[h - 1];
                double cross = (k->w[b] - k->w[o]) * (k->c[a] - k->c[o]) - (k->c[b] - k->c[o]) * (k->w[a] - k->w[o]);
                if (cross <= 0) h--;
                else break;
            }
            k->hull[h++] = a;
        }
        for (int t = 0; t + 1 < h; t++) {
            mckp_seg *sg = &k->segs[k->n_segs++];
            sg->dw = k->w[k->hull[t + 1]] - k->w[k->hull[t]], sg->dc = k->c[k->hull[t + 1]] - k->c[k->hull[t]];
            sg->ratio = -sg->dc / sg->dw, sg->group = g, sg->from = k->hull[t], sg->to = k->hull[t + 1];
        }
        k->free_w += k->w[items], k->free_c += k->c[items];
        k->fixed[g] = -1;
        k->lp_item[g] = items;
        if (kept - items > 1) k->core[k->n_core++] = g;
        items = kept;
    }
    k->start[k->n_groups] = items;
    qsort(k->segs, (size_t)k->n_segs, sizeof(mckp_seg), cmp_seg);
}

/* The node's LP bound; sets *frac to the split group (-1 if the LP is integral), k->lambda to the LP's budget
 * multiplier (the split segment's efficiency, 0 if the budget does not bind) and lp_item of free groups. */
static double mckp_bound(mckp *k, int *frac) {
    *frac = -1;
    k->lambda = 0;
    double room = k->cap - k->fixed_w - k->free_w;
    if (room < 0) return INFINITY;
    double bound = k->fixed_c + k->free_c;
    for (int q = 0; q < k->n_core; q++) k->lp_item[k->core[q]] = k->start[k->core[q]]; /* others never move */
    for (int i = 0; i < k->n_segs; i++) {
        const mckp_seg *sg = &k->segs[i];
        if (k->fixed[sg->group] >= 0) continue;
        if (sg->dw <= room) {
            room -= sg->dw, bound += sg->dc, k->lp_item[sg->group] = sg->to;
        } else {
            bound += sg->dc * (room / sg->dw);
            *frac = sg->group;
            k->lambda = sg->ratio;
            break;
        }
    }
    return bound;
}

static void mckp_take(mckp *k, const int *item_of_group, double value) {
    for (int g = 0; g < k->n_groups; g++) k->best_col[g] = k->col[item_of_group[g]];
    k->best_value = value, k->found = 1;
}

/* Root incumbent: the LP's integral part (the split group on its lighter item), then greedily every further hull
 * step that still fits, in efficiency order.  Feasible by construction. */
static void mckp_round(mckp *k) {
    double room = k->cap - k->free_w, value = k->free_c;
    int *item = k->order; /* n_groups <= n_items */
    for (int g = 0; g < k->n_groups; g++) item[g] = k->start[g];
    for (int i = 0; i < k->n_segs; i++) {
        const mckp_seg *sg = &k->segs[i];
        if (item[sg->group] != sg->from || sg->dw > room) continue;
        room -= sg->dw, value += sg->dc, item[sg->group] = sg->to;
    }
    if (!k->found || value < k->best_value) mckp_take(k, item, value);
}

static int mckp_prunes(const mckp *k, double bound) {
    return k->found && bound >= k->best_value - MCKP_PRUNE_RTOL * (1 + fabs(k->best_value));
}

static void mckp_search(mckp *k) {
    if (k->aborted) return;
    if (++k->nodes > MCKP_NODE_LIMIT) {
        k->aborted = 1;
        return;
    }
    int frac;
    double bound = mckp_bound(k, &frac);
    if (bound == INFINITY || mckp_prunes(k, bound)) return;
    if (frac < 0) { /* integral LP: optimal for this node */
        for (int q = 0; q < k->n_core; q++)
            if (k->fixed[k->core[q]] >= 0) k->lp_item[k->core[q]] = k->fixed[k->core[q]];
        mckp_take(k, k->lp_item, bound);
        return;
    }
    /* children: the split group's item the LP holds first, then by distance from it (its neighbours) */
    int first = k->start[frac], last = k->start[frac + 1], held = k->lp_item[frac], n = 0;
    int *order = k->order + first;
    for (int d = 0; d < last - first; d++) {
        if (held + d < last) order[n++] = held + d;
        if (d > 0 && held - d >= first) order[n++] = held - d;
    }
    k->free_w -= k->w[first], k->free_c -= k->c[first];
    for (int i = 0; i < n && !k->aborted; i++) {
        int item = order[i];
        k->fixed[frac] = item;
        k->fixed_w += k->w[item], k->fixed_c += k->c[item];
        mckp_search(k);
        k->fixed_w -= k->w[item], k->fixed_c -= k->c[item];
    }
    k->fixed[frac] = -1;
    k->free_w += k->w[first], k->free_c += k->c[first];
}

/* Lagrangian reduction at the root: with multiplier lambda, every solution using item i of group g costs at least
 * LB + rc_i, LB = sum_g min_j (c_j + lambda w_j) - lambda cap, rc_i = c_i + lambda w_i - min_j (c_j + lambda w_j).
 * Items with LB + rc_i >= incumbent cannot improve on it and are removed.  Returns the number removed, or -1 when
 * a whole group goes (then nothing beats the incumbent). */
static int mckp_reduce(mckp *k) {
    double lambda = k->lambda, lb = -lambda * k->cap;
    for (int g = 0; g < k->n_groups; g++) {
        double mn = INFINITY;
        for (int i = k->start[g]; i < k->start[g + 1]; i++) mn = fmin(mn, k->c[i] + lambda * k->w[i]);
        k->group_min[g] = mn;
        lb += mn;
    }
    double cutoff = k->best_value - MCKP_PRUNE_RTOL * (1 + fabs(k->best_value));
    int removed = 0;
    for (int g = 0; g < k->n_groups; g++) {
        int left = 0;
        for (int i = k->start[g]; i < k->start[g + 1]; i++) {
            if (lb + (k->c[i] + lambda * k->w[i] - k->group_min[g]) >= cutoff) k->alive[k->col[i]] = 0, removed++;
            else left++;
        }
        if (!left) return -1;
    }
    return removed;
}

/* min sum c x s.t. sum w x <= cap, one column per group.  *status: 1 solved (choice in m->choice_g), 0 infeasible,
 * -1 gave up (node limit; the caller uses GLPK). */
// obj, wcol: [n_cols + 1] objective and budget share per GLPK column
static enum mx_status mckp_solve(ilp_model *m, const double *obj, const double *wcol, double cap, int *status,
                                 mx_error *err) {
    mckp k = {0};
    int G = (int)m->n_groups, n = m->n_cols;
    k.n_groups = G, k.n_cols = n, k.cap = cap, k.wcol = wcol, k.ccol = obj, k.col_group = m->col_group;
    k.alive = malloc((size_t)n + 1);
    k.start = calloc((size_t)G + 1, sizeof(int));
    k.w = malloc(sizeof(double) * (size_t)(n + 1)), k.c = malloc(sizeof(double) * (size_t)(n + 1));
    k.col = malloc(sizeof(int) * (size_t)(n + 1)), k.order = malloc(sizeof(int) * (size_t)(n + G + 1));
    k.hull = malloc(sizeof(int) * (size_t)(n + 1)), k.segs = malloc(sizeof(mckp_seg) * (size_t)(n + 1));
    k.fixed = malloc(sizeof(int) * (size_t)G), k.lp_item = malloc(sizeof(int) * (size_t)G);
    k.best_col = malloc(sizeof(int) * (size_t)G), k.group_min = malloc(sizeof(double) * (size_t)G);
    k.core = malloc(sizeof(int) * (size_t)G);
    if (!k.alive || !k.start || !k.w || !k.c || !k.col || !k.order || !k.hull || !k.segs || !k.fixed || !k.lp_item ||
        !k.best_col || !k.group_min || !k.core) {
        mckp_free(&k);
        return mx_error_set(err, MX_ERR_NOMEM, "out of memory (knapsack search of %d columns)", n);
    }
    memset(k.alive, 1, (size_t)n + 1);
    mckp_build(&k);
    int done = 0;
    for (int round = 0; round <= MCKP_REDUCE_ROUNDS && !done; round++) {
        int frac;
        double bound = mckp_bound(&k, &frac);
        if (bound == INFINITY) break; /* round 0: infeasible; later: nothing beats the incumbent */
        if (frac < 0) {               /* integral LP: optimal */
            if (!k.found || bound < k.best_value) mckp_take(&k, k.lp_item, bound);
            done = 1;
            break;
        }
        mckp_round(&k);
        if (mckp_prunes(&k, bound)) break;
        int removed = mckp_reduce(&k);
        if (removed < 0) done = 1;
        else if (removed == 0) break;
        else mckp_build(&k);
    }
    if (!done && k.found) mckp_search(&k); /* not found: the lightest choices already exceed the budget */
    m->n_milps++;
    if (k.aborted) *status = -1;
    else if (!k.found) *status = 0;
    else {
        *status = 1;
        for (int g = 0; g < G; g++) m->choice_g[g] = m->col_scheme[k.best_col[g]];
    }
    mckp_free(&k);
    return MX_OK;
}

/* Solve one MILP.  On success *feasible says whether a solution exists; if so it is in m->choice_g and *out. */
static enum mx_status solve_milp(ilp_model *m, const ilp_request *q, int *feasible, ilp_point *out, mx_error *err) {
    const mx_ilp_problem *p = m->p;
    int64_t ns = p->n_schemes;
    glp_prob *lp = m->lp;
    for (int j = 1; j <= m->n_cols; j++) {
        int64_t g = m->col_group[j], s = m->col_scheme[j];
        double c = 0;
        if (q->w_loss) c += q->w_loss * (m->g_loss[g * ns + s] / m->loss_scale);
        if (q->w_time) c += q->w_time * (m->g_time[g * ns + s] / m->time_scale);
        if (q->w_wbits) c += q->w_wbits * (m->g_wcost[g * ns + s] / m->params_total);
        glp_set_obj_coef(lp, j, c);
    }
    double wlimit = p->wbits * (1 + MX_ILP_LIMIT_RTOL), alimit = p->abits * (1 + MX_ILP_LIMIT_RTOL);
    double tlimit = q->time_hard * (1 + MX_ILP_LIMIT_RTOL), llimit = q->loss_hard * (1 + MX_ILP_LIMIT_RTOL);
    /* row upper bounds in normalised units; tightened below when GLPK's tolerance let a violation through */
    double w_ub = q->use_budget ? wlimit : INFINITY, a_ub = q->use_act && m->row_act ? alimit : INFINITY;
    double t_ub = tlimit / m->time_scale, l_ub = llimit / m->loss_scale;
    *feasible = 0;
    if (m->use_knapsack && q->use_budget && !(q->use_act && m->row_act) && tlimit == INFINITY &&
        llimit == INFINITY) {
        /* only the weight budget binds: the specialised search (GLPK only if it gives up or rounding bites) */
        int status = -1;
        for (int j = 1; j <= m->n_cols; j++) m->obj_scratch[j] = glp_get_obj_coef(lp, j);
        enum mx_status st = mckp_solve(m, m->obj_scratch, m->wcol, wlimit, &status, err);
        if (st != MX_OK || status == 0) return st;
        if (status == 1) {
            double wsum, asum;
            evaluate(m, m->choice_g, &out->loss, &out->time, &wsum, &asum);
            out->l = out->loss / m->loss_scale;
            out->t = out->time / m->time_scale;
            if (wsum / m->params_total <= wlimit) {
                *feasible = 1;
                return MX_OK;
            }
        }
    }
    glp_iocp parm;
    glp_init_iocp(&parm);
    parm.msg_lev = GLP_MSG_OFF;
    parm.presolve = GLP_ON;
    parm.tol_obj = ILP_GLPK_TOL_OBJ;
    for (int attempt = 0; attempt <= ILP_MAX_TIGHTEN; attempt++) {
        set_upper(lp, m->row_budget, w_ub);
        if (m->row_act) set_upper(lp, m->row_act, a_ub);
        set_upper(lp, m->row_time, t_ub);
        set_upper(lp, m->row_loss, l_ub);
        m->n_milps++;
        int ret = glp_intopt(lp, &parm);
        if (ret == GLP_ENOPFS) return MX_OK; /* the presolver proved infeasibility */
        if (ret != 0)
            return mx_error_set(err, MX_ERR_SOLVER, "GLPK glp_intopt failed with return code %d (%d groups, %d "
                                "columns)", ret, (int)m->n_groups, m->n_cols);
        int status = glp_mip_status(lp);
        if (status == GLP_NOFEAS) return MX_OK;
        if (status != GLP_OPT)
            return mx_error_set(err, MX_ERR_SOLVER, "GLPK glp_mip_status=%d after glp_intopt (expected GLP_OPT=%d)",
                                status, GLP_OPT);
        for (int64_t g = 0; g < m->n_groups; g++) m->choice_g[g] = -1;
        for (int j = 1; j <= m->n_cols; j++)
            if (glp_mip_col_val(lp, j) > 0.5) {
                int64_t g = m->col_group[j];
                if (m->choice_g[g] >= 0)
                    return mx_error_set(err, MX_ERR_SOLVER, "GLPK returned two schemes for tie group %lld",
                                        (long long)g);
                m->choice_g[g] = m->col_scheme[j];
            }
        for (int64_t g = 0; g < m->n_groups; g++)
            if (m->choice_g[g] < 0)
                return mx_error_set(err, MX_ERR_SOLVER, "GLPK returned no scheme for tie group %lld", (long long)g);
        double wsum, asum;
        evaluate(m, m->choice_g, &out->loss, &out->time, &wsum, &asum);
        out->l = out->loss / m->loss_scale;
        out->t = out->time / m->time_scale;
        double wavg = wsum / m->params_total, aavg = asum / m->params_total;
        int violated = 0;
        /* tighten by the excess plus GLPK's primal tolerance so the next solve cannot return it again */
        if (q->use_budget && wavg > wlimit) w_ub -= (wavg - wlimit) + 1e-7 * (1 + fabs(w_ub)), violated = 1;
        if (q->use_act && m->row_act && aavg > alimit) a_ub -= (aavg - alimit) + 1e-7 * (1 + fabs(a_ub)), violated = 1;
        if (out->time > tlimit) t_ub -= (out->time - tlimit) / m->time_scale + 1e-7 * (1 + fabs(t_ub)), violated = 1;
        if (out->loss > llimit) l_ub -= (out->loss - llimit) / m->loss_scale + 1e-7 * (1 + fabs(l_ub)), violated = 1;
        if (!violated) {
            *feasible = 1;
            return MX_OK;
        }
    }
    return mx_error_set(err, MX_ERR_SOLVER, "GLPK kept returning assignments that violate a limit beyond "
                        "MX_ILP_LIMIT_RTOL after %d tightenings", ILP_MAX_TIGHTEN);
}

static ilp_request base_request(const mx_ilp_problem *p) {
    ilp_request q = {0, 0, 0, p->max_time, p->max_loss, 1, 1};
    return q;
}

/* lexmin(primary, secondary), primary = loss (loss_first) or time, as ONE MILP: min primary + eta * secondary with
 * eta = MX_ILP_EPS / (largest possible normalised secondary).  The primary ends within MX_ILP_EPS (normalised) of
 * its minimum and exact ties in it are broken by the secondary.  (A true second stage, min secondary s.t.
 * primary <= optimum + eps, is a needle-in-a-haystack MILP: on one DeepSeek-V2-Lite layer GLPK ran for minutes
 * without an incumbent, while this one solves in the time of the first stage.) */
static enum mx_status lexmin(ilp_model *m, int loss_first, int *feasible, ilp_point *out, mx_error *err) {
    ilp_request q = base_request(m->p);
    double eta = MX_ILP_EPS / (loss_first ? m->time_upper : m->loss_upper);
    q.w_loss = loss_first ? 1.0 : eta;
    q.w_time = loss_first ? eta : 1.0;
    return solve_milp(m, &q, feasible, out, err);
}

static enum mx_status push_frontier(ilp_model *m, const ilp_point *pt, mx_error *err) {
    for (int64_t i = 0; i < m->n_frontier; i++)
        if (m->frontier[2 * i] == pt->loss && m->frontier[2 * i + 1] == pt->time) return MX_OK;
    if (m->n_frontier == m->frontier_cap) {
        int64_t cap = m->frontier_cap ? 2 * m->frontier_cap : 16;
        double *grown = realloc(m->frontier, sizeof(double) * 2 * (size_t)cap);
        if (!grown) return mx_error_set(err, MX_ERR_NOMEM, "out of memory (frontier)");
        m->frontier = grown, m->frontier_cap = cap;
    }
    m->frontier[2 * m->n_frontier] = pt->loss;
    m->frontier[2 * m->n_frontier + 1] = pt->time;
    m->n_frontier++;
    return MX_OK;
}

static enum mx_status push_segment(ilp_model *m, const ilp_point *a, const ilp_point *b, mx_error *err) {
    if (m->n_segments == m->segment_cap) {
        int64_t cap = m->segment_cap ? 2 * m->segment_cap : 16;
        double *grown = realloc(m->segments, sizeof(double) * 4 * (size_t)cap);
        if (!grown) return mx_error_set(err, MX_ERR_NOMEM, "out of memory (segments)");
        m->segments = grown, m->segment_cap = cap;
    }
    double *s = m->segments + 4 * m->n_segments++;
    s[0] = a->l, s[1] = a->t, s[2] = b->l, s[3] = b->t;
    return MX_OK;
}

/* Called when the first MILP was infeasible although the separable budgets are each feasible: find which limit
 * binds and state its smallest feasible value (one or two more MILPs). */
static enum mx_status diagnose_infeasible(ilp_model *m, mx_error *err) {
    const mx_ilp_problem *p = m->p;
    ilp_point pt;
    int feasible = 0;
    enum mx_status st;
    ilp_request q = base_request(p);
    q.time_hard = q.loss_hard = INFINITY;
    if (p->act_bits) { /* weight and activation budgets jointly */
        ilp_request w = q;
        w.use_budget = 0, w.w_wbits = 1;
        if ((st = solve_milp(m, &w, &feasible, &pt, err)) != MX_OK) return st;
        if (!feasible)
            return mx_error_set(err, MX_ERR_INTERNAL, "activation budget abits=%g infeasible after the separable "
                                "check passed", p->abits);
        double lsum, tsum, wsum, asum;
        evaluate(m, m->choice_g, &lsum, &tsum, &wsum, &asum);
        double smallest = wsum / m->params_total;
        if (smallest > p->wbits * (1 + MX_ILP_LIMIT_RTOL))
            return mx_error_set(err, MX_ERR_INFEASIBLE, "infeasible budget: wbits=%.17g with abits=%.17g; the "
                                "smallest feasible budget is wbits=%.17g (with that abits)", p->wbits, p->abits,
                                smallest);
    }
    double smallest_time = 0, smallest_loss = 0;
    if (p->max_time != INFINITY) {
        ilp_request t = q;
        t.w_time = 1;
        if ((st = solve_milp(m, &t, &feasible, &pt, err)) != MX_OK) return st;
        if (!feasible) return mx_error_set(err, MX_ERR_INTERNAL, "budgets infeasible after the budget check passed");
        smallest_time = pt.time;
        if (pt.time > p->max_time * (1 + MX_ILP_LIMIT_RTOL))
            return mx_error_set(err, MX_ERR_INFEASIBLE, "infeasible: max_time=%.17g; the smallest feasible "
                                "max_time under the bit budget is %.17g", p->max_time, pt.time);
    }
    if (p->max_loss != INFINITY) {
        ilp_request l = q;
        l.w_loss = 1;
        if ((st = solve_milp(m, &l, &feasible, &pt, err)) != MX_OK) return st;
        if (!feasible) return mx_error_set(err, MX_ERR_INTERNAL, "budgets infeasible after the budget check passed");
        smallest_loss = pt.loss;
        if (pt.loss > p->max_loss * (1 + MX_ILP_LIMIT_RTOL))
            return mx_error_set(err, MX_ERR_INFEASIBLE, "infeasible: max_loss=%.17g; the smallest feasible "
                                "max_loss under the bit budget is %.17g", p->max_loss, pt.loss);
    }
    if (p->max_time != INFINITY && p->max_loss != INFINITY) {
        ilp_request l = q;
        l.w_loss = 1, l.time_hard = p->max_time;
        if ((st = solve_milp(m, &l, &feasible, &pt, err)) != MX_OK) return st;
        if (feasible)
            return mx_error_set(err, MX_ERR_INFEASIBLE, "infeasible: max_time=%.17g and max_loss=%.17g together; "
                                "with that max_time the smallest feasible max_loss is %.17g (alone: max_time >= "
                                "%.17g, max_loss >= %.17g)", p->max_time, p->max_loss, pt.loss, smallest_time,
                                smallest_loss);
    }
    return mx_error_set(err, MX_ERR_SOLVER, "GLPK reported the allocation infeasible but no single limit is "
                        "binding (wbits=%g, max_time=%g, max_loss=%g)", p->wbits, p->max_time, p->max_loss);
}

/* After the up-front checks: the lexicographic ends, then (0 < r < 1) the dichotomic search. */
static enum mx_status search(ilp_model *m, mx_ilp_solution *sol, mx_error *err) {
    const mx_ilp_problem *p = m->p;
    size_t choice_bytes = sizeof(int64_t) * (size_t)m->n_groups;
    double r = p->r;
    int feasible = 0;
    ilp_point a, b, best;
    enum mx_status st;
    int64_t *best_choice = m->best_g;
#define TRY(call)                           \
    do {                                    \
        if ((st = (call)) != MX_OK) goto done; \
    } while (0)
    /* r = 1 needs only lexmin(L, T); r = 0 only lexmin(T, L) */
    TRY(lexmin(m, r > 0, &feasible, &a, err));
    if (!feasible) {
        st = diagnose_infeasible(m, err);
        goto done;
    }
    memcpy(best_choice, m->choice_g, choice_bytes);
    best = a;
    TRY(push_frontier(m, &a, err));
    if (r > 0 && r < 1) {
        TRY(lexmin(m, 0, &feasible, &b, err));
        if (!feasible) {
            st = mx_error_set(err, MX_ERR_SOLVER, "lexmin(T, L) infeasible after lexmin(L, T) succeeded");
            goto done;
        }
        TRY(push_frontier(m, &b, err));
        double best_log = log_objective(r, a.l, a.t);
        if (log_objective(r, b.l, b.t) < best_log) {
            memcpy(best_choice, m->choice_g, choice_bytes);
            best = b, best_log = log_objective(r, b.l, b.t);
        }
        if (b.l > a.l && a.t > b.t) TRY(push_segment(m, &a, &b, err));
        while (m->n_segments > 0) {
            double *seg = m->segments + 4 * --m->n_segments;
            double la = seg[0], ta = seg[1], lb = seg[2], tb = seg[3];
            /* every point inside the segment has L >= L_A and T >= T_B */
            if (p->prune && log_objective(r, la, tb) >= best_log) continue;
            double w_loss = ta - tb, w_time = lb - la, norm = w_loss + w_time;
            ilp_request q = base_request(p);
            q.w_loss = w_loss / norm, q.w_time = w_time / norm;
            ilp_point c;
            TRY(solve_milp(m, &q, &feasible, &c, err));
            if (!feasible) {
                st = mx_error_set(err, MX_ERR_SOLVER, "weighted MILP infeasible inside a feasible problem");
                goto done;
            }
            double value_c = q.w_loss * c.l + q.w_time * c.t, value_a = q.w_loss * la + q.w_time * ta;
            if (!(value_c < value_a - MX_ILP_EPS * (1 + fabs(value_a)))) continue; /* segment is a hull edge */
            TRY(push_frontier(m, &c, err));
            double c_log = log_objective(r, c.l, c.t);
            if (c_log < best_log) {
                memcpy(best_choice, m->choice_g, choice_bytes);
                best = c, best_log = c_log;
            }
            ilp_point pa = {0, 0, la, ta}, pb = {0, 0, lb, tb};
            TRY(push_segment(m, &c, &pb, err));
            TRY(push_segment(m, &pa, &c, err)); /* popped first: walk from the low-loss end */
        }
    }
    for (int64_t blk = 0; blk < p->n_blocks; blk++) sol->choice[blk] = best_choice[m->group_of_block[blk]];
    sol->loss = best.loss;
    sol->time = best.time;
    st = MX_OK;
done:
#undef TRY
    return st;
}

static int cmp_point(const void *x, const void *y) {
    const double *a = x, *b = y;
    if (a[0] != b[0]) return a[0] < b[0] ? -1 : 1;
    return (a[1] > b[1]) - (a[1] < b[1]);
}

// loss, time: [n_blocks, n_schemes] f64; bits, act_bits: [n_schemes]; params, tie: [n_blocks]; choice: [n_blocks]
enum mx_status mx_ilp_solve(const mx_ilp_problem *p, mx_ilp_solution *sol, mx_error *err) {
    enum mx_status st;
    if (!sol) return mx_error_set(err, MX_ERR_INVALID_ARG, "sol is NULL");
    sol->frontier = NULL, sol->n_frontier = 0, sol->n_milps = 0, sol->loss = sol->time = 0;
    if ((st = validate(p, err)) != MX_OK) return st;
    if (p->n_blocks > 0 && !sol->choice) return mx_error_set(err, MX_ERR_INVALID_ARG, "sol->choice is NULL");
    if (p->n_blocks == 0) return MX_OK;

    ilp_model *m = calloc(1, sizeof *m);
    if (!m) return mx_error_set(err, MX_ERR_NOMEM, "out of memory (model)");
    m->p = p;
    m->use_knapsack = p->solver != MX_ILP_SOLVER_GLPK;
    if ((st = build_groups(m, err)) != MX_OK) goto done;
    int64_t ng = m->n_groups, ns = p->n_schemes;
    for (int64_t g = 0; g < ng; g++) {
        int any = 0;
        for (int64_t s = 0; s < ns && !any; s++) any = is_allowed(m->g_loss[g * ns + s], m->g_time[g * ns + s]);
        if (!any) {
            st = mx_error_set(err, MX_ERR_INFEASIBLE, "infeasible: block %lld%s has no allowed scheme (loss or time "
                              "is +inf for every scheme)", (long long)m->first_block[g],
                              p->tie ? " (with its tie group)" : "");
            goto done;
        }
    }
    double smallest_w = smallest_average(m, m->g_wcost);
    if (smallest_w > p->wbits * (1 + MX_ILP_LIMIT_RTOL)) {
        st = mx_error_set(err, MX_ERR_INFEASIBLE, "infeasible budget: wbits=%.17g; the smallest feasible budget is "
                          "wbits=%.17g", p->wbits, smallest_w);
        goto done;
    }
    if (p->act_bits) {
        double smallest_a = smallest_average(m, m->g_acost);
        if (smallest_a > p->abits * (1 + MX_ILP_LIMIT_RTOL)) {
            st = mx_error_set(err, MX_ERR_INFEASIBLE, "infeasible activation budget: abits=%.17g; the smallest "
                              "feasible budget is abits=%.17g", p->abits, smallest_a);
            goto done;
        }
    }
    m->loss_scale = value_scale(m, m->g_loss);
    m->time_scale = value_scale(m, m->g_time);
    m->loss_upper = fmax(upper_sum(m, m->g_loss) / m->loss_scale, 1e-300);
    m->time_upper = fmax(upper_sum(m, m->g_time) / m->time_scale, 1e-300);
    m->choice_g = malloc(sizeof(int64_t) * (size_t)ng);
    m->best_g = malloc(sizeof(int64_t) * (size_t)ng);
    if (!m->choice_g || !m->best_g) {
        st = mx_error_set(err, MX_ERR_NOMEM, "out of memory (choices)");
        goto done;
    }

    /* GLPK section: silence this thread's terminal output and make GLPK errors return here, not abort() */
    int term_before = glp_term_out(GLP_OFF);
    glp_error_hook(glpk_error_hook, m);
    if (setjmp(m->on_glpk_error)) {
        /* GLPK's manual: after an error the environment must be freed; this also frees m->lp */
        m->lp = NULL;
        glp_free_env();
        st = mx_error_set(err, MX_ERR_SOLVER, "GLPK raised an internal error (environment reset)");
        goto done;
    }
    st = build_lp(m, err);
    if (st == MX_OK) st = search(m, sol, err);
    glp_error_hook(NULL, NULL);
    glp_term_out(term_before);
    if (st == MX_OK) {
        qsort(m->frontier, (size_t)m->n_frontier, 2 * sizeof(double), cmp_point);
        sol->frontier = m->frontier, sol->n_frontier = m->n_frontier;
        m->frontier = NULL;
    }
done:
    sol->n_milps = m->n_milps;
    model_free(m);
    return st;
}

void mx_ilp_solution_free(mx_ilp_solution *sol) {
    if (!sol) return;
    free(sol->frontier);
    sol->frontier = NULL;
    sol->n_frontier = 0;
}
