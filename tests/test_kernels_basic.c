/* test_kernels_basic.c — the CPU backend's encoder, layernorm, matmul, gelu and residual ops,
 * called through the backend table:
 *   - forward against naive double-precision reference loops, on seeded random inputs;
 *   - backward against central finite differences of L = sum(g * f(x)) on that reference,
 *     with every gradient output pre-filled, so each check also tests "backward ADDS";
 *   - matmul_bwd, layernorm_bwd and encoder_bwd with NULL gradient outputs (a frozen model);
 *     encoder_bwd with repeated tokens; encoder_fwd without position embeddings (wpe NULL);
 *     positions restarting per packed document (pos), and pos = t giving pos NULL's bits;
 *   - determinism: bit-identical results run to run and across thread counts 1..4.
 * Exit status is non-zero on any failed check. */
#include <omp.h>
#include <stdint.h>
#include <string.h>

#include "check.h"
#include "kernels.h"

static const ct_backend *be;
static ct_kctx *kc;
static uint64_t rng = 0x5eed;

/* Tolerances: forward vs double reference; gradients vs finite differences. */
#define FWD_RTOL 1e-5
#define FWD_ATOL 1e-6
#define GRAD_RTOL 1e-4
#define GRAD_ATOL 1e-5
#define FD_H 1e-4

static float *rand_f(size_t n, float lo, float hi)
{
    float *x = ct_test_alloc(n);
    ct_test_fill(x, n, &rng, lo, hi);
    return x;
}




/* The scalar loss of one op's double reference: L = sum(g * f(inputs)); args holds pointers
 * to the double inputs, which fd_grad perturbs in place. */
typedef double (*loss_fn)(const void *args);

/* grad[i] = (L(x + h e_i) - L(x - h e_i)) / 2h for every element of x (an input of args) */
static double *fd_grad(loss_fn loss, const void *args, double *x, size_t n)
{
    double *grad = ct_test_alloc_d(n);
    for (size_t i = 0; i < n; i++) {
        double save = x[i];
        x[i] = save + FD_H;
        double lp = loss(args);
        x[i] = save - FD_H;
        double lm = loss(args);
        x[i] = save;
        grad[i] = (lp - lm) / (2 * FD_H);
    }
    return grad;
}

/* FNV-1a over the bytes of results, printed so runs under different OMP_NUM_THREADS can be
 * compared from outside as well. */
static uint64_t digest = 0xcbf29ce484222325ull;
static void digest_add(const float *x, size_t n)
{
    const unsigned char *p = (const unsigned char *)x;
    for (size_t i = 0; i < n * sizeof(float); i++) digest = (digest ^ p[i]) * 0x100000001b3ull;
}

/* Thread counts the determinism checks run under; results must match the first bit for bit. */
static const int thread_counts[] = {1, 2, 3, 4};
#define N_THREAD_COUNTS (int)(sizeof thread_counts / sizeof thread_counts[0])

/* ------------------------------------------------------------------ encoder */

typedef struct {
    const int32_t *tokens, *pos; /* pos NULL: t */
    const double *wte, *wpe, *g;
    int B, T, C;
} enc_args;

static size_t enc_pos(const enc_args *a, int bt) { return (size_t)(a->pos ? a->pos[bt] : bt % a->T); }

static void enc_ref(const enc_args *a, double *out)
{
    for (int bt = 0; bt < a->B * a->T; bt++)
        for (int c = 0; c < a->C; c++)
            out[(size_t)bt * a->C + c] = a->wte[(size_t)a->tokens[bt] * a->C + c] + a->wpe[enc_pos(a, bt) * a->C + c];
}

static double enc_loss(const void *p)
{
    const enc_args *a = p;
    double L = 0;
    for (int bt = 0; bt < a->B * a->T; bt++)
        for (int c = 0; c < a->C; c++)
            L += a->g[(size_t)bt * a->C + c] *
                 (a->wte[(size_t)a->tokens[bt] * a->C + c] + a->wpe[enc_pos(a, bt) * a->C + c]);
    return L;
}

/* Against the definition and finite differences; packed: positions restarting at document
 * starts (rows 0 and 2 hold several documents), so wpe rows gather from several (b,t). */
static void test_encoder(int packed)
{
    enum { B = 3, T = 5, C = 37, V = 13 };
    /* token 4 appears at four positions, twice at t = 0 (b = 0 and b = 1); token 9 twice;
     * tokens 11 and 12 never appear */
    int32_t tokens[B * T] = {4, 1, 9, 4, 0, 4, 7, 2, 10, 9, 3, 4, 5, 6, 8};
    static const int32_t docs[B * T] = {0, 1, 0, 1, 2, 0, 1, 2, 3, 4, 0, 0, 1, 0, 1};
    float *wte = rand_f(V * C, -1, 1), *wpe = rand_f(T * C, -1, 1), *g = rand_f(B * T * C, -1, 1);
    double *wte_d = ct_test_to_d(wte, V * C), *wpe_d = ct_test_to_d(wpe, T * C), *g_d = ct_test_to_d(g, B * T * C);
    const int32_t *pos = packed ? docs : NULL;
    enc_args a = {tokens, pos, wte_d, wpe_d, g_d, B, T, C};

    float *out = rand_f(B * T * C, -9, 9); /* garbage the forward must overwrite */
    double *want = ct_test_alloc_d(B * T * C);
    be->encoder_fwd(kc, out, tokens, pos, wte, wpe, B, T, C);
    enc_ref(&a, want);
    CHECK_CLOSE(packed ? "encoder_fwd out (packed)" : "encoder_fwd out", out, want, B * T * C, FWD_RTOL, FWD_ATOL);

    float *dwte = rand_f(V * C, -1, 1), *dwpe = rand_f(T * C, -1, 1);
    float *p_wte = ct_test_copy(dwte, V * C), *p_wpe = ct_test_copy(dwpe, T * C);
    be->encoder_bwd(kc, dwte, dwpe, g, tokens, pos, B, T, C);
    double *fd_wte = fd_grad(enc_loss, &a, wte_d, V * C), *fd_wpe = fd_grad(enc_loss, &a, wpe_d, T * C);
    double *w_wte = ct_test_plus_prefill(fd_wte, p_wte, V * C), *w_wpe = ct_test_plus_prefill(fd_wpe, p_wpe, T * C);
    CHECK_CLOSE("encoder_bwd dwte (prefilled)", dwte, w_wte, V * C, GRAD_RTOL, GRAD_ATOL);
    CHECK_CLOSE(packed ? "encoder_bwd dwpe (prefilled, packed)" : "encoder_bwd dwpe (prefilled)", dwpe, w_wpe, T * C,
                GRAD_RTOL, GRAD_ATOL);
    /* rows of tokens that never occur keep their prefill bit for bit */
    CHECK(memcmp(dwte + 11 * C, p_wte + 11 * C, 2 * C * sizeof(float)) == 0);

    free(wte); free(wpe); free(g); free(wte_d); free(wpe_d); free(g_d); free(out); free(want);
    free(dwte); free(dwpe); free(p_wte); free(p_wpe); free(fd_wte); free(fd_wpe); free(w_wte); free(w_wpe);
}

/* Positions 0..T-1 given explicitly: the same bits as pos NULL, forward and backward, at a
 * size that takes the parallel path. */
static void test_encoder_pos_identity(void)
{
    enum { B = 3, T = 70, C = 130, V = 20 };
    uint64_t s = 25;
    int32_t tokens[B * T], pos[B * T];
    for (int i = 0; i < B * T; i++) tokens[i] = (int32_t)(ct_test_rand_u64(&s) % V), pos[i] = i % T;
    float *wte = rand_f(V * C, -1, 1), *wpe = rand_f(T * C, -1, 1), *g = rand_f(B * T * C, -1, 1);
    float *o1 = ct_test_alloc(B * T * C), *o2 = ct_test_alloc(B * T * C);
    float *d1 = rand_f(T * C, -1, 1), *d2 = ct_test_copy(d1, T * C);
    be->encoder_fwd(kc, o1, tokens, NULL, wte, wpe, B, T, C);
    be->encoder_fwd(kc, o2, tokens, pos, wte, wpe, B, T, C);
    CHECK(memcmp(o1, o2, sizeof(float) * B * T * C) == 0);
    be->encoder_bwd(kc, NULL, d1, g, tokens, NULL, B, T, C);
    be->encoder_bwd(kc, NULL, d2, g, tokens, pos, B, T, C);
    CHECK(memcmp(d1, d2, sizeof(float) * T * C) == 0);
    free(wte); free(wpe); free(g); free(o1); free(o2); free(d1); free(d2);
}

/* Frozen embeddings: with one gradient NULL the other must come out bit-identical to the
 * run with both; with both NULL the op does nothing. Run at a small size and at one large
 * enough for the parallel path. */
static void test_encoder_null(int B, int T, int C, int V)
{
    uint64_t s = 21;
    size_t n = (size_t)B * T * C;
    int32_t *tokens = malloc((size_t)B * T * sizeof *tokens);
    CHECK(tokens != NULL);
    for (int i = 0; i < B * T; i++) tokens[i] = (int32_t)(ct_test_rand_u64(&s) % V);
    float *g = ct_test_alloc(n), *p_wte = ct_test_alloc((size_t)V * C), *p_wpe = ct_test_alloc((size_t)T * C);
    ct_test_fill(g, n, &s, -1, 1);
    ct_test_fill(p_wte, (size_t)V * C, &s, -1, 1);
    ct_test_fill(p_wpe, (size_t)T * C, &s, -1, 1);
    float *dwte = ct_test_copy(p_wte, (size_t)V * C), *dwpe = ct_test_copy(p_wpe, (size_t)T * C);
    be->encoder_bwd(kc, dwte, dwpe, g, tokens, NULL, B, T, C); /* the reference: both gradients */

    float *one = ct_test_copy(p_wte, (size_t)V * C);
    be->encoder_bwd(kc, one, NULL, g, tokens, NULL, B, T, C);
    CHECK(memcmp(one, dwte, (size_t)V * C * sizeof(float)) == 0);
    free(one);
    one = ct_test_copy(p_wpe, (size_t)T * C);
    be->encoder_bwd(kc, NULL, one, g, tokens, NULL, B, T, C);
    CHECK(memcmp(one, dwpe, (size_t)T * C * sizeof(float)) == 0);
    free(one);
    be->encoder_bwd(kc, NULL, NULL, g, tokens, NULL, B, T, C); /* nothing to do, nothing to crash on */
    free(tokens); free(g); free(p_wte); free(p_wpe); free(dwte); free(dwpe);
}

/* No learned positions (Llama: wpe NULL): each output row is its token's embedding row, bit
 * for bit, at a small size and at one large enough for the parallel path. */
static void test_encoder_nopos(int B, int T, int C, int V)
{
    uint64_t s = 23;
    const size_t n = (size_t)B * T * C;
    int32_t *tokens = malloc((size_t)B * T * sizeof *tokens);
    CHECK(tokens != NULL);
    for (int i = 0; i < B * T; i++) tokens[i] = (int32_t)(ct_test_rand_u64(&s) % V);
    float *wte = rand_f((size_t)V * C, -1, 1), *out = rand_f(n, -9, 9);
    be->encoder_fwd(kc, out, tokens, NULL, wte, NULL, B, T, C);
    size_t bad = 0;
    for (int bt = 0; bt < B * T; bt++)
        bad += memcmp(out + (size_t)bt * C, wte + (size_t)tokens[bt] * C, (size_t)C * sizeof(float)) != 0;
    CHECK(bad == 0);
    free(tokens); free(wte); free(out);
}

/* ------------------------------------------------------------------ layernorm */

typedef struct {
    const double *x, *w, *b, *g;
    int N, C;
    double eps;
} ln_args;

/* one row of the reference: out[C], and the row's mean and rstd */
static void ln_ref_row(const ln_args *a, int n, double *out, double *mean, double *rstd)
{
    const double *x = a->x + (size_t)n * a->C;
    double m = 0, v = 0;
    for (int c = 0; c < a->C; c++) m += x[c];
    m /= a->C;
    for (int c = 0; c < a->C; c++) v += (x[c] - m) * (x[c] - m);
    v /= a->C; /* biased, as torch */
    double s = 1.0 / sqrt(v + a->eps);
    for (int c = 0; c < a->C; c++) out[c] = (x[c] - m) * s * a->w[c] + a->b[c];
    *mean = m;
    *rstd = s;
}

static double ln_loss(const void *p)
{
    const ln_args *a = p;
    double row[256], m, s, L = 0; /* C <= 256 in these tests */
    for (int n = 0; n < a->N; n++) {
        ln_ref_row(a, n, row, &m, &s);
        for (int c = 0; c < a->C; c++) L += a->g[(size_t)n * a->C + c] * row[c];
    }
    return L;
}

static void test_layernorm(void)
{
    enum { N = 7, C = 37 };
    const float eps = 1e-5f;
    float *x = rand_f(N * C, -2, 2), *w = rand_f(C, -1.5f, 1.5f), *b = rand_f(C, -1, 1), *g = rand_f(N * C, -1, 1);
    for (int n = 0; n < N; n++) /* rows with different means, so mean subtraction matters */
        for (int c = 0; c < C; c++) x[n * C + c] += 1.5f * (n - 3);
    double *x_d = ct_test_to_d(x, N * C), *w_d = ct_test_to_d(w, C), *b_d = ct_test_to_d(b, C), *g_d = ct_test_to_d(g, N * C);
    ln_args a = {x_d, w_d, b_d, g_d, N, C, eps};

    float *out = rand_f(N * C, -9, 9), *mean = rand_f(N, -9, 9), *rstd = rand_f(N, -9, 9);
    double *want = ct_test_alloc_d(N * C), *want_m = ct_test_alloc_d(N), *want_s = ct_test_alloc_d(N);
    be->layernorm_fwd(kc, out, mean, rstd, x, w, b, N, C, eps);
    for (int n = 0; n < N; n++) ln_ref_row(&a, n, want + n * C, &want_m[n], &want_s[n]);
    CHECK_CLOSE("layernorm_fwd out", out, want, N * C, FWD_RTOL, FWD_ATOL);
    CHECK_CLOSE("layernorm_fwd mean", mean, want_m, N, FWD_RTOL, FWD_ATOL);
    CHECK_CLOSE("layernorm_fwd rstd", rstd, want_s, N, FWD_RTOL, FWD_ATOL);

    float *dx = rand_f(N * C, -1, 1), *dw = rand_f(C, -1, 1), *db = rand_f(C, -1, 1);
    float *p_dx = ct_test_copy(dx, N * C), *p_dw = ct_test_copy(dw, C), *p_db = ct_test_copy(db, C);
    be->layernorm_bwd(kc, dx, dw, db, g, x, w, mean, rstd, N, C);
    double *fd_x = fd_grad(ln_loss, &a, x_d, N * C), *fd_w = fd_grad(ln_loss, &a, w_d, C);
    double *fd_b = fd_grad(ln_loss, &a, b_d, C);
    double *w_dx = ct_test_plus_prefill(fd_x, p_dx, N * C), *w_dw = ct_test_plus_prefill(fd_w, p_dw, C);
    double *w_db = ct_test_plus_prefill(fd_b, p_db, C);
    CHECK_CLOSE("layernorm_bwd dinp (prefilled)", dx, w_dx, N * C, GRAD_RTOL, GRAD_ATOL);
    CHECK_CLOSE("layernorm_bwd dw (prefilled)", dw, w_dw, C, GRAD_RTOL, GRAD_ATOL);
    CHECK_CLOSE("layernorm_bwd db (prefilled)", db, w_db, C, GRAD_RTOL, GRAD_ATOL);

    free(x); free(w); free(b); free(g); free(x_d); free(w_d); free(b_d); free(g_d);
    free(out); free(mean); free(rstd); free(want); free(want_m); free(want_s);
    free(dx); free(dw); free(db); free(p_dx); free(p_dw); free(p_db);
    free(fd_x); free(fd_w); free(fd_b); free(w_dx); free(w_dw); free(w_db);
}

/* Frozen LayerNorm (as under LoRA): dw and/or db NULL. dinp, and whichever parameter gradient
 * is given, must be bit-identical to the run with all three; the NULL ones are skipped. Run
 * at a small size and at one large enough for the parallel path. */
static void test_layernorm_null(int N, int C)
{
    uint64_t s = 22;
    size_t nc = (size_t)N * C;
    float *x = ct_test_alloc(nc), *w = ct_test_alloc(C), *b = ct_test_alloc(C), *g = ct_test_alloc(nc);
    float *out = ct_test_alloc(nc), *mean = ct_test_alloc(N), *rstd = ct_test_alloc(N);
    ct_test_fill(x, nc, &s, -3, 5);
    ct_test_fill(w, C, &s, -1, 1);
    ct_test_fill(b, C, &s, -1, 1);
    ct_test_fill(g, nc, &s, -1, 1);
    be->layernorm_fwd(kc, out, mean, rstd, x, w, b, N, C, 1e-5f);
    float *p_dx = ct_test_alloc(nc), *p_dw = ct_test_alloc(C), *p_db = ct_test_alloc(C);
    ct_test_fill(p_dx, nc, &s, -1, 1);
    ct_test_fill(p_dw, C, &s, -1, 1);
    ct_test_fill(p_db, C, &s, -1, 1);
    float *dx = ct_test_copy(p_dx, nc), *dw = ct_test_copy(p_dw, C), *db = ct_test_copy(p_db, C);
    be->layernorm_bwd(kc, dx, dw, db, g, x, w, mean, rstd, N, C); /* the reference */

    for (int mode = 0; mode < 3; mode++) { /* 0: dw, db NULL; 1: db NULL; 2: dw NULL */
        float *dx2 = ct_test_copy(p_dx, nc), *dw2 = ct_test_copy(p_dw, C), *db2 = ct_test_copy(p_db, C);
        be->layernorm_bwd(kc, dx2, mode == 1 ? dw2 : NULL, mode == 2 ? db2 : NULL, g, x, w, mean, rstd, N, C);
        CHECK(memcmp(dx2, dx, nc * sizeof(float)) == 0);
        if (mode == 1) CHECK(memcmp(dw2, dw, C * sizeof(float)) == 0);
        if (mode == 2) CHECK(memcmp(db2, db, C * sizeof(float)) == 0);
        free(dx2); free(dw2); free(db2);
    }
    free(x); free(w); free(b); free(g); free(out); free(mean); free(rstd);
    free(p_dx); free(p_dw); free(p_db); free(dx); free(dw); free(db);
}

/* ------------------------------------------------------------------ matmul */

typedef struct {
    const double *inp, *w, *bias, *g; /* bias may be NULL */
    int N, K, M;
} mm_args;

static double mm_ref(const mm_args *a, int n, int m)
{
    double s = a->bias ? a->bias[m] : 0.0;
    for (int k = 0; k < a->K; k++) s += a->inp[(size_t)n * a->K + k] * a->w[(size_t)m * a->K + k];
    return s;
}

static double mm_loss(const void *p)
{
    const mm_args *a = p;
    double L = 0;
    for (int n = 0; n < a->N; n++)
        for (int m = 0; m < a->M; m++) L += a->g[(size_t)n * a->M + m] * mm_ref(a, n, m);
    return L;
}

static void test_matmul(void)
{
    enum { N = 7, K = 13, M = 11 };
    float *inp = rand_f(N * K, -1, 1), *w = rand_f(M * K, -1, 1), *bias = rand_f(M, -1, 1);
    float *g = rand_f(N * M, -1, 1);
    double *inp_d = ct_test_to_d(inp, N * K), *w_d = ct_test_to_d(w, M * K), *bias_d = ct_test_to_d(bias, M), *g_d = ct_test_to_d(g, N * M);
    mm_args a = {inp_d, w_d, bias_d, g_d, N, K, M};
    mm_args a_nobias = {inp_d, w_d, NULL, g_d, N, K, M};

    /* forward, with and without bias; out starts as NaN, which must not leak through */
    float *out = ct_test_alloc(N * M);
    double *want = ct_test_alloc_d(N * M);
    for (int i = 0; i < N * M; i++) out[i] = NAN;
    be->matmul_fwd(kc, out, inp, w, bias, N, K, M);
    for (int n = 0; n < N; n++)
        for (int m = 0; m < M; m++) want[n * M + m] = mm_ref(&a, n, m);
    CHECK_CLOSE("matmul_fwd out (bias)", out, want, N * M, FWD_RTOL, FWD_ATOL);
    for (int i = 0; i < N * M; i++) out[i] = NAN;
    be->matmul_fwd(kc, out, inp, w, NULL, N, K, M);
    for (int n = 0; n < N; n++)
        for (int m = 0; m < M; m++) want[n * M + m] = mm_ref(&a_nobias, n, m);
    CHECK_CLOSE("matmul_fwd out (bias NULL)", out, want, N * M, FWD_RTOL, FWD_ATOL);

    /* one and two rows (decoding) take another path; out again starts as NaN */
    for (int rows = 1; rows <= 2; rows++) {
        for (int with_bias = 0; with_bias < 2; with_bias++) {
            for (int i = 0; i < N * M; i++) out[i] = NAN;
            be->matmul_fwd(kc, out, inp, w, with_bias ? bias : NULL, rows, K, M);
            for (int n = 0; n < rows; n++)
                for (int m = 0; m < M; m++) want[n * M + m] = mm_ref(with_bias ? &a : &a_nobias, n, m);
            CHECK_CLOSE(with_bias ? "matmul_fwd, few rows (bias)" : "matmul_fwd, few rows", out, want,
                        (size_t)rows * M, FWD_RTOL, FWD_ATOL);
            CHECK(isnan(out[rows * M])); /* nothing past the rows */
        }
    }

    double *fd_inp = fd_grad(mm_loss, &a, inp_d, N * K), *fd_w = fd_grad(mm_loss, &a, w_d, M * K);
    double *fd_bias = fd_grad(mm_loss, &a, bias_d, M);
    float *p_inp = rand_f(N * K, -1, 1), *p_w = rand_f(M * K, -1, 1), *p_bias = rand_f(M, -1, 1);
    double *w_inp = ct_test_plus_prefill(fd_inp, p_inp, N * K), *w_w = ct_test_plus_prefill(fd_w, p_w, M * K);
    double *w_bias = ct_test_plus_prefill(fd_bias, p_bias, M);

    /* all three gradients */
    float *dinp = ct_test_copy(p_inp, N * K), *dw = ct_test_copy(p_w, M * K), *dbias = ct_test_copy(p_bias, M);
    be->matmul_bwd(kc, dinp, dw, dbias, g, inp, w, N, K, M);
    CHECK_CLOSE("matmul_bwd dinp (prefilled)", dinp, w_inp, N * K, GRAD_RTOL, GRAD_ATOL);
    CHECK_CLOSE("matmul_bwd dw (prefilled)", dw, w_w, M * K, GRAD_RTOL, GRAD_ATOL);
    CHECK_CLOSE("matmul_bwd dbias (prefilled)", dbias, w_bias, M, GRAD_RTOL, GRAD_ATOL);

    /* frozen weight: dw = dbias = NULL, the input gradient alone */
    memcpy(dinp, p_inp, sizeof(float) * N * K);
    be->matmul_bwd(kc, dinp, NULL, NULL, g, inp, w, N, K, M);
    CHECK_CLOSE("matmul_bwd dinp (dw, dbias NULL)", dinp, w_inp, N * K, GRAD_RTOL, GRAD_ATOL);

    /* first layer of a branch: dinp = NULL */
    memcpy(dw, p_w, sizeof(float) * M * K);
    memcpy(dbias, p_bias, sizeof(float) * M);
    be->matmul_bwd(kc, NULL, dw, dbias, g, inp, w, N, K, M);
    CHECK_CLOSE("matmul_bwd dw (dinp NULL)", dw, w_w, M * K, GRAD_RTOL, GRAD_ATOL);
    CHECK_CLOSE("matmul_bwd dbias (dinp NULL)", dbias, w_bias, M, GRAD_RTOL, GRAD_ATOL);

    /* a bias-free layer: dinp and dbias NULL */
    memcpy(dw, p_w, sizeof(float) * M * K);
    be->matmul_bwd(kc, NULL, dw, NULL, g, inp, w, N, K, M);
    CHECK_CLOSE("matmul_bwd dw (dinp, dbias NULL)", dw, w_w, M * K, GRAD_RTOL, GRAD_ATOL);

    free(inp); free(w); free(bias); free(g); free(inp_d); free(w_d); free(bias_d); free(g_d);
    free(out); free(want); free(fd_inp); free(fd_w); free(fd_bias); free(p_inp); free(p_w); free(p_bias);
    free(w_inp); free(w_w); free(w_bias); free(dinp); free(dw); free(dbias);
}

/* ------------------------------------------------------------------ gelu */

static const double gelu_s = 0.79788456080286535588; /* sqrt(2/pi) */

static double gelu_ref(double x) { return 0.5 * x * (1.0 + tanh(gelu_s * (x + 0.044715 * x * x * x))); }

static double gelu_ref_grad(double x)
{
    double t = tanh(gelu_s * (x + 0.044715 * x * x * x));
    return 0.5 * (1.0 + t) + 0.5 * x * (1.0 - t * t) * gelu_s * (1.0 + 3.0 * 0.044715 * x * x);
}

typedef struct {
    const double *x, *g;
    size_t n;
} ew_args;

static double gelu_loss(const void *p)
{
    const ew_args *a = p;
    double L = 0;
    for (size_t i = 0; i < a->n; i++) L += a->g[i] * gelu_ref(a->x[i]);
    return L;
}

static void test_gelu(void)
{
    enum { N = 1001 };
    float *x = rand_f(N, -6, 6), *g = rand_f(N, -1, 1);
    const float special[] = {0.0f, -0.0f, 1e-4f, -1e-4f, 9.99f, -9.99f, 10.0f, -10.0f, 3.0f, -3.0f};
    memcpy(x, special, sizeof special);
    double *x_d = ct_test_to_d(x, N), *g_d = ct_test_to_d(g, N);
    ew_args a = {x_d, g_d, N};

    float *out = rand_f(N, -9, 9);
    double *want = ct_test_alloc_d(N);
    be->gelu_fwd(kc, out, x, N);
    for (int i = 0; i < N; i++) want[i] = gelu_ref(x_d[i]);
    CHECK_CLOSE("gelu_fwd out", out, want, N, FWD_RTOL, FWD_ATOL);

    float *dx = rand_f(N, -1, 1), *p_dx = ct_test_copy(dx, N);
    be->gelu_bwd(kc, dx, x, g, N);
    double *fd_x = fd_grad(gelu_loss, &a, x_d, N), *w_dx = ct_test_plus_prefill(fd_x, p_dx, N);
    CHECK_CLOSE("gelu_bwd dinp (prefilled)", dx, w_dx, N, GRAD_RTOL, GRAD_ATOL);

    /* a dense sweep over [-12, 12] against the closed forms, tighter than the random check */
    enum { S = 24 * 512 + 1 };
    float *sx = ct_test_alloc(S), *sy = ct_test_alloc(S), *sd = ct_test_alloc(S), *ones = ct_test_alloc(S);
    double *sw = ct_test_alloc_d(S), *sg = ct_test_alloc_d(S);
    for (int i = 0; i < S; i++) {
        sx[i] = -12.0f + (float)i / 512.0f;
        ones[i] = 1.0f;
        sw[i] = gelu_ref(sx[i]);
        sg[i] = gelu_ref_grad(sx[i]);
    }
    be->gelu_fwd(kc, sy, sx, S);
    be->gelu_bwd(kc, sd, sx, ones, S);
    CHECK_CLOSE("gelu_fwd sweep", sy, sw, S, 5e-6, 1e-10);
    /* the slope crosses 0 near x = -0.75 as a difference of O(0.3) terms: an absolute floor */
    CHECK_CLOSE("gelu_bwd sweep", sd, sg, S, 5e-6, 4e-7);

    /* far outside: exactly x (slope 1) above, exactly 0 (slope 0) below, NaN stays NaN */
    const float big[] = {1e4f, -1e4f, 1e19f, -1e19f, 1e30f, -1e30f, INFINITY, -INFINITY, NAN};
    enum { NB = sizeof big / sizeof big[0] };
    float by[NB], bd[NB] = {0}, b1[NB];
    for (int i = 0; i < NB; i++) b1[i] = 1.0f;
    be->gelu_fwd(kc, by, big, NB);
    be->gelu_bwd(kc, bd, big, b1, NB);
    for (int i = 0; i < NB - 1; i++) {
        CHECK(by[i] == (big[i] > 0 ? big[i] : 0.0f));
        CHECK(bd[i] == (big[i] > 0 ? 1.0f : 0.0f));
    }
    CHECK(isnan(by[NB - 1]) && isnan(bd[NB - 1]));

    free(x); free(g); free(x_d); free(g_d); free(out); free(want); free(dx); free(p_dx); free(fd_x);
    free(w_dx); free(sx); free(sy); free(sd); free(ones); free(sw); free(sg);
}

/* ------------------------------------------------------------------ residual */

static double residual_loss(const void *p)
{
    const ew_args *a = p; /* x holds a then b, n elements each */
    double L = 0;
    for (size_t i = 0; i < a->n; i++) L += a->g[i] * (a->x[i] + a->x[a->n + i]);
    return L;
}

static void test_residual(void)
{
    enum { N = 1001 };
    float *ab = rand_f(2 * N, -2, 2), *g = rand_f(N, -1, 1);
    double *ab_d = ct_test_to_d(ab, 2 * N), *g_d = ct_test_to_d(g, N);
    ew_args a = {ab_d, g_d, N};

    float *out = rand_f(N, -9, 9);
    double *want = ct_test_alloc_d(N);
    be->residual_fwd(kc, out, ab, ab + N, N);
    for (int i = 0; i < N; i++) want[i] = ab_d[i] + ab_d[N + i];
    CHECK_CLOSE("residual_fwd out", out, want, N, FWD_RTOL, FWD_ATOL);

    float *dab = rand_f(2 * N, -1, 1), *p_dab = ct_test_copy(dab, 2 * N);
    be->residual_bwd(kc, dab, dab + N, g, N);
    double *fd = fd_grad(residual_loss, &a, ab_d, 2 * N), *w_dab = ct_test_plus_prefill(fd, p_dab, 2 * N);
    CHECK_CLOSE("residual_bwd da (prefilled)", dab, w_dab, N, GRAD_RTOL, GRAD_ATOL);
    CHECK_CLOSE("residual_bwd db (prefilled)", dab + N, w_dab + N, N, GRAD_RTOL, GRAD_ATOL);

    /* out = x + x: da and db are one buffer, which must receive dout twice */
    float *dx = ct_test_copy(p_dab, N);
    double *w_dx = ct_test_alloc_d(N);
    for (int i = 0; i < N; i++) w_dx[i] = p_dab[i] + 2.0 * g_d[i];
    be->residual_bwd(kc, dx, dx, g, N);
    CHECK_CLOSE("residual_bwd da == db", dx, w_dx, N, GRAD_RTOL, GRAD_ATOL);

    free(ab); free(g); free(ab_d); free(g_d); free(out); free(want); free(dab); free(p_dab); free(fd);
    free(w_dab); free(dx); free(w_dx);
}

/* ------------------------------------------------------------------ determinism */

/* Each det_* runs an op's forward and backward on sizes large enough to take the parallel
 * paths, from inputs rebuilt from a fixed seed, and writes every output into res; with
 * res == NULL it only returns how many floats it writes. */
typedef size_t (*det_fn)(float *res);

static size_t det_encoder_pos(float *res, int packed)
{
    enum { B = 4, T = 64, C = 771, V = 50 };
    size_t total = (size_t)B * T * C + V * C + T * C;
    if (!res) return total;
    uint64_t s = 11;
    int32_t tokens[B * T], pos[B * T];
    for (int i = 0; i < B * T; i++) tokens[i] = (int32_t)(ct_test_rand_u64(&s) % V); /* ~5 repeats each */
    for (int i = 0; i < B * T; i++) pos[i] = i % T && i % 23 ? pos[i - 1] + 1 : 0; /* packed documents */
    const int32_t *p = packed ? pos : NULL;
    float *wte = ct_test_alloc(V * C), *wpe = ct_test_alloc(T * C), *g = ct_test_alloc((size_t)B * T * C);
    ct_test_fill(wte, V * C, &s, -1, 1);
    ct_test_fill(wpe, T * C, &s, -1, 1);
    ct_test_fill(g, (size_t)B * T * C, &s, -1, 1);
    float *out = res, *dwte = res + (size_t)B * T * C, *dwpe = dwte + V * C;
    ct_test_fill(dwte, V * C + T * C, &s, -1, 1); /* prefilled, as a second micro-batch sees it */
    be->encoder_fwd(kc, out, tokens, p, wte, wpe, B, T, C);
    be->encoder_bwd(kc, dwte, dwpe, g, tokens, p, B, T, C);
    free(wte); free(wpe); free(g);
    return total;
}
static size_t det_encoder(float *res) { return det_encoder_pos(res, 0); }
static size_t det_encoder_packed(float *res) { return det_encoder_pos(res, 1); }

static size_t det_layernorm(float *res)
{
    enum { N = 129, C = 771 };
    size_t total = 2 * (size_t)N * C + 2 * N + 2 * C;
    if (!res) return total;
    uint64_t s = 12;
    float *x = ct_test_alloc(N * C), *w = ct_test_alloc(C), *b = ct_test_alloc(C), *g = ct_test_alloc(N * C);
    ct_test_fill(x, N * C, &s, -3, 5);
    ct_test_fill(w, C, &s, -1, 1);
    ct_test_fill(b, C, &s, -1, 1);
    ct_test_fill(g, N * C, &s, -1, 1);
    float *out = res, *mean = out + N * C, *rstd = mean + N, *dx = rstd + N, *dw = dx + N * C, *db = dw + C;
    ct_test_fill(dx, (size_t)N * C + 2 * C, &s, -1, 1);
    be->layernorm_fwd(kc, out, mean, rstd, x, w, b, N, C, 1e-5f);
    be->layernorm_bwd(kc, dx, dw, db, g, x, w, mean, rstd, N, C);
    free(x); free(w); free(b); free(g);
    return total;
}

static size_t det_matmul(float *res)
{
    enum { N = 130, K = 257, M = 193 };
    size_t total = (size_t)N * M + N * K + M * K + M;
    if (!res) return total;
    uint64_t s = 13;
    float *inp = ct_test_alloc(N * K), *w = ct_test_alloc(M * K), *bias = ct_test_alloc(M);
    float *g = ct_test_alloc(N * M);
    ct_test_fill(inp, N * K, &s, -1, 1);
    ct_test_fill(w, M * K, &s, -1, 1);
    ct_test_fill(bias, M, &s, -1, 1);
    ct_test_fill(g, N * M, &s, -1, 1);
    float *out = res, *dinp = out + N * M, *dw = dinp + N * K, *dbias = dw + M * K;
    ct_test_fill(dinp, (size_t)N * K + M * K + M, &s, -1, 1);
    be->matmul_fwd(kc, out, inp, w, bias, N, K, M);
    be->matmul_bwd(kc, dinp, dw, dbias, g, inp, w, N, K, M);
    free(inp); free(w); free(bias); free(g);
    return total;
}

static size_t det_elementwise(float *res)
{
    enum { N = 100003 };
    size_t total = 4 * (size_t)N;
    if (!res) return total;
    uint64_t s = 14;
    float *x = ct_test_alloc(N), *y = ct_test_alloc(N), *g = ct_test_alloc(N);
    ct_test_fill(x, N, &s, -8, 8);
    ct_test_fill(y, N, &s, -8, 8);
    ct_test_fill(g, N, &s, -1, 1);
    ct_test_fill(res, total, &s, -1, 1);
    be->gelu_fwd(kc, res, x, N);
    be->gelu_bwd(kc, res + N, x, g, N);
    be->residual_fwd(kc, res + 2 * N, x, y, N);
    be->residual_bwd(kc, res + 3 * N, res + N, g, N);
    free(x); free(y); free(g);
    return total;
}

static void check_deterministic(const char *what, det_fn f)
{
    size_t n = f(NULL);
    float *first = ct_test_alloc(n), *again = ct_test_alloc(n);
    int saved = omp_get_max_threads();
    /* every thread count, then the first one again: run-to-run and across thread counts */
    for (int i = 0; i <= N_THREAD_COUNTS; i++) {
        int nt = thread_counts[i % N_THREAD_COUNTS];
        omp_set_num_threads(nt);
        f(i == 0 ? first : again);
        if (i > 0 && memcmp(first, again, n * sizeof(float)) != 0) {
            fprintf(stderr, "%s: results with %d thread(s) differ from those with %d\n", what, nt,
                    thread_counts[0]);
            ct_test_failures++;
        }
    }
    omp_set_num_threads(saved);
    digest_add(first, n);
    free(first);
    free(again);
}

int main(void)
{
    be = ct_backend_cpu();
    kc = be->kctx_init(0);
    CHECK(be && kc && be->elem_size == sizeof(float));

    test_encoder(0);
    test_encoder(1);
    test_encoder_pos_identity();
    test_encoder_null(3, 5, 37, 13);
    test_encoder_null(4, 64, 771, 50);
    test_encoder_nopos(3, 5, 37, 13);
    test_encoder_nopos(4, 64, 771, 50);
    test_layernorm();
    test_layernorm_null(7, 37);
    test_layernorm_null(129, 771);
    test_matmul();
    test_gelu();
    test_residual();

    check_deterministic("encoder", det_encoder);
    check_deterministic("encoder (packed documents)", det_encoder_packed);
    check_deterministic("layernorm", det_layernorm);
    check_deterministic("matmul", det_matmul);
    check_deterministic("gelu+residual", det_elementwise);
    printf("determinism digest %016llx\n", (unsigned long long)digest);

    be->kctx_free(kc);
    return ct_test_finish("test_kernels_basic");
}
