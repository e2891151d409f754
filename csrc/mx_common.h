/* mx_common.h — status codes, the error record and the export macro shared by every csrc/ file.
 *
 * Every fallible C entry point returns `enum mx_status` and, when it fails, fills the caller's `mx_error`
 * (message names the offending value).  There is no global error state: two threads calling the core at the
 * same time each see their own message.  `mx_error *err` may be NULL when the caller only wants the code.
 *
 * The Python binding maps each status to exactly one exception class (csrc/binding_py.h, `mx_py_raise`).
 * Both C11 and nvcc include this header. */
#ifndef MX_COMMON_H
#define MX_COMMON_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#if defined(_WIN32)
#define MX_API __declspec(dllexport)
#else
#define MX_API __attribute__((visibility("default")))
#endif

/* Append-only: the values are part of the binding's status -> exception table. */
enum mx_status {
    MX_OK = 0,
    MX_ERR_INVALID_ARG = 1,  /* a value or shape is wrong               -> ValueError  */
    MX_ERR_UNSUPPORTED = 2,  /* valid request we do not implement       -> ValueError  */
    MX_ERR_NONFINITE = 3,    /* NaN or Inf in an input                  -> ValueError  */
    MX_ERR_INFEASIBLE = 4,   /* an optimisation problem has no solution -> ValueError  */
    MX_ERR_NOMEM = 5,        /* malloc failed                           -> MemoryError */
    MX_ERR_SOLVER = 6,       /* GLPK (or another library) failed        -> RuntimeError */
    MX_ERR_INTERNAL = 7,     /* an invariant broke: a bug in mxmoe       -> RuntimeError */
    MX_ERR_CUDA = 8,         /* a CUDA runtime call failed               -> RuntimeError */
    MX_STATUS_COUNT = 9
};

#define MX_ERROR_MESSAGE_BYTES 512

typedef struct mx_error {
    enum mx_status status;
    char message[MX_ERROR_MESSAGE_BYTES];
} mx_error;

/* "ok", "invalid argument", ... ; never NULL. */
MX_API const char *mx_status_to_string(enum mx_status status);

/* Fill `err` (if not NULL) with status and a printf-formatted message; returns `status` so callers can write
 * `return mx_error_set(err, MX_ERR_INVALID_ARG, "K=%d is not a multiple of group_size=%d", K, g);` */
MX_API enum mx_status mx_error_set(mx_error *err, enum mx_status status, const char *fmt, ...)
#if defined(__GNUC__)
    __attribute__((format(printf, 3, 4)))
#endif
    ;

/* Internal invariants only (never for user input): report MX_ERR_INTERNAL with file:line, no abort. */
#define MX_CHECK_INTERNAL(cond, err)                                                                   \
    do {                                                                                               \
        if (!(cond))                                                                                   \
            return mx_error_set((err), MX_ERR_INTERNAL, "internal invariant failed: %s (%s:%d)", #cond, \
                                __FILE__, __LINE__);                                                   \
    } while (0)

#ifdef __cplusplus
}
#endif
#endif /* MX_COMMON_H */
