/* test_kernels_optim.c — the CPU backend's AdamW and sum of squares against double
 * references: torch.optim.AdamW's formula over several steps (weight decay, gradient
 * scale, bias correction, eps placement, both lerp forms), param/master aliasing, and a
 * sum of squares that is exact to double rounding and independent of the thread count.
 * Then ct_optim_step on a NaN or Inf gradient (or told to hold): not applied, returns 1, and
 * parameters, moments and the step count stay bit for bit as they were. */
#include <math.h>
#include <omp.h>
#include <string.h>

#include "check.h"
#include "comm.h"
#include "kernels.h"
#include "model.h"
#include "optim.h"

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

/* Host copies of what a step may change: parameters, m, v, and the step count. */
typedef struct {
    float *params, *m, *v;
    int steps;
} optim_state;

static optim_state state_of(const ct_backend *be, ct_kctx *ctx, ct_model *m, ct_optim *o)
{
    optim_state s;
    size_t n = ct_model_trainable(m).numel, begin, len;
    ct_optim_slice(o, &begin, &len);
    s.params = ct_test_alloc(n), s.m = ct_test_alloc(len), s.v = ct_test_alloc(len);
    be->download(ctx, s.params, ct_model_trainable(m).params, n * sizeof(float));
    be->download(ctx, s.m, ct_optim_exp_avg(o), len * sizeof(float));
    be->download(ctx, s.v, ct_optim_exp_avg_sq(o), len * sizeof(float));
    s.steps = ct_optim_steps_taken(o);
    return s;
}

static int same_state(const optim_state *a, const optim_state *b, size_t n)
{
    return a->steps == b->steps && !memcmp(a->params, b->params, n * sizeof(float)) &&
           !memcmp(a->m, b->m, n * sizeof(float)) && !memcmp(a->v, b->v, n * sizeof(float));
}

static void free_state(optim_state *s)
{
    free(s->params);
    free(s->m);
    free(s->v);
}

/* One real step (so m and v are not zero), then steps on gradients holding a NaN, an Inf, a
 * -Inf, and finite gradients with hold set: none is applied; a last finite step is. */
static void nonfinite_tests(const ct_backend *be, ct_kctx *ctx)
{
    static const ct_model_config tiny = {.vocab_size = 11, .max_seq_len = 4, .n_layer = 1, .n_head = 2, .n_embd = 4,
                                         .norm_eps = 1e-5f};
    ct_comm *comm = ct_comm_init_single();
    ct_model *m = NULL;
    ct_optim *o = NULL;
    char err[256];
    if (!comm || ct_model_init(&m, &tiny, be, ctx, 1, 4, 1, err, sizeof err) ||
        ct_optim_init(&o, m, comm, 1, 0, err, sizeof err)) {
        fprintf(stderr, "nonfinite: setup failed: %s\n", err);
        ct_test_failures++;
        return;
    }
    ct_model_init_weights(m, 3);
    ct_trainable tr = ct_model_trainable(m);
    size_t n = tr.numel;
    float *g = ct_test_alloc(n);
    uint64_t seed = 11;
    ct_optim_hparams h = {.lr = 1e-2f, .beta1 = 0.9f, .beta2 = 0.95f, .eps = 1e-8f, .weight_decay = 0.1f,
                          .grad_clip = 1.0f};
    float norm = 0;
    ct_test_fill(g, n, &seed, -1.0f, 1.0f);
    be->upload(ctx, tr.grads, g, n * sizeof(float));
    CHECK(ct_optim_step(o, &h, &norm) == 0 && isfinite(norm) && ct_optim_steps_taken(o) == 1);
    CHECK(ct_optim_params_finite(o) == 1);
    const float bad[3] = {NAN, INFINITY, -INFINITY};
    for (int k = 0; k < 4; k++) {
        optim_state before = state_of(be, ctx, m, o);
        ct_test_fill(g, n, &seed, -1.0f, 1.0f);
        if (k < 3) g[n / 2] = bad[k];
        h.hold = k == 3;
        be->upload(ctx, tr.grads, g, n * sizeof(float));
        int rc = ct_optim_step(o, &h, &norm);
        optim_state after = state_of(be, ctx, m, o);
        char what[64];
        snprintf(what, sizeof what, "optim step on %s", k == 0 ? "a NaN" : k == 1 ? "an Inf" : k == 2 ? "a -Inf" : "hold");
        if (rc != 1 || (k < 3 && isfinite(norm)) || !same_state(&before, &after, n)) {
            fprintf(stderr, "%s: returned %d, norm %g, state %s\n", what, rc, norm,
                    same_state(&before, &after, n) ? "untouched" : "CHANGED");
            ct_test_failures++;
        }
        free_state(&before);
        free_state(&after);
    }
    h.hold = 0;
    ct_test_fill(g, n, &seed, -1.0f, 1.0f);
    be->upload(ctx, tr.grads, g, n * sizeof(float));
    CHECK(ct_optim_step(o, &h, &norm) == 0 && ct_optim_steps_taken(o) == 2);
    /* a parameter that is not finite is found */
    float *p = ct_test_alloc(n);
    be->download(ctx, p, tr.params, n * sizeof(float));
    p[1] = NAN;
    be->upload(ctx, tr.params, p, n * sizeof(float));
    CHECK(ct_optim_params_finite(o) == 0);
    free(p);
    free(g);
    ct_optim_free(o);
    ct_model_free(m);
    ct_comm_free(comm);
}

int main(void)
{
    const ct_backend *be = ct_backend_cpu();
    ct_kctx *ctx = be->kctx_init(0);
    CHECK(ctx != NULL);
    adamw_tests(be, ctx);
    sumsq_tests(be, ctx);
    nonfinite_tests(be, ctx);
    be->kctx_free(ctx);
    return ct_test_finish("test_kernels_optim");
}
