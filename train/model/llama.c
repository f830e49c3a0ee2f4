/* llama.c — the Llama family (Llama 2/3.x, Mistral, Qwen2, SmolLM2): RMSNorm, rotary
 * positions in the rotate_half layout, grouped-query attention (optionally within a sliding
 * window), a SwiGLU MLP, an LM head tied to the embedding or not. Hugging Face names and
 * [out, in] layouts are used as they are: nothing is permuted on the way in or out. */
#include <limits.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "arch.h"
#include "hf_config.h"

enum { S_EMBED, S_LN1, S_Q, S_QB, S_K, S_KB, S_V, S_VB, S_O, S_OB, S_LN2, S_GATE, S_GATEB, S_UP, S_UPB, S_DOWN,
       S_DOWNB, S_NORM, S_HEAD, NSLOTS };

static const ct_tensor_spec pre[] = {
    {S_EMBED, "model.embed_tokens.weight", DIM_V, DIM_C, INIT_NORMAL, 1, 0, 0, WHEN_ALWAYS},
};
static const ct_tensor_spec block[] = {
    {S_LN1, "input_layernorm.weight", DIM_C, DIM_NONE, INIT_ONES, 0, 0, 0, WHEN_ALWAYS},
    {S_Q, "self_attn.q_proj.weight", DIM_Q, DIM_C, INIT_NORMAL, 1, 1, 0, WHEN_ALWAYS},
    {S_QB, "self_attn.q_proj.bias", DIM_Q, DIM_NONE, INIT_ZEROS, 0, 0, 0, WHEN_QKV_BIAS},
    {S_K, "self_attn.k_proj.weight", DIM_KV, DIM_C, INIT_NORMAL, 1, 1, 0, WHEN_ALWAYS},
    {S_KB, "self_attn.k_proj.bias", DIM_KV, DIM_NONE, INIT_ZEROS, 0, 0, 0, WHEN_QKV_BIAS},
    {S_V, "self_attn.v_proj.weight", DIM_KV, DIM_C, INIT_NORMAL, 1, 1, 0, WHEN_ALWAYS},
    {S_VB, "self_attn.v_proj.bias", DIM_KV, DIM_NONE, INIT_ZEROS, 0, 0, 0, WHEN_QKV_BIAS},
    {S_O, "self_attn.o_proj.weight", DIM_C, DIM_Q, INIT_NORMAL, 1, 1, 0, WHEN_ALWAYS},
    {S_OB, "self_attn.o_proj.bias", DIM_C, DIM_NONE, INIT_ZEROS, 0, 0, 0, WHEN_O_BIAS},
    {S_LN2, "post_attention_layernorm.weight", DIM_C, DIM_NONE, INIT_ONES, 0, 0, 0, WHEN_ALWAYS},
    {S_GATE, "mlp.gate_proj.weight", DIM_I, DIM_C, INIT_NORMAL, 1, 1, 0, WHEN_ALWAYS},
    {S_GATEB, "mlp.gate_proj.bias", DIM_I, DIM_NONE, INIT_ZEROS, 0, 0, 0, WHEN_MLP_BIAS},
    {S_UP, "mlp.up_proj.weight", DIM_I, DIM_C, INIT_NORMAL, 1, 1, 0, WHEN_ALWAYS},
    {S_UPB, "mlp.up_proj.bias", DIM_I, DIM_NONE, INIT_ZEROS, 0, 0, 0, WHEN_MLP_BIAS},
    {S_DOWN, "mlp.down_proj.weight", DIM_C, DIM_I, INIT_NORMAL, 1, 1, 0, WHEN_ALWAYS},
    {S_DOWNB, "mlp.down_proj.bias", DIM_C, DIM_NONE, INIT_ZEROS, 0, 0, 0, WHEN_MLP_BIAS},
};
static const ct_tensor_spec post[] = {
    {S_NORM, "model.norm.weight", DIM_C, DIM_NONE, INIT_ONES, 0, 0, 0, WHEN_ALWAYS},
    {S_HEAD, "lm_head.weight", DIM_V, DIM_C, INIT_NORMAL, 1, 0, 0, WHEN_UNTIED},
};

typedef struct {
    void *ln1;           /* [BT, C] */
    float *ln1_rstd;     /* [BT] */
    void *q;             /* [BT, Q] after RoPE */
    void *k, *v;         /* [BT, KV] (k after RoPE) */
    void *atty;          /* [BT, Q] attention output before o_proj */
    float *att_stats;    /* backend-defined, attention_stats_len(B, T, NH) */
    void *res2;          /* [BT, C] residual after attention */
    void *ln2;           /* [BT, C] */
    float *ln2_rstd;     /* [BT] */
    void *gate, *up;     /* [BT, I] */
    void *h;             /* [BT, I] silu(gate) * up */
    void *res3;          /* [BT, C] the block's output */
} layer_acts;

typedef struct {
    void *encoded;       /* [BT, C] */
    layer_acts *layers;  /* [L] */
    void *proj;          /* [BT, C] scratch: o_proj / down_proj output before the residual add */
    void *lnf;           /* [BT, C] */
    float *lnf_rstd;     /* [BT] */
    /* activation gradients, reused by every layer */
    void *dres, *dln;    /* [BT, C] */
    void *datty, *dq;    /* [BT, Q] */
    void *dk, *dv;       /* [BT, KV] */
    void *dgate, *dup, *dh; /* [BT, I] */
} acts;

#define W(m, l, s) ct_model_w(m, 0, l, s)
#define G(m, l, s) ct_model_w(m, 1, l, s)

static int window_of(const ct_model_config *c, int l) { return l >= c->window_from ? c->window : 0; }
static int head_slot(const ct_model_config *c) { return c->untied ? S_HEAD : S_EMBED; }

static int alloc(ct_model *m, int B, int T)
{
    const ct_model_config *c = &m->cfg;
    acts *a = calloc(1, sizeof *a);
    if (!a || !(a->layers = calloc((size_t)c->n_layer, sizeof *a->layers))) return free(a), -1;
    m->acts = a;
    size_t es = m->be->elem_size, BT = (size_t)B * T, C = (size_t)c->n_embd, I = (size_t)c->n_inner;
    size_t Q = (size_t)c->n_head * c->head_dim, KV = (size_t)c->n_kv_head * c->head_dim;
    size_t stats = m->be->attention_stats_len(B, T, c->n_head);
    int ok = 1;
#define ALLOC(dst, bytes) ok &= ((dst) = ct_model_balloc(m, (bytes))) != NULL
    ALLOC(a->encoded, BT * C * es);
    for (int l = 0; l < c->n_layer && ok; l++) {
        layer_acts *la = &a->layers[l];
        ALLOC(la->ln1, BT * C * es);
        ALLOC(la->ln1_rstd, BT * 4);
        ALLOC(la->q, BT * Q * es);
        ALLOC(la->k, BT * KV * es);
        ALLOC(la->v, BT * KV * es);
        ALLOC(la->atty, BT * Q * es);
        ALLOC(la->att_stats, stats * 4);
        ALLOC(la->res2, BT * C * es);
        ALLOC(la->ln2, BT * C * es);
        ALLOC(la->ln2_rstd, BT * 4);
        ALLOC(la->gate, BT * I * es);
        ALLOC(la->up, BT * I * es);
        ALLOC(la->h, BT * I * es);
        ALLOC(la->res3, BT * C * es);
    }
    ALLOC(a->proj, BT * C * es);
    ALLOC(a->lnf, BT * C * es);
    ALLOC(a->lnf_rstd, BT * 4);
    ALLOC(a->dres, BT * C * es);
    ALLOC(a->dln, BT * C * es);
    ALLOC(a->datty, BT * Q * es);
    ALLOC(a->dq, BT * Q * es);
    ALLOC(a->dk, BT * KV * es);
    ALLOC(a->dv, BT * KV * es);
    ALLOC(a->dgate, BT * I * es);
    ALLOC(a->dup, BT * I * es);
    ALLOC(a->dh, BT * I * es);
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
 * is set; with cached, over the KV cache from pos0. */
static void run(ct_model *m, int B, int T, int pos0, int cached)
{
    const ct_backend *be = m->be;
    ct_kctx *ctx = m->ctx;
    const ct_model_config *c = &m->cfg;
    acts *a = m->acts;
    int C = c->n_embd, I = c->n_inner, NH = c->n_head, NKV = c->n_kv_head, D = c->head_dim, N = B * T;
    int Q = NH * D, KV = NKV * D;
    ct_model_fetch(m, CT_UNIT_PRE, CT_UNIT_WEIGHTS);
    be->encoder_fwd(ctx, a->encoded, m->tokens_dev, NULL, W(m, -1, S_EMBED), NULL, B, T, C);
    ct_model_release(m, CT_UNIT_PRE);
    const void *residual = a->encoded;
    for (int l = 0; l < c->n_layer; l++) {
        layer_acts *la = &a->layers[l];
        ct_model_fetch(m, l, CT_UNIT_WEIGHTS);
        be->rmsnorm_fwd(ctx, la->ln1, la->ln1_rstd, residual, W(m, l, S_LN1), N, C, c->norm_eps);
        ct_model_linear_fwd(m, l, S_Q, S_QB, la->q, la->ln1, N);
        ct_model_linear_fwd(m, l, S_K, S_KB, la->k, la->ln1, N);
        ct_model_linear_fwd(m, l, S_V, S_VB, la->v, la->ln1, N);
        be->rope_fwd(ctx, la->q, m->pos_dev, m->inv_freq, N, NH, D, Q);
        be->rope_fwd(ctx, la->k, m->pos_dev, m->inv_freq, N, NKV, D, KV);
        if (cached) ct_model_attend_cached(m, l, la->atty, la->q, Q, la->k, la->v, KV, B, T, pos0, window_of(c, l));
        else be->attention_fwd(ctx, la->atty, la->att_stats, la->q, la->k, la->v, m->doc_pos, B, T, NH, NKV, D, Q,
                               KV, window_of(c, l));
        ct_model_linear_fwd(m, l, S_O, S_OB, a->proj, la->atty, N);
        be->residual_fwd(ctx, la->res2, residual, a->proj, (size_t)N * C);
        be->rmsnorm_fwd(ctx, la->ln2, la->ln2_rstd, la->res2, W(m, l, S_LN2), N, C, c->norm_eps);
        ct_model_linear_fwd(m, l, S_GATE, S_GATEB, la->gate, la->ln2, N);
        ct_model_linear_fwd(m, l, S_UP, S_UPB, la->up, la->ln2, N);
        be->swiglu_fwd(ctx, la->h, la->gate, la->up, (size_t)N * I);
        ct_model_linear_fwd(m, l, S_DOWN, S_DOWNB, a->proj, la->h, N);
        be->residual_fwd(ctx, la->res3, la->res2, a->proj, (size_t)N * C);
        ct_model_release(m, l);
        residual = la->res3;
    }
    ct_model_fetch(m, CT_UNIT_POST, CT_UNIT_WEIGHTS);
    if (!c->untied) ct_model_fetch(m, CT_UNIT_PRE, CT_UNIT_WEIGHTS);
    be->rmsnorm_fwd(ctx, a->lnf, a->lnf_rstd, residual, W(m, -1, S_NORM), N, C, c->norm_eps);
    be->matmul_fwd(ctx, m->logits, a->lnf, W(m, -1, head_slot(c)), NULL, N, C, m->Vp);
}

static void forward(ct_model *m, int B, int T) { run(m, B, T, 0, 0); }
static void decode(ct_model *m, int B, int Tq, int pos0) { run(m, B, Tq, pos0, 1); }

static void backward(ct_model *m, int B, int T, ct_grad_ready_fn ready, void *user)
{
    const ct_backend *be = m->be;
    ct_kctx *ctx = m->ctx;
    const ct_model_config *c = &m->cfg;
    acts *a = m->acts;
    int N = B * T, C = c->n_embd, I = c->n_inner, NH = c->n_head, NKV = c->n_kv_head, D = c->head_dim;
    int L = c->n_layer, Q = NH * D, KV = NKV * D;
    size_t es = be->elem_size, NC = (size_t)N * C;

    /* the logits already hold their gradient (the forward's fused classifier loss) */
    int hs = head_slot(c);
    ct_model_fetch(m, CT_UNIT_POST, CT_UNIT_WEIGHTS | CT_UNIT_GRADS);
    if (!c->untied) ct_model_fetch(m, CT_UNIT_PRE, CT_UNIT_WEIGHTS | CT_UNIT_GRADS);
    be->zero(ctx, a->dln, NC * es);
    be->matmul_bwd(ctx, a->dln, G(m, -1, hs), NULL, m->logits, a->lnf, W(m, -1, hs), N, C, m->Vp);
    be->zero(ctx, a->dres, NC * es);
    be->rmsnorm_bwd(ctx, a->dres, G(m, -1, S_NORM), a->dln, a->layers[L - 1].res3, W(m, -1, S_NORM), a->lnf_rstd, N,
                    C);
    ct_model_head_ready(m, ready, user);

    /* a->dres is the residual stream's gradient; each branch adds its input gradient back
     * into it through its norm's backward */
    for (int l = L - 1; l >= 0; l--) {
        layer_acts *la = &a->layers[l];
        const void *res1 = l ? a->layers[l - 1].res3 : a->encoded;
        ct_model_fetch(m, l, CT_UNIT_WEIGHTS | CT_UNIT_GRADS);

        be->zero(ctx, a->dh, (size_t)N * I * es);
        ct_model_linear_bwd(m, l, S_DOWN, S_DOWNB, a->dh, a->dres, la->h, N);
        be->zero(ctx, a->dgate, (size_t)N * I * es);
        be->zero(ctx, a->dup, (size_t)N * I * es);
        be->swiglu_bwd(ctx, a->dgate, a->dup, a->dh, la->gate, la->up, (size_t)N * I);
        be->zero(ctx, a->dln, NC * es);
        ct_model_linear_bwd(m, l, S_GATE, S_GATEB, a->dln, a->dgate, la->ln2, N);
        ct_model_linear_bwd(m, l, S_UP, S_UPB, a->dln, a->dup, la->ln2, N);
        be->rmsnorm_bwd(ctx, a->dres, G(m, l, S_LN2), a->dln, la->res2, W(m, l, S_LN2), la->ln2_rstd, N, C);

        be->zero(ctx, a->datty, (size_t)N * Q * es);
        ct_model_linear_bwd(m, l, S_O, S_OB, a->datty, a->dres, la->atty, N);
        be->zero(ctx, a->dq, (size_t)N * Q * es);
        be->zero(ctx, a->dk, (size_t)N * KV * es);
        be->zero(ctx, a->dv, (size_t)N * KV * es);
        be->attention_bwd(ctx, a->dq, a->dk, a->dv, la->att_stats, a->datty, la->q, la->k, la->v, la->atty,
                          m->doc_pos, B, T, NH, NKV, D, Q, KV, window_of(c, l));
        be->rope_bwd(ctx, a->dq, m->pos_dev, m->inv_freq, N, NH, D, Q);
        be->rope_bwd(ctx, a->dk, m->pos_dev, m->inv_freq, N, NKV, D, KV);
        be->zero(ctx, a->dln, NC * es);
        ct_model_linear_bwd(m, l, S_Q, S_QB, a->dln, a->dq, la->ln1, N);
        ct_model_linear_bwd(m, l, S_K, S_KB, a->dln, a->dk, la->ln1, N);
        ct_model_linear_bwd(m, l, S_V, S_VB, a->dln, a->dv, la->ln1, N);
        be->rmsnorm_bwd(ctx, a->dres, G(m, l, S_LN1), a->dln, res1, W(m, l, S_LN1), la->ln1_rstd, N, C);
        ct_model_layer_ready(m, l, ready, user);
    }
    if (!m->frozen) {
        ct_model_fetch(m, CT_UNIT_PRE, CT_UNIT_GRADS);
        be->encoder_bwd(ctx, G(m, -1, S_EMBED), NULL, a->dres, m->tokens_dev, NULL, B, T, C);
    }
    ct_model_embed_ready(m, ready, user);
}

static double flops(const ct_model_config *c, int B, int T)
{
    double N = (double)B * T, C = c->n_embd, L = c->n_layer, V = c->vocab_size, I = c->n_inner;
    double Q = (double)c->n_head * c->head_dim, KV = (double)c->n_kv_head * c->head_dim;
    /* forward multiply-adds per token: q, k, v, o; gate, up, down; the head */
    double matmul_fwd = 2.0 * N * (L * (2.0 * C * Q + 2.0 * C * KV + 3.0 * C * I) + C * V);
    /* attention: QK^T and PV over the visible pairs (the causal half; a window caps it) */
    double pairs = T * (T + 1) / 2.0;
    double attn_fwd = 0;
    for (int l = 0; l < c->n_layer; l++) {
        double w = l >= c->window_from && c->window && c->window < T ? c->window : 0;
        attn_fwd += 2.0 * 2.0 * B * Q * (w ? w * T - w * (w - 1) / 2.0 : pairs);
    }
    return 3.0 * (matmul_fwd + attn_fwd);
}

static const char *missing_op(const ct_backend *be)
{
    return !be->rmsnorm_fwd ? "rmsnorm_fwd" : !be->rmsnorm_bwd ? "rmsnorm_bwd" : !be->rope_fwd ? "rope_fwd"
           : !be->rope_bwd ? "rope_bwd" : !be->swiglu_fwd ? "swiglu_fwd" : !be->swiglu_bwd ? "swiglu_bwd" : NULL;
}

/* buffers some files carry */
static int ignorable(const char *name)
{
    size_t n = strlen(name), k = strlen(".rotary_emb.inv_freq");
    return n >= k && !strcmp(name + n - k, ".rotary_emb.inv_freq");
}

/* rope_parameters (transformers 5) or rope_theta + rope_scaling (4): default or llama3 */
static int read_rope(const cJSON *root, const char *path, ct_model_config *c, char *err, size_t errlen)
{
    const char *key = "rope_parameters";
    const cJSON *rp = cJSON_GetObjectItemCaseSensitive(root, key);
    if (!rp || cJSON_IsNull(rp)) rp = cJSON_GetObjectItemCaseSensitive(root, key = "rope_scaling");
    if (rp && cJSON_IsNull(rp)) rp = NULL;
    if (rp && !cJSON_IsObject(rp)) return snprintf(err, errlen, "%s: %s: expected an object", path, key), -1;
    if (ct_hfc_double(root, "rope_theta", 10000.0, &c->rope_theta, path, err, errlen)) return -1;
    if (!rp) return 0;
    if (ct_hfc_double(rp, "rope_theta", c->rope_theta, &c->rope_theta, path, err, errlen)) return -1;
    const cJSON *type = cJSON_GetObjectItemCaseSensitive(rp, "rope_type");
    const char *tkey = "rope_type";
    if (!type) type = cJSON_GetObjectItemCaseSensitive(rp, tkey = "type");
    if (type && !(cJSON_IsString(type) && (!strcmp(type->valuestring, "default") ||
                                           !strcmp(type->valuestring, "llama3")))) {
        char *shown = cJSON_PrintUnformatted(type);
        snprintf(err, errlen, "%s: %s.%s: %s is not supported (ctrain runs \"default\", \"llama3\")", path, key,
                 tkey, shown ? shown : "?");
        free(shown);
        return -1;
    }
    const cJSON *prf = cJSON_GetObjectItemCaseSensitive(rp, "partial_rotary_factor");
    if (prf && !(cJSON_IsNumber(prf) && prf->valuedouble == 1.0))
        return snprintf(err, errlen, "%s: %s.partial_rotary_factor: only 1 is supported", path, key), -1;
    if (!type || strcmp(type->valuestring, "llama3")) return 0;
    c->rope_llama3 = 1;
    int orig;
    if (ct_hfc_double(rp, "factor", 0, &c->rope_factor, path, err, errlen) ||
        ct_hfc_double(rp, "low_freq_factor", 0, &c->rope_low_freq, path, err, errlen) ||
        ct_hfc_double(rp, "high_freq_factor", 0, &c->rope_high_freq, path, err, errlen) ||
        ct_hfc_int_opt(rp, "original_max_position_embeddings", c->max_seq_len, CT_MAX_POSITIONS, &orig, path, err, errlen))
        return -1;
    c->rope_orig_max = orig;
    if (!(c->rope_factor > 0) || !(c->rope_low_freq > 0) || !(c->rope_high_freq > c->rope_low_freq) || orig <= 0)
        return snprintf(err, errlen, "%s: %s: llama3 scaling needs factor > 0 and high_freq_factor > "
                        "low_freq_factor > 0", path, key), -1;
    return 0;
}

/* Mistral: a window on every layer whenever sliding_window is set. Qwen2: only with
 * use_sliding_window, on layers from max_window_layers on (or as layer_types lists them). */
static int read_window(const cJSON *root, const char *path, ct_model_config *c, char *err, size_t errlen)
{
    int use = 1;
    if (!strcmp(c->model_type, "qwen2")) {
        if (ct_hfc_bool(root, "use_sliding_window", 0, &use, path, err, errlen) ||
            ct_hfc_int_opt(root, "max_window_layers", 28, INT_MAX, &c->window_from, path, err, errlen))
            return -1;
    } else if (strcmp(c->model_type, "mistral")) {
        return 0; /* llama: no window */
    }
    if (!use) return c->window_from = 0, 0;
    if (ct_hfc_int_opt(root, "sliding_window", 0, CT_MAX_POSITIONS, &c->window, path, err, errlen)) return -1;
    const cJSON *types = cJSON_GetObjectItemCaseSensitive(root, "layer_types");
    if (!types || cJSON_IsNull(types)) return 0;
    /* a list of full_attention layers followed by sliding_attention ones is what ctrain runs */
    int n = cJSON_GetArraySize(types), first_sliding = n, ok = cJSON_IsArray(types) && n == c->n_layer;
    for (int i = 0; ok && i < n; i++) {
        const cJSON *t = cJSON_GetArrayItem(types, i);
        int sliding = cJSON_IsString(t) && !strcmp(t->valuestring, "sliding_attention");
        ok = sliding || (cJSON_IsString(t) && !strcmp(t->valuestring, "full_attention"));
        if (sliding && first_sliding == n) first_sliding = i;
        if (!sliding && i > first_sliding) ok = 0;
    }
    if (!ok)
        return snprintf(err, errlen, "%s: layer_types: expected %d entries, full_attention layers then "
                        "sliding_attention ones", path, c->n_layer), -1;
    if (!c->window && first_sliding < n)
        return snprintf(err, errlen, "%s: sliding_window: missing for the sliding_attention layers", path), -1;
    c->window_from = first_sliding;
    if (first_sliding == n) c->window = 0;
    return 0;
}

static int read_hf_config(const cJSON *root, const char *path, ct_model_config *c, char *err, size_t errlen)
{
    int tied;
    if (ct_hfc_int(root, "vocab_size", NULL, CT_MAX_VOCAB, &c->vocab_size, path, err, errlen) ||
        ct_hfc_int(root, "hidden_size", NULL, CT_MAX_WIDTH, &c->n_embd, path, err, errlen) ||
        ct_hfc_int(root, "num_hidden_layers", NULL, CT_MAX_LAYERS, &c->n_layer, path, err, errlen) ||
        ct_hfc_int(root, "num_attention_heads", NULL, CT_MAX_HEADS, &c->n_head, path, err, errlen) ||
        ct_hfc_int_opt(root, "num_key_value_heads", 0, CT_MAX_HEADS, &c->n_kv_head, path, err, errlen) ||
        ct_hfc_int_opt(root, "head_dim", 0, CT_MAX_WIDTH, &c->head_dim, path, err, errlen) ||
        ct_hfc_int(root, "intermediate_size", NULL, CT_MAX_INNER, &c->n_inner, path, err, errlen) ||
        ct_hfc_int(root, "max_position_embeddings", NULL, CT_MAX_POSITIONS, &c->max_seq_len, path, err, errlen) ||
        ct_hfc_float(root, "rms_norm_eps", 1e-6, &c->norm_eps, path, err, errlen) ||
        ct_hfc_bool(root, "tie_word_embeddings", 0, &tied, path, err, errlen))
        return -1;
    c->untied = !tied;
    static const char *const silu[] = {"silu", NULL};
    if (ct_hfc_one_of(root, "hidden_act", silu, path, err, errlen)) return -1;
    if (!strcmp(c->model_type, "qwen2")) {
        c->qkv_bias = 1; /* fixed by the architecture, not the config */
    } else if (!strcmp(c->model_type, "llama")) {
        int attn_bias, tp;
        if (ct_hfc_bool(root, "attention_bias", 0, &attn_bias, path, err, errlen) ||
            ct_hfc_bool(root, "mlp_bias", 0, &c->mlp_bias, path, err, errlen) ||
            ct_hfc_int_opt(root, "pretraining_tp", 1, INT_MAX, &tp, path, err, errlen))
            return -1;
        if (tp > 1) return snprintf(err, errlen, "%s: pretraining_tp: only 1 is supported", path), -1;
        c->qkv_bias = c->o_bias = attn_bias;
    }
    if (c->n_kv_head && c->n_head % c->n_kv_head)
        return snprintf(err, errlen, "%s: num_key_value_heads: %d does not divide num_attention_heads (%d)", path,
                        c->n_kv_head, c->n_head), -1;
    return read_rope(root, path, c, err, errlen) || read_window(root, path, c, err, errlen) ? -1 : 0;
}

static void write_hf_config(cJSON *root, const ct_model_config *c)
{
    const char *arch = !strcmp(c->model_type, "qwen2") ? "Qwen2ForCausalLM"
                       : !strcmp(c->model_type, "mistral") ? "MistralForCausalLM" : "LlamaForCausalLM";
    ct_hfc_set(root, "architectures", cJSON_CreateStringArray(&arch, 1));
    ct_hfc_set(root, "model_type", cJSON_CreateString(c->model_type));
    ct_hfc_set(root, "vocab_size", cJSON_CreateNumber(c->vocab_size));
    ct_hfc_set(root, "hidden_size", cJSON_CreateNumber(c->n_embd));
    ct_hfc_set(root, "intermediate_size", cJSON_CreateNumber(c->n_inner));
    ct_hfc_set(root, "num_hidden_layers", cJSON_CreateNumber(c->n_layer));
    ct_hfc_set(root, "num_attention_heads", cJSON_CreateNumber(c->n_head));
    ct_hfc_set(root, "num_key_value_heads", cJSON_CreateNumber(c->n_kv_head));
    ct_hfc_set(root, "head_dim", cJSON_CreateNumber(c->head_dim));
    ct_hfc_set(root, "max_position_embeddings", cJSON_CreateNumber(c->max_seq_len));
    ct_hfc_set(root, "rms_norm_eps", cJSON_CreateNumber(ct_hfc_short(c->norm_eps)));
    ct_hfc_set(root, "hidden_act", cJSON_CreateString("silu"));
    ct_hfc_set(root, "tie_word_embeddings", cJSON_CreateBool(!c->untied));
    ct_hfc_set(root, "rope_theta", cJSON_CreateNumber(c->rope_theta));
    if (c->rope_llama3) {
        cJSON *s = cJSON_CreateObject();
        cJSON_AddStringToObject(s, "rope_type", "llama3");
        cJSON_AddNumberToObject(s, "factor", c->rope_factor);
        cJSON_AddNumberToObject(s, "low_freq_factor", c->rope_low_freq);
        cJSON_AddNumberToObject(s, "high_freq_factor", c->rope_high_freq);
        cJSON_AddNumberToObject(s, "original_max_position_embeddings", c->rope_orig_max);
        ct_hfc_set(root, "rope_scaling", s);
    }
    if (!strcmp(c->model_type, "llama")) {
        ct_hfc_set(root, "attention_bias", cJSON_CreateBool(c->qkv_bias));
        ct_hfc_set(root, "mlp_bias", cJSON_CreateBool(c->mlp_bias));
    }
    if (c->window) {
        ct_hfc_set(root, "sliding_window", cJSON_CreateNumber(c->window));
        if (!strcmp(c->model_type, "qwen2")) {
            ct_hfc_set(root, "use_sliding_window", cJSON_CreateBool(1));
            ct_hfc_set(root, "max_window_layers", cJSON_CreateNumber(c->window_from));
        }
    } else if (!strcmp(c->model_type, "mistral")) {
        ct_hfc_set(root, "sliding_window", cJSON_CreateNull());
    }
    ct_hfc_set(root, "attention_dropout", cJSON_CreateNumber(0.0));
}

static const char *const model_types[] = {"llama", "mistral", "qwen2", NULL};

const ct_arch ct_arch_llama = {
    .name = "llama",
    .model_types = model_types,
    .hf_prefix = "model.",
    .layer_prefix = "model.layers.",
    CT_ARCH_TABLES(pre, block, post),
    .nslots = NSLOTS,
    .rope = 1,
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
