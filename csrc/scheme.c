/* scheme.c — the scheme table, name parsing and the bits each scheme is charged.  See mx_scheme.h. */
#include "mx_scheme.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

_Static_assert(MX_SCHEME_COUNT == 12, "update mx_scheme_table (and every parallel table) when adding a scheme");
_Static_assert(MX_STATUS_COUNT == 9, "update mx_status_to_string and the binding's exception table");

#define ROW(ID, NAME, W, A, G, SYM, FMT, ARCH, KERNEL) [ID] = {ID, NAME, {W, A, G, SYM, FMT}, ARCH, KERNEL}

const mx_scheme_traits mx_scheme_table[MX_SCHEME_COUNT] = {
    ROW(MX_SCHEME_W16A16, "w16a16", 16, 16, -1, 1, MX_FMT_INT, MX_ARCH_ALL, "bf16"),
    ROW(MX_SCHEME_W8A16_GN1_SYM, "w8a16_g-1_sym", 8, 16, -1, 1, MX_FMT_INT, MX_ARCH_ALL, "wxa16"),
    ROW(MX_SCHEME_W4A16_GN1_ASYM, "w4a16_g-1_asym", 4, 16, -1, 0, MX_FMT_INT, MX_ARCH_ALL, "wxa16"),
    ROW(MX_SCHEME_W4A16_G128_ASYM, "w4a16_g128_asym", 4, 16, 128, 0, MX_FMT_INT, MX_ARCH_ALL, "wxa16"),
    ROW(MX_SCHEME_W3A16_G128_ASYM, "w3a16_g128_asym", 3, 16, 128, 0, MX_FMT_INT, MX_ARCH_ALL, "wxa16"),
    ROW(MX_SCHEME_W2A16_G128_ASYM, "w2a16_g128_asym", 2, 16, 128, 0, MX_FMT_INT, MX_ARCH_ALL, "wxa16"),
    ROW(MX_SCHEME_W8A8_GN1_SYM, "w8a8_g-1_sym", 8, 8, -1, 1, MX_FMT_INT, MX_ARCH_ALL, "int8"),
    ROW(MX_SCHEME_W8A8_GN1_SYM_FP8, "w8a8_g-1_sym_fp8", 8, 8, -1, 1, MX_FMT_FP8_E4M3, MX_ARCH_SM89 | MX_ARCH_SM90,
        "fp8"),
    ROW(MX_SCHEME_W4A8_GN1_SYM, "w4a8_g-1_sym", 4, 8, -1, 1, MX_FMT_INT, MX_ARCH_ALL, "int8"),
    ROW(MX_SCHEME_W4A8_G128_ASYM, "w4a8_g128_asym", 4, 8, 128, 0, MX_FMT_INT, MX_ARCH_ALL, "int8"),
    ROW(MX_SCHEME_W4A4_GN1_SYM, "w4a4_g-1_sym", 4, 4, -1, 1, MX_FMT_INT, MX_ARCH_SM80 | MX_ARCH_SM89, "int8"),
    ROW(MX_SCHEME_W4A4_G128_SYM, "w4a4_g128_sym", 4, 4, 128, 1, MX_FMT_INT, MX_ARCH_SM80 | MX_ARCH_SM89, "int8"),
};
#undef ROW

static const char *const mx_status_names[MX_STATUS_COUNT] = {
    "ok", "invalid argument", "unsupported", "non-finite input", "infeasible",
    "out of memory", "solver failure", "internal error", "CUDA error",
};

const char *mx_status_to_string(enum mx_status status) {
    if ((int)status < 0 || status >= MX_STATUS_COUNT) return "unknown status";
    return mx_status_names[status];
}

enum mx_status mx_error_set(mx_error *err, enum mx_status status, const char *fmt, ...) {
    if (err) {
        err->status = status;
        va_list args;
        va_start(args, fmt);
        vsnprintf(err->message, sizeof err->message, fmt, args);
        va_end(args);
    }
    return status;
}

static const char *const accepted_forms =
    "accepted forms: 'w16a16' or 'w{W}a{A}_g{G}_{sym|asym}[_fp8]' with W in {2,3,4,8}, A in {16,8,4}, "
    "G in {-1,32,64,128}, e.g. 'w4a16_g128_asym', 'w8a8_g-1_sym_fp8'";

enum mx_status mx_scheme_validate(const mx_scheme *s, mx_error *err) {
    if (!s) return mx_error_set(err, MX_ERR_INVALID_ARG, "scheme is NULL");
    if (s->w_bits == 16) {
        if (s->a_bits != 16)
            return mx_error_set(err, MX_ERR_INVALID_ARG, "w16 needs a16 (got a_bits=%d)", (int)s->a_bits);
        if (s->fmt != MX_FMT_INT)
            return mx_error_set(err, MX_ERR_INVALID_ARG, "w16a16 takes no number-format suffix");
        return MX_OK;
    }
    if (s->w_bits != 2 && s->w_bits != 3 && s->w_bits != 4 && s->w_bits != 8)
        return mx_error_set(err, MX_ERR_INVALID_ARG, "w_bits=%d is not one of 2, 3, 4, 8, 16", (int)s->w_bits);
    if (s->a_bits != 4 && s->a_bits != 8 && s->a_bits != 16)
        return mx_error_set(err, MX_ERR_INVALID_ARG, "a_bits=%d is not one of 4, 8, 16", (int)s->a_bits);
    if (s->group_size != -1 && s->group_size != 32 && s->group_size != 64 && s->group_size != 128)
        return mx_error_set(err, MX_ERR_INVALID_ARG, "group_size=%d is not one of -1, 32, 64, 128",
                            (int)s->group_size);
    if (s->symmetric != 0 && s->symmetric != 1)
        return mx_error_set(err, MX_ERR_INVALID_ARG, "symmetric=%d must be 0 or 1", (int)s->symmetric);
    if (s->fmt != MX_FMT_INT && s->fmt != MX_FMT_FP8_E4M3)
        return mx_error_set(err, MX_ERR_INVALID_ARG, "fmt=%d is not int (0) or fp8 (1)", (int)s->fmt);
    if (s->fmt == MX_FMT_FP8_E4M3) {
        if (s->a_bits != 8)
            return mx_error_set(err, MX_ERR_INVALID_ARG, "_fp8 needs 8-bit activations (got a_bits=%d)",
                                (int)s->a_bits);
        if (s->w_bits == 8 && !s->symmetric)
            return mx_error_set(err, MX_ERR_INVALID_ARG, "fp8 weights are symmetric: use _sym with w8 _fp8");
    }
    if (s->a_bits == 4 && s->w_bits > 4)
        return mx_error_set(err, MX_ERR_INVALID_ARG, "a4 is supported with w4 or fewer bits (got w_bits=%d)",
                            (int)s->w_bits);
    return MX_OK;
}

static int parse_int(const char **p, int *value) {
    char *end;
    long v = strtol(*p, &end, 10);
    if (end == *p || v < -1000 || v > 1000) return 0;
    *value = (int)v;
    *p = end;
    return 1;
}

enum mx_status mx_scheme_parse(const char *name, mx_scheme *out, mx_error *err) {
    if (!name) return mx_error_set(err, MX_ERR_INVALID_ARG, "scheme name is NULL; %s", accepted_forms);
    const char *p = name;
    mx_scheme s = {0, 0, -1, 1, MX_FMT_INT};
    int w, a, g;
    if (*p++ != 'w' || !parse_int(&p, &w) || *p++ != 'a' || !parse_int(&p, &a) || w < 0 || a < 0)
        return mx_error_set(err, MX_ERR_INVALID_ARG, "malformed scheme name '%s'; %s", name, accepted_forms);
    s.w_bits = w;
    s.a_bits = a;
    if (*p == '\0') {
        if (w != 16 || a != 16)
            return mx_error_set(err, MX_ERR_INVALID_ARG, "scheme name '%s' lacks _g{G}_{sym|asym}; %s", name,
                                accepted_forms);
    } else {
        if (p[0] != '_' || p[1] != 'g') goto malformed;
        p += 2;
        if (!parse_int(&p, &g)) goto malformed;
        s.group_size = g;
        if (strncmp(p, "_sym", 4) == 0) {
            s.symmetric = 1;
            p += 4;
        } else if (strncmp(p, "_asym", 5) == 0) {
            s.symmetric = 0;
            p += 5;
        } else {
            goto malformed;
        }
        if (strcmp(p, "_fp8") == 0) {
            s.fmt = MX_FMT_FP8_E4M3;
        } else if (*p != '\0') {
            goto malformed;
        }
        if (w == 16)
            return mx_error_set(err, MX_ERR_INVALID_ARG, "write w16a16 without group or symmetry ('%s'); %s", name,
                                accepted_forms);
    }
    mx_error inner;
    if (mx_scheme_validate(&s, &inner) != MX_OK)
        return mx_error_set(err, MX_ERR_INVALID_ARG, "unsupported scheme '%s': %s; %s", name, inner.message,
                            accepted_forms);
    *out = s;
    return MX_OK;
malformed:
    return mx_error_set(err, MX_ERR_INVALID_ARG, "malformed scheme name '%s'; %s", name, accepted_forms);
}

void mx_scheme_format(const mx_scheme *s, char *buf, size_t buf_bytes) {
    if (s->w_bits == 16) {
        snprintf(buf, buf_bytes, "w16a16");
        return;
    }
    snprintf(buf, buf_bytes, "w%da%d_g%d_%s%s", (int)s->w_bits, (int)s->a_bits, (int)s->group_size,
             s->symmetric ? "sym" : "asym", s->fmt == MX_FMT_FP8_E4M3 ? "_fp8" : "");
}

int mx_scheme_find(const mx_scheme *s) {
    for (int i = 0; i < MX_SCHEME_COUNT; i++) {
        const mx_scheme *t = &mx_scheme_table[i].scheme;
        if (t->w_bits == s->w_bits && t->a_bits == s->a_bits && t->group_size == s->group_size &&
            t->symmetric == s->symmetric && t->fmt == s->fmt)
            return i;
    }
    return -1;
}

double mx_scheme_bits_per_weight(const mx_scheme *s, int64_t in_features) {
    if (s->w_bits == 16) return 16.0;
    double group = s->group_size > 0 ? (double)s->group_size : (in_features > 0 ? (double)in_features : 0.0);
    double overhead = 0.0;
    if (group > 0) overhead = 16.0 / group + (s->symmetric ? 0.0 : 16.0 / group);
    return (double)s->w_bits + overhead;
}

int64_t mx_scheme_qweight_words(const mx_scheme *s, int64_t N, int64_t K) {
    if (s->w_bits == 16) return N * K;
    return N * (K / 32) * s->w_bits;
}

int64_t mx_scheme_scale_rows(const mx_scheme *s, int64_t K) {
    if (s->w_bits == 16) return 0;
    return s->group_size > 0 ? K / s->group_size : 1;
}
