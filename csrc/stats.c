/* stats.c — H += X^T diag(c) X in double from float rows, blocked and parallel.  See mx_stats.h.
 *
 * Layout of the work: H is cut into MX_STATS_TILE x MX_STATS_TILE tiles; only tiles on or above the diagonal are
 * computed (H is symmetric), each by one OpenMP thread, which then writes the tile and its mirror image, so no
 * two threads touch the same entry and the result does not depend on the schedule.  Inside a tile the rows are
 * consumed four at a time as rank-4 updates of a local double accumulator that stays in L1 (64 x 64 doubles =
 * 32 KiB); the inner loop is a plain elementwise multiply-add over the tile's columns that compilers vectorise
 * without any reassociation of sums. */
#include "mx_stats.h"

#include <math.h>
#include <string.h>

#define MX_STATS_TILE 64
/* Below this many multiply-adds a call stays single-threaded: starting the OpenMP team costs more. */
#define MX_STATS_PARALLEL_WORK (1 << 20)

/* AVX2 clone where gcc can dispatch at load time (glibc ifunc); the default clone covers other CPUs. */
#if defined(__GNUC__) && !defined(__clang__) && defined(__x86_64__) && defined(__linux__)
#define MX_STATS_CLONES __attribute__((target_clones("avx2", "default")))
#else
#define MX_STATS_CLONES
#endif

// x: [rows, K] f32, c: [rows] f32 or NULL; acc: [ni, nj] f64 (row stride MX_STATS_TILE) = sum_r c_r x[r, i0:i0+ni]^T
// x[r, j0:j0+nj].  Rows are taken four at a time (rank-4 update: one load/store of acc per four products).
MX_STATS_CLONES
static void tile_xtx(const float *x, int64_t rows, int64_t K, const float *c, int64_t i0, int64_t ni, int64_t j0,
                     int64_t nj, double *acc) {
    double xi[4][MX_STATS_TILE], xj[4][MX_STATS_TILE];
    memset(acc, 0, sizeof(double) * MX_STATS_TILE * MX_STATS_TILE);
    for (int64_t r0 = 0; r0 < rows; r0 += 4) {
        int64_t nr = rows - r0 < 4 ? rows - r0 : 4;
        for (int64_t q = 0; q < 4; q++) {
            /* missing rows of a short last group are zeros: they add nothing */
            const float *row = x + (r0 + q) * K;
            double weight = q < nr ? (c ? (double)c[r0 + q] : 1.0) : 0.0;
            for (int64_t i = 0; i < ni; i++) xi[q][i] = q < nr ? weight * (double)row[i0 + i] : 0.0;
            for (int64_t j = 0; j < nj; j++) xj[q][j] = q < nr ? (double)row[j0 + j] : 0.0;
        }
        for (int64_t i = 0; i < ni; i++) {
            double a0 = xi[0][i], a1 = xi[1][i], a2 = xi[2][i], a3 = xi[3][i];
            double *out = acc + i * MX_STATS_TILE;
            for (int64_t j = 0; j < nj; j++) out[j] += a0 * xj[0][j] + a1 * xj[1][j] + a2 * xj[2][j] + a3 * xj[3][j];
        }
    }
}

// x: [rows, K] f32, row_weights: [rows] f32 or NULL, H: [K, K] f64 (in/out)
enum mx_status mx_stats_accumulate_xtx(const float *x, int64_t rows, int64_t K, const float *row_weights,
                                       double *H, mx_error *err) {
    /* validate */
    if (K <= 0 || rows < 0)
        return mx_error_set(err, MX_ERR_INVALID_ARG, "accumulate_xtx: need K > 0 and rows >= 0, got K=%lld rows=%lld",
                            (long long)K, (long long)rows);
    if (!H || (rows > 0 && !x))
        return mx_error_set(err, MX_ERR_INVALID_ARG, "accumulate_xtx: NULL %s (K=%lld rows=%lld)", H ? "x" : "H",
                            (long long)K, (long long)rows);
    for (int64_t r = 0; r < rows; r++) {
        if (row_weights) {
            float w = row_weights[r];
            if (!isfinite(w))
                return mx_error_set(err, MX_ERR_NONFINITE, "accumulate_xtx: row_weights[%lld]=%g is not finite",
                                    (long long)r, (double)w);
            if (w < 0.0f)
                return mx_error_set(err, MX_ERR_INVALID_ARG, "accumulate_xtx: row_weights[%lld]=%g is negative "
                                    "(H must stay positive semi-definite)", (long long)r, (double)w);
        }
        for (int64_t k = 0; k < K; k++)
            if (!isfinite(x[r * K + k]))
                return mx_error_set(err, MX_ERR_NONFINITE, "accumulate_xtx: x[%lld, %lld]=%g is not finite (K=%lld)",
                                    (long long)r, (long long)k, (double)x[r * K + k], (long long)K);
    }
    /* empty */
    if (rows == 0) return MX_OK;

    /* compute: tile pairs (ti <= tj) of the upper triangle, enumerated in one flat index for the parallel loop */
    int64_t tiles = (K + MX_STATS_TILE - 1) / MX_STATS_TILE;
    int64_t pairs = tiles * (tiles + 1) / 2;
    int parallel = (double)rows * (double)K * (double)K / 2.0 > MX_STATS_PARALLEL_WORK && pairs > 1;
#pragma omp parallel if (parallel)
    {
        double acc[MX_STATS_TILE * MX_STATS_TILE];
#pragma omp for schedule(dynamic, 1)
        for (int64_t p = 0; p < pairs; p++) {
            int64_t ti = 0, rest = p; /* p -> (ti, tj): row ti of the upper triangle holds tiles - ti pairs */
            while (rest >= tiles - ti) rest -= tiles - ti++;
            int64_t tj = ti + rest;
            int64_t i0 = ti * MX_STATS_TILE, j0 = tj * MX_STATS_TILE;
            int64_t ni = K - i0 < MX_STATS_TILE ? K - i0 : MX_STATS_TILE;
            int64_t nj = K - j0 < MX_STATS_TILE ? K - j0 : MX_STATS_TILE;
            tile_xtx(x, rows, K, row_weights, i0, ni, j0, nj, acc);
            for (int64_t i = 0; i < ni; i++)
                for (int64_t j = 0; j < nj; j++) {
                    if (ti == tj && j < i) continue; /* diagonal tile: write each pair once, from its upper half */
                    double v = acc[i * MX_STATS_TILE + j];
                    H[(i0 + i) * K + (j0 + j)] += v;
                    if (ti != tj || i != j) H[(j0 + j) * K + (i0 + i)] += v;
                }
        }
    }
    return MX_OK;
}
