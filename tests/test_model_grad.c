/* test_model_grad.c — each family's whole gradient against central finite differences on a
 * tiny config (GPT-2; a Llama with grouped-query heads, every bias, an untied head, llama3 RoPE
 * and a sliding window shorter than the sequence), with one sequence a row and with packed
 * documents (positions restarting, attention masked to each document), plus the model's
 * contracts: gradients accumulate across backward calls, runs are bit-identical, decoding over
 * the KV cache gives the forward's logits, a packed row's loss and gradient are the sums of its
 * documents' computed alone, positions 0..T-1 give the bits of none, bad tokens, shapes and
 * positions are errors. (tests/reference/ compares every gradient with PyTorch's to 1e-4; this
 * test needs no Python.) */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "check.h"
#include "model_test.h"
#include "model.h"

#include "hf_config.h"

static ct_model_config cfg; /* the family under test (main) */
static const ct_model_config gpt2_cfg = {.vocab_size = 11, .max_seq_len = 7, .n_layer = 2, .n_head = 2,
                                         .n_embd = 8, .norm_eps = 1e-5f};
static ct_model_config llama_cfg(void)
{
    return (ct_model_config){.arch = ct_arch_by_name("llama"), .model_type = "llama", .vocab_size = 11,
                             .max_seq_len = 7, .n_layer = 2, .n_head = 4, .n_kv_head = 2, .n_embd = 16,
                             .n_inner = 12, .norm_eps = 1e-5f, .untied = 1, .qkv_bias = 1, .o_bias = 1,
                             .mlp_bias = 1, .rope_theta = 100.0, .rope_llama3 = 1, .rope_factor = 4,
                             .rope_low_freq = 1, .rope_high_freq = 4, .rope_orig_max = 4, .window = 3,
                             .window_from = 1};
}
enum { B = 2, T = 5 };

static int32_t tokens[B * T], targets[B * T];
/* packed documents: row 0 holds two (2 and 3 tokens), row 1 three (3, 1, 1) */
static const int32_t docs[B * T] = {0, 1, 0, 1, 2, 0, 1, 2, 0, 0};
static const int32_t *pos; /* the positions the tests run with: NULL or docs */

/* on this file's tokens, targets and positions */
static double mean_loss_w(ct_model *m, float dloss) { return ct_test_mean_loss(m, tokens, targets, pos, B, T, dloss); }
static long count_targets(void) { return ct_test_count_targets(targets, B * T); }

/* The derivative along d by Richardson-extrapolated central differences (model_test.h). */
static double fd_along(ct_model *m, float *w, const float *saved, const float *d, size_t n)
{
    return ct_test_fd(m, tokens, targets, pos, B, T, w, saved, d, n, 1e-3);
}

/* Per tensor: the directional derivative along a random direction, and the few elements with
 * the largest gradient, against central differences of the fp32 loss. */
static void test_finite_differences(ct_model *m, uint64_t *rng)
{
    float *p = ct_model_params(m);
    size_t n = ct_model_numel(m);
    float *g = malloc(n * sizeof(float));
    long ntok = count_targets();
    ct_model_zero_grad(m); /* before the forward, which adds the LM head's gradient */
    mean_loss_w(m, 1.0f / (float)ntok);
    ct_model_backward(m, NULL, NULL);
    memcpy(g, ct_model_grads(m), n * sizeof(float));
    for (int i = 0; i < ct_model_num_tensors(m); i++) {
        const ct_param *t = ct_model_tensor(m, i);
        float *w = p + t->offset;
        const float *gw = g + t->offset;
        /* directional derivative */
        float *d = ct_test_alloc(t->numel), *saved = ct_test_alloc(t->numel);
        ct_test_fill(d, t->numel, rng, -1.0f, 1.0f);
        memcpy(saved, w, t->numel * sizeof(float));
        double analytic = 0;
        for (size_t k = 0; k < t->numel; k++) analytic += (double)gw[k] * d[k];
        float got = (float)analytic;
        double want = fd_along(m, w, saved, d, t->numel);
        char what[160];
        snprintf(what, sizeof what, "%s: directional derivative%s", t->name, pos ? " (packed documents)" : "");
        CHECK_CLOSE(what, &got, &want, 1, 1e-2, 3e-4);
        /* the three largest-gradient elements */
        for (int j = 0; j < 3; j++) {
            size_t best = 0;
            for (size_t k = 0; k < t->numel; k++)
                if (fabsf(gw[k]) * (d[k] != 2.0f) > fabsf(gw[best]) * (d[best] != 2.0f)) best = k;
            d[best] = 2.0f; /* mark as used */
            const float one = 1.0f;
            want = fd_along(m, w + best, saved + best, &one, 1);
            snprintf(what, sizeof what, "%s[%zu]%s", t->name, best, pos ? " (packed documents)" : "");
            CHECK_CLOSE(what, &gw[best], &want, 1, 1e-2, 3e-4);
        }
        free(d);
        free(saved);
    }
    free(g);
}

static void test_contracts(ct_model *m)
{
    size_t n = ct_model_numel(m);
    long ntok = count_targets();
    float *once = malloc(n * 4), *again = malloc(n * 4);
    ct_model_zero_grad(m);
    double l1 = mean_loss_w(m, 1.0f / (float)ntok);
    ct_model_backward(m, NULL, NULL);
    memcpy(once, ct_model_grads(m), n * 4);

    /* determinism: the same forward and backward give the same bits */
    ct_model_zero_grad(m);
    double l2 = mean_loss_w(m, 1.0f / (float)ntok);
    CHECK(l1 == l2);
    ct_model_backward(m, NULL, NULL);
    CHECK(!memcmp(once, ct_model_grads(m), n * 4));

    /* accumulation: a second backward (micro-batch) adds; dloss scales linearly. This one
     * announces its finished ranges: they partition the buffer and are final when announced. */
    mean_loss_w(m, 1.0f / (float)ntok);
    ct_test_ready ready;
    ct_test_ready_init(&ready, ct_model_grads(m), n);
    ct_model_backward(m, ct_test_ready_cb, &ready);
    CHECK_READY("full model backward", &ready);
    CHECK(ready.ranges == cfg.n_layer + 2);
    memcpy(again, ct_model_grads(m), n * 4);
    double *want = ct_test_alloc_d(n);
    for (size_t i = 0; i < n; i++) want[i] = 2.0 * once[i];
    CHECK_CLOSE("two backward calls add up", again, want, n, 1e-6, 1e-9);
    ct_model_zero_grad(m);
    mean_loss_w(m, 4.0f / (float)ntok);
    ct_model_backward(m, NULL, NULL); /* 4/ntok: a power of two times the first, so exact */
    for (size_t i = 0; i < n; i++) want[i] = 4.0 * once[i];
    CHECK_CLOSE("dloss scales the gradient", ct_model_grads(m), want, n, 0, 0);

    /* logits-only forward: softmax(logits) gives the loss the loss forward gave */
    char err[256];
    CHECK(ct_model_forward(m, tokens, NULL, pos, B, T, 0.0f, NULL, NULL, err, sizeof err) == 0);
    const float *logits = ct_model_logits(m);
    const int ld = ct_model_logits_stride(m);
    CHECK(ld >= cfg.vocab_size && ld % 64 == 0);
    double sum = 0;
    for (int i = 0; i < B * T; i++) {
        for (int v = cfg.vocab_size; v < ld; v++) CHECK(logits[(size_t)i * ld + v] == 0.0f); /* padding */
        if (targets[i] < 0) continue;
        const float *row = logits + (size_t)i * ld;
        double mx = row[0], z = 0;
        for (int v = 1; v < cfg.vocab_size; v++) mx = fmax(mx, row[v]);
        for (int v = 0; v < cfg.vocab_size; v++) z += exp(row[v] - mx);
        sum += log(z) + mx - row[targets[i]];
    }
    float got = (float)l1;
    double ref = sum / ntok;
    CHECK_CLOSE("loss from logits", &got, &ref, 1, 1e-5, 0);

    /* bad input: errors, no computation */
    int32_t bad[B * T];
    memcpy(bad, tokens, sizeof bad);
    bad[3] = cfg.vocab_size;
    double ls;
    long nt;
    CHECK(ct_model_forward(m, bad, targets, NULL, B, T, 0.0f, &ls, &nt, err, sizeof err) == -1 && strstr(err, "vocabulary"));
    CHECK(ct_model_forward(m, tokens, bad, NULL, B, T, 0.0f, &ls, &nt, err, sizeof err) == -1 && strstr(err, "target"));
    CHECK(ct_model_forward(m, tokens, targets, NULL, B + 1, T, 0.0f, &ls, &nt, err, sizeof err) == -1);
    CHECK(ct_model_forward(m, tokens, targets, NULL, B, cfg.max_seq_len + 1, 0.0f, &ls, &nt, err, sizeof err) == -1);
    free(want);
    free(once);
    free(again);
}

/* Decoding row 0 over the KV cache (a prefix of 3, then one token at a time) gives the logits
 * a forward of the whole row gives. */
static void test_decode(ct_model *m)
{
    char err[256];
    const int ld = ct_model_logits_stride(m), V = cfg.vocab_size;
    CHECK(ct_model_forward(m, tokens, NULL, NULL, 1, T, 0.0f, NULL, NULL, err, sizeof err) == 0);
    float *want_f = malloc(sizeof(float) * T * ld);
    memcpy(want_f, ct_model_logits(m), sizeof(float) * T * ld);
    for (int pos = 0; pos < T;) {
        int n = pos ? 1 : 3;
        CHECK(ct_model_decode(m, tokens + pos, 1, n, pos, err, sizeof err) == 0);
        const float *got = ct_model_logits(m);
        for (int r = 0; r < n; r++) {
            double want[64];
            for (int v = 0; v < V; v++) want[v] = want_f[(size_t)(pos + r) * ld + v];
            char what[64];
            snprintf(what, sizeof what, "%s decode: position %d", cfg.model_type, pos + r);
            CHECK_CLOSE(what, got + (size_t)r * ld, want, (size_t)V, 1e-4, 1e-5); /* another summation order */
        }
        pos += n;
    }
    CHECK(ct_model_decode(m, tokens, 1, 2, T - 1, err, sizeof err) == -1 && strstr(err, "allocation"));
    CHECK(ct_model_decode(m, tokens, B + 1, 1, 0, err, sizeof err) == -1);
    free(want_f);
}

/* The packed rows' loss and gradient (dloss 1: the summed loss) against each document run
 * alone as a row of its own, its positions 0..len-1, the sums over documents. The targets that
 * cross a document boundary are not counted in either (as the loader drops them). Also:
 * positions 0..T-1 given explicitly give the bits of NULL, and positions that break the rule or
 * reach max_seq_len are errors. */
static void test_packed(ct_model *m)
{
    char err[256];
    const size_t n = ct_model_numel(m);
    int32_t tg[B * T];
    for (int i = 0; i < B * T; i++) tg[i] = i % T + 1 < T && docs[i + 1] == 0 ? -1 : targets[i];
    double packed_sum, alone_sum = 0, s;
    long packed_n, alone_n = 0, k;
    ct_model_zero_grad(m);
    CHECK(ct_model_forward(m, tokens, tg, docs, B, T, 1.0f, &packed_sum, &packed_n, err, sizeof err) == 0);
    ct_model_backward(m, NULL, NULL);
    float *packed_g = ct_test_copy(ct_model_grads(m), n);
    ct_model_zero_grad(m);
    for (int b = 0; b < B; b++)
        for (int t0 = 0, t1; t0 < T; t0 = t1) {
            for (t1 = t0 + 1; t1 < T && docs[b * T + t1]; t1++) {}
            const int i = b * T + t0;
            CHECK(ct_model_forward(m, tokens + i, tg + i, NULL, 1, t1 - t0, 1.0f, &s, &k, err, sizeof err) == 0);
            ct_model_backward(m, NULL, NULL); /* adds: the sum over documents */
            alone_sum += s;
            alone_n += k;
        }
    float got = (float)packed_sum;
    char what[96];
    snprintf(what, sizeof what, "%s: packed loss = its documents' alone", ct_model_config_of(m)->model_type);
    CHECK_CLOSE(what, &got, &alone_sum, 1, 1e-5, 0);
    CHECK(packed_n == alone_n && packed_n == ct_test_count_targets(tg, B * T));
    double *want = ct_test_to_d(ct_model_grads(m), n);
    snprintf(what, sizeof what, "%s: packed gradient = its documents' alone", ct_model_config_of(m)->model_type);
    CHECK_CLOSE(what, packed_g, want, n, 1e-4, 1e-6);
    free(want);

    /* positions 0..T-1: one document a row, exactly as without positions */
    int32_t plain[B * T];
    for (int i = 0; i < B * T; i++) plain[i] = i % T;
    double l0, l1;
    long n0, n1;
    ct_model_zero_grad(m);
    CHECK(ct_model_forward(m, tokens, targets, NULL, B, T, 1.0f, &l0, &n0, err, sizeof err) == 0);
    ct_model_backward(m, NULL, NULL);
    float *g0 = ct_test_copy(ct_model_grads(m), n);
    ct_model_zero_grad(m);
    CHECK(ct_model_forward(m, tokens, targets, plain, B, T, 1.0f, &l1, &n1, err, sizeof err) == 0);
    ct_model_backward(m, NULL, NULL);
    CHECK(l0 == l1 && n0 == n1 && !memcmp(g0, ct_model_grads(m), n * sizeof(float)));
    CHECK(l0 != packed_sum); /* the masks matter on these weights */

    /* bad positions: errors naming what is wrong, nothing computed */
    int32_t bad[B * T];
    memcpy(bad, docs, sizeof bad);
    bad[1] = 2; /* skips 1 */
    CHECK(ct_model_forward(m, tokens, targets, bad, B, T, 0.0f, &s, &k, err, sizeof err) == -1 &&
          strstr(err, "follows position 0"));
    memcpy(bad, docs, sizeof bad);
    bad[5] = 1; /* row 1 must begin a document */
    CHECK(ct_model_forward(m, tokens, targets, bad, B, T, 0.0f, &s, &k, err, sizeof err) == -1 &&
          strstr(err, "row 1, token 0"));
    memcpy(bad, docs, sizeof bad);
    bad[6] = -1;
    CHECK(ct_model_forward(m, tokens, targets, bad, B, T, 0.0f, &s, &k, err, sizeof err) == -1 &&
          strstr(err, "outside"));
    bad[6] = cfg.max_seq_len; /* GPT-2 has no embedding for it */
    CHECK(ct_model_forward(m, tokens, targets, bad, B, T, 0.0f, &s, &k, err, sizeof err) == -1 &&
          strstr(err, "max_seq_len"));
    free(packed_g);
    free(g0);
}

static void test_bad_configs(void)
{
    const ct_backend *be = ct_backend_cpu();
    ct_model *m = (ct_model *)1;
    char err[256];
    ct_model_config c = cfg;
    c.n_embd = 9;
    CHECK(ct_model_init(&m, &c, be, be->kctx_init(0), 1, 4, 1, err, sizeof err) == -1 && m == NULL &&
          strstr(err, "n_head"));
    c = gpt2_cfg; /* GPT-2 takes odd head sizes; rotary positions need even ones */
    c.n_embd = 9, c.n_head = 3;
    CHECK(ct_model_init(&m, &c, be, be->kctx_init(0), 1, 4, 1, err, sizeof err) == 0);
    ct_model_free(m);
    c = llama_cfg();
    c.n_embd = 12, c.n_head = 4; /* head_dim 3 */
    CHECK(ct_model_init(&m, &c, be, be->kctx_init(0), 1, 4, 1, err, sizeof err) == -1 && strstr(err, "head_dim"));
    c = cfg;
    c.n_layer = 0;
    CHECK(ct_model_init(&m, &c, be, be->kctx_init(0), 1, 4, 1, err, sizeof err) == -1 && strstr(err, "n_layer"));
    CHECK(ct_model_init(&m, &cfg, be, be->kctx_init(0), 1, cfg.max_seq_len + 1, 1, err, sizeof err) == -1 &&
          strstr(err, "max_seq_len"));
    /* limits, named before anything is allocated (a checkpoint's shape or model.* keys) */
    c = cfg;
    c.n_layer = CT_MAX_LAYERS + 1;
    CHECK(ct_model_init(&m, &c, be, be->kctx_init(0), 1, 4, 1, err, sizeof err) == -1 &&
          strstr(err, "model.n_layer: 1025 is more than ctrain's limit of 1024"));
    c = cfg;
    c.vocab_size = CT_MAX_VOCAB, c.n_embd = CT_MAX_WIDTH, c.n_head = 256, c.untied = 1;
    c.arch = ct_arch_by_name("llama"), c.n_kv_head = 0, c.head_dim = 0, c.n_inner = 8;
    CHECK(ct_model_init(&m, &c, be, be->kctx_init(0), 1, 4, 1, err, sizeof err) == -1 &&
          strstr(err, "parameters"));
    /* B x T past 2^31 tokens */
    c = gpt2_cfg;
    c.max_seq_len = 1 << 16;
    CHECK(ct_model_init(&m, &c, be, be->kctx_init(0), 1 << 16, 1 << 16, 1, err, sizeof err) == -1 && m == NULL &&
          strstr(err, "too large"));
    /* a shape within every limit whose memory the machine does not have: refused, not the OOM
     * killer (GPT-2's learned positions: 2^23 x 2^16 floats = 2 TiB) */
    long pages = sysconf(_SC_PHYS_PAGES), page = sysconf(_SC_PAGESIZE);
    if (pages > 0 && page > 0 && (double)pages * page < 0x1p40) {
        c = gpt2_cfg;
        c.max_seq_len = 1 << 23, c.n_embd = CT_MAX_WIDTH, c.n_head = 64;
        CHECK(ct_model_init(&m, &c, be, be->kctx_init(0), 1, 4, 1, err, sizeof err) == -1 && m == NULL &&
              strstr(err, "needs more than this machine's"));
    }
}

static void test_family(void)
{
    const ct_backend *be = ct_backend_cpu();
    ct_kctx *ctx = be->kctx_init(0);
    /* GPT-2's perturbation makes this Llama's scores so sharp that fp32 rounding of the loss
     * swamps finite differences: smaller weights keep it smooth */
    int llama = cfg.arch == ct_arch_by_name("llama");
    ct_model *m = ct_test_tiny_model(&cfg, be, ctx, B, T, llama ? 1.0f : 3.0f, llama ? 0.15f : 0.3f);
    uint64_t rng = 99;
    for (int i = 0; i < B * T; i++) {
        tokens[i] = (int32_t)(ct_test_rand_u64(&rng) % cfg.vocab_size);
        targets[i] = (int32_t)(ct_test_rand_u64(&rng) % cfg.vocab_size);
    }
    targets[1] = targets[7] = -1;
    pos = NULL;
    test_finite_differences(m, &rng);
    test_contracts(m);
    pos = docs;
    test_finite_differences(m, &rng);
    test_contracts(m);
    pos = NULL;
    test_packed(m);
    test_decode(m);
    ct_model_free(m);
}

/* A backend without an op a family needs: the model names the op instead of running. */
static void test_missing_ops(void)
{
    ct_backend partial = *ct_backend_cpu();
    partial.rope_fwd = NULL;
    ct_model *m = NULL;
    char err[256] = "";
    ct_model_config c = llama_cfg();
    CHECK(ct_model_init(&m, &c, &partial, partial.kctx_init(0), 1, 4, 1, err, sizeof err) == -1 && m == NULL &&
          strstr(err, "no rope_fwd op") && strstr(err, "llama"));
    c = gpt2_cfg; /* GPT-2 needs no RoPE */
    CHECK(ct_model_init(&m, &c, &partial, partial.kctx_init(0), 1, 4, 1, err, sizeof err) == 0);
    partial.attention_decode = NULL; /* the model keeps the table: decoding now lacks an op */
    int32_t tok[1] = {1};
    CHECK(ct_model_decode(m, tok, 1, 1, 0, err, sizeof err) == -1 && strstr(err, "attention_decode"));
    ct_model_free(m);
}

int main(void)
{
    test_missing_ops();
    cfg = gpt2_cfg;
    test_family();
    test_bad_configs();
    cfg = llama_cfg();
    test_family();
    return ct_test_finish("test_model_grad");
}
