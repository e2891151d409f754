/* Standalone driver for the csrc/ compute files (no Python): CI runs it under valgrind.
 * Each area adds tests/c/test_<area>.c defining `int mx_test_<area>(void)` (returns the number of failures);
 * areas not linked in are skipped through the weak references below. */
#include <stdio.h>

#define AREAS(X) X(scheme) X(quant) X(gemm) X(hadamard) X(gptq) X(stats) X(ilp)
#define DECLARE(area) int mx_test_##area(void) __attribute__((weak));
AREAS(DECLARE)
#undef DECLARE

int main(void) {
    int failures = 0, ran = 0;
#define RUN(area)                                                                 \
    if (mx_test_##area) {                                                         \
        int f = mx_test_##area();                                                 \
        printf("%-10s %s (%d failures)\n", #area, f ? "FAILED" : "ok", f);        \
        failures += f;                                                            \
        ran++;                                                                    \
    }
    AREAS(RUN)
#undef RUN
    printf("%d areas, %d failures\n", ran, failures);
    return failures ? 1 : 0;
}
