/* test_lora.c — LoRA as PEFT does it, on a tiny GPT-2 on the CPU backend: which modules a
 * target selects, PEFT's initialisation and a frozen base, adapters that start as a no-op,
 * the adapters' gradient against central finite differences through the whole model (with
 * and without dropout), merging into the base (and the merged model through a Hugging Face
 * folder), PEFT adapter folders written and read back, malformed adapter folders giving
 * errors that name the file and the field or tensor, and rsLoRA's scale. (tests/reference/
 * compares with peft itself; this test needs no Python.) */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "check.h"
#include "model_test.h"
#include "config.h"
#include "model.h"
#include "hf_model.h"
#include "lora.h"
#include "safetensors.h"

static const ct_model_config cfg = {.vocab_size = 11, .max_seq_len = 7, .n_layer = 2, .n_head = 2, .n_embd = 8,
                                   .norm_eps = 1e-5f};
enum { B = 2, T = 7, C = 8, V = 11, NLOGITS = B * T * V };

static int32_t tokens[B * T], targets[B * T];
static char tmpdir[64];
static const ct_backend *be;
static ct_kctx *ctx;

/* ---------------------------------------------------------------- helpers */

/* The base: a tiny GPT-2 with perturbed weights (model_test.h), the same on every call. */
static ct_model *make_base(void) { return ct_test_tiny_model(&cfg, be, ctx, B, T, 3.0f, 0.3f); }

static ct_lora_spec make_spec(const char *tg, int r, float alpha, float dropout, int rslora)
{
    ct_lora_spec s;
    memset(&s, 0, sizeof s);
    snprintf(s.targets, sizeof s.targets, "%s", tg);
    s.r = r;
    s.alpha = alpha;
    s.dropout = dropout;
    s.rslora = rslora;
    return s;
}

static ct_model *make_lora(const ct_lora_spec *s, uint64_t seed)
{
    ct_model *m = make_base();
    char err[1024];
    if (ct_lora_add(m, s, seed, 1, err, sizeof err)) {
        fprintf(stderr, "ct_lora_add(\"%s\"): %s\n", s->targets, err);
        exit(2);
    }
    return m;
}

/* Every lora_B tensor to U(-0.5, 0.5) (the cpu backend's memory is host memory). */
static void randomize_B(ct_model *m, uint64_t seed)
{
    ct_trainable tr = ct_model_trainable(m);
    float *p = tr.params;
    for (int i = 0; i < tr.ntensors; i++)
        if (strstr(tr.tensors[i].name, ".lora_B."))
            ct_test_fill(p + tr.tensors[i].offset, tr.tensors[i].numel, &seed, -0.5f, 0.5f);
}

/* Logits of a forward without targets, copied out. */
static float *logits_of(ct_model *m)
{
    char err[256];
    if (ct_model_forward(m, tokens, NULL, NULL, B, T, 0.0f, NULL, NULL, err, sizeof err)) {
        fprintf(stderr, "forward: %s\n", err);
        exit(2);
    }
    float *out = ct_test_alloc(NLOGITS);
    const float *lg = ct_model_logits(m);
    const int ld = ct_model_logits_stride(m);
    for (int i = 0; i < B * T; i++) memcpy(out + (size_t)i * V, lg + (size_t)i * ld, V * sizeof(float));
    return out;
}

/* on this file's tokens and targets */
static double mean_loss_w(ct_model *m, float dloss) { return ct_test_mean_loss(m, tokens, targets, NULL, B, T, dloss); }
static double mean_loss(ct_model *m) { return mean_loss_w(m, 0.0f); }
static long count_targets(void) { return ct_test_count_targets(targets, B * T); }

/* got within rtol of want, relative to want's largest magnitude */
static void check_logits_close(const char *what, const float *got, const float *want, double rtol)
{
    double scale = 0;
    double *w = ct_test_alloc_d(NLOGITS);
    for (int i = 0; i < NLOGITS; i++) w[i] = want[i], scale = fmax(scale, fabs(want[i]));
    CHECK_CLOSE(what, got, w, NLOGITS, rtol, rtol * scale);
    free(w);
}

static void expect_err(const char *what, const char *err, const char *const *needles)
{
    for (; *needles; needles++) {
        if (!strstr(err, *needles)) {
            fprintf(stderr, "  %s: error message \"%s\" lacks \"%s\"\n", what, err, *needles);
            ct_test_failures++;
        }
    }
}

static char *subdir(const char *name)
{
    static char path[512];
    snprintf(path, sizeof path, "%s/%s", tmpdir, name);
    mkdir(path, 0777);
    return path;
}

static void write_file(const char *dir, const char *name, const char *text)
{
    char path[600];
    snprintf(path, sizeof path, "%s/%s", dir, name);
    FILE *f = fopen(path, "w");
    if (!f) { perror(path); exit(2); }
    fputs(text, f);
    fclose(f);
}

/* in and out features of a module named "transformer.h.N.<kind>" */
static void module_dims(const char *module, int *in, int *out)
{
    if (strstr(module, "attn.c_attn")) *in = C, *out = 3 * C;
    else if (strstr(module, "attn.c_proj")) *in = C, *out = C;
    else if (strstr(module, "mlp.c_fc")) *in = C, *out = 4 * C;
    else *in = 4 * C, *out = C; /* mlp.c_proj */
}

/* ---------------------------------------------------------------- 1. target matching, init */

/* ct_lora_add(targets) must give exactly the adapters of `modules` (in layer, then module
 * order), A then B, PEFT's names and shapes, PEFT's initialisation, and a frozen base. */
static void expect_targets(const char *tg, const char *const *modules)
{
    const int r = 2;
    ct_lora_spec s = make_spec(tg, r, 3.0f, 0.0f, 0);
    ct_model *m = make_base();
    size_t base_count = ct_model_count(m);
    char err[1024] = "";
    CHECK(ct_model_grads(m) == NULL); /* made on first need */
    CHECK(ct_model_alloc_grads(m, err, sizeof err) == 0 && ct_model_grads(m) != NULL && !ct_model_has_lora(m));
    int rc = ct_lora_add(m, &s, 5, 1, err, sizeof err);
    CHECK(rc == 0);
    if (rc) {
        fprintf(stderr, "  targets \"%s\": %s\n", tg, err);
        ct_model_free(m);
        return;
    }
    int nmod = 0;
    while (modules[nmod]) nmod++;
    ct_trainable tr = ct_model_trainable(m);
    if (tr.ntensors != 2 * nmod)
        fprintf(stderr, "  targets \"%s\": %d adapter tensors, want %d\n", tg, tr.ntensors, 2 * nmod);
    CHECK(tr.ntensors == 2 * nmod);
    CHECK(ct_model_has_lora(m));
    CHECK(ct_model_grads(m) == NULL); /* the base is frozen */
    CHECK(tr.params != NULL && tr.grads != NULL && tr.params != ct_model_params(m));
    const float *p = tr.params;
    size_t sum = 0, end = 0;
    for (int i = 0; i < tr.ntensors && i < 2 * nmod; i++) {
        const ct_param *t = &tr.tensors[i];
        int isB = i & 1, in, out;
        module_dims(modules[i / 2], &in, &out);
        char want[128];
        snprintf(want, sizeof want, "base_model.model.%s.lora_%c.weight", modules[i / 2], isB ? 'B' : 'A');
        if (strcmp(t->name, want)) {
            fprintf(stderr, "  targets \"%s\": tensor %d is '%s', want '%s'\n", tg, i, t->name, want);
            ct_test_failures++;
        }
        CHECK(t->ndim == 2);
        CHECK(t->shape[0] == (isB ? out : r) && t->shape[1] == (isB ? r : in));
        CHECK(t->numel == (size_t)r * (isB ? out : in));
        sum += t->numel;
        if (t->offset + t->numel > end) end = t->offset + t->numel;
        const float *v = p + t->offset;
        if (isB) {
            int zero = 1;
            for (size_t k = 0; k < t->numel; k++) zero &= v[k] == 0.0f;
            CHECK(zero); /* PEFT: B starts at zero */
        } else {
            float bound = 1.0f / sqrtf((float)in), mx = 0;
            int nonzero = 0;
            for (size_t k = 0; k < t->numel; k++) mx = fmaxf(mx, fabsf(v[k])), nonzero += v[k] != 0.0f;
            CHECK(mx <= bound);                            /* U(-1/sqrt(in), 1/sqrt(in)) */
            CHECK(mx > 0.5f * bound && nonzero == (int)t->numel); /* and not degenerate */
        }
    }
    /* the trainable view is the adapters only: their numbers plus alignment padding */
    CHECK(tr.numel >= sum && end <= tr.numel && tr.numel <= sum + 16 * (size_t)tr.ntensors);
    CHECK(tr.numel < base_count);
    CHECK(ct_model_count(m) == base_count); /* the base itself is unchanged */

    /* PEFT's print_trainable_parameters line */
    char line[256];
    ct_lora_describe(m, line, sizeof line);
    char *bar = strstr(line, " || all params: ");
    CHECK(bar != NULL);
    if (bar) {
        unsigned long long all = 0, trainable = 0;
        char digits[64];
        size_t w = 0;
        for (const char *c = bar + 16; *c && *c != ' ' && w + 1 < sizeof digits; c++)
            if (*c != ',') digits[w++] = *c;
        digits[w] = 0;
        all = strtoull(digits, NULL, 10);
        w = 0;
        for (const char *c = line + strlen("trainable params: "); c < bar && w + 1 < sizeof digits; c++)
            if (*c != ',') digits[w++] = *c;
        digits[w] = 0;
        trainable = strtoull(digits, NULL, 10);
        if (trainable != sum || all != base_count + sum) {
            fprintf(stderr, "  describe: \"%s\": want trainable %zu, all %zu\n", line, sum, base_count + sum);
            ct_test_failures++;
        }
    }
    /* adding twice is an error */
    CHECK(ct_lora_add(m, &s, 5, 1, err, sizeof err) == -1 && strstr(err, "already"));
    ct_model_free(m);
}

/* targets that select nothing: -1, a message naming the target and listing the module names,
 * and the model left as it was (no adapters, base not frozen) */
static void expect_no_match(const char *tg, const char *bad)
{
    ct_lora_spec s = make_spec(tg, 2, 3.0f, 0.0f, 0);
    ct_model *m = make_base();
    char err[1024] = "";
    CHECK(ct_lora_add(m, &s, 5, 1, err, sizeof err) == -1);
    const char *needles[] = {bad, "c_attn", "c_fc", "c_proj", NULL};
    expect_err(tg, err, needles);
    CHECK(!ct_model_has_lora(m) && ct_model_alloc_grads(m, err, sizeof err) == 0 && ct_model_grads(m) != NULL);
    ct_model_free(m);
}

static void test_targets(void)
{
    static const char *const c_attn[] = {"transformer.h.0.attn.c_attn", "transformer.h.1.attn.c_attn", NULL};
    expect_targets("c_attn", c_attn);
    static const char *const c_proj[] = {"transformer.h.0.attn.c_proj", "transformer.h.0.mlp.c_proj",
                                         "transformer.h.1.attn.c_proj", "transformer.h.1.mlp.c_proj", NULL};
    expect_targets("c_proj", c_proj);
    static const char *const all[] = {"transformer.h.0.attn.c_attn", "transformer.h.0.attn.c_proj",
                                      "transformer.h.0.mlp.c_fc",    "transformer.h.0.mlp.c_proj",
                                      "transformer.h.1.attn.c_attn", "transformer.h.1.attn.c_proj",
                                      "transformer.h.1.mlp.c_fc",    "transformer.h.1.mlp.c_proj",
                                      NULL};
    expect_targets("all-linear", all);
    static const char *const one[] = {"transformer.h.1.mlp.c_fc", NULL};
    expect_targets("transformer.h.1.mlp.c_fc", one);
    expect_targets("h.1.mlp.c_fc", one); /* a suffix at a '.' boundary */
    static const char *const two[] = {"transformer.h.0.attn.c_attn", "transformer.h.0.mlp.c_fc",
                                      "transformer.h.1.attn.c_attn", "transformer.h.1.mlp.c_fc", NULL};
    expect_targets("c_attn, c_fc", two);
    expect_targets(" c_fc ,c_attn ,", two); /* order and spaces do not matter */
    static const char *const attn_proj[] = {"transformer.h.0.attn.c_proj", "transformer.h.1.attn.c_proj", NULL};
    expect_targets("attn.c_proj", attn_proj);

    expect_no_match("q_proj", "q_proj");
    expect_no_match("c_attn, q_proj", "q_proj"); /* one bad target fails the whole list */
    expect_no_match("proj", "proj");             /* "c_proj" does not end with ".proj" */
    expect_no_match("transformer.h.2.attn.c_attn", "transformer.h.2.attn.c_attn"); /* no layer 2 */

    /* r <= 0 is an error, and the model keeps its base gradients */
    ct_lora_spec s = make_spec("c_attn", 0, 3.0f, 0.0f, 0);
    ct_model *m = make_base();
    char err[1024] = "";
    CHECK(ct_lora_add(m, &s, 5, 1, err, sizeof err) == -1 && strstr(err, "r must be positive"));
    CHECK(!ct_model_has_lora(m) && ct_model_alloc_grads(m, err, sizeof err) == 0 && ct_model_grads(m) != NULL);
    ct_model_free(m);

    /* sharded: the adapters' flat length is padded to the shard count */
    s = make_spec("c_attn", 2, 3.0f, 0.0f, 0);
    m = make_base();
    CHECK(ct_lora_add(m, &s, 5, 3, err, sizeof err) == 0);
    CHECK(ct_model_trainable(m).numel % 3 == 0);
    ct_model_free(m);

    /* A's initialisation is deterministic in the seed, and the seed matters */
    s = make_spec("all-linear", 2, 3.0f, 0.0f, 0);
    ct_model *a = make_lora(&s, 11), *b = make_lora(&s, 11), *c = make_lora(&s, 12);
    ct_trainable ta = ct_model_trainable(a), tb = ct_model_trainable(b), tc = ct_model_trainable(c);
    CHECK(!memcmp(ta.params, tb.params, ta.numel * sizeof(float)));
    CHECK(memcmp(ta.params, tc.params, ta.numel * sizeof(float)) != 0);
    ct_model_free(a);
    ct_model_free(b);
    ct_model_free(c);
}

/* ---------------------------------------------------------------- 2. a no-op at the start */

static void test_starts_as_base(void)
{
    static const float drops[] = {0.0f, 0.3f};
    for (int d = 0; d < 2; d++) {
        ct_model *base = make_base();
        float *want = logits_of(base);
        ct_lora_spec s = make_spec("all-linear", 2, 3.0f, drops[d], 0);
        ct_model *m = make_lora(&s, 3);
        ct_model_set_dropout_seed(m, 42);
        float *got = logits_of(m);
        if (memcmp(got, want, NLOGITS * sizeof(float))) {
            fprintf(stderr, "  dropout %g: logits with B = 0 differ from the base's\n", drops[d]);
            ct_test_failures++;
        }
        /* with B = 0 the loss's gradient w.r.t. A is exactly zero, w.r.t. B not */
        ct_model_zero_grad(m);
        mean_loss_w(m, 1.0f / (float)count_targets());
        ct_model_backward(m, NULL, NULL);
        ct_trainable tr = ct_model_trainable(m);
        const float *g = tr.grads;
        for (int i = 0; i < tr.ntensors; i++) {
            const ct_param *t = &tr.tensors[i];
            float mx = 0;
            for (size_t k = 0; k < t->numel; k++) mx = fmaxf(mx, fabsf(g[t->offset + k]));
            if (strstr(t->name, ".lora_A.") ? mx != 0.0f : !(mx > 1e-6f)) {
                fprintf(stderr, "  dropout %g, B = 0: |grad %s| max %g\n", drops[d], t->name, mx);
                ct_test_failures++;
            }
        }
        free(got);
        free(want);
        ct_model_free(m);
        ct_model_free(base);
    }
}

/* ---------------------------------------------------------------- 3. gradients */

/* The derivative of the mean loss along d, Richardson-extrapolated (model_test.h): the adapted
 * tiny model is strongly curved (large B, scale 1.5), so a plain central difference at h = 1e-3
 * is off by more than the tolerance where the terms of a directional derivative cancel. */
static double fd_derivative(ct_model *m, float *w, const float *saved, const float *d, size_t n, double h)
{
    return ct_test_fd(m, tokens, targets, NULL, B, T, w, saved, d, n, h);
}

/* Per adapter tensor: the directional derivative along a random direction, and the three
 * largest-gradient elements, against finite differences of the mean loss. */
static void fd_check(ct_model *m, const char *label, uint64_t *rng)
{
    ct_trainable tr = ct_model_trainable(m);
    float *p = tr.params;
    float *g = ct_test_alloc(tr.numel);
    long ntok = count_targets();
    ct_model_zero_grad(m);
    mean_loss_w(m, 1.0f / (float)ntok);
    ct_model_backward(m, NULL, NULL);
    memcpy(g, tr.grads, tr.numel * sizeof(float));
    const double h = 2e-3;
    for (int i = 0; i < tr.ntensors; i++) {
        const ct_param *t = &tr.tensors[i];
        float *w = p + t->offset;
        const float *gw = g + t->offset;
        float gmax = 0;
        for (size_t k = 0; k < t->numel; k++) gmax = fmaxf(gmax, fabsf(gw[k]));
        if (!(gmax > 1e-3f)) { /* a vanishing gradient would make the comparison vacuous */
            fprintf(stderr, "  %s: %s: gradient max %g too small to test\n", label, t->name, gmax);
            ct_test_failures++;
        }
        float *d = ct_test_alloc(t->numel), *saved = ct_test_alloc(t->numel);
        ct_test_fill(d, t->numel, rng, -1.0f, 1.0f);
        memcpy(saved, w, t->numel * sizeof(float));
        double analytic = 0;
        for (size_t k = 0; k < t->numel; k++) analytic += (double)gw[k] * d[k];
        float got = (float)analytic;
        double want = fd_derivative(m, w, saved, d, t->numel, h);
        char what[192];
        snprintf(what, sizeof what, "%s: %s: directional derivative", label, t->name);
        CHECK_CLOSE(what, &got, &want, 1, 1e-2, 3e-4);
        for (int j = 0; j < 3; j++) {
            size_t best = 0;
            for (size_t k = 0; k < t->numel; k++)
                if (fabsf(gw[k]) * (d[k] != 2.0f) > fabsf(gw[best]) * (d[best] != 2.0f)) best = k;
            d[best] = 2.0f; /* mark as used */
            const float one = 1.0f;
            want = fd_derivative(m, w + best, saved + best, &one, 1, h);
            snprintf(what, sizeof what, "%s: %s[%zu]", label, t->name, best);
            CHECK_CLOSE(what, &gw[best], &want, 1, 1e-2, 3e-4);
        }
        free(d);
        free(saved);
    }
    /* the gradient buffer is the adapters': a second backward adds to it, announcing ranges
     * that partition it and are final when announced */
    mean_loss_w(m, 1.0f / (float)ntok);
    ct_test_ready ready;
    ct_test_ready_init(&ready, tr.grads, tr.numel);
    ct_model_backward(m, ct_test_ready_cb, &ready);
    CHECK_READY(label, &ready);
    double *twice = ct_test_alloc_d(tr.numel);
    for (size_t k = 0; k < tr.numel; k++) twice[k] = 2.0 * g[k];
    char what[128];
    snprintf(what, sizeof what, "%s: two backward calls add up", label);
    CHECK_CLOSE(what, tr.grads, twice, tr.numel, 1e-6, 1e-9);
    free(twice);
    free(g);
}

static void test_gradients(void)
{
    uint64_t rng = 7;
    /* scale alpha / r = 1.5 != 1, every kind of linear in both layers */
    ct_lora_spec s = make_spec("all-linear", 2, 3.0f, 0.0f, 0);
    ct_model *m = make_lora(&s, 3);
    randomize_B(m, 17);
    CHECK(ct_model_lora_scale(m) == 1.5f);
    fd_check(m, "dropout 0", &rng);
    ct_model_free(m);

    /* dropout 0.3: a fixed mask for a fixed seed, so the loss is a smooth function to check */
    s = make_spec("all-linear", 2, 3.0f, 0.3f, 0);
    m = make_lora(&s, 3);
    randomize_B(m, 17);
    double l0 = mean_loss(m);       /* a model starts in inference mode: no dropout */
    ct_model_set_training(m, 1);
    ct_model_set_dropout_seed(m, 1234);
    double l1 = mean_loss(m), l2 = mean_loss(m);
    CHECK(l0 != l1);
    CHECK(l1 == l2); /* deterministic for a fixed seed */
    ct_model_set_dropout_seed(m, 4321);
    double l3 = mean_loss(m);
    CHECK(l3 != l1); /* the mask depends on the seed: dropout is applied */
    ct_model_set_dropout_seed(m, 1234);
    fd_check(m, "dropout 0.3", &rng);
    ct_model_free(m);
}

/* PEFT applies lora_dropout in training only (nn.Dropout under model.eval() is the identity):
 * a forward for logits (sampling, inference) must not drop the adapters' inputs. */
static void test_inference_without_dropout(void)
{
    ct_lora_spec s0 = make_spec("all-linear", 2, 3.0f, 0.0f, 0), s3 = make_spec("all-linear", 2, 3.0f, 0.3f, 0);
    ct_model *m0 = make_lora(&s0, 3), *m3 = make_lora(&s3, 3);
    randomize_B(m0, 17);
    randomize_B(m3, 17);
    ct_model_set_dropout_seed(m3, 1234);
    float *want = logits_of(m0), *got = logits_of(m3);
    check_logits_close("inference logits (forward without targets), lora_dropout 0.3 vs 0: dropout applied "
                       "outside training",
                       got, want, 1e-6);
    free(want);
    free(got);
    ct_model_free(m0);
    ct_model_free(m3);
}

/* ---------------------------------------------------------------- 4. merge */

static void test_merge(const char *tg, int r, float alpha, int rslora, const char *dirname)
{
    ct_lora_spec s = make_spec(tg, r, alpha, 0.0f, rslora);
    ct_model *m = make_lora(&s, 3);
    randomize_B(m, 17);
    ct_trainable tr = ct_model_trainable(m);
    size_t n = ct_model_numel(m);
    float *before_w = ct_test_alloc(n), *ad = ct_test_alloc(tr.numel);
    memcpy(before_w, ct_model_params(m), n * sizeof(float));
    memcpy(ad, tr.params, tr.numel * sizeof(float));
    float *before = logits_of(m);
    char err[1024] = "";
    int rc = ct_lora_merge(m, err, sizeof err);
    CHECK(rc == 0);
    if (rc) fprintf(stderr, "  merge: %s\n", err);

    /* B is zeroed, A kept; every targeted weight is W + scale * B . A ([out, in]), the rest untouched */
    const float *pa = tr.params, *w = ct_model_params(m);
    float scale = ct_model_lora_scale(m);
    for (int i = 0; i + 1 < tr.ntensors; i += 2) {
        const ct_param *A = &tr.tensors[i], *Bt = &tr.tensors[i + 1];
        CHECK(!memcmp(pa + A->offset, ad + A->offset, A->numel * sizeof(float)));
        int zero = 1;
        for (size_t k = 0; k < Bt->numel; k++) zero &= pa[Bt->offset + k] == 0.0f;
        CHECK(zero);
    }
    int changed = 0;
    for (int t = 0; t < ct_model_num_tensors(m); t++) {
        const ct_param *p = ct_model_tensor(m, t);
        const ct_param *A = NULL, *Bt = NULL;
        char an[128];
        snprintf(an, sizeof an, "base_model.model.%.*s.lora_A.weight", (int)(strlen(p->name) - strlen(".weight")),
                 p->name);
        for (int i = 0; i + 1 < tr.ntensors; i += 2)
            if (!strcmp(tr.tensors[i].name, an)) A = &tr.tensors[i], Bt = &tr.tensors[i + 1];
        if (!A) {
            if (memcmp(w + p->offset, before_w + p->offset, p->numel * sizeof(float))) {
                fprintf(stderr, "  merge changed %s, which has no adapter\n", p->name);
                ct_test_failures++;
            }
            continue;
        }
        changed++;
        int out = p->shape[0], in = p->shape[1];
        double *want = ct_test_alloc_d(p->numel);
        for (int o = 0; o < out; o++)
            for (int k = 0; k < in; k++) {
                double dlt = 0;
                for (int j = 0; j < r; j++)
                    dlt += (double)ad[Bt->offset + (size_t)o * r + j] * ad[A->offset + (size_t)j * in + k];
                want[(size_t)o * in + k] = before_w[p->offset + (size_t)o * in + k] + (double)scale * dlt;
            }
        char what[160];
        snprintf(what, sizeof what, "merged %s", p->name);
        CHECK_CLOSE(what, w + p->offset, want, p->numel, 1e-6, 1e-6);
        free(want);
    }
    CHECK(changed == tr.ntensors / 2);
    /* merging twice adds nothing more: B is zero now */
    float *merged_w = ct_test_alloc(n);
    memcpy(merged_w, w, n * sizeof(float));
    CHECK(ct_lora_merge(m, err, sizeof err) == 0);
    CHECK(!memcmp(merged_w, w, n * sizeof(float)));
    free(merged_w);

    float *after = logits_of(m);
    char what[160];
    snprintf(what, sizeof what, "%s: logits after merging vs before", tg);
    check_logits_close(what, after, before, 1e-5);

    /* the merged base through a Hugging Face folder: a plain model, the same logits */
    char *dir = subdir(dirname);
    CHECK(ct_hf_save(m, dir, NULL, 0, err, sizeof err) == 0);
    ct_model *plain = NULL;
    if (ct_model_init(&plain, &cfg, be, ctx, B, T, 1, err, sizeof err)) {
        fprintf(stderr, "init: %s\n", err);
        exit(2);
    }
    ct_model_init_weights(plain, 77);
    rc = ct_hf_load(plain, dir, err, sizeof err);
    CHECK(rc == 0);
    if (rc) fprintf(stderr, "  load merged: %s\n", err);
    CHECK(!ct_model_has_lora(plain));
    float *loaded = logits_of(plain);
    CHECK(!memcmp(loaded, after, NLOGITS * sizeof(float))); /* B = 0 adds exactly nothing */
    snprintf(what, sizeof what, "%s: merged model from its folder vs adapters before merging", tg);
    check_logits_close(what, loaded, before, 1e-5);
    free(loaded);
    free(after);
    free(before);
    free(before_w);
    free(ad);
    /* a model without adapters has nothing to merge: an error, its weights untouched */
    float *plain_w = ct_test_alloc(n);
    memcpy(plain_w, ct_model_params(plain), n * sizeof(float));
    CHECK(ct_lora_merge(plain, err, sizeof err) == -1);
    CHECK(!memcmp(plain_w, ct_model_params(plain), n * sizeof(float)));
    free(plain_w);
    ct_model_free(plain);
    ct_model_free(m);
}

/* ---------------------------------------------------------------- 5. PEFT folders */

/* the tensors of a safetensors file, to write again altered */
typedef struct {
    int n;
    ct_st_entry *e;
    float **data;
    char **names;
} st_copy;

static st_copy read_all(const char *path)
{
    st_copy c = {0};
    ct_safetensors *st = NULL;
    char err[1024];
    if (ct_st_open(&st, path, err, sizeof err)) {
        fprintf(stderr, "%s\n", err);
        exit(2);
    }
    c.n = ct_st_count(st);
    c.e = calloc((size_t)c.n + 1, sizeof *c.e);
    c.data = calloc((size_t)c.n + 1, sizeof *c.data);
    c.names = calloc((size_t)c.n + 1, sizeof *c.names);
    for (int i = 0; i < c.n; i++) {
        const ct_st_tensor *t = ct_st_at(st, i);
        c.data[i] = ct_test_alloc(t->numel);
        if (ct_st_read_f32(st, t, c.data[i], t->numel, err, sizeof err)) {
            fprintf(stderr, "%s\n", err);
            exit(2);
        }
        c.names[i] = strdup(t->name);
        c.e[i] = (ct_st_entry){.name = c.names[i], .data = c.data[i], .ndim = t->ndim};
        memcpy(c.e[i].shape, t->shape, sizeof c.e[i].shape);
    }
    ct_st_close(st);
    return c;
}

static void free_copy(st_copy *c)
{
    for (int i = 0; i < c->n; i++) free(c->data[i]), free(c->names[i]);
    free(c->data);
    free(c->names);
    free(c->e);
}

static void expect_load_error(ct_model *m, const char *dir, const char *const *needles, const char *what)
{
    char err[1024] = "";
    CHECK(ct_lora_load_peft(m, dir, err, sizeof err) == -1);
    expect_err(what, err, needles);
}

static void expect_config_error(const char *dir, const char *json, const char *needle)
{
    write_file(dir, "adapter_config.json", json);
    ct_lora_spec s;
    char err[1024] = "";
    CHECK(ct_lora_read_peft_config(dir, &s, err, sizeof err) == -1);
    const char *needles[] = {"adapter_config.json", needle, NULL};
    expect_err(json, err, needles);
}

static void strip_spaces(char *s)
{
    char *w = s;
    for (; *s; s++)
        if (*s != ' ') *w++ = *s;
    *w = 0;
}

static void test_peft_io(void)
{
    ct_lora_spec s = make_spec("c_attn, c_fc", 2, 3.0f, 0.1f, 1);
    ct_model *m = make_lora(&s, 3);
    randomize_B(m, 17);
    char err[1024] = "";
    char *dir = strdup(subdir("peft"));
    int rc = ct_lora_save_peft(m, &s, "gpt2-tiny", dir, err, sizeof err);
    CHECK(rc == 0);
    if (rc) fprintf(stderr, "  save_peft: %s\n", err);

    /* the file: PEFT's names and shapes, fp32, format pt */
    char path[600];
    snprintf(path, sizeof path, "%s/adapter_model.safetensors", dir);
    ct_trainable tr = ct_model_trainable(m);
    ct_safetensors *st = NULL;
    CHECK(ct_st_open(&st, path, err, sizeof err) == 0);
    if (st) {
        CHECK(ct_st_count(st) == tr.ntensors);
        for (int i = 0; i < tr.ntensors; i++) {
            const ct_st_tensor *t = ct_st_find(st, tr.tensors[i].name);
            CHECK(t && t->dtype == CT_DT_F32 && t->ndim == 2 && t->shape[0] == tr.tensors[i].shape[0] &&
                  t->shape[1] == tr.tensors[i].shape[1]);
        }
        CHECK(ct_st_find(st, "base_model.model.transformer.h.0.attn.c_attn.lora_A.weight") != NULL);
        CHECK(ct_st_find(st, "base_model.model.transformer.h.1.mlp.c_fc.lora_B.weight") != NULL);
        CHECK(ct_st_metadata(st, "format") && !strcmp(ct_st_metadata(st, "format"), "pt"));
        ct_st_close(st);
    }

    /* read back into a fresh model with the same spec (A initialised from another seed) */
    ct_model *m2 = make_lora(&s, 99);
    ct_trainable t2 = ct_model_trainable(m2);
    CHECK(memcmp(t2.params, tr.params, tr.numel * sizeof(float)) != 0);
    rc = ct_lora_load_peft(m2, dir, err, sizeof err);
    CHECK(rc == 0);
    if (rc) fprintf(stderr, "  load_peft: %s\n", err);
    CHECK(t2.ntensors == tr.ntensors);
    for (int i = 0; i < tr.ntensors && i < t2.ntensors; i++) {
        const ct_param *a = &tr.tensors[i], *b = &t2.tensors[i];
        if (strcmp(a->name, b->name) || a->numel != b->numel ||
            memcmp((float *)tr.params + a->offset, (float *)t2.params + b->offset, a->numel * sizeof(float))) {
            fprintf(stderr, "  %s: not bit-identical after save and load\n", a->name);
            ct_test_failures++;
        }
    }
    float *l1 = logits_of(m), *l2 = logits_of(m2);
    CHECK(!memcmp(l1, l2, NLOGITS * sizeof(float)));
    free(l1);
    free(l2);

    /* adapter_config.json read back */
    ct_lora_spec back;
    rc = ct_lora_read_peft_config(dir, &back, err, sizeof err);
    CHECK(rc == 0);
    if (rc) fprintf(stderr, "  read_peft_config: %s\n", err);
    char want_t[512];
    snprintf(want_t, sizeof want_t, "%s", s.targets);
    strip_spaces(want_t);
    strip_spaces(back.targets);
    CHECK(back.r == s.r && back.alpha == s.alpha && back.dropout == s.dropout && back.rslora == s.rslora);
    if (strcmp(back.targets, want_t)) {
        fprintf(stderr, "  targets read back \"%s\", want \"%s\"\n", back.targets, want_t);
        ct_test_failures++;
    }
    /* the config's lora section naming that folder gives the same spec */
    ct_config *cc = calloc(1, sizeof *cc);
    ct_config_defaults(cc);
    snprintf(cc->lora.init_from, sizeof cc->lora.init_from, "%s", dir);
    ct_lora_spec from_cfg;
    CHECK(ct_lora_spec_from_config(cc, &from_cfg, err, sizeof err) == 0 && from_cfg.r == s.r &&
          from_cfg.alpha == s.alpha && from_cfg.rslora == s.rslora);
    free(cc);

    /* "all-linear" stays a string */
    ct_lora_spec sa = make_spec("all-linear", 4, 8.0f, 0.0f, 0);
    ct_model *ma = make_lora(&sa, 3);
    char *adir = strdup(subdir("peft_all"));
    CHECK(ct_lora_save_peft(ma, &sa, "", adir, err, sizeof err) == 0);
    CHECK(ct_lora_read_peft_config(adir, &back, err, sizeof err) == 0 && !strcmp(back.targets, "all-linear") &&
          back.r == 4 && back.alpha == 8.0f && back.rslora == 0 && back.dropout == 0.0f);
    ct_model_free(ma);
    free(adir);

    /* ---- bad input */
    /* a different r: the first adapter's A does not fit */
    ct_lora_spec s3 = make_spec("c_attn, c_fc", 3, 3.0f, 0.1f, 1);
    ct_model *m3 = make_lora(&s3, 3);
    static const char *const want_r[] = {"adapter_model.safetensors",
                                         "base_model.model.transformer.h.0.attn.c_attn.lora_A.weight", "shape",
                                         "[2, 8]", NULL};
    expect_load_error(m3, dir, want_r, "different r");
    ct_model_free(m3);

    /* a model with fewer targets: the file's c_fc adapters are extra */
    ct_lora_spec s1 = make_spec("c_attn", 2, 3.0f, 0.1f, 1);
    ct_model *m1 = make_lora(&s1, 3);
    static const char *const want_fewer[] = {"adapter_model.safetensors", "mlp.c_fc.lora_", NULL};
    expect_load_error(m1, dir, want_fewer, "fewer targets");
    ct_model_free(m1);

    st_copy c = read_all(path);
    char *bad = strdup(subdir("peft_bad"));
    char badpath[600];
    snprintf(badpath, sizeof badpath, "%s/adapter_model.safetensors", bad);
    /* an extra tensor */
    static float extra[2] = {1, 2};
    c.e[c.n] = (ct_st_entry){.name = "base_model.model.transformer.h.0.attn.c_attn.lora_magnitude_vector",
                             .data = extra, .ndim = 1, .shape = {2}};
    CHECK(ct_st_write(badpath, c.e, c.n + 1, CT_DT_F32, NULL, err, sizeof err) == 0);
    static const char *const want_extra[] = {"peft_bad/adapter_model.safetensors",
                                             "base_model.model.transformer.h.0.attn.c_attn.lora_magnitude_vector",
                                             NULL};
    expect_load_error(m2, bad, want_extra, "extra tensor");
    /* a missing tensor: the last one (h.1 c_fc's B) dropped */
    const char *last = c.names[c.n - 1];
    CHECK(ct_st_write(badpath, c.e, c.n - 1, CT_DT_F32, NULL, err, sizeof err) == 0);
    const char *want_missing[] = {"peft_bad/adapter_model.safetensors", last, "missing", NULL};
    expect_load_error(m2, bad, want_missing, "missing tensor");
    /* a tensor of the right name and numel but transposed shape */
    int which = -1;
    for (int i = 0; i < c.n; i++)
        if (!strcmp(c.names[i], "base_model.model.transformer.h.1.attn.c_attn.lora_B.weight")) which = i;
    CHECK(which >= 0);
    if (which >= 0) {
        int64_t s0 = c.e[which].shape[0];
        c.e[which].shape[0] = c.e[which].shape[1];
        c.e[which].shape[1] = s0;
        CHECK(ct_st_write(badpath, c.e, c.n, CT_DT_F32, NULL, err, sizeof err) == 0);
        static const char *const want_tr[] = {"base_model.model.transformer.h.1.attn.c_attn.lora_B.weight", "shape",
                                              "[2, 24]", "[24, 2]", NULL};
        expect_load_error(m2, bad, want_tr, "transposed tensor");
    }
    /* no adapter file at all */
    char *empty = subdir("peft_empty");
    static const char *const want_none[] = {"peft_empty/adapter_model.safetensors", NULL};
    expect_load_error(m2, empty, want_none, "no file");
    free_copy(&c);

    /* malformed adapter_config.json: the file and the field named */
    char *cdir = subdir("peft_cfg");
    write_file(cdir, "adapter_config.json",
               "{\"peft_type\": \"LORA\", \"r\": 2, \"lora_alpha\": 3, \"target_modules\": [\"c_attn\"]}");
    CHECK(ct_lora_read_peft_config(cdir, &back, err, sizeof err) == 0 && back.r == 2 && back.alpha == 3.0f &&
          !strcmp(back.targets, "c_attn") && back.dropout == 0.0f && back.rslora == 0);
    expect_config_error(cdir, "{\"peft_type\": \"IA3\", \"r\": 2, \"lora_alpha\": 3, \"target_modules\": [\"c_attn\"]}",
                        "peft_type");
    expect_config_error(cdir, "{\"r\": 2, \"lora_alpha\": 3, \"target_modules\": [\"c_attn\"]}", "peft_type");
    expect_config_error(cdir,
                        "{\"peft_type\": \"LORA\", \"r\": 0, \"lora_alpha\": 3, \"target_modules\": [\"c_attn\"]}",
                        ": r:");
    expect_config_error(cdir,
                        "{\"peft_type\": \"LORA\", \"r\": 2.5, \"lora_alpha\": 3, \"target_modules\": [\"c_attn\"]}",
                        ": r:");
    expect_config_error(cdir, "{\"peft_type\": \"LORA\", \"r\": 2, \"target_modules\": [\"c_attn\"]}", "lora_alpha");
    expect_config_error(cdir, "{\"peft_type\": \"LORA\", \"r\": 2, \"lora_alpha\": 3, \"target_modules\": 5}",
                        "target_modules");
    expect_config_error(cdir, "{\"peft_type\": \"LORA\", \"r\": 2, \"lora_alpha\": 3}", "target_modules");
    expect_config_error(cdir,
                        "{\"peft_type\": \"LORA\", \"r\": 2, \"lora_alpha\": 3, \"target_modules\": [\"c_attn\", 7]}",
                        "target_modules");
    expect_config_error(cdir,
                        "{\"peft_type\": \"LORA\", \"r\": 2, \"lora_alpha\": 3, \"lora_dropout\": 1.5, "
                        "\"target_modules\": [\"c_attn\"]}",
                        "lora_dropout");
    expect_config_error(cdir, "{\"peft_type\": \"LORA\", \"r\": 2,,}", "malformed JSON");
    /* what PEFT would compute differently and ctrain does not run: refused, the key named */
#define PEFT_OK "\"peft_type\": \"LORA\", \"r\": 2, \"lora_alpha\": 3"
    expect_config_error(cdir, "{" PEFT_OK ", \"target_modules\": [\"c_attn\"], \"use_dora\": true}", "use_dora");
    expect_config_error(cdir, "{" PEFT_OK ", \"target_modules\": [\"c_attn\"], \"bias\": \"all\"}", "bias");
    expect_config_error(cdir, "{" PEFT_OK ", \"target_modules\": [\"c_attn\"], \"rank_pattern\": {\"c_attn\": 4}}",
                        "rank_pattern");
    expect_config_error(cdir, "{" PEFT_OK ", \"target_modules\": [\"c_attn\"], \"layers_to_transform\": [0]}",
                        "layers_to_transform");
    expect_config_error(cdir, "{" PEFT_OK ", \"target_modules\": [\"c_attn\"], \"modules_to_save\": [\"lm_head\"]}",
                        "modules_to_save");
    expect_config_error(cdir, "{" PEFT_OK ", \"target_modules\": \".*attn.*\"}", "regular expression");
    write_file(cdir, "adapter_config.json", /* what peft writes by default is accepted */
               "{" PEFT_OK ", \"target_modules\": [\"c_attn\"], \"use_dora\": false, \"bias\": \"none\", "
               "\"rank_pattern\": {}, \"alpha_pattern\": {}, \"layers_to_transform\": null, \"modules_to_save\": null}");
    CHECK(ct_lora_read_peft_config(cdir, &back, err, sizeof err) == 0);
    /* keys that were ignored before: a number or a string where the old check wanted a list, a
     * use_rslora that was not a boolean (read as false), options PEFT added since */
#define T_OK PEFT_OK ", \"target_modules\": [\"c_attn\"]"
    expect_config_error(cdir, "{" T_OK ", \"layers_to_transform\": 0}", "layers_to_transform: 0 is not supported");
    expect_config_error(cdir, "{" T_OK ", \"layers_pattern\": \"h\"}", "layers_pattern: \"h\" is not supported");
    expect_config_error(cdir, "{" T_OK ", \"exclude_modules\": [\"h.0.attn.c_attn\"]}", "exclude_modules");
    expect_config_error(cdir, "{" T_OK ", \"alpha_pattern\": {\"c_attn\": 8}}", "alpha_pattern");
    expect_config_error(cdir, "{" T_OK ", \"use_rslora\": \"yes\"}", "use_rslora: expected true or false");
    expect_config_error(cdir, "{" T_OK ", \"use_rslora\": 1}", "use_rslora: expected true or false");
    expect_config_error(cdir, "{" T_OK ", \"lora_bias\": true}", "lora_bias: true is not supported");
    expect_config_error(cdir, "{" T_OK ", \"trainable_token_indices\": [5]}", "trainable_token_indices");
    expect_config_error(cdir, "{" T_OK ", \"layer_replication\": [[0, 1]]}", "layer_replication");
    expect_config_error(cdir, "{" T_OK ", \"target_parameters\": [\"mlp.experts\"]}", "target_parameters");
    expect_config_error(cdir, "{" T_OK ", \"init_lora_weights\": \"pissa_niter_4\"}",
                        "init_lora_weights: \"pissa_niter_4\" is not supported (it rewrites the base weights");
    expect_config_error(cdir, "{" T_OK ", \"init_lora_weights\": \"olora\"}", "init_lora_weights");
    expect_config_error(cdir, "{" T_OK ", \"init_lora_weights\": 3}", "init_lora_weights");
    expect_config_error(cdir, "{" T_OK ", \"some_future_option\": 2}", "some_future_option: 2 is not supported");
    expect_config_error(cdir, "{" T_OK ", \"r\": 4}", "r: key given twice");
    expect_config_error(cdir, "{" PEFT_OK ", \"target_modules\": [\"c_attn\\u0000\"]}", "target_modules[0]: holds \\u0000");
    /* adapter_config.json as peft 0.21 saves it, with the initialisations that touch only fresh
     * adapters and a newer option at its neutral value */
    static const char *const fresh_inits[] = {"true", "false", "\"gaussian\"", "\"orthogonal\"", "\"eva\""};
    for (int i = 0; i < 5; i++) {
        char full[2048];
        snprintf(full, sizeof full,
                 "{\"alora_invocation_tokens\": null, \"alpha_pattern\": {}, \"arrow_config\": null, \"auto_mapping\": "
                 "{\"base_model_class\": \"GPT2LMHeadModel\", \"parent_library\": \"transformers\"}, "
                 "\"base_model_name_or_path\": \"gpt2\", \"bias\": \"none\", \"corda_config\": null, "
                 "\"ensure_weight_tying\": false, \"eva_config\": null, \"exclude_modules\": null, \"fan_in_fan_out\": true, "
                 "\"inference_mode\": true, \"init_lora_weights\": %s, \"kasa_config\": null, \"layer_replication\": null, "
                 "\"layers_pattern\": null, \"layers_to_transform\": null, \"loftq_config\": {}, \"lora_alpha\": 8, "
                 "\"lora_bias\": false, \"lora_dropout\": 0.0, \"lora_ga_config\": null, \"megatron_config\": null, "
                 "\"megatron_core\": \"megatron.core\", \"modules_to_save\": null, \"monteclora_config\": null, "
                 "\"peft_type\": \"LORA\", \"peft_version\": \"0.21.2\", \"qalora_group_size\": 16, \"r\": 2, "
                 "\"rank_pattern\": {}, \"revision\": null, \"target_modules\": [\"c_attn\"], \"target_parameters\": null, "
                 "\"task_type\": \"CAUSAL_LM\", \"trainable_token_indices\": null, \"use_bdlora\": null, \"use_dora\": false, "
                 "\"use_qalora\": false, \"use_rslora\": true, \"velora_config\": null, \"some_future_option\": null}",
                 fresh_inits[i]);
        write_file(cdir, "adapter_config.json", full);
        int ok = ct_lora_read_peft_config(cdir, &back, err, sizeof err) == 0;
        CHECK(ok && back.r == 2 && back.alpha == 8.0f && back.rslora == 1);
        if (!ok) fprintf(stderr, "  peft 0.21's adapter_config.json (init %s): %s\n", fresh_inits[i], err);
    }
#undef T_OK
#undef PEFT_OK
    char *nocfg = subdir("peft_nocfg");
    ct_lora_spec dummy;
    CHECK(ct_lora_read_peft_config(nocfg, &dummy, err, sizeof err) == -1 && strstr(err, "adapter_config.json"));

    free(bad);
    free(dir);
    ct_model_free(m2);
    ct_model_free(m);
}

/* ---------------------------------------------------------------- 5b. the base adapters belong to */

static void test_base_fingerprint(void)
{
    ct_lora_spec s = make_spec("c_attn", 2, 3.0f, 0.0f, 0);
    ct_model *m = make_lora(&s, 3);
    randomize_B(m, 5);
    char err[1024] = "", path[600];
    char *dir = strdup(subdir("peft_base"));
    CHECK(ct_lora_save_peft(m, &s, "models/base-a", dir, err, sizeof err) == 0);
    const char *fp = ct_model_base_fingerprint(m);
    CHECK(fp && strlen(fp) == 16);
    /* recorded where peft does not look: the safetensors metadata */
    snprintf(path, sizeof path, "%s/adapter_model.safetensors", dir);
    ct_safetensors *st = NULL;
    CHECK(ct_st_open(&st, path, err, sizeof err) == 0);
    const char *rec = st ? ct_st_metadata(st, CT_LORA_BASE_KEY) : NULL, *name = st ? ct_st_metadata(st, CT_LORA_BASE_NAME_KEY) : NULL;
    CHECK(rec && fp && !strcmp(rec, fp) && name && !strcmp(name, "models/base-a"));
    ct_st_close(st);

    /* the same base with every weight rounded to bf16 (a bf16 copy, or the CUDA backend) is the same base */
    ct_model *same = make_lora(&s, 7);
    float *w = ct_model_params(same);
    for (int i = 0; i < ct_model_num_tensors(same); i++) {
        const ct_param *p = ct_model_tensor(same, i);
        for (size_t k = 0; k < p->numel; k++) w[p->offset + k] = ct_test_bf16(w[p->offset + k]);
    }
    CHECK(ct_lora_load_peft(same, dir, err, sizeof err) == 0);
    if (err[0]) fprintf(stderr, "  same base in bf16: %s\n", err);
    float *l1 = logits_of(m), *l2 = logits_of(same);
    CHECK(fabsf(l1[0] - l2[0]) < 1e-2f);
    free(l1), free(l2);

    /* one weight of the base changed (another fine-tune of it): refused before any adapter is loaded */
    ct_model *other = make_lora(&s, 7);
    const ct_param *last = ct_model_tensor(other, ct_model_num_tensors(other) - 1);
    ((float *)ct_model_params(other))[last->offset] += 0.01f;
    err[0] = 0;
    CHECK(ct_lora_load_peft(other, dir, err, sizeof err) == -1);
    static const char *const want_other[] = {"adapter_model.safetensors: __metadata__.ctrain_base_fingerprint",
                                             "trained on another base model (models/base-a, fingerprint", NULL};
    expect_err("another base", err, want_other);
    CHECK(strcmp(ct_model_base_fingerprint(other), fp) != 0);

    /* a config field no tensor shows (the norm's epsilon) */
    ct_model_config c2 = cfg;
    c2.norm_eps = 1e-6f;
    ct_model *eps = ct_test_tiny_model(&c2, be, ctx, B, T, 3.0f, 0.3f);
    CHECK(ct_lora_add(eps, &s, 3, 1, err, sizeof err) == 0);
    CHECK(ct_lora_load_peft(eps, dir, err, sizeof err) == -1 && strstr(err, "another base model"));

    /* merging changes the base, and its fingerprint with it */
    char before[17];
    snprintf(before, sizeof before, "%s", fp);
    CHECK(ct_lora_merge(m, err, sizeof err) == 0);
    CHECK(strcmp(ct_model_base_fingerprint(m), before) != 0);

    ct_model_free(eps);
    ct_model_free(other);
    ct_model_free(same);
    ct_model_free(m);
    free(dir);
}

/* ---------------------------------------------------------------- 6. rsLoRA */

static void test_rslora(void)
{
    ct_lora_spec s = make_spec("c_attn", 4, 3.0f, 0.0f, 1);
    ct_model *m = make_lora(&s, 3);
    CHECK(ct_model_lora_scale(m) == 3.0f / sqrtf(4.0f)); /* alpha / sqrt(r) = 1.5 */
    ct_model_free(m);
    s = make_spec("c_attn", 9, 3.0f, 0.0f, 1);
    m = make_lora(&s, 3);
    CHECK(ct_model_lora_scale(m) == 1.0f);
    ct_model_free(m);
    s = make_spec("c_attn", 9, 3.0f, 0.0f, 0);
    m = make_lora(&s, 3);
    CHECK(ct_model_lora_scale(m) == 3.0f / 9.0f); /* plain LoRA: alpha / r */
    ct_model_free(m);

    /* the forward uses that scale: rsLoRA r 4 alpha 2 (scale 1) is plain LoRA r 4 alpha 4 */
    ct_lora_spec rs = make_spec("all-linear", 4, 2.0f, 0.0f, 1), pl = make_spec("all-linear", 4, 4.0f, 0.0f, 0);
    ct_model *a = make_lora(&rs, 3), *b = make_lora(&pl, 3);
    randomize_B(a, 5);
    randomize_B(b, 5);
    CHECK(ct_model_lora_scale(a) == 1.0f && ct_model_lora_scale(b) == 1.0f);
    float *la = logits_of(a), *lb = logits_of(b);
    CHECK(!memcmp(la, lb, NLOGITS * sizeof(float)));
    free(la);
    free(lb);
    ct_model_free(a);
    ct_model_free(b);
}

int main(void)
{
    snprintf(tmpdir, sizeof tmpdir, "/tmp/ct_lora_XXXXXX");
    if (!mkdtemp(tmpdir)) { perror("mkdtemp"); return 2; }
    be = ct_backend_cpu();
    ctx = be->kctx_init(0);
    uint64_t rng = 123;
    for (int i = 0; i < B * T; i++) {
        tokens[i] = (int32_t)(ct_test_rand_u64(&rng) % V);
        targets[i] = (int32_t)(ct_test_rand_u64(&rng) % V);
    }
    targets[1] = targets[9] = -1;
    test_targets();
    test_starts_as_base();
    test_gradients();
    test_inference_without_dropout();
    test_merge("all-linear", 2, 3.0f, 0, "merged_all");
    test_merge("c_attn, mlp.c_proj", 4, 3.0f, 1, "merged_rslora");
    test_peft_io();
    test_base_fingerprint();
    test_rslora();
    char cmd[128];
    snprintf(cmd, sizeof cmd, "rm -rf %s", tmpdir);
    if (system(cmd) != 0) fprintf(stderr, "warning: could not remove %s\n", tmpdir);
    return ct_test_finish("test_lora");
}
