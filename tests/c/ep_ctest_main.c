/* ep_ctest_main.c: runs every EP_TEST registered by tests/c/test_*.c. */
#include <string.h>

#include "ep_ctest.h"

#define MAX_TESTS 512
static struct {
    const char *name;
    ep_ctest_fn fn;
} tests[MAX_TESTS];
static int n_tests;

void ep_ctest_register(const char *name, ep_ctest_fn fn)
{
    if (n_tests < MAX_TESTS) {
        tests[n_tests].name = name;
        tests[n_tests].fn = fn;
        n_tests++;
    }
}

int main(int argc, char **argv)
{
    int passed = 0, failed = 0;
    for (int i = 0; i < n_tests; i++) {
        if (argc > 1 && !strstr(tests[i].name, argv[1]))
            continue;
        int f = 0;
        tests[i].fn(&f);
        printf("%s %s\n", f ? "FAIL" : "ok  ", tests[i].name);
        if (f)
            failed++;
        else
            passed++;
    }
    printf("%d passed, %d failed\n", passed, failed);
    return failed ? 1 : (passed ? 0 : 5);
}
