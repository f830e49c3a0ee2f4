/* gpu_test.h — the start every GPU test against the CPU backend shares: find the CUDA backend
 * (exit 77, ctest's "skipped", when this build or machine has none), start both backends on
 * device 0, and seed the inputs (CT_TEST_SEED=<n> reproduces a run). Header-only. */
#ifndef CT_TESTS_GPU_TEST_H
#define CT_TESTS_GPU_TEST_H

#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "check.h"
#include "kernels.h"

/* fp32 -> bf16 -> fp32, round to nearest even (what to_storage must do) */
static inline float bf16r(float x) { return ct_test_bf16(x); }

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

/* GPU against CPU, element by element: |got - want| <= rtol*|want| + afrac*max|want|. The
 * absolute term scales with the tensor's magnitude, so cancellation in sums is covered. */
#define CMP(what, got, want, n, rtol, afrac) ct_gpu_cmp(__FILE__, __LINE__, what, got, want, n, rtol, afrac)
static inline void ct_gpu_cmp(const char *file, int line, const char *what, const float *got, const float *want,
                              size_t n, double rtol, double afrac)
{
    double mx = 0;
    double *w = ct_test_alloc_d(n);
    for (size_t i = 0; i < n; i++) {
        w[i] = want[i];
        if (fabs(w[i]) > mx) mx = fabs(w[i]);
    }
    ct_check_close(file, line, what, got, w, n, rtol, afrac * mx + 1e-30);
    free(w);
}

#endif
