/* gpt2.c — GPT-2: learned positions, pre-LN blocks with LayerNorm and biases everywhere, a
 * tanh-GELU MLP, the LM head tied to the token embedding. Hugging Face keeps its linears as
 * transposed Conv1D weights. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "arch.h"
#include "hf_config.h"

enum { S_WTE, S_WPE, S_LN1W, S_LN1B, S_QKVW, S_QKVB, S_ATTPROJW, S_ATTPROJB, S_LN2W, S_LN2B, S_FCW, S_FCB,
       S_FCPROJW, S_FCPROJB, S_LNFW, S_LNFB, NSLOTS };

static const ct_tensor_spec pre[] = {
    {S_WTE, "transformer.wte.weight", DIM_V, DIM_C, INIT_NORMAL, 1, 0, 0, WHEN_ALWAYS},
    {S_WPE, "transformer.wpe.weight", DIM_POS, DIM_C, INIT_NORMAL, 1, 0, 0, WHEN_ALWAYS},
};
static const ct_tensor_spec block[] = {
    {S_LN1W, "ln_1.weight", DIM_C, DIM_NONE, INIT_ONES, 0, 0, 0, WHEN_ALWAYS},
    {S_LN1B, "ln_1.bias", DIM_C, DIM_NONE, INIT_ZEROS, 0, 0, 0, WHEN_ALWAYS},
    {S_QKVW, "attn.c_attn.weight", DIM_QKV, DIM_C, INIT_NORMAL, 1, 1, 1, WHEN_ALWAYS},
    {S_QKVB, "attn.c_attn.bias", DIM_QKV, DIM_NONE, INIT_ZEROS, 0, 0, 0, WHEN_ALWAYS},
    {S_ATTPROJW, "attn.c_proj.weight", DIM_C, DIM_Q, INIT_RESID, 1, 1, 1, WHEN_ALWAYS},
    {S_ATTPROJB, "attn.c_proj.bias", DIM_C, DIM_NONE, INIT_ZEROS, 0, 0, 0, WHEN_ALWAYS},
    {S_LN2W, "ln_2.weight", DIM_C, DIM_NONE, INIT_ONES, 0, 0, 0, WHEN_ALWAYS},
    {S_LN2B, "ln_2.bias", DIM_C, DIM_NONE, INIT_ZEROS, 0, 0, 0, WHEN_ALWAYS},
    {S_FCW, "mlp.c_fc.weight", DIM_I, DIM_C, INIT_NORMAL, 1, 1, 1, WHEN_ALWAYS},
    {S_FCB, "mlp.c_fc.bias", DIM_I, DIM_NONE, INIT_ZEROS, 0, 0, 0, WHEN_ALWAYS},
    {S_FCPROJW, "mlp.c_proj.weight", DIM_C, DIM_I, INIT_RESID, 1, 1, 1, WHEN_ALWAYS},
    {S_FCPROJB, "mlp.c_proj.bias", DIM_C, DIM_NONE, INIT_ZEROS, 0, 0, 0, WHEN_ALWAYS},
};
static const ct_tensor_spec post[] = {
    {S_LNFW, "transformer.ln_f.weight", DIM_C, DIM_NONE, INIT_ONES, 0, 0, 0, WHEN_ALWAYS},
    {S_LNFB, "transformer.ln_f.bias", DIM_C, DIM_NONE, INIT_ZEROS, 0, 0, 0, WHEN_ALWAYS},
};

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
    void *fch;            /* [BT, I] */
    void *fch_gelu;       /* [BT, I] */
    void *res3;           /* [BT, C] residual after the MLP: the block's output */
} layer_acts;

typedef struct {
    void *encoded;         /* [BT, C] */
    layer_acts *layers;    /* [L] */
    void *proj;            /* [BT, C] scratch: a projection's output before the residual add */
    void *lnf;             /* [BT, C] */
    float *lnf_mean, *lnf_rstd; /* [BT] */
    /* activation gradients, reused by every layer */
    void *dres;            /* [BT, C] gradient of the residual stream */
    void *dln;             /* [BT, C] */
    void *datty;           /* [BT, C] */
    void *dqkv;            /* [BT, 3C] */
    void *dfch;            /* [BT, I] */
    void *dfch_gelu;       /* [BT, I] */
} acts;

#define W(m, l, s) ct_model_w(m, 0, l, s)
#define G(m, l, s) ct_model_w(m, 1, l, s)

static int alloc(ct_model *m, int B, int T)
{
    const ct_model_config *c = &m->cfg;
    acts *a = calloc(1, sizeof *a);
    if (!a || !(a->layers = calloc((size_t)c->n_layer, sizeof *a->layers))) return free(a), -1;
    m->acts = a;
    size_t es = m->be->elem_size, BT = (size_t)B * T, C = (size_t)c->n_embd, I = (size_t)c->n_inner;
    size_t stats = m->be->attention_stats_len(B, T, c->n_head);
    int ok = 1;
#define ALLOC(dst, bytes) ok &= ((dst) = ct_model_balloc(m, (bytes))) != NULL
    ALLOC(a->encoded, BT * C * es);
    for (int l = 0; l < c->n_layer && ok; l++) {
        layer_acts *la = &a->layers[l];
        ALLOC(la->ln1, BT * C * es);
        ALLOC(la->ln1_mean, BT * 4);
        ALLOC(la->ln1_rstd, BT * 4);
        ALLOC(la->qkv, BT * 3 * C * es);
        ALLOC(la->atty, BT * C * es);
        ALLOC(la->att_stats, stats * 4);
        ALLOC(la->res2, BT * C * es);
        ALLOC(la->ln2, BT * C * es);
        ALLOC(la->ln2_mean, BT * 4);
        ALLOC(la->ln2_rstd, BT * 4);
        ALLOC(la->fch, BT * I * es);
        ALLOC(la->fch_gelu, BT * I * es);
        ALLOC(la->res3, BT * C * es);
    }
    ALLOC(a->proj, BT * C * es);
    ALLOC(a->lnf, BT * C * es);
    ALLOC(a->lnf_mean, BT * 4);
    ALLOC(a->lnf_rstd, BT * 4);
    ALLOC(a->dres, BT * C * es);
    ALLOC(a->dln, BT * C * es);
    ALLOC(a->datty, BT * C * es);
    ALLOC(a->dqkv, BT * 3 * C * es);
    ALLOC(a->dfch, BT * I * es);
    ALLOC(a->dfch_gelu, BT * I * es);
#undef ALLOC
    return ok ? 0 : -1;
}

static void free_acts(ct_model *m)
{
    acts *a = m->acts;
    free(a->layers);
    free(a);
    m->acts = NULL;
}

/* Forward of B x T tokens at positions m->pos_dev, attention masked to documents when m->doc_pos
 * is set; with cached, the tokens sit at pos0.. and attend over the KV cache. */
static void run(ct_model *m, int B, int T, int pos0, int cached)
{
    const ct_backend *be = m->be;
    ct_kctx *ctx = m->ctx;
    const ct_model_config *c = &m->cfg;
    acts *a = m->acts;
    int C = c->n_embd, I = c->n_inner, NH = c->n_head, D = c->head_dim, N = B * T;
    size_t es = be->elem_size;
    ct_model_fetch(m, CT_UNIT_PRE, CT_UNIT_WEIGHTS);
    be->encoder_fwd(ctx, a->encoded, m->tokens_dev, m->pos_dev, W(m, -1, S_WTE), W(m, -1, S_WPE), B, T, C);
    ct_model_release(m, CT_UNIT_PRE);
    const void *residual = a->encoded;
    for (int l = 0; l < c->n_layer; l++) {
        layer_acts *la = &a->layers[l];
        ct_model_fetch(m, l, CT_UNIT_WEIGHTS);
        char *q = la->qkv, *k = q + (size_t)C * es, *v = q + 2 * (size_t)C * es;
        be->layernorm_fwd(ctx, la->ln1, la->ln1_mean, la->ln1_rstd, residual, W(m, l, S_LN1W), W(m, l, S_LN1B), N, C,
                          c->norm_eps);
        ct_model_linear_fwd(m, l, S_QKVW, S_QKVB, la->qkv, la->ln1, N);
        if (cached) ct_model_attend_cached(m, l, la->atty, q, 3 * C, k, v, 3 * C, B, T, pos0, 0);
        else be->attention_fwd(ctx, la->atty, la->att_stats, q, k, v, m->doc_pos, B, T, NH, NH, D, 3 * C, 3 * C, 0);
        ct_model_linear_fwd(m, l, S_ATTPROJW, S_ATTPROJB, a->proj, la->atty, N);
        be->residual_fwd(ctx, la->res2, residual, a->proj, (size_t)N * C);
        be->layernorm_fwd(ctx, la->ln2, la->ln2_mean, la->ln2_rstd, la->res2, W(m, l, S_LN2W), W(m, l, S_LN2B), N, C,
                          c->norm_eps);
        ct_model_linear_fwd(m, l, S_FCW, S_FCB, la->fch, la->ln2, N);
        be->gelu_fwd(ctx, la->fch_gelu, la->fch, (size_t)N * I);
        ct_model_linear_fwd(m, l, S_FCPROJW, S_FCPROJB, a->proj, la->fch_gelu, N);
        be->residual_fwd(ctx, la->res3, la->res2, a->proj, (size_t)N * C);
        ct_model_release(m, l);
        residual = la->res3;
    }
    ct_model_fetch(m, CT_UNIT_POST, CT_UNIT_WEIGHTS);
    ct_model_fetch(m, CT_UNIT_PRE, CT_UNIT_WEIGHTS); /* the tied head */
    be->layernorm_fwd(ctx, a->lnf, a->lnf_mean, a->lnf_rstd, residual, W(m, -1, S_LNFW), W(m, -1, S_LNFB), N, C,
                      c->norm_eps);
    /* tied LM head: logits = lnf . wte^T */
    be->matmul_fwd(ctx, m->logits, a->lnf, W(m, -1, S_WTE), NULL, N, C, m->Vp);
}

static void forward(ct_model *m, int B, int T) { run(m, B, T, 0, 0); }
static void decode(ct_model *m, int B, int Tq, int pos0) { run(m, B, Tq, pos0, 1); }

static void backward(ct_model *m, int B, int T, ct_grad_ready_fn ready, void *user)
{
    const ct_backend *be = m->be;
    ct_kctx *ctx = m->ctx;
    const ct_model_config *c = &m->cfg;
    acts *a = m->acts;
    int N = B * T, C = c->n_embd, I = c->n_inner, NH = c->n_head, D = c->head_dim, L = c->n_layer;
    size_t es = be->elem_size, NC = (size_t)N * C;

    /* the logits already hold their gradient (the forward's fused classifier loss) */
    ct_model_fetch(m, CT_UNIT_POST, CT_UNIT_WEIGHTS | CT_UNIT_GRADS);
    ct_model_fetch(m, CT_UNIT_PRE, CT_UNIT_WEIGHTS | CT_UNIT_GRADS);
    be->zero(ctx, a->dln, NC * es);
    be->matmul_bwd(ctx, a->dln, G(m, -1, S_WTE), NULL, m->logits, a->lnf, W(m, -1, S_WTE), N, C, m->Vp);
    be->zero(ctx, a->dres, NC * es);
    const void *last = a->layers[L - 1].res3;
    be->layernorm_bwd(ctx, a->dres, G(m, -1, S_LNFW), G(m, -1, S_LNFB), a->dln, last, W(m, -1, S_LNFW), a->lnf_mean,
                      a->lnf_rstd, N, C);
    ct_model_head_ready(m, ready, user);

    /* a->dres holds the gradient of the residual stream. Each branch adds its input gradient
     * back into it through its layernorm, which is exactly the residual's backward. */
    for (int l = L - 1; l >= 0; l--) {
        layer_acts *la = &a->layers[l];
        const void *res1 = l ? a->layers[l - 1].res3 : a->encoded;
        char *q = la->qkv, *k = q + (size_t)C * es, *v = q + 2 * (size_t)C * es;
        char *dq = a->dqkv, *dk = dq + (size_t)C * es, *dv = dq + 2 * (size_t)C * es;
        ct_model_fetch(m, l, CT_UNIT_WEIGHTS | CT_UNIT_GRADS);

        be->zero(ctx, a->dfch_gelu, (size_t)N * I * es);
        ct_model_linear_bwd(m, l, S_FCPROJW, S_FCPROJB, a->dfch_gelu, a->dres, la->fch_gelu, N);
        be->zero(ctx, a->dfch, (size_t)N * I * es);
        be->gelu_bwd(ctx, a->dfch, la->fch, a->dfch_gelu, (size_t)N * I);
        be->zero(ctx, a->dln, NC * es);
        ct_model_linear_bwd(m, l, S_FCW, S_FCB, a->dln, a->dfch, la->ln2, N);
        be->layernorm_bwd(ctx, a->dres, G(m, l, S_LN2W), G(m, l, S_LN2B), a->dln, la->res2, W(m, l, S_LN2W),
                          la->ln2_mean, la->ln2_rstd, N, C);

        be->zero(ctx, a->datty, NC * es);
        ct_model_linear_bwd(m, l, S_ATTPROJW, S_ATTPROJB, a->datty, a->dres, la->atty, N);
        be->zero(ctx, a->dqkv, 3 * NC * es);
        be->attention_bwd(ctx, dq, dk, dv, la->att_stats, a->datty, q, k, v, la->atty, m->doc_pos, B, T, NH, NH, D,
                          3 * C, 3 * C, 0);
        be->zero(ctx, a->dln, NC * es);
        ct_model_linear_bwd(m, l, S_QKVW, S_QKVB, a->dln, a->dqkv, la->ln1, N);
        be->layernorm_bwd(ctx, a->dres, G(m, l, S_LN1W), G(m, l, S_LN1B), a->dln, res1, W(m, l, S_LN1W), la->ln1_mean,
                          la->ln1_rstd, N, C);
        ct_model_layer_ready(m, l, ready, user);
    }
    if (!m->frozen)
        be->encoder_bwd(ctx, G(m, -1, S_WTE), G(m, -1, S_WPE), a->dres, m->tokens_dev, m->doc_pos, B, T, C);
    ct_model_embed_ready(m, ready, user); /* wte (the LM head's too) and wpe */
}

static double flops(const ct_model_config *c, int B, int T)
{
    double N = (double)B * T, C = c->n_embd, L = c->n_layer, V = c->vocab_size, I = c->n_inner ? c->n_inner : 4 * C;
    /* forward multiply-adds per token: qkv 3C^2, proj C^2, fc and fcproj C*I per layer; head CV */
    double matmul_fwd = 2.0 * N * (L * (4.0 * C * C + 2.0 * C * I) + C * V);
    /* attention: QK^T and PV over the causal half, T(T+1)/2 pairs per head-channel */
    double attn_fwd = 2.0 * 2.0 * B * L * C * (T * (T + 1) / 2.0);
    return 3.0 * (matmul_fwd + attn_fwd); /* backward costs twice the forward */
}

/* The CUDA and CPU backends both have every op GPT-2 uses. */
static const char *missing_op(const ct_backend *be) { return NULL; }

static int ends_with(const char *s, const char *suffix)
{
    size_t n = strlen(s), k = strlen(suffix);
    return n >= k && !strcmp(s + n - k, suffix);
}

/* attention-mask buffers older files carry */
static int ignorable(const char *name) { return ends_with(name, ".attn.bias") || ends_with(name, ".attn.masked_bias"); }

static int read_hf_config(const cJSON *root, const char *path, ct_model_config *c, char *err, size_t errlen)
{
    if (ct_hfc_int(root, "vocab_size", NULL, CT_MAX_VOCAB, &c->vocab_size, path, err, errlen) ||
        ct_hfc_int(root, "n_positions", "n_ctx", CT_MAX_POSITIONS, &c->max_seq_len, path, err, errlen) ||
        ct_hfc_int(root, "n_embd", NULL, CT_MAX_WIDTH, &c->n_embd, path, err, errlen) ||
        ct_hfc_int(root, "n_layer", NULL, CT_MAX_LAYERS, &c->n_layer, path, err, errlen) ||
        ct_hfc_int(root, "n_head", NULL, CT_MAX_HEADS, &c->n_head, path, err, errlen) ||
        ct_hfc_float(root, "layer_norm_epsilon", 1e-5, &c->norm_eps, path, err, errlen))
        return -1;
    /* gelu_new, gelu_fast and gelu_pytorch_tanh are the same tanh approximation */
    static const char *const gelus[] = {"gelu_new", "gelu_fast", "gelu_pytorch_tanh", NULL};
    if (ct_hfc_one_of(root, "activation_function", gelus, path, err, errlen)) return -1;
    const cJSON *inner = cJSON_GetObjectItemCaseSensitive(root, "n_inner");
    if (inner && !cJSON_IsNull(inner) && !(cJSON_IsNumber(inner) && inner->valuedouble == 4.0 * c->n_embd)) {
        snprintf(err, errlen, "%s: n_inner: only null (4 * n_embd) is supported", path);
        return -1;
    }
    return ct_hfc_bool_is(root, "tie_word_embeddings", 1, path, err, errlen) ||
                   ct_hfc_bool_is(root, "add_cross_attention", 0, path, err, errlen) ||
                   ct_hfc_bool_is(root, "scale_attn_weights", 1, path, err, errlen) ||
                   ct_hfc_bool_is(root, "scale_attn_by_inverse_layer_idx", 0, path, err, errlen)
               ? -1
               : 0;
}

static void write_hf_config(cJSON *root, const ct_model_config *c)
{
    ct_hfc_set(root, "architectures", cJSON_CreateStringArray((const char *[]){"GPT2LMHeadModel"}, 1));
    ct_hfc_set(root, "model_type", cJSON_CreateString("gpt2"));
    ct_hfc_set(root, "vocab_size", cJSON_CreateNumber(c->vocab_size));
    ct_hfc_set(root, "n_positions", cJSON_CreateNumber(c->max_seq_len));
    ct_hfc_set(root, "n_embd", cJSON_CreateNumber(c->n_embd));
    ct_hfc_set(root, "n_layer", cJSON_CreateNumber(c->n_layer));
    ct_hfc_set(root, "n_head", cJSON_CreateNumber(c->n_head));
    ct_hfc_set(root, "n_inner", cJSON_CreateNull());
    ct_hfc_set(root, "activation_function", cJSON_CreateString("gelu_new"));
    ct_hfc_set(root, "layer_norm_epsilon", cJSON_CreateNumber(ct_hfc_short(c->norm_eps)));
    ct_hfc_set(root, "tie_word_embeddings", cJSON_CreateBool(1));
    /* ctrain trains without dropout; say so, so a model continued elsewhere behaves the same */
    ct_hfc_set(root, "resid_pdrop", cJSON_CreateNumber(0.0));
    ct_hfc_set(root, "embd_pdrop", cJSON_CreateNumber(0.0));
    ct_hfc_set(root, "attn_pdrop", cJSON_CreateNumber(0.0));
}

static const char *const model_types[] = {"gpt2", NULL};

const ct_arch ct_arch_gpt2 = {
    .name = "gpt2",
    .model_types = model_types,
    .hf_prefix = "transformer.",
    .layer_prefix = "transformer.h.",
    CT_ARCH_TABLES(pre, block, post),
    .nslots = NSLOTS,
    .read_hf_config = read_hf_config,
    .write_hf_config = write_hf_config,
    .missing_op = missing_op,
    .alloc = alloc,
    .free = free_acts,
    .forward = forward,
    .backward = backward,
    .decode = decode,
    .flops = flops,
    .ignorable = ignorable,
};
