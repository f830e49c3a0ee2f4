/* gpu_test.h — the start every GPU test against the CPU backend shares: find the CUDA backend
 * (exit 77, ctest's "skipped", when this build or machine has none), start both backends on
 * device 0, and seed the inputs (CT_TEST_SEED=<n> reproduces a run). Header-only. */
#ifndef CT_TESTS_GPU_TEST_H
#define CT_TESTS_GPU_TEST_H

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>

#include "check.h"
#include "kernels.h"

/* Returns 0 when ready; otherwise the exit code main should return (77: skip, 1: failure). */
static inline int ct_gpu_test_start(const char *name, const ct_backend **cpu, const ct_backend **gpu, ct_kctx **ck,
                                    ct_kctx **gk, uint64_t *rng)
{
    *gpu = ct_backend_cuda();
    if (!*gpu) {
        printf("SKIPPED: no CUDA device (or no CUDA backend in this build)\n");
        return 77;
    }
    *cpu = ct_backend_cpu();
    CHECK((*gpu)->abi == CT_KERNELS_ABI && (*gpu)->elem_size == 2);
    *ck = (*cpu)->kctx_init(0);
    *gk = (*gpu)->kctx_init(0);
    if (!*gk) {
        fprintf(stderr, "%s: a CUDA device is present but kctx_init(0) failed\n", name);
        return 1;
    }
    const char *s = getenv("CT_TEST_SEED");
    *rng = s ? strtoull(s, NULL, 0) : (uint64_t)time(NULL);
    printf("%s: seed %llu (CT_TEST_SEED reproduces)\n", name, (unsigned long long)*rng);
    return 0;
}

#endif
