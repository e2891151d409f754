/* hadamard.c — Paley / Sylvester Hadamard matrices and the fast orthonormal transform.  See mx_hadamard.h for the
 * conventions (Kronecker order, Paley constructions, GF(q) labelling, splitmix64 signs). */
#include "mx_hadamard.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>
#ifdef _OPENMP
#include <omp.h>
#endif

/* ---------------------------------------------------------------------------------------------------------
 * GF(q) for q = r^e (r prime): just enough to compute the quadratic character chi.
 * --------------------------------------------------------------------------------------------------------- */

#define MX_GF_MAX_DEGREE 16 /* r >= 3 and q <= MX_HADAMARD_MAX_BASE * 2 keep e far below this */

typedef struct gf_field {
    int32_t r, e, q;
    int32_t f[MX_GF_MAX_DEGREE + 1]; /* monic modulus, f[e] = 1 (unused when e = 1) */
} gf_field;

// q > 1 -> 1 and (r, e) with q = r^e, r prime; 0 when q is not a prime power.
static int prime_power(int64_t q, int32_t *r, int32_t *e) {
    if (q < 2) return 0;
    int64_t p = 0;
    for (int64_t d = 2; d * d <= q; d++)
        if (q % d == 0) {
            p = d;
            break;
        }
    if (p == 0) p = q; /* q is prime */
    int32_t k = 0;
    while (q % p == 0) {
        q /= p;
        k++;
    }
    if (q != 1) return 0;
    *r = (int32_t)p;
    *e = k;
    return 1;
}

// a: [da + 1] coefficients (lowest first), g: monic of degree dg; a <- a mod g over GF(r); returns 1 if a == 0.
static int poly_mod_is_zero(int32_t *a, int32_t da, const int32_t *g, int32_t dg, int32_t r) {
    for (int32_t i = da; i >= dg; i--) {
        int32_t c = a[i] % r;
        if (c == 0) continue;
        for (int32_t j = 0; j <= dg; j++) a[i - dg + j] = ((a[i - dg + j] - c * g[j]) % r + r) % r;
    }
    for (int32_t i = 0; i < dg && i <= da; i++)
        if (a[i] % r) return 0;
    return 1;
}

// The monic f of degree e over GF(r) is irreducible iff no monic g of degree 1..e/2 divides it.
static int poly_irreducible(const int32_t *f, int32_t e, int32_t r) {
    int32_t g[MX_GF_MAX_DEGREE + 1], a[MX_GF_MAX_DEGREE + 1];
    for (int32_t d = 1; d <= e / 2; d++) {
        int64_t count = 1;
        for (int32_t i = 0; i < d; i++) count *= r;
        for (int64_t code = 0; code < count; code++) {
            int64_t c = code;
            for (int32_t i = 0; i < d; i++, c /= r) g[i] = (int32_t)(c % r);
            g[d] = 1;
            memcpy(a, f, sizeof(int32_t) * (size_t)(e + 1));
            if (poly_mod_is_zero(a, e, g, d, r)) return 0;
        }
    }
    return 1;
}

// Set up GF(q); 0 if q is not a prime power (or its degree is beyond MX_GF_MAX_DEGREE).
static int gf_init(gf_field *F, int32_t q) {
    if (!prime_power(q, &F->r, &F->e) || F->e > MX_GF_MAX_DEGREE) return 0;
    F->q = q;
    if (F->e == 1) return 1;
    /* smallest sum_i c_i r^i among irreducible monic polynomials; c_0 = 0 is divisible by x, skipped by the test */
    for (int32_t code = 0; code < q; code++) {
        int32_t c = code;
        for (int32_t i = 0; i < F->e; i++, c /= F->r) F->f[i] = c % F->r;
        F->f[F->e] = 1;
        if (poly_irreducible(F->f, F->e, F->r)) return 1;
    }
    return 0; /* unreachable: irreducible polynomials of every degree exist */
}

static int32_t gf_sub(const gf_field *F, int32_t a, int32_t b) {
    if (F->e == 1) return ((a - b) % F->q + F->q) % F->q;
    int32_t out = 0, place = 1;
    for (int32_t i = 0; i < F->e; i++, a /= F->r, b /= F->r, place *= F->r)
        out += (((a % F->r) - (b % F->r)) % F->r + F->r) % F->r * place;
    return out;
}

static int32_t gf_mul(const gf_field *F, int32_t a, int32_t b) {
    if (F->e == 1) return (int32_t)((int64_t)a * b % F->q);
    int32_t da[MX_GF_MAX_DEGREE], db[MX_GF_MAX_DEGREE], prod[2 * MX_GF_MAX_DEGREE] = {0};
    for (int32_t i = 0; i < F->e; i++, a /= F->r, b /= F->r) {
        da[i] = a % F->r;
        db[i] = b % F->r;
    }
    for (int32_t i = 0; i < F->e; i++)
        for (int32_t j = 0; j < F->e; j++) prod[i + j] = (prod[i + j] + da[i] * db[j]) % F->r;
    poly_mod_is_zero(prod, 2 * F->e - 2, F->f, F->e, F->r);
    int32_t out = 0;
    for (int32_t i = F->e - 1; i >= 0; i--) out = out * F->r + prod[i];
    return out;
}

// chi: [q] int8, the quadratic character of GF(q) (0 at 0, +1 on non-zero squares, -1 elsewhere).
static enum mx_status gf_character(int32_t q, int8_t **chi_out, mx_error *err) {
    gf_field F;
    if (!gf_init(&F, q)) return mx_error_set(err, MX_ERR_INTERNAL, "hadamard: q=%d is not a prime power", (int)q);
    int8_t *chi = malloc((size_t)q);
    if (!chi) return mx_error_set(err, MX_ERR_NOMEM, "hadamard: out of memory for GF(%d)", (int)q);
    memset(chi, -1, (size_t)q);
    chi[0] = 0;
    for (int32_t x = 1; x < q; x++) chi[gf_mul(&F, x, x)] = 1;
    *chi_out = chi;
    return MX_OK;
}

/* ---------------------------------------------------------------------------------------------------------
 * Base matrices
 * --------------------------------------------------------------------------------------------------------- */

enum base_kind { BASE_NONE = 0, BASE_ONE, BASE_TWO, BASE_PALEY1, BASE_PALEY2 };

static enum base_kind base_kind_of(int64_t m) {
    int32_t r, e;
    if (m == 1) return BASE_ONE;
    if (m == 2) return BASE_TWO;
    if (m < 1 || m > MX_HADAMARD_MAX_BASE || m % 4) return BASE_NONE;
    if (prime_power(m - 1, &r, &e) && (m - 1) % 4 == 3) return BASE_PALEY1;
    if (prime_power(m / 2 - 1, &r, &e) && (m / 2 - 1) % 4 == 1) return BASE_PALEY2;
    return BASE_NONE;
}

// The base order of n, or 0 when none qualifies (see "Choice of m" in the header).
static int32_t base_order_of(int64_t n) {
    if (n < 1) return 0;
    int64_t odd = n, pow2 = 1;
    while (odd % 2 == 0) {
        odd /= 2;
        pow2 *= 2;
    }
    if (odd == 1) return 1;
    for (int64_t m = odd * 4; m <= n && m <= MX_HADAMARD_MAX_BASE; m *= 2)
        if (n % m == 0 && base_kind_of(m) != BASE_NONE) return (int32_t)m;
    return 0;
}

// The largest supported size below n and the smallest above it: every m * 2^k with a buildable base m is
// supported (the chooser finds m or a smaller base), so scan the bases instead of the integers near n.
static void nearest_supported(int64_t n, int64_t *below, int64_t *above) {
    for (int64_t m = 1; m <= MX_HADAMARD_MAX_BASE; m++) {
        if (base_kind_of(m) == BASE_NONE) continue;
        int64_t v = m;
        for (; v < n; v *= 2) {
            if (v > *below) *below = v;
            if (v > INT64_MAX / 2) break;
        }
        if (v > n && v < *above) *above = v;
    }
}

enum mx_status mx_hadamard_base_order(int64_t n, int32_t *m, mx_error *err) {
    if (!m) return mx_error_set(err, MX_ERR_INVALID_ARG, "hadamard: m is NULL");
    if (n < 1) return mx_error_set(err, MX_ERR_INVALID_ARG, "hadamard: size n=%lld must be positive", (long long)n);
    int32_t order = base_order_of(n);
    if (order == 0) {
        int64_t below = 1, above = INT64_MAX;
        nearest_supported(n, &below, &above);
        int64_t odd = n;
        while (odd % 2 == 0) odd /= 2;
        return mx_error_set(err, MX_ERR_UNSUPPORTED,
                            "hadamard: size n=%lld (= %lld * 2^%d) is not supported; supported sizes are m * 2^k "
                            "with m = 1, m = q + 1 (q a prime power = 3 mod 4: 4, 8, 12, 20, 24, 28, 32, 44, ...) "
                            "or m = 2(q + 1) (q a prime power = 1 mod 4: 12, 20, 28, 36, 52, ...), m <= %d; the "
                            "nearest supported sizes are %lld and %lld (pad or split the dimension)",
                            (long long)n, (long long)odd, (int)__builtin_ctzll((unsigned long long)n),
                            MX_HADAMARD_MAX_BASE, (long long)below, (long long)above);
    }
    *m = order;
    return MX_OK;
}

// h: [m, m] int8 <- I + [[0, 1^T], [-1, Q]] with Q[a][b] = chi(a - b), m = q + 1.
static enum mx_status paley1(int32_t m, int8_t *h, mx_error *err) {
    int32_t q = m - 1;
    gf_field F;
    int8_t *chi = NULL;
    enum mx_status st = gf_character(q, &chi, err);
    if (st != MX_OK) return st;
    gf_init(&F, q);
    for (int32_t i = 0; i < m; i++)
        for (int32_t j = 0; j < m; j++) {
            int8_t s;
            if (i == 0) s = (int8_t)(j == 0 ? 0 : 1);
            else if (j == 0) s = -1;
            else s = chi[gf_sub(&F, i - 1, j - 1)];
            h[(int64_t)i * m + j] = (int8_t)(s + (i == j));
        }
    free(chi);
    return MX_OK;
}

// h: [m, m] int8 from the symmetric conference matrix C = [[0, 1^T], [1, Q]] of order q + 1, m = 2(q + 1).
static enum mx_status paley2(int32_t m, int8_t *h, mx_error *err) {
    int32_t c = m / 2, q = c - 1;
    gf_field F;
    int8_t *chi = NULL;
    enum mx_status st = gf_character(q, &chi, err);
    if (st != MX_OK) return st;
    gf_init(&F, q);
    for (int32_t i = 0; i < c; i++)
        for (int32_t j = 0; j < c; j++) {
            int8_t s;
            if (i == 0 || j == 0) s = (int8_t)(i == j ? 0 : 1);
            else s = chi[gf_sub(&F, i - 1, j - 1)];
            /* 0 -> [[1, -1], [-1, -1]];  s = +-1 -> s * [[1, 1], [1, -1]] */
            int8_t b00 = s ? s : 1, b01 = s ? s : -1, b10 = s ? s : -1, b11 = s ? (int8_t)-s : -1;
            int8_t *row0 = h + (int64_t)(2 * i) * m + 2 * j, *row1 = row0 + m;
            row0[0] = b00;
            row0[1] = b01;
            row1[0] = b10;
            row1[1] = b11;
        }
    free(chi);
    return MX_OK;
}

enum mx_status mx_hadamard_base_matrix(int32_t m, int8_t *h, mx_error *err) {
    if (!h) return mx_error_set(err, MX_ERR_INVALID_ARG, "hadamard: h is NULL");
    switch (base_kind_of(m)) {
    case BASE_ONE: h[0] = 1; return MX_OK;
    case BASE_TWO: h[0] = h[1] = h[2] = 1; h[3] = -1; return MX_OK;
    case BASE_PALEY1: return paley1(m, h, err);
    case BASE_PALEY2: return paley2(m, h, err);
    default:
        return mx_error_set(err, MX_ERR_UNSUPPORTED,
                            "hadamard: no Paley construction of order m=%d (need m = q + 1, q a prime power = 3 mod "
                            "4, or m = 2(q + 1), q a prime power = 1 mod 4, m <= %d)", (int)m, MX_HADAMARD_MAX_BASE);
    }
}

void mx_hadamard_signs(int64_t n, uint64_t seed, int8_t *signs) {
    uint64_t state = seed;
    for (int64_t i = 0; i < n; i++) {
        state += 0x9E3779B97F4A7C15ull;
        uint64_t z = state;
        z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
        z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
        z ^= z >> 31;
        signs[i] = (int8_t)((z >> 63) ? -1 : 1);
    }
}

/* ---------------------------------------------------------------------------------------------------------
 * The transform: per row, signs, Sylvester butterflies on each of the m contiguous runs of p = n/m elements
 * (H_p acts on the inner index b), then the dense m x m base across the runs (H_m acts on the outer index a),
 * with the 1/sqrt(n) folded into the last pass.
 * --------------------------------------------------------------------------------------------------------- */

#define MX_DEFINE_HADAMARD_TRANSFORM(T, SUFFIX)                                                                  \
    static void fwht_##SUFFIX(T *x, int64_t p) {                                                                 \
        for (int64_t h = 1; h < p; h *= 2)                                                                       \
            for (int64_t i = 0; i < p; i += 2 * h)                                                               \
                for (int64_t j = i; j < i + h; j++) {                                                            \
                    T a = x[j], b = x[j + h];                                                                    \
                    x[j] = a + b;                                                                                \
                    x[j + h] = a - b;                                                                            \
                }                                                                                                \
    }                                                                                                            \
                                                                                                                 \
    /* row: [n] in place; base: [m, m] +-1 (m > 1) or NULL; tmp: [n] scratch when m > 1. */                      \
    static void transform_row_##SUFFIX(T *row, int64_t n, int32_t m, const int8_t *base, const int8_t *signs,    \
                                       T scale, T *tmp) {                                                        \
        int64_t p = n / m;                                                                                       \
        if (signs)                                                                                               \
            for (int64_t i = 0; i < n; i++) row[i] = signs[i] < 0 ? -row[i] : row[i];                            \
        for (int32_t a = 0; a < m; a++) fwht_##SUFFIX(row + (int64_t)a * p, p);                                  \
        if (m == 1) {                                                                                            \
            for (int64_t i = 0; i < n; i++) row[i] *= scale;                                                     \
            return;                                                                                              \
        }                                                                                                        \
        for (int32_t a = 0; a < m; a++) {                                                                        \
            T *out = tmp + (int64_t)a * p;                                                                       \
            memset(out, 0, sizeof(T) * (size_t)p);                                                               \
            for (int32_t a2 = 0; a2 < m; a2++) {                                                                 \
                const T *in = row + (int64_t)a2 * p;                                                             \
                if (base[(int64_t)a * m + a2] > 0)                                                               \
                    for (int64_t b = 0; b < p; b++) out[b] += in[b];                                             \
                else                                                                                             \
                    for (int64_t b = 0; b < p; b++) out[b] -= in[b];                                             \
            }                                                                                                    \
        }                                                                                                        \
        for (int64_t i = 0; i < n; i++) row[i] = tmp[i] * scale;                                                 \
    }                                                                                                            \
                                                                                                                 \
    enum mx_status mx_hadamard_transform_##SUFFIX(T *x, int64_t rows, int64_t n, const int8_t *signs,            \
                                                  mx_error *err) {                                               \
        if (rows < 0) return mx_error_set(err, MX_ERR_INVALID_ARG, "hadamard: rows=%lld < 0", (long long)rows);  \
        int32_t m = 0;                                                                                           \
        enum mx_status st = mx_hadamard_base_order(n, &m, err);                                                  \
        if (st != MX_OK) return st;                                                                              \
        if (rows == 0) return MX_OK;                                                                             \
        if (!x) return mx_error_set(err, MX_ERR_INVALID_ARG, "hadamard: x is NULL");                            \
        for (int64_t i = 0; i < rows * n; i++)                                                                   \
            if (!isfinite(x[i]))                                                                                 \
                return mx_error_set(err, MX_ERR_NONFINITE, "hadamard: x has a non-finite value at row %lld, "    \
                                    "column %lld", (long long)(i / n), (long long)(i % n));                      \
        int8_t *base = NULL;                                                                                     \
        T *tmp = NULL;                                                                                           \
        int threads = 1;                                                                                         \
        if (m > 1) {                                                                                             \
            threads = omp_max_threads();                                                                         \
            base = malloc((size_t)m * (size_t)m);                                                                \
            tmp = malloc(sizeof(T) * (size_t)n * (size_t)threads);                                               \
            if (!base || !tmp) {                                                                                 \
                st = mx_error_set(err, MX_ERR_NOMEM, "hadamard: out of memory (n=%lld, m=%d)", (long long)n,     \
                                  (int)m);                                                                       \
                goto cleanup;                                                                                    \
            }                                                                                                    \
            st = mx_hadamard_base_matrix(m, base, err);                                                          \
            if (st != MX_OK) goto cleanup;                                                                       \
        }                                                                                                        \
        {                                                                                                        \
            T scale = (T)(1.0 / sqrt((double)n));                                                                \
            _Pragma("omp parallel for schedule(static) if (rows * n >= 32768)")                                  \
            for (int64_t r = 0; r < rows; r++) {                                                                 \
                T *scratch = tmp ? tmp + (int64_t)omp_thread_id() * n : NULL;                                    \
                transform_row_##SUFFIX(x + r * n, n, m, base, signs, scale, scratch);                            \
            }                                                                                                    \
        }                                                                                                        \
    cleanup:                                                                                                     \
        free(base);                                                                                              \
        free(tmp);                                                                                               \
        return st;                                                                                               \
    }

static int omp_max_threads(void) {
#ifdef _OPENMP
    return omp_get_max_threads();
#else
    return 1;
#endif
}

static int omp_thread_id(void) {
#ifdef _OPENMP
    return omp_get_thread_num();
#else
    return 0;
#endif
}

MX_DEFINE_HADAMARD_TRANSFORM(float, f32)
MX_DEFINE_HADAMARD_TRANSFORM(double, f64)

// out: [n, n] f64 <- H_n D, element (i, j) = H_m[a_i][a_j] (-1)^popcount(b_i & b_j) d_j / sqrt(n).
enum mx_status mx_hadamard_matrix(int64_t n, const int8_t *signs, double *out, mx_error *err) {
    int32_t m = 0;
    enum mx_status st = mx_hadamard_base_order(n, &m, err);
    if (st != MX_OK) return st;
    if (!out) return mx_error_set(err, MX_ERR_INVALID_ARG, "hadamard: out is NULL");
    int8_t *base = malloc((size_t)m * (size_t)m);
    if (!base) return mx_error_set(err, MX_ERR_NOMEM, "hadamard: out of memory (m=%d)", (int)m);
    st = mx_hadamard_base_matrix(m, base, err);
    if (st == MX_OK) {
        int64_t p = n / m;
        double scale = 1.0 / sqrt((double)n);
        for (int64_t i = 0; i < n; i++)
            for (int64_t j = 0; j < n; j++) {
                int64_t ai = i / p, bi = i % p, aj = j / p, bj = j % p;
                double v = base[ai * m + aj] * ((__builtin_popcountll((unsigned long long)(bi & bj)) & 1) ? -1.0 : 1.0);
                out[i * n + j] = v * scale * (signs ? signs[j] : 1);
            }
    }
    free(base);
    return st;
}
