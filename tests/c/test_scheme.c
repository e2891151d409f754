/* C tests of the scheme table and name parsing. */
#include <stdio.h>
#include <string.h>

#include "mx_scheme.h"

int mx_test_scheme(void) {
    int failures = 0;
    mx_error err;
    for (int i = 0; i < MX_SCHEME_COUNT; i++) {
        mx_scheme s;
        char name[64];
        if (mx_scheme_parse(mx_scheme_table[i].name, &s, &err) != MX_OK) {
            printf("parse %s: %s\n", mx_scheme_table[i].name, err.message);
            failures++;
            continue;
        }
        mx_scheme_format(&s, name, sizeof name);
        if (strcmp(name, mx_scheme_table[i].name) != 0 || mx_scheme_find(&s) != i) {
            printf("round trip %s -> %s\n", mx_scheme_table[i].name, name);
            failures++;
        }
    }
    const char *bad[] = {"", "w", "w4", "w4a16", "w5a16_g128_asym", "w4a16_g100_asym", "w4a16_g128_foo",
                         "w16a8", "w4a16_g128_asym_fp8", "w8a8_g-1_asym_fp8", "w8a4_g-1_sym", "x4a16_g128_sym"};
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        mx_scheme s;
        if (mx_scheme_parse(bad[i], &s, &err) != MX_ERR_INVALID_ARG || strstr(err.message, "accepted forms") == NULL) {
            printf("'%s' should be rejected with the accepted forms\n", bad[i]);
            failures++;
        }
    }
    return failures;
}
