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

/* The LM head computes logits for the vocabulary padded to a multiple of this: logits rows
 * (and the head's matrix products) then start 128-byte aligned in bf16, which tensor-core
 * GEMM kernels need (50257 -> 50304 for GPT-2). */
#define CT_VOCAB_ALIGN 64

/* Per-layer parameter tensors, in flat-buffer order. Layers are contiguous so backward
 * finishes one layer's gradients as one contiguous range (bucketed reduction). */
enum { P_LN1W, P_LN1B, P_QKVW, P_QKVB, P_ATTPROJW, P_ATTPROJB, P_LN2W, P_LN2B, P_FCW, P_FCB, P_FCPROJW,
       P_FCPROJB, P_PER_LAYER };

/* The four linear layers of a block, in PEFT's module names; LoRA can sit beside each. */
enum { LIN_QKV, LIN_ATTPROJ, LIN_FC, LIN_FCPROJ, NLIN };
static const char *const lin_names[NLIN] = {"attn.c_attn", "attn.c_proj", "mlp.c_fc", "mlp.c_proj"};

typedef struct {
    void *A, *B;          /* [r, in], [out, r]: in the adapters' flat parameter buffer */
    void *dA, *dB;        /* the same places in their gradient buffer */
    void *h;              /* [BT, r] drop(x) . A^T, kept for backward */
} adapter;

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
    int Vp;                /* vocab_size padded to CT_VOCAB_ALIGN */
    void *logits;          /* [BT, Vp]: logits, then their gradient (columns past V: 0) */
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

    /* LoRA (ct_gpt2_add_lora): the base is frozen (grads released) and adapters train */
    int frozen;
    adapter *adapters;     /* [L * NLIN]; A == NULL where a linear has none */
    int lora_r;
    float lora_scale, lora_dropout;
    uint64_t dropout_seed;
    int training;          /* dropout only while training (ct_gpt2_set_training), as PEFT */
    ct_param *lora_tensors;
    int lora_ntensors;
    size_t lora_numel;
    void *lora_params, *lora_grads, *lora_scratch;
    size_t *lora_bound;    /* [L + 1]: layer l's adapters span [lora_bound[l], lora_bound[l + 1]) */

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
    /* wte's place holds Vp rows: the LM head multiplies by all of them. The rows past V are
     * no tensor's: zero, never loaded, saved or updated (their gradient is 0). */
    m->Vp = (c->vocab_size + CT_VOCAB_ALIGN - 1) / CT_VOCAB_ALIGN * CT_VOCAB_ALIGN;
    off = (m->tensors[0].offset + (size_t)m->Vp * C + CT_ALIGN_ELEMS - 1) / CT_ALIGN_ELEMS * CT_ALIGN_ELEMS;
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
    return base ? (char *)base + m->tensors[index].offset * m->be->elem_size : NULL; /* NULL: frozen */
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
    m->allocations = calloc((size_t)(40 + (16 + 2 * NLIN) * L), sizeof *m->allocations);
    m->losses_host = calloc((size_t)B * T, sizeof(float));
    if (!m->tensors || !m->layers || !m->allocations || !m->losses_host) goto oom;
    build_layout(m);
    if (shards > 1) m->numel = (m->numel + (size_t)shards - 1) / (size_t)shards * (size_t)shards;

    size_t es = be->elem_size, BT = (size_t)B * T, C = (size_t)cfg->n_embd;
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
    ALLOC(m->logits, BT * (size_t)m->Vp * es);
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
    free(m->adapters);
    free(m->lora_tensors);
    free(m->lora_bound);
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
int ct_gpt2_logits_stride(const ct_gpt2 *m) { return m->Vp; }

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
    float *staged = m->be->alloc(maxn * sizeof(float)); /* fp32 in backend memory */
    if (!host || !staged) { fprintf(stderr, "ctrain: error: out of memory initialising weights\n"); abort(); }
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
        m->be->upload(m->ctx, staged, host, p->numel * sizeof(float));
        m->be->to_storage(m->ctx, param_ptr(m, m->params, i), staged, p->numel);
    }
    m->be->sync(m->ctx);
    m->be->free(staged);
    free(host);
}

/* ---------------------------------------------------------------- LoRA */

static void lin_dims(const ct_gpt2 *m, int kind, int *in, int *out)
{
    int C = m->cfg.n_embd;
    *in = kind == LIN_FCPROJ ? 4 * C : C;
    *out = kind == LIN_QKV ? 3 * C : kind == LIN_FC ? 4 * C : C;
}

int ct_gpt2_num_linears(const ct_gpt2 *m) { return m->cfg.n_layer * NLIN; }

void ct_gpt2_linear_name(const ct_gpt2 *m, int i, char *out, size_t n)
{
    snprintf(out, n, "transformer.h.%d.%s", i / NLIN, lin_names[i % NLIN]);
}

int ct_gpt2_add_lora(ct_gpt2 *m, const unsigned char *select, int r, float scale, float dropout, int shards,
                     char *err, size_t errlen)
{
    int nlin = ct_gpt2_num_linears(m), count = 0;
    for (int i = 0; i < nlin; i++) count += select[i] != 0;
    if (m->adapters || r <= 0 || !count) {
        snprintf(err, errlen, "lora: %s", m->adapters ? "adapters already added" : r <= 0 ? "r must be positive"
                                                                                   : "no linear layer selected");
        return -1;
    }
    size_t es = m->be->elem_size, BT = (size_t)m->maxB * m->maxT;
    m->adapters = calloc((size_t)nlin, sizeof *m->adapters);
    m->lora_tensors = calloc((size_t)count * 2, sizeof *m->lora_tensors);
    m->lora_bound = calloc((size_t)m->cfg.n_layer + 1, sizeof *m->lora_bound);
    if (!m->adapters || !m->lora_tensors || !m->lora_bound) goto oom;
    size_t off = 0, scratch = 0;
    for (int i = 0; i < nlin; i++) {
        if (!select[i]) continue;
        int in, out;
        lin_dims(m, i % NLIN, &in, &out);
        for (int ab = 0; ab < 2; ab++) {
            ct_param *p = &m->lora_tensors[m->lora_ntensors++];
            snprintf(p->name, sizeof p->name, "base_model.model.transformer.h.%d.%s.lora_%c.weight", i / NLIN,
                     lin_names[i % NLIN], ab ? 'B' : 'A');
            p->ndim = 2;
            p->shape[0] = ab ? out : r;
            p->shape[1] = ab ? r : in;
            p->numel = (size_t)r * (ab ? out : in);
            p->offset = off;
            p->decay = 1;
            off += (p->numel + CT_ALIGN_ELEMS - 1) / CT_ALIGN_ELEMS * CT_ALIGN_ELEMS;
        }
        size_t need = m->be->lora_scratch_len(m->maxB * m->maxT, in, r);
        if (need > scratch) scratch = need;
    }
    if (shards > 1) off = (off + (size_t)shards - 1) / (size_t)shards * (size_t)shards;
    m->lora_numel = off;
    /* layer boundaries: a layer's range starts at its first adapter, or where the next starts */
    m->lora_bound[m->cfg.n_layer] = off;
    for (int l = m->cfg.n_layer - 1, t = 2 * count - 2; l >= 0; l--) {
        m->lora_bound[l] = m->lora_bound[l + 1];
        for (int k = NLIN - 1; k >= 0; k--)
            if (select[l * NLIN + k]) m->lora_bound[l] = m->lora_tensors[t].offset, t -= 2;
    }
    if (!(m->lora_params = balloc(m, off * es)) || !(m->lora_grads = balloc(m, off * es)) ||
        !(m->lora_scratch = balloc(m, scratch * es)))
        goto oom;
    int t = 0;
    for (int i = 0; i < nlin; i++) {
        if (!select[i]) continue;
        adapter *a = &m->adapters[i];
        a->A = (char *)m->lora_params + m->lora_tensors[t].offset * es;
        a->dA = (char *)m->lora_grads + m->lora_tensors[t].offset * es;
        a->B = (char *)m->lora_params + m->lora_tensors[t + 1].offset * es;
        a->dB = (char *)m->lora_grads + m->lora_tensors[t + 1].offset * es;
        t += 2;
        if (!(a->h = balloc(m, BT * (size_t)r * es))) goto oom;
    }
    m->lora_r = r;
    m->lora_scale = scale;
    m->lora_dropout = dropout;
    /* the base is frozen: its gradients are never computed, so their buffer goes */
    for (int i = 0; i < m->nalloc; i++)
        if (m->allocations[i] == m->grads) m->be->free(m->grads), m->allocations[i] = NULL;
    m->grads = NULL;
    m->frozen = 1;
    return 0;
oom:
    snprintf(err, errlen, "lora: out of memory for rank-%d adapters on %d linear layers", r, count);
    return -1;
}

int ct_gpt2_has_lora(const ct_gpt2 *m) { return m->adapters != NULL; }
float ct_gpt2_lora_scale(const ct_gpt2 *m) { return m->lora_scale; }
void ct_gpt2_set_dropout_seed(ct_gpt2 *m, uint64_t seed) { m->dropout_seed = seed; }
void ct_gpt2_set_training(ct_gpt2 *m, int on) { m->training = on; }

ct_trainable ct_gpt2_trainable(ct_gpt2 *m)
{
    if (m->adapters)
        return (ct_trainable){.ntensors = m->lora_ntensors, .tensors = m->lora_tensors, .numel = m->lora_numel,
                              .params = m->lora_params, .grads = m->lora_grads};
    return (ct_trainable){.ntensors = m->ntensors, .tensors = m->tensors, .numel = m->numel, .params = m->params,
                          .grads = m->grads};
}

/* Each adapter's dropout mask differs: the step's seed mixed with the adapter's index. */
static uint64_t adapter_seed(const ct_gpt2 *m, int i) { return m->dropout_seed ^ (0x9E3779B97F4A7C15ull * (uint64_t)(i + 1)); }

/* out += the adapter's contribution, where linear `kind` of layer l has one. */
static void adapter_fwd(ct_gpt2 *m, int l, int kind, void *out, const void *x, int N)
{
    adapter *a = m->adapters ? &m->adapters[l * NLIN + kind] : NULL;
    if (!a || !a->A) return;
    int in, outd;
    lin_dims(m, kind, &in, &outd);
    m->be->lora_fwd(m->ctx, out, a->h, x, a->A, a->B, m->lora_scratch, N, in, outd, m->lora_r, m->lora_scale,
                    m->training ? m->lora_dropout : 0.0f, adapter_seed(m, l * NLIN + kind));
}

static void adapter_bwd(ct_gpt2 *m, int l, int kind, void *dx, const void *dout, const void *x, int N)
{
    adapter *a = m->adapters ? &m->adapters[l * NLIN + kind] : NULL;
    if (!a || !a->A) return;
    int in, outd;
    lin_dims(m, kind, &in, &outd);
    m->be->lora_bwd(m->ctx, dx, a->dA, a->dB, dout, x, a->h, a->A, a->B, m->lora_scratch, N, in, outd, m->lora_r,
                    m->lora_scale, m->training ? m->lora_dropout : 0.0f, adapter_seed(m, l * NLIN + kind));
}

/* ---------------------------------------------------------------- forward */

int ct_gpt2_forward(ct_gpt2 *m, const int32_t *tokens, const int32_t *targets, int B, int T, float dloss,
                    double *loss_sum, long *ntok, char *err, size_t errlen)
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
        adapter_fwd(m, l, LIN_QKV, a->qkv, a->ln1, N);
        be->attention_fwd(ctx, a->atty, a->att_stats, a->qkv, B, T, C, NH);
        be->matmul_fwd(ctx, m->proj, a->atty, LP(m, P, l, P_ATTPROJW), LP(m, P, l, P_ATTPROJB), N, C, C);
        adapter_fwd(m, l, LIN_ATTPROJ, m->proj, a->atty, N);
        be->residual_fwd(ctx, a->res2, residual, m->proj, (size_t)N * C);
        be->layernorm_fwd(ctx, a->ln2, a->ln2_mean, a->ln2_rstd, a->res2, LP(m, P, l, P_LN2W),
                          LP(m, P, l, P_LN2B), N, C, c->ln_eps);
        be->matmul_fwd(ctx, a->fch, a->ln2, LP(m, P, l, P_FCW), LP(m, P, l, P_FCB), N, C, 4 * C);
        adapter_fwd(m, l, LIN_FC, a->fch, a->ln2, N);
        be->gelu_fwd(ctx, a->fch_gelu, a->fch, (size_t)N * 4 * C);
        be->matmul_fwd(ctx, m->proj, a->fch_gelu, LP(m, P, l, P_FCPROJW), LP(m, P, l, P_FCPROJB), N, 4 * C, C);
        adapter_fwd(m, l, LIN_FCPROJ, m->proj, a->fch_gelu, N);
        be->residual_fwd(ctx, a->res3, a->res2, m->proj, (size_t)N * C);
        residual = a->res3;
    }
    be->layernorm_fwd(ctx, m->lnf, m->lnf_mean, m->lnf_rstd, residual, LNFW(m, P), LNFB(m, P), N, C, c->ln_eps);
    /* tied LM head: logits = lnf . wte^T */
    be->matmul_fwd(ctx, m->logits, m->lnf, WTE(m, P), NULL, N, C, m->Vp);
    m->curB = B;
    m->curT = T;
    if (!targets) {
        be->sync(ctx);
        return 0;
    }

    be->xent(ctx, m->losses, m->logits, m->targets_dev, dloss, N, V, m->Vp); /* logits become their gradient */
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

void ct_gpt2_zero_grad(ct_gpt2 *m)
{
    ct_trainable t = ct_gpt2_trainable(m);
    m->be->zero(m->ctx, t.grads, t.numel * m->be->elem_size);
}

/* Where layer l's tensors start in the trainable buffer; l == L: where ln_f starts (full
 * model) or the end (adapters). */
static size_t layer_bound(const ct_gpt2 *m, int l)
{
    if (m->adapters) return m->lora_bound[l];
    return m->tensors[l < m->cfg.n_layer ? 2 + l * P_PER_LAYER : m->ntensors - 2].offset;
}

void ct_gpt2_backward(ct_gpt2 *m, ct_grad_ready_fn ready, void *user)
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
    int C = c->n_embd, NH = c->n_head, L = c->n_layer;
    size_t es = be->elem_size, NC = (size_t)N * C;
    void *P = m->params, *G = m->frozen ? NULL : m->grads; /* NULL: no base gradients */

    /* the logits already hold their gradient (the forward's fused classifier loss) */
    be->zero(ctx, m->dln, NC * es);
    be->matmul_bwd(ctx, m->dln, WTE(m, G), NULL, m->logits, m->lnf, WTE(m, P), N, C, m->Vp);
    be->zero(ctx, m->dres, NC * es);
    const void *last = L ? m->layers[L - 1].res3 : m->encoded;
    be->layernorm_bwd(ctx, m->dres, LNFW(m, G), LNFB(m, G), m->dln, last, LNFW(m, P), m->lnf_mean, m->lnf_rstd, N,
                      C);
    if (ready && G) ready(user, layer_bound(m, L), m->numel); /* ln_f and the padding */

    /* m->dres holds the gradient of the residual stream. Each branch adds its input gradient
     * back into it through its layernorm, which is exactly the residual's backward. */
    for (int l = L - 1; l >= 0; l--) {
        layer_acts *a = &m->layers[l];
        const void *res1 = l ? m->layers[l - 1].res3 : m->encoded;

        be->zero(ctx, m->dfch_gelu, 4 * NC * es);
        be->matmul_bwd(ctx, m->dfch_gelu, LP(m, G, l, P_FCPROJW), LP(m, G, l, P_FCPROJB), m->dres, a->fch_gelu,
                       LP(m, P, l, P_FCPROJW), N, 4 * C, C);
        adapter_bwd(m, l, LIN_FCPROJ, m->dfch_gelu, m->dres, a->fch_gelu, N);
        be->zero(ctx, m->dfch, 4 * NC * es);
        be->gelu_bwd(ctx, m->dfch, a->fch, m->dfch_gelu, 4 * NC);
        be->zero(ctx, m->dln, NC * es);
        be->matmul_bwd(ctx, m->dln, LP(m, G, l, P_FCW), LP(m, G, l, P_FCB), m->dfch, a->ln2, LP(m, P, l, P_FCW), N, C,
                       4 * C);
        adapter_bwd(m, l, LIN_FC, m->dln, m->dfch, a->ln2, N);
        be->layernorm_bwd(ctx, m->dres, LP(m, G, l, P_LN2W), LP(m, G, l, P_LN2B), m->dln, a->res2,
                          LP(m, P, l, P_LN2W), a->ln2_mean, a->ln2_rstd, N, C);

        be->zero(ctx, m->datty, NC * es);
        be->matmul_bwd(ctx, m->datty, LP(m, G, l, P_ATTPROJW), LP(m, G, l, P_ATTPROJB), m->dres, a->atty,
                       LP(m, P, l, P_ATTPROJW), N, C, C);
        adapter_bwd(m, l, LIN_ATTPROJ, m->datty, m->dres, a->atty, N);
        be->zero(ctx, m->dqkv, 3 * NC * es);
        be->attention_bwd(ctx, m->dqkv, a->att_stats, m->datty, a->qkv, a->atty, B, T, C, NH);
        be->zero(ctx, m->dln, NC * es);
        be->matmul_bwd(ctx, m->dln, LP(m, G, l, P_QKVW), LP(m, G, l, P_QKVB), m->dqkv, a->ln1, LP(m, P, l, P_QKVW),
                       N, C, 3 * C);
        adapter_bwd(m, l, LIN_QKV, m->dln, m->dqkv, a->ln1, N);
        be->layernorm_bwd(ctx, m->dres, LP(m, G, l, P_LN1W), LP(m, G, l, P_LN1B), m->dln, res1, LP(m, P, l, P_LN1W),
                          a->ln1_mean, a->ln1_rstd, N, C);
        size_t lo = layer_bound(m, l), hi = layer_bound(m, l + 1);
        if (ready && lo < hi) ready(user, lo, hi);
    }
    if (G) {
        be->encoder_bwd(ctx, WTE(m, G), WPE(m, G), m->dres, m->tokens_dev, B, T, C);
        if (ready) ready(user, 0, layer_bound(m, 0)); /* wte (the LM head's too) and wpe */
    }
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
