/* test_kernels_attention.c — the CPU backend's attention and fused softmax/cross-entropy
 * against double-precision references: forward values, backward against an analytic
 * reference (itself checked against central finite differences) and against differences
 * directly on small problems; grouped-query heads (groups 1..8), head sizes up to 128,
 * sliding windows, q/k/v as views of one packed buffer or as separate buffers with their own
 * strides; packed documents (positions restarting at each document start: a query sees only
 * its own document), alone and with a window, documents shorter and longer than a row block;
 * pos = t giving pos NULL's bits; the "backward adds" contract, padding columns left alone, the
 * statistics buffer not overrun, causality, window and document locality, determinism across
 * thread counts. */
#include <omp.h>
#include <string.h>

#include "check.h"
#include "kernels.h"

/* ---------------------------------------------------------------- attention reference */

/* One problem's shape and where q, k and v live: views into one array (packed, GPT-2's
 * q|k|v rows, ldq = ldkv = (NH + 2 NKV) D) or three regions of it with their own strides. */
typedef struct {
    int B, T, NH, NKV, D, window, packed;
    int ldq, ldkv;
    size_t offq, offk, offv, n; /* element offsets of q, k, v; n: elements in all */
    const int32_t *pos;         /* [B*T] document positions, or NULL (one document a row) */
} attn_dims;


static attn_dims attn_layout(int B, int T, int NH, int NKV, int D, int window, int packed)
{
    attn_dims a = {B, T, NH, NKV, D, window, packed, 0, 0, 0, 0, 0, 0, NULL};
    const size_t rows = (size_t)B * T;
    if (packed) {
        a.ldq = a.ldkv = (NH + 2 * NKV) * D;
        a.offk = (size_t)NH * D;
        a.offv = a.offk + (size_t)NKV * D;
        a.n = rows * a.ldq;
    } else { /* padded rows, strides that differ between q and k/v */
        a.ldq = NH * D + 5;
        a.ldkv = NKV * D + 3;
        a.offk = rows * a.ldq;
        a.offv = a.offk + rows * a.ldkv;
        a.n = a.offv + rows * a.ldkv;
    }
    return a;
}

static size_t qidx(const attn_dims *a, int b, int t, int h) { return a->offq + ((size_t)b * a->T + t) * a->ldq + (size_t)h * a->D; }
static size_t kidx(const attn_dims *a, int b, int t, int h) { return a->offk + ((size_t)b * a->T + t) * a->ldkv + (size_t)(h / (a->NH / a->NKV)) * a->D; }
static size_t vidx(const attn_dims *a, int b, int t, int h) { return a->offv + ((size_t)b * a->T + t) * a->ldkv + (size_t)(h / (a->NH / a->NKV)) * a->D; }
/* first key query t of row b sees: its window's and its document's */
static int ref_lo(const attn_dims *a, int b, int t)
{
    int lo = a->window > 0 && t - a->window + 1 > 0 ? t - a->window + 1 : 0;
    int doc = a->pos ? t - a->pos[(size_t)b * a->T + t] : 0;
    return doc > lo ? doc : lo;
}

/* p[s] = softmax over visible keys s of query (b,t) of head h, straight from the definition */
static void ref_probs(double *p, const double *x, const attn_dims *a, int b, int t, int h)
{
    const double scale = 1.0 / sqrt((double)a->D);
    const double *q = x + qidx(a, b, t, h);
    double mx = -INFINITY, sum = 0.0;
    for (int s = ref_lo(a, b, t); s <= t; s++) {
        const double *k = x + kidx(a, b, s, h);
        double dot = 0.0;
        for (int i = 0; i < a->D; i++) dot += q[i] * k[i];
        p[s] = dot * scale;
        mx = p[s] > mx ? p[s] : mx;
    }
    for (int s = ref_lo(a, b, t); s <= t; s++) sum += (p[s] = exp(p[s] - mx));
    for (int s = ref_lo(a, b, t); s <= t; s++) p[s] /= sum;
}

/* out[B*T, NH*D] from the q, k, v views in x */
static void ref_attn_fwd(double *out, const double *x, const attn_dims *a)
{
    const int C = a->NH * a->D;
    double *p = ct_test_alloc_d((size_t)a->T);
    for (int b = 0; b < a->B; b++)
        for (int h = 0; h < a->NH; h++)
            for (int t = 0; t < a->T; t++) {
                ref_probs(p, x, a, b, t, h);
                double *o = out + ((size_t)b * a->T + t) * C + (size_t)h * a->D;
                for (int i = 0; i < a->D; i++) o[i] = 0.0;
                for (int s = ref_lo(a, b, t); s <= t; s++)
                    for (int i = 0; i < a->D; i++) o[i] += p[s] * x[vidx(a, b, s, h) + i];
            }
    free(p);
}

/* dx = d(sum(dout . out))/dx over every element of x (0 in padding), analytic, double */
static void ref_attn_bwd(double *dx, const double *dout, const double *x, const attn_dims *a)
{
    const int C = a->NH * a->D;
    const double scale = 1.0 / sqrt((double)a->D);
    double *p = ct_test_alloc_d((size_t)a->T), *dp = ct_test_alloc_d((size_t)a->T);
    memset(dx, 0, a->n * sizeof(double));
    for (int b = 0; b < a->B; b++)
        for (int h = 0; h < a->NH; h++)
            for (int t = 0; t < a->T; t++) {
                const double *dO = dout + ((size_t)b * a->T + t) * C + (size_t)h * a->D;
                const size_t iq = qidx(a, b, t, h);
                double d = 0.0;
                ref_probs(p, x, a, b, t, h);
                for (int s = ref_lo(a, b, t); s <= t; s++) {
                    const size_t iv = vidx(a, b, s, h);
                    dp[s] = 0.0;
                    for (int i = 0; i < a->D; i++) {
                        dp[s] += dO[i] * x[iv + i];
                        dx[iv + i] += p[s] * dO[i];
                    }
                    d += p[s] * dp[s];
                }
                for (int s = ref_lo(a, b, t); s <= t; s++) {
                    const size_t ik = kidx(a, b, s, h);
                    const double ds = p[s] * (dp[s] - d) * scale;
                    for (int i = 0; i < a->D; i++) {
                        dx[iq + i] += ds * x[ik + i];
                        dx[ik + i] += ds * x[iq + i];
                    }
                }
            }
    free(p);
    free(dp);
}

static double ref_attn_loss(const double *x, const double *g, double *out, const attn_dims *a)
{
    ref_attn_fwd(out, x, a);
    double L = 0.0;
    for (size_t i = 0; i < (size_t)a->B * a->T * a->NH * a->D; i++) L += g[i] * out[i];
    return L;
}

/* used[i] = 1 where element i of the storage is a channel of q, k or v (0: padding) */
static unsigned char *attn_used(const attn_dims *a)
{
    unsigned char *u = calloc(a->n, 1);
    if (!u) exit(2);
    for (int b = 0; b < a->B; b++)
        for (int t = 0; t < a->T; t++) {
            memset(u + qidx(a, b, t, 0), 1, (size_t)a->NH * a->D);
            memset(u + a->offk + ((size_t)b * a->T + t) * a->ldkv, 1, (size_t)a->NKV * a->D);
            memset(u + a->offv + ((size_t)b * a->T + t) * a->ldkv, 1, (size_t)a->NKV * a->D);
        }
    return u;
}

static void be_attn_fwd(const ct_backend *be, ct_kctx *ctx, float *out, float *stats, const float *x,
                        const attn_dims *a)
{
    be->attention_fwd(ctx, out, stats, x + a->offq, x + a->offk, x + a->offv, a->pos, a->B, a->T, a->NH, a->NKV,
                      a->D, a->ldq, a->ldkv, a->window);
}

static void be_attn_bwd(const ct_backend *be, ct_kctx *ctx, float *dx, float *stats, const float *dout,
                        const float *x, const float *out, const attn_dims *a)
{
    be->attention_bwd(ctx, dx + a->offq, dx + a->offk, dx + a->offv, stats, dout, x + a->offq, x + a->offk,
                      x + a->offv, out, a->pos, a->B, a->T, a->NH, a->NKV, a->D, a->ldq, a->ldkv, a->window);
}

#define STATS_GUARD 64 /* floats past attention_stats_len that must survive fwd + bwd */

/* The op on one problem: forward vs the reference, backward (adding into a prefilled
 * gradient buffer of the inputs' layout) vs the analytic reference and, when fd, vs central
 * differences of the reference loss. Padding and the memory past the statistics stay.
 * doclen > 0: the rows hold packed documents of up to doclen tokens (ct_test_doc_positions). */
static void attn_case_docs(const ct_backend *be, ct_kctx *ctx, int B, int T, int NH, int NKV, int D, int window,
                           int packed, int fd, uint64_t seed, int doclen)
{
    char what[200], shape[128];
    attn_dims a = attn_layout(B, T, NH, NKV, D, window, packed);
    int32_t *docs = doclen ? ct_test_doc_positions(B, T, doclen, seed) : NULL;
    a.pos = docs;
    const size_t nout = (size_t)B * T * NH * D, nstats = be->attention_stats_len(B, T, NH);
    snprintf(shape, sizeof shape, "B=%d T=%d NH=%d NKV=%d D=%d window=%d %s docs<=%d", B, T, NH, NKV, D, window,
             packed ? "packed" : "separate", doclen);
    float *x = ct_test_alloc(a.n), *out = ct_test_alloc(nout), *dout = ct_test_alloc(nout);
    float *dx = ct_test_alloc(a.n), *d0 = ct_test_alloc(a.n), *stats = ct_test_alloc(nstats + STATS_GUARD);
    ct_test_fill(x, a.n, &seed, -2.0f, 2.0f);
    ct_test_fill(dout, nout, &seed, -1.0f, 1.0f);
    ct_test_fill(d0, a.n, &seed, -1.0f, 1.0f);
    ct_test_fill(stats, nstats + STATS_GUARD, &seed, -9.0f, 9.0f); /* garbage the op must not rely on */
    float *guard = ct_test_copy(stats + nstats, STATS_GUARD);
    memcpy(dx, d0, a.n * sizeof(float));

    double *x_d = ct_test_to_d(x, a.n), *g_d = ct_test_to_d(dout, nout);
    double *out_ref = ct_test_alloc_d(nout), *dx_ref = ct_test_alloc_d(a.n);
    ref_attn_fwd(out_ref, x_d, &a);
    ref_attn_bwd(dx_ref, g_d, x_d, &a);

    be_attn_fwd(be, ctx, out, stats, x, &a);
    snprintf(what, sizeof what, "attention fwd %s", shape);
    CHECK_CLOSE(what, out, out_ref, nout, 1e-5, 5e-6);

    be_attn_bwd(be, ctx, dx, stats, dout, x, out, &a);
    double *want = ct_test_plus_prefill(dx_ref, d0, a.n);
    snprintf(what, sizeof what, "attention bwd (adds) %s", shape);
    CHECK_CLOSE(what, dx, want, a.n, 1e-5, 3e-6);
    unsigned char *used = attn_used(&a);
    size_t pad_changed = 0;
    for (size_t i = 0; i < a.n; i++) pad_changed += !used[i] && memcmp(&dx[i], &d0[i], sizeof(float)) != 0;
    CHECK(pad_changed == 0);
    CHECK(memcmp(guard, stats + nstats, sizeof(float) * STATS_GUARD) == 0);

    if (fd) {
        /* central differences of L = sum(dout . out) in double, every element perturbed */
        const double h = 1e-5;
        double *scratch = ct_test_alloc_d(nout), *num = ct_test_alloc_d(a.n);
        float *grad = ct_test_alloc(a.n);
        for (size_t i = 0; i < a.n; i++) {
            const double x0 = x_d[i];
            x_d[i] = x0 + h;
            const double lp = ref_attn_loss(x_d, g_d, scratch, &a);
            x_d[i] = x0 - h;
            const double lm = ref_attn_loss(x_d, g_d, scratch, &a);
            x_d[i] = x0;
            num[i] = (lp - lm) / (2 * h);
        }
        for (size_t i = 0; i < a.n; i++) grad[i] = dx[i] - d0[i];
        snprintf(what, sizeof what, "attention bwd vs differences %s", shape);
        CHECK_CLOSE(what, grad, num, a.n, 1e-4, 1e-5);
        /* and the analytic reference itself, which the larger cases rely on */
        for (size_t i = 0; i < a.n; i++) grad[i] = (float)dx_ref[i];
        snprintf(what, sizeof what, "reference attention bwd vs differences %s", shape);
        CHECK_CLOSE(what, grad, num, a.n, 1e-6, 1e-7);
        free(scratch), free(num), free(grad);
    }

    free(x), free(out), free(dout), free(dx), free(d0), free(stats), free(guard), free(used);
    free(x_d), free(g_d), free(out_ref), free(dx_ref), free(want), free(docs);
}

static void attn_case(const ct_backend *be, ct_kctx *ctx, int B, int T, int NH, int NKV, int D, int window,
                      int packed, int fd, uint64_t seed)
{
    attn_case_docs(be, ctx, B, T, NH, NKV, D, window, packed, fd, seed, 0);
}

/* Positions 0..T-1 given explicitly describe one document a row: the same bits as pos NULL,
 * forward and backward. */
static void attn_pos_identity(const ct_backend *be, ct_kctx *ctx, int B, int T, int NH, int NKV, int D, int window)
{
    attn_dims a = attn_layout(B, T, NH, NKV, D, window, 0);
    const size_t nout = (size_t)B * T * NH * D, nstats = be->attention_stats_len(B, T, NH);
    uint64_t seed = 31;
    int32_t *pos = malloc(sizeof(int32_t) * (size_t)B * T);
    for (int i = 0; i < B * T; i++) pos[i] = i % T;
    float *x = ct_test_alloc(a.n), *dout = ct_test_alloc(nout), *stats = ct_test_alloc(nstats), *out[2], *dx[2];
    ct_test_fill(x, a.n, &seed, -2.0f, 2.0f);
    ct_test_fill(dout, nout, &seed, -1.0f, 1.0f);
    for (int r = 0; r < 2; r++) {
        a.pos = r ? pos : NULL;
        out[r] = ct_test_alloc(nout);
        dx[r] = ct_test_alloc(a.n);
        be_attn_fwd(be, ctx, out[r], stats, x, &a);
        be_attn_bwd(be, ctx, dx[r], stats, dout, x, out[r], &a);
    }
    CHECK(memcmp(out[0], out[1], nout * sizeof(float)) == 0);
    CHECK(memcmp(dx[0], dx[1], a.n * sizeof(float)) == 0);
    for (int r = 0; r < 2; r++) free(out[r]), free(dx[r]);
    free(x), free(dout), free(stats), free(pos);
}

/* Changing token t0 (its q, k and v) leaves every output before t0 bit-identical, and with a
 * window every output from t0 + window on too, and with packed documents (doclen > 0) every
 * output from the end of t0's document on; a gradient flowing only from output row t1 reaches
 * q only at t1 and k, v only at the keys t1 sees, leaving exact zeros elsewhere. */
static void attn_locality(const ct_backend *be, ct_kctx *ctx, int window, int doclen)
{
    const int B = 2, T = 150, NH = 4, NKV = 2, D = 8, t0 = 41, t1 = 97, C = NH * D;
    attn_dims a = attn_layout(B, T, NH, NKV, D, window, 0);
    int32_t *docs = doclen ? ct_test_doc_positions(B, T, doclen, 5) : NULL;
    /* t0 and t1 must not begin documents (each then has a neighbour to reach): their documents
     * go on through them, the positions after them renumbered up to the next start */
    for (int b = 0; docs && b < B; b++) {
        int32_t *p = docs + (size_t)b * T;
        const int keep[2] = {t0, t1};
        for (int i = 0; i < 2; i++)
            for (int t = keep[i]; t < T && (t == keep[i] || p[t]); t++) p[t] = p[t - 1] + 1;
    }
    a.pos = docs;
    const size_t nout = (size_t)B * T * C;
    uint64_t seed = 7 + window;
    float *x = ct_test_alloc(a.n), *out1 = ct_test_alloc(nout), *out2 = ct_test_alloc(nout);
    float *dout = ct_test_alloc(nout), *dx = ct_test_alloc(a.n);
    float *stats = ct_test_alloc(be->attention_stats_len(B, T, NH));
    ct_test_fill(x, a.n, &seed, -2.0f, 2.0f);
    be_attn_fwd(be, ctx, out1, stats, x, &a);
    for (int b = 0; b < B; b++) {
        ct_test_fill(x + qidx(&a, b, t0, 0), (size_t)NH * D, &seed, -2.0f, 2.0f);
        ct_test_fill(x + kidx(&a, b, t0, 0), (size_t)NKV * D, &seed, -2.0f, 2.0f);
        ct_test_fill(x + vidx(&a, b, t0, 0), (size_t)NKV * D, &seed, -2.0f, 2.0f);
    }
    be_attn_fwd(be, ctx, out2, stats, x, &a);
    for (int b = 0; b < B; b++) {
        const size_t row = (size_t)b * T;
        int t_end = window ? t0 + window : T; /* first output the change cannot reach */
        for (int t = t0 + 1; docs && t < t_end; t++)
            if (docs[row + t] == 0) t_end = t;
        CHECK(memcmp(out1 + row * C, out2 + row * C, (size_t)t0 * C * sizeof(float)) == 0);
        CHECK(memcmp(out1 + (row + t_end) * C, out2 + (row + t_end) * C, (size_t)(T - t_end) * C * sizeof(float)) == 0);
        int differs = 0; /* the changed token and the last one it reaches must see the change */
        for (int c = 0; c < C; c++)
            differs += out1[(row + t0) * C + c] != out2[(row + t0) * C + c] &&
                       out1[(row + t_end - 1) * C + c] != out2[(row + t_end - 1) * C + c];
        CHECK(differs > 0);
    }

    for (int b = 0; b < B; b++) ct_test_fill(dout + ((size_t)b * T + t1) * C, C, &seed, -1.0f, 1.0f);
    be_attn_bwd(be, ctx, dx, stats, dout, x, out2, &a);
    size_t stray = 0, reached = 0, want_reached = 0;
    for (int b = 0; b < B; b++) {
        const int lo = ref_lo(&a, b, t1);
        want_reached += (size_t)(t1 - lo) * NKV * D / 2;
        for (int t = 0; t < T; t++)
            for (int c = 0; c < NH * D; c++) {
                const int qin = t == t1, kvin = t >= lo && t <= t1;
                const float gq = dx[qidx(&a, b, t, 0) + c];
                stray += !qin && gq != 0.0f;
                reached += qin && gq != 0.0f;
                if (c < NKV * D) {
                    const float gk = dx[kidx(&a, b, t, 0) + c], gv = dx[vidx(&a, b, t, 0) + c];
                    stray += !kvin && (gk != 0.0f || gv != 0.0f);
                    reached += kvin && gk != 0.0f && gv != 0.0f;
                }
            }
    }
    CHECK(stray == 0);
    CHECK(reached > want_reached);
    free(x), free(out1), free(out2), free(dout), free(dx), free(stats), free(docs);
}

/* fwd + bwd twice with two threads, once with one and once with three: all bit-identical.
 * The backward picks its schedule by thread count (one item per (b, kv head) when
 * B * NKV >= 2 * threads, else phased): B * NKV = 4 runs both, with 1 and with 3 threads. */
static void attn_determinism(const ct_backend *be, ct_kctx *ctx, int B, int T, int NH, int NKV, int D, int window,
                             int packed, int doclen)
{
    enum { RUNS = 4 };
    static const int threads[RUNS] = {2, 2, 1, 3};
    attn_dims a = attn_layout(B, T, NH, NKV, D, window, packed);
    int32_t *docs = doclen ? ct_test_doc_positions(B, T, doclen, 9) : NULL;
    a.pos = docs;
    const size_t nout = (size_t)B * T * NH * D;
    uint64_t seed = 11;
    float *x = ct_test_alloc(a.n), *dout = ct_test_alloc(nout), *out[RUNS], *dx[RUNS];
    float *stats = ct_test_alloc(be->attention_stats_len(B, T, NH));
    ct_test_fill(x, a.n, &seed, -2.0f, 2.0f);
    ct_test_fill(dout, nout, &seed, -1.0f, 1.0f);
    const int saved = omp_get_max_threads();
    for (int r = 0; r < RUNS; r++) {
        omp_set_num_threads(threads[r]);
        out[r] = ct_test_alloc(nout);
        dx[r] = ct_test_alloc(a.n);
        be_attn_fwd(be, ctx, out[r], stats, x, &a);
        be_attn_bwd(be, ctx, dx[r], stats, dout, x, out[r], &a);
    }
    omp_set_num_threads(saved);
    for (int r = 1; r < RUNS; r++) {
        CHECK(memcmp(out[0], out[r], nout * sizeof(float)) == 0);
        CHECK(memcmp(dx[0], dx[r], a.n * sizeof(float)) == 0);
    }
    for (int r = 0; r < RUNS; r++) free(out[r]), free(dx[r]);
    free(x), free(dout), free(stats), free(docs);
}

/* ---------------------------------------------------------------- cross-entropy */

/* losses (0 where ignored) and probabilities of logits[N,V], double */
static void ref_xent(double *loss, double *probs, const double *x, const int32_t *tg, int N, int V)
{
    for (int i = 0; i < N; i++) {
        const double *r = x + (size_t)i * V;
        double mx = -INFINITY, sum = 0.0;
        for (int j = 0; j < V; j++) mx = r[j] > mx ? r[j] : mx;
        for (int j = 0; j < V; j++) sum += exp(r[j] - mx);
        const double lse = mx + log(sum);
        loss[i] = tg[i] >= 0 ? lse - r[tg[i]] : 0.0;
        if (probs)
            for (int j = 0; j < V; j++) probs[(size_t)i * V + j] = exp(r[j] - lse);
    }
}

static double ref_xent_total(const double *x, const int32_t *tg, int N, int V, double dloss, double *loss)
{
    ref_xent(loss, NULL, x, tg, N, V);
    double L = 0.0;
    for (int i = 0; i < N; i++) L += dloss * loss[i];
    return L;
}

/* Losses and the gradient written over the logits vs the reference; with fd, the gradient vs
 * central differences of the reference sum(dloss * loss_i). Ignored rows: zero loss, zero
 * gradient. dloss = 0 (evaluation): the same losses, a zero gradient. */
static void xent_case(const ct_backend *be, ct_kctx *ctx, float *logits, const int32_t *tg, int N, int V, int fd)
{
    char what[64];
    const size_t n = (size_t)N * V;
    const float dloss = 0.37f;
    double *x = ct_test_to_d(logits, n), *loss_ref = ct_test_alloc_d(N), *probs_ref = ct_test_alloc_d(n);
    float *losses = ct_test_alloc(N), *eval = ct_test_copy(logits, n), *eval_losses = ct_test_alloc(N);
    ref_xent(loss_ref, probs_ref, x, tg, N, V);

    be->xent(ctx, losses, logits, tg, dloss, N, V, V);
    snprintf(what, sizeof what, "xent losses N=%d V=%d", N, V);
    CHECK_CLOSE(what, losses, loss_ref, N, 1e-6, 1e-6);
    for (int i = 0; i < N; i++)
        if (tg[i] < 0) CHECK(losses[i] == 0.0f);
    double *want = ct_test_alloc_d(n);
    for (int i = 0; i < N; i++) {
        int zero = 1;
        for (int j = 0; j < V; j++) {
            const size_t k = (size_t)i * V + j;
            want[k] = tg[i] < 0 ? 0.0 : (probs_ref[k] - (j == tg[i])) * dloss;
            zero &= logits[k] == 0.0f;
        }
        if (tg[i] < 0) CHECK(zero);
    }
    snprintf(what, sizeof what, "xent gradient N=%d V=%d", N, V);
    CHECK_CLOSE(what, logits, want, n, 2e-6, 1e-9);

    be->xent(ctx, eval_losses, eval, tg, 0.0f, N, V, V);
    CHECK(!memcmp(eval_losses, losses, N * sizeof(float)));
    int zero = 1;
    for (size_t k = 0; k < n; k++) zero &= eval[k] == 0.0f;
    CHECK(zero);
    free(want);
    if (fd) {
        const double h = 1e-4;
        double *num = ct_test_alloc_d(n), *scratch = ct_test_alloc_d(N);
        for (size_t k = 0; k < n; k++) {
            const double x0 = x[k];
            x[k] = x0 + h;
            const double lp = ref_xent_total(x, tg, N, V, dloss, scratch);
            x[k] = x0 - h;
            const double lm = ref_xent_total(x, tg, N, V, dloss, scratch);
            x[k] = x0;
            num[k] = (lp - lm) / (2 * h);
        }
        snprintf(what, sizeof what, "xent gradient vs differences N=%d V=%d", N, V);
        CHECK_CLOSE(what, logits, num, n, 1e-5, 1e-8);
        free(num);
        free(scratch);
    }
    free(x), free(loss_ref), free(probs_ref), free(losses), free(eval), free(eval_losses);
}

/* Rows ld > V apart: the padding columns hold garbage on entry, count for nothing, and leave
 * with a zero gradient; the real columns match the unpadded op bit for bit. */
static void xent_padded(const ct_backend *be, ct_kctx *ctx, uint64_t *seed)
{
    enum { N = 4, V = 13, LD = 24 };
    const int32_t tg[N] = {2, -1, 12, 0};
    float dense[N * V], padded[N * LD], ld_losses[N], losses[N];
    ct_test_fill(padded, N * LD, seed, -50.0f, 50.0f);
    for (int i = 0; i < N; i++)
        for (int j = 0; j < V; j++) dense[i * V + j] = padded[i * LD + j] = padded[i * LD + j] / 10.0f;
    be->xent(ctx, losses, dense, tg, 0.25f, N, V, V);
    be->xent(ctx, ld_losses, padded, tg, 0.25f, N, V, LD);
    CHECK(!memcmp(losses, ld_losses, sizeof losses));
    for (int i = 0; i < N; i++) {
        CHECK(!memcmp(dense + i * V, padded + i * LD, V * sizeof(float)));
        for (int j = V; j < LD; j++) CHECK(padded[i * LD + j] == 0.0f);
    }
}

static void xent_tests(const ct_backend *be, ct_kctx *ctx)
{
    uint64_t seed = 3;
    xent_padded(be, ctx, &seed);
    {
        enum { N = 6, V = 37 };
        const int32_t tg[N] = {3, -1, 0, 36, 5, -1};
        float logits[N * V];
        ct_test_fill(logits, N * V, &seed, -5.0f, 5.0f);
        for (int j = 0; j < V; j++) logits[4 * V + j] += 1000.0f; /* no overflow */
        for (int j = 0; j < V; j++) logits[1 * V + j] -= 1000.0f;
        logits[3 * V + 36] = -200.0f; /* the target's probability underflows; its loss must not */
        xent_case(be, ctx, logits, tg, N, V, 1);
    }
    {
        /* GPT-2's vocabulary: the sum over 50k terms must stay accurate */
        enum { N = 3, V = 50257 };
        const int32_t tg[N] = {17, V - 1, -1};
        float *logits = ct_test_alloc((size_t)N * V);
        ct_test_fill(logits, (size_t)N * V, &seed, -10.0f, 10.0f);
        xent_case(be, ctx, logits, tg, N, V, 0);
        free(logits);
    }
}

int main(void)
{
    const ct_backend *be = ct_backend_cpu();
    ct_kctx *ctx = be->kctx_init(0);
    CHECK(ctx != NULL);

    /* against finite differences too: B, T, NH, NKV, D, window, packed */
    attn_case(be, ctx, 2, 7, 3, 3, 4, 0, 1, 1, 1);  /* GPT-2's layout */
    attn_case(be, ctx, 1, 9, 4, 2, 4, 3, 0, 1, 2);  /* GQA, window */
    attn_case(be, ctx, 1, 6, 8, 1, 2, 0, 1, 1, 3);  /* group of 8 */
    attn_case(be, ctx, 2, 1, 2, 1, 4, 0, 0, 1, 4);  /* one token */
    attn_case(be, ctx, 1, 8, 4, 4, 3, 1, 0, 1, 5);  /* window 1: each query sees itself only */
    /* against the analytic reference: several row blocks, ragged last blocks, wide heads */
    attn_case(be, ctx, 2, 97, 2, 2, 32, 0, 1, 0, 6);   /* GPT-2: ld = 3C */
    attn_case(be, ctx, 1, 130, 4, 2, 64, 16, 0, 0, 7);
    attn_case(be, ctx, 1, 256, 4, 1, 32, 33, 1, 0, 8);
    attn_case(be, ctx, 1, 130, 8, 1, 32, 0, 0, 0, 9);
    attn_case(be, ctx, 1, 97, 2, 1, 128, 33, 0, 0, 10);
    attn_case(be, ctx, 2, 1, 8, 1, 128, 0, 1, 0, 11);
    attn_case(be, ctx, 1, 256, 2, 1, 64, 0, 0, 0, 12);
    attn_case(be, ctx, 1, 130, 4, 1, 32, 64, 1, 0, 13);  /* window = the row-block size */
    attn_case(be, ctx, 1, 97, 2, 2, 16, 100, 0, 0, 14);  /* window beyond T: no window */
    attn_case(be, ctx, 1, 130, 8, 2, 128, 16, 0, 0, 15);
    /* packed documents (up to doclen tokens each), against differences too */
    attn_case_docs(be, ctx, 2, 9, 3, 3, 4, 0, 1, 1, 21, 3);
    attn_case_docs(be, ctx, 2, 11, 4, 2, 4, 3, 0, 1, 22, 5);   /* GQA, window inside documents */
    attn_case_docs(be, ctx, 1, 8, 2, 1, 4, 0, 0, 1, 23, 1);    /* every token its own document */
    /* ... and against the analytic reference: documents within a row block, across blocks, longer
     * than several blocks; with windows shorter and longer than the documents */
    attn_case_docs(be, ctx, 2, 200, 4, 2, 32, 0, 1, 0, 24, 20);
    attn_case_docs(be, ctx, 2, 300, 4, 4, 16, 0, 0, 0, 25, 150);
    attn_case_docs(be, ctx, 1, 257, 8, 2, 64, 30, 0, 0, 26, 90);
    attn_case_docs(be, ctx, 1, 257, 4, 1, 32, 100, 1, 0, 27, 70);
    attn_case_docs(be, ctx, 3, 130, 2, 1, 128, 0, 0, 0, 28, 64);
    attn_pos_identity(be, ctx, 2, 150, 4, 2, 16, 0);
    attn_pos_identity(be, ctx, 2, 150, 4, 2, 16, 33);
    attn_locality(be, ctx, 0, 0);
    attn_locality(be, ctx, 20, 0);
    attn_locality(be, ctx, 0, 30);
    attn_locality(be, ctx, 12, 30);
    attn_determinism(be, ctx, 2, 150, 3, 3, 24, 0, 1, 0);
    attn_determinism(be, ctx, 2, 150, 6, 2, 24, 40, 0, 0);
    attn_determinism(be, ctx, 2, 150, 6, 2, 24, 0, 0, 50);
    xent_tests(be, ctx);

    be->kctx_free(ctx);
    return ct_test_finish("test_kernels_attention");
}
