/* ep_ctest.h: a tiny C test framework for the kernels (no Python).
 * Each tests/c/test_<part>.c defines tests with EP_TEST(name) { ... }; they
 * register themselves through a constructor, and ep_ctest_main.c runs them all.
 * Run one: build/ctest/ep_ctest NAME_SUBSTRING. */
#ifndef EP_CTEST_H
#define EP_CTEST_H
#include <math.h>
#include <stdio.h>
#include <stdlib.h>

typedef void (*ep_ctest_fn)(int *failed);
void ep_ctest_register(const char *name, ep_ctest_fn fn);

#define EP_TEST(name)                                                    \
    static void name(int *ep_failed_);                                   \
    __attribute__((constructor)) static void name##_register(void)       \
    {                                                                    \
        ep_ctest_register(#name, name);                                  \
    }                                                                    \
    static void name(int *ep_failed_)

#define EP_CHECK(cond)                                                                 \
    do {                                                                               \
        if (!(cond)) {                                                                 \
            fprintf(stderr, "  FAIL %s:%d: %s\n", __FILE__, __LINE__, #cond);          \
            *ep_failed_ = 1;                                                           \
        }                                                                              \
    } while (0)

#define EP_CHECK_NEAR(a, b, tol)                                                       \
    do {                                                                               \
        double a_ = (a), b_ = (b);                                                     \
        if (!(fabs(a_ - b_) <= (tol))) {                                               \
            fprintf(stderr, "  FAIL %s:%d: %s = %.17g, %s = %.17g (tol %g)\n", __FILE__, \
                    __LINE__, #a, a_, #b, b_, (double)(tol));                          \
            *ep_failed_ = 1;                                                           \
        }                                                                              \
    } while (0)

#endif
