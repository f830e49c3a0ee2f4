/* test_kernels_optim.c — the CPU backend's AdamW and sum of squares against double
 * references: torch.optim.AdamW's formula over several steps (weight decay, gradient
 * scale, bias correction, eps placement, both lerp forms), param/master aliasing, and a
 * sum of squares that is exact to double rounding and independent of the thread count. */
#include <omp.h>
#include <string.h>

#include "check.h"
#include "kernels.h"

/* torch.optim.AdamW (decoupled weight decay) in double. */
static void ref_adamw(double *x, double *m, double *v, const float *grad, size_t n, const ct_adamw_params *p)
{
    const double b1 = p->beta1, b2 = p->beta2, lr = p->lr;
    const double bc1 = 1.0 - pow(b1, p->step), bc2 = 1.0 - pow(b2, p->step);
    for (size_t i = 0; i < n; i++) {
        const double g = (double)grad[i] * p->grad_scale;
        m[i] = b1 * m[i] + (1.0 - b1) * g;
        v[i] = b2 * v[i] + (1.0 - b2) * g * g;
        x[i] *= 1.0 - lr * p->weight_decay;
        x[i] -= lr / bc1 * m[i] / (sqrt(v[i]) / sqrt(bc2) + p->eps);
    }
}

/* Five steps of the op against the reference. mode 0: separate param buffer (must equal
 * master bit for bit after each step); mode 1: param == master. */
static void adamw_case(const ct_backend *be, ct_kctx *ctx, size_t n, ct_adamw_params p, int mode, uint64_t seed)
{
    char what[96];
    float *master = ct_test_alloc(n), *param = ct_test_alloc(n), *m = ct_test_alloc(n), *v = ct_test_alloc(n);
    float *grad = ct_test_alloc(n);
    double *x = ct_test_alloc_d(n), *mr = ct_test_alloc_d(n), *vr = ct_test_alloc_d(n);
    ct_test_fill(master, n, &seed, -1.0f, 1.0f);
    for (size_t i = 0; i < n; i++) x[i] = master[i], param[i] = 123.0f;
    for (int step = 1; step <= 5; step++) {
        p.step = step;
        ct_test_fill(grad, n, &seed, -1.0f, 1.0f);
        be->adamw(ctx, master, mode == 1 ? (void *)master : (void *)param, m, v, grad, n, &p);
        ref_adamw(x, mr, vr, grad, n, &p);
        snprintf(what, sizeof what, "adamw master n=%zu step %d mode %d", n, step, mode);
        CHECK_CLOSE(what, master, x, n, 1e-6, 1e-7);
        snprintf(what, sizeof what, "adamw m n=%zu step %d mode %d", n, step, mode);
        CHECK_CLOSE(what, m, mr, n, 5e-6, 3e-8 * p.grad_scale); /* m cancels: error ~ ulp(g) */
        snprintf(what, sizeof what, "adamw v n=%zu step %d mode %d", n, step, mode);
        CHECK_CLOSE(what, v, vr, n, 5e-6, 1e-15);
        if (mode == 0) CHECK(memcmp(param, master, n * sizeof(float)) == 0);
    }
    free(master), free(param), free(m), free(v), free(grad), free(x), free(mr), free(vr);
}

static void adamw_tests(const ct_backend *be, ct_kctx *ctx)
{
    /* GPT-2 style: weight decay, gradient scaled by 0.5 */
    ct_adamw_params p = {.lr = 1e-2f, .beta1 = 0.9f, .beta2 = 0.95f, .eps = 1e-8f,
                         .weight_decay = 0.1f, .grad_scale = 0.5f};
    adamw_case(be, ctx, 1003, p, 0, 1);
    adamw_case(be, ctx, 1003, p, 1, 2);
    adamw_case(be, ctx, 100003, p, 0, 3); /* large enough to run threaded */
    /* a large eps: placement after the bias-corrected sqrt(v) matters at the 10% level */
    ct_adamw_params q = {.lr = 3e-2f, .beta1 = 0.8f, .beta2 = 0.99f, .eps = 1e-2f,
                         .weight_decay = 0.0f, .grad_scale = 2.0f};
    adamw_case(be, ctx, 517, q, 1, 4);
    /* beta1 < 0.5: torch's lerp takes its other form */
    ct_adamw_params r = {.lr = 1e-3f, .beta1 = 0.3f, .beta2 = 0.999f, .eps = 1e-6f,
                         .weight_decay = 0.5f, .grad_scale = 1.0f};
    adamw_case(be, ctx, 77, r, 0, 5);
}

/* sum of squares in long double, sequential: the reference */
static double ref_sumsq(const float *x, size_t n)
{
    long double s = 0.0L;
    for (size_t i = 0; i < n; i++) s += (long double)x[i] * x[i];
    return (double)s;
}

static void sumsq_tests(const ct_backend *be, ct_kctx *ctx)
{
    const size_t sizes[] = {0, 1, 7, 64, 65, 4099, 1000003, 3000017};
    const size_t nmax = 3000017;
    uint64_t seed = 9;
    float *x = ct_test_alloc(nmax);
    ct_test_fill(x, nmax, &seed, -2.0f, 2.0f);
    for (size_t k = 0; k < sizeof sizes / sizeof sizes[0]; k++) {
        const size_t n = sizes[k];
        const double got = be->sumsq(ctx, x, n), want = ref_sumsq(x, n);
        if (!(fabs(got - want) <= 1e-12 * want)) { /* float accumulation: ~1e-7 */
            fprintf(stderr, "sumsq n=%zu: got %.17g, want %.17g\n", n, got, want);
            CHECK(0);
        }
    }
    CHECK(be->sumsq(ctx, x, 0) == 0.0);
    CHECK(be->sumsq(ctx, x, 1) == (double)x[0] * x[0]);

    const int saved = omp_get_max_threads();
    omp_set_num_threads(1);
    const double one = be->sumsq(ctx, x, nmax);
    omp_set_num_threads(2);
    const double two = be->sumsq(ctx, x, nmax);
    omp_set_num_threads(3);
    const double three = be->sumsq(ctx, x, nmax);
    omp_set_num_threads(saved);
    CHECK(memcmp(&one, &two, sizeof one) == 0); /* same bits for any thread count */
    CHECK(memcmp(&one, &three, sizeof one) == 0);
    free(x);
}

int main(void)
{
    const ct_backend *be = ct_backend_cpu();
    ct_kctx *ctx = be->kctx_init(0);
    CHECK(ctx != NULL);
    adamw_tests(be, ctx);
    sumsq_tests(be, ctx);
    be->kctx_free(ctx);
    return ct_test_finish("test_kernels_optim");
}
