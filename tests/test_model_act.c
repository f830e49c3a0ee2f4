/* test_model_act.c — activation memory (model.recompute, model.loss_chunk) changes no bit:
 * for GPT-2, an untied Llama (grouped-query heads, every bias, a sliding window on one layer)
 * and a tied one, on the cpu, a step of two micro-batches (gradients accumulating) with
 * recompute and with the LM head and loss in chunks gives the losses and the whole gradient
 * buffer of the plain model bit for bit (memcmp): one document a row and packed documents,
 * full training and LoRA adapters with dropout (the masks regenerated in the recompute), chunks
 * that divide the rows and a short last chunk that joins the one before. An evaluation (dloss
 * 0), a forward without targets (all rows' logits) and decoding match too. ct_model_act_bytes
 * equals what ct_model_init_memory allocates beyond the parameters (and what a memory plan's
 * ct_model_init_counting counts), for each family, with and without recompute and chunking; and the model refuses a zero_grad between a forward and its
 * backward, and a second forward before a backward. */
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include "check.h"
#include "hf_config.h"
#include "model.h"

enum { B = 2, T = 300 };

static const ct_backend *be;
static ct_kctx *ctx;

static ct_model_config gpt2_cfg(void)
{
    return (ct_model_config){.vocab_size = 50, .max_seq_len = T, .n_layer = 2, .n_head = 2, .n_embd = 16,
                             .norm_eps = 1e-5f};
}

static ct_model_config llama_cfg(int untied)
{
    ct_model_config c = {.arch = ct_arch_by_name("llama"), .model_type = "llama", .vocab_size = 70,
                         .max_seq_len = T, .n_layer = 2, .n_head = 4, .n_kv_head = 2, .n_embd = 16, .n_inner = 24,
                         .norm_eps = 1e-5f, .rope_theta = 1000.0, .untied = untied};
    if (untied) c.qkv_bias = c.o_bias = c.mlp_bias = 1, c.window = 40, c.window_from = 1;
    return c;
}

/* A model of c with recompute rc and loss chunk lc, the same weights (and adapters) on every
 * call: the init plus noise, so norms and biases are off 1 and 0. */
static ct_model *make(const ct_model_config *c, int rc, int lc, int lora)
{
    ct_model *m = NULL;
    char err[512];
    const ct_model_memory mem = {.recompute = rc, .loss_chunk = lc};
    if (ct_model_init_memory(&m, c, &mem, be, ctx, B, T, 1, err, sizeof err)) {
        fprintf(stderr, "init: %s\n", err);
        exit(2);
    }
    ct_model_init_weights(m, 1);
    uint64_t rng = 5;
    float *p = ct_model_params(m);
    for (size_t k = 0; k < ct_model_numel(m); k++)
        p[k] += 0.05f * (float)((double)(ct_test_rand_u64(&rng) >> 11) / 9007199254740992.0 - 0.5);
    if (lora) {
        int n = ct_model_num_linears(m);
        unsigned char *sel = malloc((size_t)n);
        memset(sel, 1, (size_t)n);
        if (ct_model_add_lora(m, sel, 4, 2.0f, 0.2f, 1, err, sizeof err)) {
            fprintf(stderr, "lora: %s\n", err);
            exit(2);
        }
        free(sel);
        ct_trainable tr = ct_model_trainable(m);
        ct_test_fill(tr.params, tr.numel, &rng, -0.3f, 0.3f);
    }
    return m;
}

typedef struct {
    double loss[2], eval;
    long ntok[2];
    float *grads;   /* the trainable buffer after the step */
    float *logits;  /* a forward without targets: [B*T, Vp] */
    float *decoded; /* decoding row 0's first 5 tokens one at a time: [5, Vp] */
} result;

static int32_t tokens[2][B * T], targets[2][B * T];

/* One step of two micro-batches of B x Tn tokens (pos: packed documents or NULL), then an
 * evaluation, a forward without targets and a short decode. */
static result run(ct_model *m, int Tn, int packed)
{
    result r = {0};
    char err[256];
    const int N = B * Tn, ld = ct_model_logits_stride(m);
    int32_t *pos = packed ? ct_test_doc_positions(B, Tn, 70, 3) : NULL;
    ct_model_zero_grad(m);
    ct_model_set_training(m, 1);
    for (int a = 0; a < 2; a++) {
        ct_model_set_dropout_seed(m, 11 + (uint64_t)a);
        if (ct_model_forward(m, tokens[a], targets[a], pos, B, Tn, 1.0f / 500, &r.loss[a], &r.ntok[a], err,
                             sizeof err)) {
            fprintf(stderr, "forward: %s\n", err);
            exit(2);
        }
        ct_model_backward(m, NULL, NULL);
    }
    ct_model_set_training(m, 0);
    ct_trainable tr = ct_model_trainable(m);
    r.grads = ct_test_copy(tr.grads, tr.numel);
    long n;
    CHECK(ct_model_forward(m, tokens[0], targets[0], pos, B, Tn, 0.0f, &r.eval, &n, err, sizeof err) == 0);
    CHECK(ct_model_forward(m, tokens[1], NULL, pos, B, Tn, 0.0f, NULL, NULL, err, sizeof err) == 0);
    r.logits = ct_test_copy(ct_model_logits(m), (size_t)N * ld);
    r.decoded = ct_test_alloc((size_t)5 * ld);
    for (int t = 0; t < 5; t++) {
        CHECK(ct_model_decode(m, tokens[0] + t, 1, 1, t, err, sizeof err) == 0);
        memcpy(r.decoded + (size_t)t * ld, ct_model_logits(m), (size_t)ld * sizeof(float));
    }
    free(pos);
    return r;
}

static void drop(result *r)
{
    free(r->grads);
    free(r->logits);
    free(r->decoded);
}

/* Every variant against recompute none, loss_chunk 0, for one family, with and without LoRA,
 * packed documents or not, 600 rows (chunks of 256: 256, 256, 88) and 560 (256, 304: the short
 * last chunk joins the one before). */
static void test_bits(const char *name, const ct_model_config *c)
{
    static const int variants[][2] = {{CT_RECOMPUTE_BLOCK, 0}, {CT_RECOMPUTE_NONE, 256}, {CT_RECOMPUTE_BLOCK, 256},
                                      {CT_RECOMPUTE_NONE, 300}, {CT_RECOMPUTE_BLOCK, CT_LOSS_CHUNK_AUTO}};
    const int nv = (int)(sizeof variants / sizeof variants[0]);
    for (int lora = 0; lora < 2; lora++)
        for (int packed = 0; packed < 2; packed++)
            for (int Tn = T; Tn >= 280; Tn -= 20) {
                ct_model *ref = make(c, CT_RECOMPUTE_NONE, 0, lora);
                result want = run(ref, Tn, packed);
                const size_t ng = ct_model_trainable(ref).numel, nl = (size_t)B * Tn * ct_model_logits_stride(ref);
                const size_t nd = (size_t)5 * ct_model_logits_stride(ref);
                CHECK(want.ntok[0] > 0 && want.loss[0] > 0 && (lora || want.eval == want.loss[0])); /* dropout */
                for (int v = 0; v < nv; v++) {
                    ct_model *m = make(c, variants[v][0], variants[v][1], lora);
                    result got = run(m, Tn, packed);
                    int same = got.loss[0] == want.loss[0] && got.loss[1] == want.loss[1] &&
                               got.ntok[0] == want.ntok[0] && got.ntok[1] == want.ntok[1] &&
                               got.eval == want.eval && !memcmp(got.grads, want.grads, ng * sizeof(float)) &&
                               !memcmp(got.logits, want.logits, nl * sizeof(float)) &&
                               !memcmp(got.decoded, want.decoded, nd * sizeof(float));
                    if (!same) {
                        size_t diff = 0;
                        for (size_t i = 0; i < ng; i++) diff += got.grads[i] != want.grads[i];
                        fprintf(stderr, "  %s%s%s, %d rows, recompute %d, loss_chunk %d: not the bits of the plain "
                                "model (loss %.17g vs %.17g, %zu of %zu gradients differ)\n", name,
                                lora ? " + LoRA" : "", packed ? ", packed" : "", B * Tn, variants[v][0],
                                variants[v][1], got.loss[0], want.loss[0], diff, ng);
                        ct_test_failures++;
                    }
                    drop(&got);
                    ct_model_free(m);
                }
                drop(&want);
                ct_model_free(ref);
            }
}

static void test_act_bytes(const char *name, const ct_model_config *cfg)
{
    static const int chunks[] = {0, CT_LOSS_CHUNK_AUTO, 256, 300};
    static const int shapes[][2] = {{B, T}, {3, 100}, {1, 7}};
    ct_model_config c = *cfg;
    char err[256];
    CHECK(ct_model_config_check(&c, err, sizeof err) == 0);
    for (int s = 0; s < 3; s++)
        for (int rc = 0; rc < 2; rc++)
            for (int k = 0; k < 4; k++) {
                const int b = shapes[s][0], t = shapes[s][1];
                ct_model *m = NULL;
                const ct_model_memory mem = {.recompute = rc, .loss_chunk = chunks[k]};
                CHECK(ct_model_init_memory(&m, &c, &mem, be, ctx, b, t, 1, err, sizeof err) == 0);
                size_t got = ct_model_bytes(m) - ct_model_numel(m) * be->elem_size;
                size_t want = ct_model_act_bytes(&c, b, t, rc, chunks[k], be);
                if (got != want) {
                    fprintf(stderr, "  %s %d x %d, recompute %d, loss_chunk %d: allocated %zu bytes, "
                            "ct_model_act_bytes says %zu\n", name, b, t, rc, chunks[k], got, want);
                    ct_test_failures++;
                }
                ct_model_free(m);
                /* a memory plan's count (ct_model_init_counting) is the same */
                CHECK(ct_model_init_counting(&m, &c, &mem, be, b, t, 1, err, sizeof err) == 0);
                CHECK(ct_model_bytes(m) - ct_model_numel(m) * be->elem_size == want);
                ct_model_free(m);
            }
    /* what each saves, at 600 rows */
    size_t plain = ct_model_act_bytes(&c, B, T, 0, 0, be), rec = ct_model_act_bytes(&c, B, T, 1, 0, be);
    size_t chunked = ct_model_act_bytes(&c, B, T, 0, 256, be);
    CHECK(rec < plain && chunked < plain);
    const size_t Vp = ((size_t)c.vocab_size + 63) / 64 * 64;
    CHECK(plain - chunked == (size_t)(B * T - (256 + 63)) * Vp * be->elem_size);
    CHECK(ct_model_loss_rows(&c, 600, 0, 4) == 600 && ct_model_loss_rows(&c, 600, 1, 4) == 256 &&
          ct_model_loss_rows(&c, 600, 257, 4) == 512 && ct_model_loss_rows(&c, 600, 512, 4) == 512 &&
          ct_model_loss_rows(&c, 600, CT_LOSS_CHUNK_AUTO, 4) == 600 && ct_model_loss_rows(&c, 100, 256, 4) == 100);
}

/* This test run again as `test_model_act <mode>` (a fresh process: OpenMP does not survive a
 * plain fork): it must abort (an internal error, not a result). */
static int aborts(const char *mode)
{
    fflush(NULL);
    pid_t pid = fork();
    if (pid == 0) {
        if (!freopen("/dev/null", "w", stderr)) _exit(3);
        execl("/proc/self/exe", "test_model_act", mode, (char *)NULL);
        _exit(3);
    }
    int status = 0;
    waitpid(pid, &status, 0);
    return WIFSIGNALED(status) && WTERMSIG(status) == SIGABRT;
}

static void zero_between(const ct_model_config *c)
{
    ct_model *m = make(c, 0, 256, 0);
    double s;
    long n;
    char err[256];
    ct_model_forward(m, tokens[0], targets[0], NULL, B, T, 1.0f, &s, &n, err, sizeof err);
    ct_model_zero_grad(m); /* drops the pending backward: its head gradient is gone */
    ct_model_backward(m, NULL, NULL);
}

static void two_forwards(const ct_model_config *c)
{
    ct_model *m = make(c, 0, 256, 0);
    double s;
    long n;
    char err[256];
    ct_model_zero_grad(m);
    ct_model_forward(m, tokens[0], targets[0], NULL, B, T, 1.0f, &s, &n, err, sizeof err);
    ct_model_forward(m, tokens[1], targets[1], NULL, B, T, 1.0f, &s, &n, err, sizeof err);
}

int main(int argc, char **argv)
{
    be = ct_backend_cpu();
    ctx = be->kctx_init(0);
    const ct_model_config cfgs[3] = {gpt2_cfg(), llama_cfg(1), llama_cfg(0)};
    const char *names[3] = {"gpt2", "llama (untied)", "llama (tied)"};
    if (argc > 1) { /* a child of aborts() */
        if (!strcmp(argv[1], "zero_between")) zero_between(&cfgs[0]);
        if (!strcmp(argv[1], "two_forwards")) two_forwards(&cfgs[1]);
        return 0;
    }
    for (int f = 0; f < 3; f++) {
        uint64_t rng = 17 + (uint64_t)f;
        for (int a = 0; a < 2; a++)
            for (int i = 0; i < B * T; i++) {
                tokens[a][i] = (int32_t)(ct_test_rand_u64(&rng) % (uint64_t)cfgs[f].vocab_size);
                targets[a][i] = i % 7 == 3 ? -1 : (int32_t)(ct_test_rand_u64(&rng) % (uint64_t)cfgs[f].vocab_size);
            }
        test_act_bytes(names[f], &cfgs[f]);
        test_bits(names[f], &cfgs[f]);
    }
    CHECK(aborts("zero_between"));
    CHECK(aborts("two_forwards"));
    return ct_test_finish("test_model_act");
}
