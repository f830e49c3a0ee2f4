/* gpt2.c — the GPT-2 model: parameter layout, initialisation, forward and backward. */
#include "gpt2.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "rng.h"

/* Tensor offsets are rounded up to this many elements so every tensor starts 64-byte aligned
 * in fp32 (vector loads, cuBLASLt alignment in bf16 too). */
#define CT_ALIGN_ELEMS 16

/* Per-layer parameter tensors, in flat-buffer order. Layers are contiguous so backward
 * finishes one layer's gradients as one contiguous range (bucketed reduction). */
enum { P_LN1W, P_LN1B, P_QKVW, P_QKVB, P_ATTPROJW, P_ATTPROJB, P_LN2W, P_LN2B, P_FCW, P_FCB, P_FCPROJW,
       P_FCPROJB, P_PER_LAYER };

typedef struct {
    void *ln1;            /* [BT, C] */
    float *ln1_mean;      /* [BT] */
    float *ln1_rstd;      /* [BT] */
    void *qkv;            /* [BT, 3C] */
    void *atty;           /* [BT, C] attention output before projection */
    float *att_stats;     /* backend-defined, attention_stats_len(B, T, NH) */
    void *res2;           /* [BT, C] residual after attention */
    void *ln2;            /* [BT, C] */
    float *ln2_mean;      /* [BT] */
    float *ln2_rstd;      /* [BT] */
    void *fch;            /* [BT, 4C] */
    void *fch_gelu;       /* [BT, 4C] */
    void *res3;           /* [BT, C] residual after the MLP: the block's output */
} layer_acts;

struct ct_gpt2 {
    ct_gpt2_config cfg;
    const ct_backend *be;
    ct_kctx *ctx;
    int maxB, maxT;

    int ntensors;
    ct_param *tensors;     /* [ntensors] */
    size_t numel;          /* flat length, padding included */
    void *params;          /* [numel] */
    void *grads;           /* [numel] */

    /* activations, backend memory */
    void *encoded;         /* [BT, C] */
    layer_acts *layers;    /* [L] */
    void *proj;            /* [BT, C] scratch: attention / MLP projection output before the residual add */
    void *lnf;             /* [BT, C] */
    float *lnf_mean, *lnf_rstd; /* [BT] */
    void *logits;          /* [BT, V]: logits, then probabilities, then their gradient */
    float *losses;         /* [BT] */
    int32_t *tokens_dev, *targets_dev; /* [BT] */

    /* activation gradients, reused by every layer */
    void *dres;            /* [BT, C] gradient of the residual stream */
    void *dln;             /* [BT, C] */
    void *datty;           /* [BT, C] */
    void *dqkv;            /* [BT, 3C] */
    void *dfch;            /* [BT, 4C] */
    void *dfch_gelu;       /* [BT, 4C] */

    float *losses_host;    /* [BT] */
    int curB, curT;        /* shape of the last forward */
    int have_targets;      /* the last forward computed the loss: backward may run */

    void **allocations;    /* every backend allocation, for free */
    int nalloc;
};

/* ---------------------------------------------------------------- layout */

static void add_tensor(ct_gpt2 *m, size_t *off, const char *name, int rows, int cols, int conv1d, int decay)
{
    ct_param *p = &m->tensors[m->ntensors++];
    snprintf(p->name, sizeof p->name, "%s", name);
    p->ndim = cols ? 2 : 1;
    p->shape[0] = rows;
    p->shape[1] = cols;
    p->numel = (size_t)rows * (cols ? cols : 1);
    p->offset = *off;
    p->conv1d = conv1d;
    p->decay = decay;
    *off += (p->numel + CT_ALIGN_ELEMS - 1) / CT_ALIGN_ELEMS * CT_ALIGN_ELEMS;
}

static void build_layout(ct_gpt2 *m)
{
    const ct_gpt2_config *c = &m->cfg;
    int C = c->n_embd;
    char name[64];
    size_t off = 0;
    m->ntensors = 0;
    add_tensor(m, &off, "transformer.wte.weight", c->vocab_size, C, 0, 1);
    add_tensor(m, &off, "transformer.wpe.weight", c->max_seq_len, C, 0, 1);
    for (int l = 0; l < c->n_layer; l++) {
#define LAYER_TENSOR(suffix, rows, cols, conv1d, decay)                           \
    snprintf(name, sizeof name, "transformer.h.%d.%s", l, suffix);                \
    add_tensor(m, &off, name, rows, cols, conv1d, decay)
        LAYER_TENSOR("ln_1.weight", C, 0, 0, 0);
        LAYER_TENSOR("ln_1.bias", C, 0, 0, 0);
        LAYER_TENSOR("attn.c_attn.weight", 3 * C, C, 1, 1);
        LAYER_TENSOR("attn.c_attn.bias", 3 * C, 0, 0, 0);
        LAYER_TENSOR("attn.c_proj.weight", C, C, 1, 1);
        LAYER_TENSOR("attn.c_proj.bias", C, 0, 0, 0);
        LAYER_TENSOR("ln_2.weight", C, 0, 0, 0);
        LAYER_TENSOR("ln_2.bias", C, 0, 0, 0);
        LAYER_TENSOR("mlp.c_fc.weight", 4 * C, C, 1, 1);
        LAYER_TENSOR("mlp.c_fc.bias", 4 * C, 0, 0, 0);
        LAYER_TENSOR("mlp.c_proj.weight", C, 4 * C, 1, 1);
        LAYER_TENSOR("mlp.c_proj.bias", C, 0, 0, 0);
#undef LAYER_TENSOR
    }
    add_tensor(m, &off, "transformer.ln_f.weight", C, 0, 0, 0);
    add_tensor(m, &off, "transformer.ln_f.bias", C, 0, 0, 0);
    m->numel = off;
}

/* Tensor index helpers: wte 0, wpe 1, layer l tensor k at 2 + l*P_PER_LAYER + k, ln_f last two. */
static void *param_ptr(const ct_gpt2 *m, void *base, int index)
{
    return (char *)base + m->tensors[index].offset * m->be->elem_size;
}
#define LP(m, base, l, k) param_ptr(m, base, 2 + (l) * P_PER_LAYER + (k))
#define WTE(m, base) param_ptr(m, base, 0)
#define WPE(m, base) param_ptr(m, base, 1)
#define LNFW(m, base) param_ptr(m, base, (m)->ntensors - 2)
#define LNFB(m, base) param_ptr(m, base, (m)->ntensors - 1)

/* ---------------------------------------------------------------- life cycle */

int ct_gpt2_config_check(const ct_gpt2_config *c, char *err, size_t errlen)
{
    const char *field = NULL, *what = NULL;
    if (c->vocab_size <= 0) field = "vocab_size", what = "must be positive";
    else if (c->max_seq_len <= 0) field = "max_seq_len", what = "must be positive";
    else if (c->n_layer <= 0) field = "n_layer", what = "must be positive";
    else if (c->n_head <= 0) field = "n_head", what = "must be positive";
    else if (c->n_embd <= 0) field = "n_embd", what = "must be positive";
    else if (c->n_embd % c->n_head) field = "n_embd", what = "must be a multiple of n_head";
    else if (!(c->ln_eps > 0) || !isfinite(c->ln_eps)) field = "ln_eps", what = "must be a positive number";
    else if ((double)c->vocab_size * c->n_embd > 1e12 || (double)c->n_embd * c->n_embd * c->n_layer > 1e13)
        field = "n_embd", what = "model too large";
    if (!field) return 0;
    snprintf(err, errlen, "model.%s: %s", field, what);
    return -1;
}

static void *balloc(ct_gpt2 *m, size_t bytes)
{
    void *p = m->be->alloc(bytes);
    if (p) m->allocations[m->nalloc++] = p;
    return p;
}

int ct_gpt2_init(ct_gpt2 **out, const ct_gpt2_config *cfg, const ct_backend *be, ct_kctx *ctx, int B, int T,
                 int shards, char *err, size_t errlen)
{
    *out = NULL;
    if (ct_gpt2_config_check(cfg, err, errlen)) return -1;
    if (B <= 0 || T <= 0 || T > cfg->max_seq_len) {
        snprintf(err, errlen, "micro-batch %d x %d tokens does not fit the model (max_seq_len %d)", B, T,
                 cfg->max_seq_len);
        return -1;
    }
    ct_gpt2 *m = calloc(1, sizeof *m);
    int L = cfg->n_layer;
    if (!m) goto oom;
    m->cfg = *cfg;
    m->be = be;
    m->ctx = ctx;
    m->maxB = B;
    m->maxT = T;
    m->tensors = calloc((size_t)(2 + L * P_PER_LAYER + 2), sizeof *m->tensors);
    m->layers = calloc((size_t)L, sizeof *m->layers);
    m->allocations = calloc((size_t)(32 + 16 * L), sizeof *m->allocations);
    m->losses_host = calloc((size_t)B * T, sizeof(float));
    if (!m->tensors || !m->layers || !m->allocations || !m->losses_host) goto oom;
    build_layout(m);
    if (shards > 1) m->numel = (m->numel + (size_t)shards - 1) / (size_t)shards * (size_t)shards;

    size_t es = be->elem_size, BT = (size_t)B * T, C = (size_t)cfg->n_embd, V = (size_t)cfg->vocab_size;
    size_t stats = be->attention_stats_len(B, T, cfg->n_head);
    int ok = 1;
#define ALLOC(dst, bytes) ok &= ((dst) = balloc(m, (bytes))) != NULL
    ALLOC(m->params, m->numel * es);
    ALLOC(m->grads, m->numel * es);
    ALLOC(m->encoded, BT * C * es);
    for (int l = 0; l < L && ok; l++) {
        layer_acts *a = &m->layers[l];
        ALLOC(a->ln1, BT * C * es);
        ALLOC(a->ln1_mean, BT * 4);
        ALLOC(a->ln1_rstd, BT * 4);
        ALLOC(a->qkv, BT * 3 * C * es);
        ALLOC(a->atty, BT * C * es);
        ALLOC(a->att_stats, stats * 4);
        ALLOC(a->res2, BT * C * es);
        ALLOC(a->ln2, BT * C * es);
        ALLOC(a->ln2_mean, BT * 4);
        ALLOC(a->ln2_rstd, BT * 4);
        ALLOC(a->fch, BT * 4 * C * es);
        ALLOC(a->fch_gelu, BT * 4 * C * es);
        ALLOC(a->res3, BT * C * es);
    }
    ALLOC(m->proj, BT * C * es);
    ALLOC(m->lnf, BT * C * es);
    ALLOC(m->lnf_mean, BT * 4);
    ALLOC(m->lnf_rstd, BT * 4);
    ALLOC(m->logits, BT * V * es);
    ALLOC(m->losses, BT * 4);
    ALLOC(m->tokens_dev, BT * 4);
    ALLOC(m->targets_dev, BT * 4);
    ALLOC(m->dres, BT * C * es);
    ALLOC(m->dln, BT * C * es);
    ALLOC(m->datty, BT * C * es);
    ALLOC(m->dqkv, BT * 3 * C * es);
    ALLOC(m->dfch, BT * 4 * C * es);
    ALLOC(m->dfch_gelu, BT * 4 * C * es);
#undef ALLOC
    if (!ok) goto oom;
    *out = m;
    return 0;
oom:
    snprintf(err, errlen, "out of memory allocating a GPT-2 (%d layers, width %d, vocab %d) for %d x %d tokens",
             cfg->n_layer, cfg->n_embd, cfg->vocab_size, B, T);
    ct_gpt2_free(m);
    return -1;
}

void ct_gpt2_free(ct_gpt2 *m)
{
    if (!m) return;
    for (int i = 0; i < m->nalloc; i++) m->be->free(m->allocations[i]);
    free(m->allocations);
    free(m->tensors);
    free(m->layers);
    free(m->losses_host);
    free(m);
}

const ct_gpt2_config *ct_gpt2_config_of(const ct_gpt2 *m) { return &m->cfg; }
const ct_backend *ct_gpt2_backend(const ct_gpt2 *m) { return m->be; }
ct_kctx *ct_gpt2_kctx(const ct_gpt2 *m) { return m->ctx; }
int ct_gpt2_num_tensors(const ct_gpt2 *m) { return m->ntensors; }
const ct_param *ct_gpt2_tensor(const ct_gpt2 *m, int i) { return &m->tensors[i]; }
size_t ct_gpt2_numel(const ct_gpt2 *m) { return m->numel; }
void *ct_gpt2_params(ct_gpt2 *m) { return m->params; }
void *ct_gpt2_grads(ct_gpt2 *m) { return m->grads; }
const void *ct_gpt2_logits(const ct_gpt2 *m) { return m->logits; }

const ct_param *ct_gpt2_find(const ct_gpt2 *m, const char *name)
{
    for (int i = 0; i < m->ntensors; i++)
        if (!strcmp(m->tensors[i].name, name)) return &m->tensors[i];
    return NULL;
}

size_t ct_gpt2_count(const ct_gpt2 *m)
{
    size_t n = 0;
    for (int i = 0; i < m->ntensors; i++) n += m->tensors[i].numel;
    return n;
}

void ct_gpt2_init_weights(ct_gpt2 *m, uint64_t seed)
{
    ct_rng rng;
    ct_rng_seed(&rng, seed);
    float resid_std = 0.02f / sqrtf(2.0f * m->cfg.n_layer);
    size_t maxn = 0;
    for (int i = 0; i < m->ntensors; i++)
        if (m->tensors[i].numel > maxn) maxn = m->tensors[i].numel;
    float *host = malloc(maxn * sizeof(float));
    if (!host) { fprintf(stderr, "ctrain: error: out of memory initialising weights\n"); abort(); }
    for (int i = 0; i < m->ntensors; i++) {
        const ct_param *p = &m->tensors[i];
        const char *suffix = strrchr(p->name, '.');
        int is_bias = !strcmp(suffix, ".bias");
        int is_norm = strstr(p->name, ".ln_") != NULL;
        int is_resid = strstr(p->name, "c_proj.weight") != NULL;
        for (size_t k = 0; k < p->numel; k++) {
            if (is_norm) host[k] = is_bias ? 0.0f : 1.0f;
            else if (is_bias) host[k] = 0.0f;
            else host[k] = ct_rng_normal(&rng) * (is_resid ? resid_std : 0.02f);
        }
        m->be->to_storage(m->ctx, param_ptr(m, m->params, i), host, p->numel);
    }
    m->be->sync(m->ctx);
    free(host);
}

/* ---------------------------------------------------------------- forward */

int ct_gpt2_forward(ct_gpt2 *m, const int32_t *tokens, const int32_t *targets, int B, int T, double *loss_sum,
                    long *ntok, char *err, size_t errlen)
{
    const ct_backend *be = m->be;
    ct_kctx *ctx = m->ctx;
    const ct_gpt2_config *c = &m->cfg;
    int C = c->n_embd, V = c->vocab_size, NH = c->n_head, L = c->n_layer;
    int N = B * T;
    m->have_targets = 0;
    if (B <= 0 || T <= 0 || B > m->maxB || T > m->maxT) {
        snprintf(err, errlen, "batch %d x %d is outside the model's allocation of %d x %d", B, T, m->maxB, m->maxT);
        return -1;
    }
    for (int i = 0; i < N; i++) {
        if (tokens[i] < 0 || tokens[i] >= V) {
            snprintf(err, errlen, "token %d at position %d is outside the vocabulary (size %d)", tokens[i], i, V);
            return -1;
        }
        if (targets && targets[i] >= V) {
            snprintf(err, errlen, "target %d at position %d is outside the vocabulary (size %d)", targets[i], i, V);
            return -1;
        }
    }
    be->upload(ctx, m->tokens_dev, tokens, (size_t)N * sizeof(int32_t));
    if (targets) be->upload(ctx, m->targets_dev, targets, (size_t)N * sizeof(int32_t));

    void *P = m->params;
    be->encoder_fwd(ctx, m->encoded, m->tokens_dev, WTE(m, P), WPE(m, P), B, T, C);
    const void *residual = m->encoded;
    for (int l = 0; l < L; l++) {
        layer_acts *a = &m->layers[l];
        be->layernorm_fwd(ctx, a->ln1, a->ln1_mean, a->ln1_rstd, residual, LP(m, P, l, P_LN1W),
                          LP(m, P, l, P_LN1B), N, C, c->ln_eps);
        be->matmul_fwd(ctx, a->qkv, a->ln1, LP(m, P, l, P_QKVW), LP(m, P, l, P_QKVB), N, C, 3 * C);
        be->attention_fwd(ctx, a->atty, a->att_stats, a->qkv, B, T, C, NH);
        be->matmul_fwd(ctx, m->proj, a->atty, LP(m, P, l, P_ATTPROJW), LP(m, P, l, P_ATTPROJB), N, C, C);
        be->residual_fwd(ctx, a->res2, residual, m->proj, (size_t)N * C);
        be->layernorm_fwd(ctx, a->ln2, a->ln2_mean, a->ln2_rstd, a->res2, LP(m, P, l, P_LN2W),
                          LP(m, P, l, P_LN2B), N, C, c->ln_eps);
        be->matmul_fwd(ctx, a->fch, a->ln2, LP(m, P, l, P_FCW), LP(m, P, l, P_FCB), N, C, 4 * C);
        be->gelu_fwd(ctx, a->fch_gelu, a->fch, (size_t)N * 4 * C);
        be->matmul_fwd(ctx, m->proj, a->fch_gelu, LP(m, P, l, P_FCPROJW), LP(m, P, l, P_FCPROJB), N, 4 * C, C);
        be->residual_fwd(ctx, a->res3, a->res2, m->proj, (size_t)N * C);
        residual = a->res3;
    }
    be->layernorm_fwd(ctx, m->lnf, m->lnf_mean, m->lnf_rstd, residual, LNFW(m, P), LNFB(m, P), N, C, c->ln_eps);
    /* tied LM head: logits = lnf . wte^T */
    be->matmul_fwd(ctx, m->logits, m->lnf, WTE(m, P), NULL, N, C, V);
    m->curB = B;
    m->curT = T;
    if (!targets) {
        be->sync(ctx);
        return 0;
    }

    be->xent_fwd(ctx, m->losses, m->logits, m->targets_dev, N, V);
    be->download(ctx, m->losses_host, m->losses, (size_t)N * sizeof(float));
    double sum = 0.0;
    long count = 0;
    for (int i = 0; i < N; i++) {
        if (targets[i] < 0) continue;
        sum += m->losses_host[i];
        count++;
    }
    *loss_sum = sum;
    *ntok = count;
    m->have_targets = 1;
    return 0;
}

/* ---------------------------------------------------------------- backward */

void ct_gpt2_zero_grad(ct_gpt2 *m) { m->be->zero(m->ctx, m->grads, m->numel * m->be->elem_size); }

void ct_gpt2_backward(ct_gpt2 *m, float dloss)
{
    if (!m->have_targets) {
        fprintf(stderr, "ctrain: internal error: ct_gpt2_backward without a forward with targets\n");
        abort();
    }
    m->have_targets = 0; /* the probabilities are consumed below */
    const ct_backend *be = m->be;
    ct_kctx *ctx = m->ctx;
    const ct_gpt2_config *c = &m->cfg;
    int B = m->curB, T = m->curT, N = B * T;
    int C = c->n_embd, V = c->vocab_size, NH = c->n_head, L = c->n_layer;
    size_t es = be->elem_size, NC = (size_t)N * C;
    void *P = m->params, *G = m->grads;

    be->xent_bwd(ctx, m->logits, m->targets_dev, dloss, N, V);
    be->zero(ctx, m->dln, NC * es);
    be->matmul_bwd(ctx, m->dln, WTE(m, G), NULL, m->logits, m->lnf, WTE(m, P), N, C, V);
    be->zero(ctx, m->dres, NC * es);
    const void *last = L ? m->layers[L - 1].res3 : m->encoded;
    be->layernorm_bwd(ctx, m->dres, LNFW(m, G), LNFB(m, G), m->dln, last, LNFW(m, P), m->lnf_mean, m->lnf_rstd, N,
                      C);

    /* m->dres holds the gradient of the residual stream. Each branch adds its input gradient
     * back into it through its layernorm, which is exactly the residual's backward. */
    for (int l = L - 1; l >= 0; l--) {
        layer_acts *a = &m->layers[l];
        const void *res1 = l ? m->layers[l - 1].res3 : m->encoded;

        be->zero(ctx, m->dfch_gelu, 4 * NC * es);
        be->matmul_bwd(ctx, m->dfch_gelu, LP(m, G, l, P_FCPROJW), LP(m, G, l, P_FCPROJB), m->dres, a->fch_gelu,
                       LP(m, P, l, P_FCPROJW), N, 4 * C, C);
        be->zero(ctx, m->dfch, 4 * NC * es);
        be->gelu_bwd(ctx, m->dfch, a->fch, m->dfch_gelu, 4 * NC);
        be->zero(ctx, m->dln, NC * es);
        be->matmul_bwd(ctx, m->dln, LP(m, G, l, P_FCW), LP(m, G, l, P_FCB), m->dfch, a->ln2, LP(m, P, l, P_FCW), N, C,
                       4 * C);
        be->layernorm_bwd(ctx, m->dres, LP(m, G, l, P_LN2W), LP(m, G, l, P_LN2B), m->dln, a->res2,
                          LP(m, P, l, P_LN2W), a->ln2_mean, a->ln2_rstd, N, C);

        be->zero(ctx, m->datty, NC * es);
        be->matmul_bwd(ctx, m->datty, LP(m, G, l, P_ATTPROJW), LP(m, G, l, P_ATTPROJB), m->dres, a->atty,
                       LP(m, P, l, P_ATTPROJW), N, C, C);
        be->zero(ctx, m->dqkv, 3 * NC * es);
        be->attention_bwd(ctx, m->dqkv, a->att_stats, m->datty, a->qkv, a->atty, B, T, C, NH);
        be->zero(ctx, m->dln, NC * es);
        be->matmul_bwd(ctx, m->dln, LP(m, G, l, P_QKVW), LP(m, G, l, P_QKVB), m->dqkv, a->ln1, LP(m, P, l, P_QKVW),
                       N, C, 3 * C);
        be->layernorm_bwd(ctx, m->dres, LP(m, G, l, P_LN1W), LP(m, G, l, P_LN1B), m->dln, res1, LP(m, P, l, P_LN1W),
                          a->ln1_mean, a->ln1_rstd, N, C);
    }
    be->encoder_bwd(ctx, WTE(m, G), WPE(m, G), m->dres, m->tokens_dev, B, T, C);
}

double ct_gpt2_step_flops(const ct_gpt2_config *c, int B, int T)
{
    double N = (double)B * T, C = c->n_embd, L = c->n_layer, V = c->vocab_size;
    /* forward multiply-adds per token: qkv 3C^2, proj C^2, fc 4C^2, fcproj 4C^2 per layer; head CV */
    double matmul_fwd = 2.0 * N * (L * 12.0 * C * C + C * V);
    /* attention: QK^T and PV over the causal half, T(T+1)/2 pairs per head-channel */
    double attn_fwd = 2.0 * 2.0 * B * L * C * (T * (T + 1) / 2.0);
    return 3.0 * (matmul_fwd + attn_fwd); /* backward costs twice the forward */
}
