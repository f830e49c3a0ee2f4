/* model.c — what every architecture shares: the flat layout derived from its tensor table,
 * allocation, initialisation, LoRA adapters, and the forward / backward / decode entry points
 * around the architecture's own functions (arch.h). */
#include "arch.h"

#include <limits.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "rng.h"

static int units_init(ct_model *m);

/* Tensor offsets are rounded up to this many elements so every tensor starts 64-byte aligned
 * in fp32 (vector loads, cuBLASLt alignment in bf16 too). */
#define CT_ALIGN_ELEMS 16

/* The LM head computes logits for the vocabulary padded to a multiple of this: logits rows
 * (and the head's matrix products) then start 128-byte aligned in bf16, which tensor-core
 * GEMM kernels need (50257 -> 50304 for GPT-2). */
#define CT_VOCAB_ALIGN 64

static size_t align_up(size_t n, size_t a) { return (n + a - 1) / a * a; }

/* ---------------------------------------------------------------- config */

static int dim(const ct_model_config *c, ct_dim d);
static int present(const ct_model_config *c, ct_when w);

/* a += b * k, failing (0) on overflow */
static int add_mul(size_t *a, size_t b, size_t k)
{
    size_t p;
    return !__builtin_mul_overflow(b, k, &p) && !__builtin_add_overflow(*a, p, a);
}

/* Elements of the tensors of table t[n] (present ones), times `times`, added to *total. */
static int count_table(const ct_model_config *c, const ct_tensor_spec *t, int n, size_t times, size_t *total)
{
    size_t one = 0;
    for (int i = 0; i < n; i++)
        if (present(c, t[i].when) &&
            !add_mul(&one, (size_t)dim(c, t[i].rows), t[i].cols ? (size_t)dim(c, t[i].cols) : 1))
            return 0;
    return add_mul(total, one, times);
}

int ct_model_config_check(ct_model_config *c, char *err, size_t errlen)
{
    const char *field = NULL, *what = NULL;
    if (!c->arch) c->arch = &ct_arch_gpt2;
    if (!c->model_type[0]) snprintf(c->model_type, sizeof c->model_type, "%s", c->arch->model_types[0]);
    const struct {
        const char *name;
        int value, max;
    } limits[] = {{"vocab_size", c->vocab_size, CT_MAX_VOCAB}, {"max_seq_len", c->max_seq_len, CT_MAX_POSITIONS},
                  {"n_layer", c->n_layer, CT_MAX_LAYERS},        {"n_head", c->n_head, CT_MAX_HEADS},
                  {"n_kv_head", c->n_kv_head, CT_MAX_HEADS},     {"n_embd", c->n_embd, CT_MAX_WIDTH},
                  {"head_dim", c->head_dim, CT_MAX_WIDTH},       {"n_inner", c->n_inner, CT_MAX_INNER},
                  {"sliding_window", c->window, CT_MAX_POSITIONS}};
    for (size_t i = 0; i < sizeof limits / sizeof limits[0]; i++)
        if (limits[i].value > limits[i].max)
            return snprintf(err, errlen, "model.%s: %d is more than ctrain's limit of %d", limits[i].name,
                            limits[i].value, limits[i].max), -1;
    if (c->vocab_size <= 0) field = "vocab_size", what = "must be positive";
    else if (c->max_seq_len <= 0) field = "max_seq_len", what = "must be positive";
    else if (c->n_layer <= 0) field = "n_layer", what = "must be positive";
    else if (c->n_head <= 0) field = "n_head", what = "must be positive";
    else if (c->n_embd <= 0) field = "n_embd", what = "must be positive";
    else if (!c->head_dim && c->n_embd % c->n_head) field = "n_embd", what = "must be a multiple of n_head";
    else if (c->n_kv_head < 0 || (c->n_kv_head && c->n_head % c->n_kv_head))
        field = "n_kv_head", what = "must divide n_head";
    else if (c->head_dim < 0) field = "head_dim", what = "must be positive";
    else if (c->n_inner < 0) field = "n_inner", what = "must be positive";
    else if (!(c->norm_eps > 0) || !isfinite(c->norm_eps)) field = "norm_eps", what = "must be a positive number";
    else if (c->window < 0) field = "sliding_window", what = "must not be negative";
    if (!field) {
        if (!c->n_kv_head) c->n_kv_head = c->n_head;
        if (!c->head_dim) c->head_dim = c->n_embd / c->n_head;
        if (!c->n_inner) c->n_inner = 4 * c->n_embd;
        if (!(c->rope_theta > 0)) c->rope_theta = 10000.0;
        const ct_arch *a = c->arch;
        size_t params = 0;
        if (c->arch->rope && c->head_dim % 2) field = "head_dim", what = "must be even (rotary positions pair channels)";
        else if (!count_table(c, a->pre, a->npre, 1, &params) || !count_table(c, a->post, a->npost, 1, &params) ||
                 !count_table(c, a->block, a->nblock, (size_t)c->n_layer, &params) || params > CT_MAX_PARAMS) {
            snprintf(err, errlen, "model: its shape (vocabulary %d, %d positions, width %d, %d layers, %d heads of %d, MLP "
                     "width %d) makes more than ctrain's limit of %llu parameters", c->vocab_size, c->max_seq_len,
                     c->n_embd, c->n_layer, c->n_head, c->head_dim, c->n_inner, (unsigned long long)CT_MAX_PARAMS);
            return -1;
        }
    }
    if (!field) return 0;
    snprintf(err, errlen, "model.%s: %s", field, what);
    return -1;
}

int ct_model_config_same(const ct_model_config *a, const ct_model_config *b)
{
    return a->arch == b->arch && !strcmp(a->model_type, b->model_type) && a->vocab_size == b->vocab_size &&
           a->max_seq_len == b->max_seq_len && a->n_layer == b->n_layer && a->n_head == b->n_head &&
           a->n_kv_head == b->n_kv_head && a->head_dim == b->head_dim && a->n_embd == b->n_embd &&
           a->n_inner == b->n_inner && a->norm_eps == b->norm_eps && a->untied == b->untied &&
           a->qkv_bias == b->qkv_bias && a->o_bias == b->o_bias && a->mlp_bias == b->mlp_bias &&
           a->rope_theta == b->rope_theta && a->rope_llama3 == b->rope_llama3 && a->rope_factor == b->rope_factor &&
           a->rope_low_freq == b->rope_low_freq && a->rope_high_freq == b->rope_high_freq &&
           a->rope_orig_max == b->rope_orig_max && a->window == b->window && a->window_from == b->window_from;
}

static int dim(const ct_model_config *c, ct_dim d)
{
    int q = c->n_head * c->head_dim, kv = c->n_kv_head * c->head_dim;
    switch (d) {
    case DIM_C: return c->n_embd;
    case DIM_V: return c->vocab_size;
    case DIM_POS: return c->max_seq_len;
    case DIM_Q: return q;
    case DIM_KV: return kv;
    case DIM_QKV: return q + 2 * kv;
    case DIM_I: return c->n_inner;
    default: return 0;
    }
}

static int present(const ct_model_config *c, ct_when w)
{
    switch (w) {
    case WHEN_QKV_BIAS: return c->qkv_bias;
    case WHEN_O_BIAS: return c->o_bias;
    case WHEN_MLP_BIAS: return c->mlp_bias;
    case WHEN_UNTIED: return c->untied;
    default: return 1;
    }
}

/* ---------------------------------------------------------------- layout */

static void add_tensors(ct_model *m, size_t *off, const ct_tensor_spec *specs, int n, int layer)
{
    const ct_model_config *c = &m->cfg;
    for (int i = 0; i < n; i++) {
        const ct_tensor_spec *s = &specs[i];
        if (!present(c, s->when)) continue;
        int index = m->ntensors++;
        ct_param *p = &m->tensors[index];
        if (layer >= 0) snprintf(p->name, sizeof p->name, "%s%d.%s", m->arch->layer_prefix, layer, s->name);
        else snprintf(p->name, sizeof p->name, "%s", s->name);
        p->ndim = s->cols ? 2 : 1;
        p->shape[0] = dim(c, s->rows);
        p->shape[1] = s->cols ? dim(c, s->cols) : 0;
        p->numel = (size_t)p->shape[0] * (s->cols ? (size_t)p->shape[1] : 1);
        p->offset = *off;
        p->conv1d = s->conv1d;
        p->decay = s->decay;
        p->layer = layer;
        p->lora = s->lora;
        m->slot[(layer >= 0 ? layer : c->n_layer) * m->arch->nslots + s->slot] = index;
        /* the LM head's rows past V are no tensor's: zero, never loaded, saved or updated */
        size_t rows = s->rows == DIM_V ? (size_t)m->Vp : (size_t)p->shape[0];
        *off = align_up(*off + rows * (s->cols ? (size_t)p->shape[1] : 1), CT_ALIGN_ELEMS);
    }
}

static void build_layout(ct_model *m)
{
    const ct_arch *a = m->arch;
    int L = m->cfg.n_layer;
    size_t off = 0;
    for (int i = 0; i < (L + 1) * a->nslots; i++) m->slot[i] = -1;
    m->Vp = (int)align_up((size_t)m->cfg.vocab_size, CT_VOCAB_ALIGN);
    add_tensors(m, &off, a->pre, a->npre, -1);
    for (int l = 0; l < L; l++) {
        m->layer_start[l] = off;
        add_tensors(m, &off, a->block, a->nblock, l);
    }
    m->layer_start[L] = off;
    add_tensors(m, &off, a->post, a->npost, -1);
    m->numel = off;
}

/* ---------------------------------------------------------------- life cycle */

void *ct_model_balloc(ct_model *m, size_t bytes)
{
    if (m->counting) { /* ct_model_init_counting: the size is all that is wanted */
        m->bytes += bytes;
        return m;
    }
    if (m->nalloc == m->capalloc) {
        int cap = m->capalloc ? 2 * m->capalloc : 64;
        void **grown = realloc(m->allocations, (size_t)cap * sizeof *grown);
        if (!grown) return NULL;
        m->allocations = grown;
        m->capalloc = cap;
    }
    if (m->host_cap && (bytes > m->host_cap || m->bytes > m->host_cap - bytes)) {
        m->over_cap = 1;
        return NULL;
    }
    void *p = m->be->alloc(bytes ? bytes : 1);
    if (p) m->allocations[m->nalloc++] = p, m->bytes += bytes;
    return p;
}

/* RoPE frequencies as transformers computes them: inv_freq[i] = theta^(-2i/D) (in fp32, from
 * int64 exponents as torch.arange does), with llama3 scaling where the config asks. */
static int rope_freqs(ct_model *m)
{
    const ct_model_config *c = &m->cfg;
    int half = c->head_dim / 2;
    float *f = malloc((size_t)half * sizeof(float));
    if (!f || !(m->inv_freq = ct_model_balloc(m, (size_t)half * sizeof(float)))) return free(f), -1;
    for (int i = 0; i < half; i++) {
        float expo = (float)(2 * i) / (float)c->head_dim;
        f[i] = 1.0f / powf((float)c->rope_theta, expo);
        if (c->rope_llama3) {
            /* _compute_llama3_parameters: long wavelengths slowed by factor, short ones kept,
             * a smooth blend between */
            double L0 = c->rope_orig_max, lo_wl = L0 / c->rope_low_freq, hi_wl = L0 / c->rope_high_freq;
            double wl = 2.0 * M_PI / f[i];
            if (wl > lo_wl) f[i] = (float)(f[i] / c->rope_factor);
            else if (wl >= hi_wl) {
                double s = (L0 / wl - c->rope_low_freq) / (c->rope_high_freq - c->rope_low_freq);
                f[i] = (float)((1.0 - s) * f[i] / c->rope_factor + s * f[i]);
            }
        }
    }
    m->be->upload(m->ctx, m->inv_freq, f, (size_t)half * sizeof(float));
    m->be->sync(m->ctx);
    free(f);
    return 0;
}

static int model_init(ct_model **out, const ct_model_config *cfg, const ct_backend *be, ct_kctx *ctx, int B, int T,
                      int shards, int slice, int counting, char *err, size_t errlen);

int ct_model_init(ct_model **out, const ct_model_config *cfg, const ct_backend *be, ct_kctx *ctx, int B, int T,
                  int shards, char *err, size_t errlen)
{
    return model_init(out, cfg, be, ctx, B, T, shards, -1, 0, err, errlen);
}

int ct_model_init_slice(ct_model **out, const ct_model_config *cfg, const ct_backend *be, ct_kctx *ctx, int B,
                        int T, int shards, int rank, char *err, size_t errlen)
{
    return model_init(out, cfg, be, ctx, B, T, shards, rank, 0, err, errlen);
}

int ct_model_init_counting(ct_model **out, const ct_model_config *cfg, const ct_backend *be, int B, int T,
                           int shards, char *err, size_t errlen)
{
    return model_init(out, cfg, be, NULL, B, T, shards, -1, 1, err, errlen);
}

void *ct_model_window(ct_model *m, size_t *lo, size_t *n)
{
    *lo = m->win_lo;
    *n = m->win_n;
    return m->window;
}

void ct_model_store(ct_model *m, size_t offset, const float *src, size_t n)
{
    const size_t es = m->be->elem_size;
    if (m->params) {
        m->be->to_storage(m->ctx, (char *)m->params + offset * es, src, n);
        return;
    }
    size_t a = offset > m->win_lo ? offset : m->win_lo;
    size_t b = offset + n < m->win_lo + m->win_n ? offset + n : m->win_lo + m->win_n;
    if (m->window && a < b) m->be->to_storage(m->ctx, (char *)m->window + (a - m->win_lo) * es, src + (a - offset), b - a);
}

size_t ct_model_bytes(const ct_model *m) { return m->bytes; }

static int model_init(ct_model **out, const ct_model_config *cfg, const ct_backend *be, ct_kctx *ctx, int B, int T,
                      int shards, int slice, int counting, char *err, size_t errlen)
{
    *out = NULL;
    ct_model_config c = *cfg;
    if (ct_model_config_check(&c, err, errlen)) return -1;
    if (B <= 0 || T <= 0 || T > c.max_seq_len) {
        snprintf(err, errlen, "micro-batch %d x %d tokens does not fit the model (max_seq_len %d)", B, T,
                 c.max_seq_len);
        return -1;
    }
    /* every activation is B x T x (a width < 2^27) elements: with B x T < 2^31 no size overflows;
     * the CPU's attention keeps B x heads x T x T probabilities */
    if ((size_t)B * (size_t)T > INT_MAX || (double)B * c.n_head * T * ((double)T + 64) * 4 > 0x1p62) {
        snprintf(err, errlen, "micro-batch %d x %d tokens is too large to allocate for (%d heads)", B, T, c.n_head);
        return -1;
    }
    const char *missing = c.arch->missing_op(be);
    if (missing) {
        snprintf(err, errlen, "the %s backend has no %s op, which %s models need: run on another backend "
                 "(run.device)", be->name, missing, c.model_type);
        return -1;
    }
    ct_model *m = calloc(1, sizeof *m);
    int L = c.n_layer;
    if (!m) goto oom;
    m->cfg = c;
    m->arch = c.arch;
    m->counting = counting;
    m->be = be;
    m->ctx = ctx;
    m->maxB = B;
    m->maxT = T;
    if (!strcmp(be->name, "cpu") && !counting) {
        long pages = sysconf(_SC_PHYS_PAGES), page = sysconf(_SC_PAGESIZE);
        if (pages > 0 && page > 0) m->host_cap = (size_t)pages * (size_t)page;
    }
    const ct_arch *a = c.arch;
    m->tensors = calloc((size_t)(a->npre + a->nblock * L + a->npost), sizeof *m->tensors);
    m->slot = calloc((size_t)(L + 1) * a->nslots, sizeof *m->slot);
    m->layer_start = calloc((size_t)L + 1, sizeof *m->layer_start);
    m->losses_host = calloc((size_t)B * T, sizeof(float));
    if (!m->tensors || !m->slot || !m->layer_start || !m->losses_host) goto oom;
    build_layout(m);
    if (shards > 1) m->numel = align_up(m->numel, (size_t)shards);

    size_t es = be->elem_size, BT = (size_t)B * T;
    if (slice >= 0) { /* this rank's slice of the weights alone (ZeRO-3): the whole never exists here */
        m->win_n = m->numel / (size_t)(shards > 1 ? shards : 1);
        m->win_lo = m->win_n * (size_t)slice;
    }
    int ok = (slice >= 0 ? (m->window = ct_model_balloc(m, m->win_n * es)) != NULL
                         : (m->params = ct_model_balloc(m, m->numel * es)) != NULL) &&
             (m->logits = ct_model_balloc(m, BT * (size_t)m->Vp * es)) &&
             (m->losses = ct_model_balloc(m, BT * 4)) && (m->tokens_dev = ct_model_balloc(m, BT * 4)) &&
             (m->targets_dev = ct_model_balloc(m, BT * 4)) && (m->pos_dev = ct_model_balloc(m, BT * 4)) &&
             (!a->rope || counting || rope_freqs(m) == 0) && a->alloc(m, B, T) == 0;
    if (!ok) goto oom;
    if (units_init(m)) goto oom;
    *out = m;
    return 0;
oom:
    if (m && m->over_cap)
        snprintf(err, errlen, "a %s model (%d layers, width %d, vocab %d, %d positions) for %d x %d tokens needs more "
                 "than this machine's %.1f GiB of memory", c.model_type, c.n_layer, c.n_embd, c.vocab_size,
                 c.max_seq_len, B, T, (double)m->host_cap / 1073741824.0);
    else
        snprintf(err, errlen, "out of memory allocating a %s model (%d layers, width %d, vocab %d) for %d x %d tokens",
                 c.model_type, c.n_layer, c.n_embd, c.vocab_size, B, T);
    ct_model_free(m);
    return -1;
}

void ct_model_free(ct_model *m)
{
    if (!m) return;
    if (m->acts) m->arch->free(m);
    for (int i = 0; i < m->nalloc; i++)
        if (m->allocations[i]) m->be->free(m->allocations[i]);
    free(m->allocations);
    free(m->tensors);
    free(m->slot);
    free(m->layer_start);
    free(m->unit_lo);
    free(m->unit_hi);
    free(m->unit_w);
    free(m->unit_g);
    free(m->adapters);
    free(m->lora_tensors);
    free(m->lora_bound);
    free(m->kcache);
    free(m->vcache);
    free(m->losses_host);
    free(m->hf_json);
    free(m);
}

const char *ct_model_hf_config(const ct_model *m) { return m->hf_json; }

int ct_model_set_hf_config(ct_model *m, const char *json, int dtype)
{
    char *copy = json ? strdup(json) : NULL;
    if (json && !copy) return -1;
    free(m->hf_json);
    m->hf_json = copy;
    m->cfg.dtype = dtype;
    return 0;
}

const ct_model_config *ct_model_config_of(const ct_model *m) { return &m->cfg; }
int ct_model_max_tokens(const ct_model *m) { return m->maxT; }
const char *ct_model_arch_name(const ct_model *m) { return m->arch->name; }
int ct_model_has_rope(const ct_model *m) { return m->arch->rope; }
const ct_backend *ct_model_backend(const ct_model *m) { return m->be; }
ct_kctx *ct_model_kctx(const ct_model *m) { return m->ctx; }
int ct_model_num_tensors(const ct_model *m) { return m->ntensors; }
const ct_param *ct_model_tensor(const ct_model *m, int i) { return &m->tensors[i]; }
size_t ct_model_numel(const ct_model *m) { return m->numel; }
void *ct_model_params(ct_model *m) { return m->params; }
void *ct_model_grads(ct_model *m) { return m->grads; }
const void *ct_model_logits(const ct_model *m) { return m->logits; }
int ct_model_logits_stride(const ct_model *m) { return m->Vp; }
const char *ct_model_hf_prefix(const ct_model *m) { return m->arch->hf_prefix; }
int ct_model_hf_ignorable(const ct_model *m, const char *name) { return m->arch->ignorable && m->arch->ignorable(name); }
double ct_model_step_flops(const ct_model_config *c, int B, int T)
{
    return (c->arch ? c->arch : &ct_arch_gpt2)->flops(c, B, T);
}

const ct_param *ct_model_find(const ct_model *m, const char *name)
{
    for (int i = 0; i < m->ntensors; i++)
        if (!strcmp(m->tensors[i].name, name)) return &m->tensors[i];
    return NULL;
}

size_t ct_model_count(const ct_model *m)
{
    size_t n = 0;
    for (int i = 0; i < m->ntensors; i++) n += m->tensors[i].numel;
    return n;
}

static int tensor_at(const ct_model *m, int layer, int slot)
{
    return m->slot[(layer >= 0 ? layer : m->cfg.n_layer) * m->arch->nslots + slot];
}

void *ct_model_w(const ct_model *m, int grad, int layer, int slot)
{
    int t = slot >= 0 ? tensor_at(m, layer, slot) : -1;
    if (t < 0) return NULL;
    size_t off = m->tensors[t].offset;
    int u = layer >= 0 ? layer : ct_model_unit_of(m, off);
    char *base = grad ? m->unit_g[u] : m->unit_w[u];
    if (!base) {
        if (grad) return NULL; /* frozen */
        fprintf(stderr, "ctrain: internal error: the weights of unit %d are used while not fetched\n", u);
        abort();
    }
    return base + (off - m->unit_lo[u]) * m->be->elem_size;
}

/* ---------------------------------------------------------------- units */

int ct_model_num_units(const ct_model *m) { return m->cfg.n_layer + 2; }

void ct_model_unit_range(const ct_model *m, int unit, size_t *lo, size_t *hi)
{
    *lo = m->unit_lo[unit];
    *hi = m->unit_hi[unit];
}

int ct_model_unit_of(const ct_model *m, size_t offset)
{
    const int L = m->cfg.n_layer;
    if (offset < m->layer_start[0]) return L;
    if (offset >= m->layer_start[L]) return L + 1;
    int lo = 0, hi = L - 1; /* the last block starting at or before offset */
    while (lo < hi) {
        int mid = (lo + hi + 1) / 2;
        if (m->layer_start[mid] <= offset) lo = mid;
        else hi = mid - 1;
    }
    return lo;
}

static int unit_index(const ct_model *m, int unit)
{
    return unit == CT_UNIT_PRE ? m->cfg.n_layer : unit == CT_UNIT_POST ? m->cfg.n_layer + 1 : unit;
}

/* Units point into the flat buffers (no sharder). */
static void map_flat(ct_model *m)
{
    const size_t es = m->be->elem_size;
    for (int u = 0; u < ct_model_num_units(m); u++) {
        m->unit_w[u] = m->params ? (char *)m->params + m->unit_lo[u] * es : NULL;
        m->unit_g[u] = m->grads ? (char *)m->grads + m->unit_lo[u] * es : NULL;
    }
}

static int units_init(ct_model *m)
{
    const int L = m->cfg.n_layer, n = L + 2;
    m->unit_lo = calloc((size_t)n, sizeof *m->unit_lo);
    m->unit_hi = calloc((size_t)n, sizeof *m->unit_hi);
    m->unit_w = calloc((size_t)n, sizeof *m->unit_w);
    m->unit_g = calloc((size_t)n, sizeof *m->unit_g);
    if (!m->unit_lo || !m->unit_hi || !m->unit_w || !m->unit_g) return -1;
    for (int l = 0; l < L; l++) {
        m->unit_lo[l] = m->layer_start[l];
        m->unit_hi[l] = m->layer_start[l + 1];
    }
    m->unit_lo[L] = 0;
    m->unit_hi[L] = m->layer_start[0];
    m->unit_lo[L + 1] = m->layer_start[L];
    m->unit_hi[L + 1] = m->numel;
    map_flat(m);
    return 0;
}

void ct_model_set_units(ct_model *m, const ct_model_units *hooks)
{
    m->units = hooks ? *hooks : (ct_model_units){0};
    if (!hooks) map_flat(m);
}

void ct_model_map_unit(ct_model *m, int unit, void *w, void *g)
{
    m->unit_w[unit] = w;
    m->unit_g[unit] = g;
}

static void drop_alloc(ct_model *m, void *p)
{
    for (int i = 0; p && i < m->nalloc; i++)
        if (m->allocations[i] == p) {
            m->be->free(p);
            m->allocations[i] = NULL;
            return;
        }
}

void ct_model_drop_params(ct_model *m)
{
    drop_alloc(m, m->params);
    m->params = NULL;
    for (int u = 0; u < ct_model_num_units(m); u++) m->unit_w[u] = NULL;
}

int ct_model_restore_params(ct_model *m)
{
    if (m->params) return 0;
    if (!(m->params = ct_model_balloc(m, m->numel * m->be->elem_size))) return -1;
    m->be->zero(m->ctx, m->params, m->numel * m->be->elem_size);
    return 0;
}

void ct_model_drop_grads(ct_model *m)
{
    drop_alloc(m, m->grads);
    m->grads = NULL;
    for (int u = 0; u < ct_model_num_units(m); u++) m->unit_g[u] = NULL;
}

void ct_model_fetch(ct_model *m, int unit, int what)
{
    if (!m->units.fetch) return;
    if (m->frozen) what &= ~CT_UNIT_GRADS;
    if (what) m->units.fetch(m->units.user, unit_index(m, unit), what);
}

/* The unit that holds the LM head's weight (the last DIM_V-rowed tensor: the embedding when tied). */
static int head_unit(const ct_model *m)
{
    for (int i = m->ntensors - 1; i >= 0; i--)
        if (m->tensors[i].shape[0] == m->Vp && m->tensors[i].ndim == 2) return ct_model_unit_of(m, m->tensors[i].offset);
    return m->cfg.n_layer + 1;
}

static void release_unit(ct_model *m, int u)
{
    if (m->units.release) m->units.release(m->units.user, u);
}

void ct_model_release(ct_model *m, int unit)
{
    int u = unit_index(m, unit);
    if (m->units.release && u != head_unit(m)) release_unit(m, u);
}

/* The initialisation each tensor's table row names, drawn in buffer order. */
static const ct_tensor_spec *spec_of(const ct_model *m, const ct_param *p)
{
    const ct_arch *a = m->arch;
    const ct_tensor_spec *tables[3] = {a->pre, a->block, a->post};
    int counts[3] = {a->npre, a->nblock, a->npost};
    for (int k = 0; k < 3; k++)
        for (int i = 0; i < counts[k]; i++)
            if (tensor_at(m, k == 1 ? p->layer : -1, tables[k][i].slot) == (int)(p - m->tensors) &&
                (k == 1) == (p->layer >= 0))
                return &tables[k][i];
    return NULL;
}

void ct_model_init_weights(ct_model *m, uint64_t seed)
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
        ct_init init = spec_of(m, p)->init;
        for (size_t k = 0; k < p->numel; k++) {
            if (init == INIT_ONES) host[k] = 1.0f;
            else if (init == INIT_ZEROS) host[k] = 0.0f;
            else host[k] = ct_rng_normal(&rng) * (init == INIT_RESID ? resid_std : 0.02f);
        }
        m->be->upload(m->ctx, staged, host, p->numel * sizeof(float));
        ct_model_store(m, p->offset, staged, p->numel);
    }
    m->be->sync(m->ctx);
    m->be->free(staged);
    free(host);
}

/* ---------------------------------------------------------------- LoRA */

/* The i-th tensor LoRA may wrap, or -1. */
static int linear_tensor(const ct_model *m, int i)
{
    for (int t = 0; t < m->ntensors; t++)
        if (m->tensors[t].lora && i-- == 0) return t;
    return -1;
}

int ct_model_num_linears(const ct_model *m)
{
    int n = 0;
    for (int t = 0; t < m->ntensors; t++) n += m->tensors[t].lora;
    return n;
}

void ct_model_linear_name(const ct_model *m, int i, char *out, size_t n)
{
    const char *name = m->tensors[linear_tensor(m, i)].name;
    snprintf(out, n, "%.*s", (int)(strlen(name) - strlen(".weight")), name);
}

int ct_model_add_lora(ct_model *m, const unsigned char *select, int r, float scale, float dropout, int shards,
                      char *err, size_t errlen)
{
    int nlin = ct_model_num_linears(m), count = 0, L = m->cfg.n_layer;
    for (int i = 0; i < nlin; i++) count += select[i] != 0;
    if (m->adapters || r <= 0 || !count) {
        snprintf(err, errlen, "lora: %s", m->adapters ? "adapters already added" : r <= 0 ? "r must be positive"
                                                                                   : "no linear layer selected");
        return -1;
    }
    size_t es = m->be->elem_size, BT = (size_t)m->maxB * m->maxT;
    m->adapters = calloc((size_t)m->ntensors, sizeof *m->adapters);
    m->lora_tensors = calloc((size_t)count * 2, sizeof *m->lora_tensors);
    m->lora_bound = calloc((size_t)L + 1, sizeof *m->lora_bound);
    if (!m->adapters || !m->lora_tensors || !m->lora_bound) goto oom;
    size_t off = 0, scratch = 0;
    for (int l = 0; l <= L; l++) m->lora_bound[l] = (size_t)-1;
    for (int i = 0, t = -1; i < nlin; i++) {
        t = linear_tensor(m, i);
        if (!select[i]) continue;
        const ct_param *w = &m->tensors[t];
        int in = w->shape[1], out = w->shape[0];
        if (w->layer >= 0 && m->lora_bound[w->layer] == (size_t)-1) m->lora_bound[w->layer] = off;
        for (int ab = 0; ab < 2; ab++) {
            ct_param *p = &m->lora_tensors[m->lora_ntensors++];
            snprintf(p->name, sizeof p->name, "base_model.model.%.*s.lora_%c.weight",
                     (int)(strlen(w->name) - strlen(".weight")), w->name, ab ? 'B' : 'A');
            p->ndim = 2;
            p->shape[0] = ab ? out : r;
            p->shape[1] = ab ? r : in;
            p->numel = (size_t)r * (ab ? out : in);
            p->offset = off;
            p->decay = 1;
            p->layer = w->layer;
            off = align_up(off + p->numel, CT_ALIGN_ELEMS);
        }
        size_t need = m->be->lora_scratch_len((int)BT, in, r);
        if (need > scratch) scratch = need;
    }
    if (shards > 1) off = align_up(off, (size_t)shards);
    m->lora_numel = off;
    /* a block without adapters spans nothing: it starts where the next one does */
    m->lora_bound[L] = off;
    for (int l = L - 1; l >= 0; l--)
        if (m->lora_bound[l] == (size_t)-1) m->lora_bound[l] = m->lora_bound[l + 1];
    if (!(m->lora_params = ct_model_balloc(m, off * es)) || !(m->lora_grads = ct_model_balloc(m, off * es)) ||
        !(m->lora_scratch = ct_model_balloc(m, scratch * es)))
        goto oom;
    for (int i = 0, k = 0; i < nlin; i++) {
        if (!select[i]) continue;
        ct_adapter *a = &m->adapters[linear_tensor(m, i)];
        a->A = (char *)m->lora_params + m->lora_tensors[k].offset * es;
        a->dA = (char *)m->lora_grads + m->lora_tensors[k].offset * es;
        a->B = (char *)m->lora_params + m->lora_tensors[k + 1].offset * es;
        a->dB = (char *)m->lora_grads + m->lora_tensors[k + 1].offset * es;
        k += 2;
        if (!(a->h = ct_model_balloc(m, BT * (size_t)r * es))) goto oom;
    }
    m->lora_r = r;
    m->lora_scale = scale;
    m->lora_dropout = dropout;
    /* the base is frozen: its gradients are never computed, so a buffer made for them goes */
    ct_model_drop_grads(m);
    m->frozen = 1;
    return 0;
oom:
    snprintf(err, errlen, "lora: out of memory for rank-%d adapters on %d linear layers", r, count);
    return -1;
}

int ct_model_has_lora(const ct_model *m) { return m->adapters != NULL; }

/* ---------------------------------------------------------------- the base's fingerprint */

static uint64_t fp_mix(uint64_t h, uint64_t v)
{
    h = (h ^ v) * 0x9E3779B97F4A7C15ull;
    return h ^ (h >> 29);
}

static uint64_t fp_bytes(uint64_t h, const void *p, size_t n)
{
    const unsigned char *b = p;
    h = fp_mix(h, n);
    for (size_t i = 0; i < n; i++) h = fp_mix(h, b[i]);
    return h;
}

/* fp32 to bf16 bits, rounding to nearest even (NaN kept quiet), as to_storage does on CUDA */
static uint16_t fp_bf16(float f)
{
    uint32_t u;
    memcpy(&u, &f, 4);
    if ((u & 0x7fffffffu) > 0x7f800000u) return (uint16_t)((u >> 16) | 0x0040u);
    u += 0x7fffu + ((u >> 16) & 1u);
    return (uint16_t)(u >> 16);
}

enum { FP_BLOCK = 1 << 16, FP_CHUNK = 1 << 22 };

/* One block of values, four lanes so the multiplies overlap; independent of the thread count. */
static uint64_t fp_block(const float *x, size_t n)
{
    uint64_t lane[4] = {1, 2, 3, 4};
    size_t i = 0;
    for (; i + 4 <= n; i += 4)
        for (int k = 0; k < 4; k++) lane[k] = fp_mix(lane[k], fp_bf16(x[i + k]));
    for (; i < n; i++) lane[0] = fp_mix(lane[0], fp_bf16(x[i]));
    return fp_mix(fp_mix(fp_mix(fp_mix(n, lane[0]), lane[1]), lane[2]), lane[3]);
}

const char *ct_model_base_fingerprint(ct_model *m)
{
    if (m->base_fp[0]) return m->base_fp;
    const ct_model_config *c = &m->cfg;
    uint64_t h = fp_bytes(0x63747261696e3031ull, c->model_type, strlen(c->model_type));
    const double fields[] = {c->n_head, c->n_kv_head, c->head_dim, c->norm_eps, c->rope_theta, c->rope_llama3,
                             c->rope_factor, c->rope_low_freq, c->rope_high_freq, c->rope_orig_max, c->window,
                             c->window_from, c->qkv_bias, c->o_bias, c->mlp_bias, c->untied};
    h = fp_bytes(h, fields, sizeof fields);
    size_t big = 0;
    for (int i = 0; i < m->ntensors; i++) big = m->tensors[i].numel > big ? m->tensors[i].numel : big;
    size_t chunk = big < FP_CHUNK ? big : FP_CHUNK;
    float *host = malloc((chunk ? chunk : 1) * sizeof(float));
    void *tmp = m->be->alloc((chunk ? chunk : 1) * sizeof(float));
    for (int i = 0; i < m->ntensors; i++) {
        const ct_param *p = &m->tensors[i];
        h = fp_bytes(h, p->name, strlen(p->name));
        h = fp_bytes(h, p->shape, sizeof p->shape);
        for (size_t at = 0; host && tmp && at < p->numel; at += chunk) {
            size_t n = p->numel - at < chunk ? p->numel - at : chunk;
            m->be->to_f32(m->ctx, tmp, (char *)m->params + (p->offset + at) * m->be->elem_size, n);
            m->be->download(m->ctx, host, tmp, n * sizeof(float));
            size_t nb = (n + FP_BLOCK - 1) / FP_BLOCK;
            uint64_t *bh = malloc(nb * sizeof *bh);
            if (!bh) {
                free(host), host = NULL;
                break;
            }
#pragma omp parallel for schedule(static)
            for (size_t b = 0; b < nb; b++)
                bh[b] = fp_block(host + b * FP_BLOCK, b + 1 < nb ? FP_BLOCK : n - b * FP_BLOCK);
            for (size_t b = 0; b < nb; b++) h = fp_mix(h, bh[b]);
            free(bh);
        }
    }
    int ok = host && tmp;
    if (tmp) m->be->free(tmp);
    free(host);
    if (!ok) return NULL; /* out of memory: names and shapes alone would match other bases */
    snprintf(m->base_fp, sizeof m->base_fp, "%016llx", (unsigned long long)h);
    return m->base_fp;
}

void ct_model_base_changed(ct_model *m) { m->base_fp[0] = 0; }
float ct_model_lora_scale(const ct_model *m) { return m->lora_scale; }
void ct_model_set_dropout_seed(ct_model *m, uint64_t seed) { m->dropout_seed = seed; }
void ct_model_set_training(ct_model *m, int on) { m->training = on; }

ct_trainable ct_model_trainable(ct_model *m)
{
    if (m->adapters)
        return (ct_trainable){.ntensors = m->lora_ntensors, .tensors = m->lora_tensors, .numel = m->lora_numel,
                              .params = m->lora_params, .grads = m->lora_grads};
    return (ct_trainable){.ntensors = m->ntensors, .tensors = m->tensors, .numel = m->numel, .params = m->params,
                          .grads = m->grads};
}

/* Each adapter's dropout mask differs: the step's seed mixed with the linear's index. */
static uint64_t adapter_seed(const ct_model *m, int t)
{
    uint64_t i = 0;
    for (int k = 0; k < t; k++) i += m->tensors[k].lora;
    return m->dropout_seed ^ (0x9E3779B97F4A7C15ull * (i + 1));
}

/* ---------------------------------------------------------------- linears */

void ct_model_linear_fwd(ct_model *m, int layer, int wslot, int bslot, void *out, const void *x, int N)
{
    int t = tensor_at(m, layer, wslot);
    const ct_param *w = &m->tensors[t];
    int K = w->shape[1], M = w->shape[0];
    m->be->matmul_fwd(m->ctx, out, x, ct_model_w(m, 0, layer, wslot),
                      ct_model_w(m, 0, layer, bslot), N, K, M);
    ct_adapter *a = m->adapters ? &m->adapters[t] : NULL;
    if (a && a->A)
        m->be->lora_fwd(m->ctx, out, a->h, x, a->A, a->B, m->lora_scratch, N, K, M, m->lora_r, m->lora_scale,
                        m->training ? m->lora_dropout : 0.0f, adapter_seed(m, t));
}

void ct_model_linear_bwd(ct_model *m, int layer, int wslot, int bslot, void *dx, const void *dout, const void *x,
                         int N)
{
    int t = tensor_at(m, layer, wslot);
    const ct_param *w = &m->tensors[t];
    int K = w->shape[1], M = w->shape[0];
    m->be->matmul_bwd(m->ctx, dx, ct_model_w(m, 1, layer, wslot), ct_model_w(m, 1, layer, bslot), dout,
                      x, ct_model_w(m, 0, layer, wslot), N, K, M);
    ct_adapter *a = m->adapters ? &m->adapters[t] : NULL;
    if (a && a->A)
        m->be->lora_bwd(m->ctx, dx, a->dA, a->dB, dout, x, a->h, a->A, a->B, m->lora_scratch, N, K, M, m->lora_r,
                        m->lora_scale, m->training ? m->lora_dropout : 0.0f, adapter_seed(m, t));
}

/* ---------------------------------------------------------------- ready ranges */

/* Where block l's part of the trainable buffer starts; l == L: where the head's starts. */
static size_t bound(const ct_model *m, int l) { return m->adapters ? m->lora_bound[l] : m->layer_start[l]; }

static void report(ct_grad_ready_fn ready, void *user, size_t lo, size_t hi)
{
    if (ready && lo < hi) ready(user, lo, hi);
}

void ct_model_layer_ready(ct_model *m, int l, ct_grad_ready_fn ready, void *user)
{
    report(ready, user, bound(m, l), bound(m, l + 1));
    release_unit(m, l);
}

void ct_model_head_ready(ct_model *m, ct_grad_ready_fn ready, void *user)
{
    report(ready, user, bound(m, m->cfg.n_layer), ct_model_trainable(m).numel);
    release_unit(m, m->cfg.n_layer + 1);
}

void ct_model_embed_ready(ct_model *m, ct_grad_ready_fn ready, void *user)
{
    report(ready, user, 0, bound(m, 0));
    release_unit(m, m->cfg.n_layer);
}

/* ---------------------------------------------------------------- forward, backward, decode */

static int upload_positions(ct_model *m, int B, int T, int pos0)
{
    int32_t *pos = malloc((size_t)B * T * sizeof *pos);
    if (!pos) return -1;
    for (int b = 0; b < B; b++)
        for (int t = 0; t < T; t++) pos[b * T + t] = pos0 + t;
    m->be->upload(m->ctx, m->pos_dev, pos, (size_t)B * T * sizeof *pos);
    m->be->sync(m->ctx); /* pos is freed below */
    free(pos);
    return 0;
}

static int check_tokens(const ct_model *m, const int32_t *tokens, const int32_t *targets, int N, char *err,
                        size_t errlen)
{
    int V = m->cfg.vocab_size;
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
    return 0;
}

/* Positions given to a forward: within the model's max_seq_len (GPT-2's learned embedding has
 * no row beyond it) and following the document rule (kernels.h), which the attention kernels'
 * masks rely on. */
static int check_positions(const ct_model *m, const int32_t *pos, int B, int T, char *err, size_t errlen)
{
    for (int b = 0; b < B; b++)
        for (int t = 0; t < T; t++) {
            const int32_t p = pos[(size_t)b * T + t], prev = t ? pos[(size_t)b * T + t - 1] : -1;
            if (p < 0 || p >= m->cfg.max_seq_len) {
                snprintf(err, errlen, "position %d (row %d, token %d) is outside the model's %d positions "
                         "(max_seq_len)", p, b, t, m->cfg.max_seq_len);
                return -1;
            }
            if (p != 0 && p != prev + 1) {
                snprintf(err, errlen, "position %d (row %d, token %d) follows position %d: within a row, positions "
                         "start at 0 and count up by one, restarting at 0 where a document begins", p, b, t, prev);
                return -1;
            }
        }
    return 0;
}

int ct_model_forward(ct_model *m, const int32_t *tokens, const int32_t *targets, const int32_t *pos, int B, int T,
                     float dloss, double *loss_sum, long *ntok, char *err, size_t errlen)
{
    const ct_backend *be = m->be;
    ct_kctx *ctx = m->ctx;
    int N = B * T;
    m->have_targets = 0;
    if (B <= 0 || T <= 0 || B > m->maxB || T > m->maxT) {
        snprintf(err, errlen, "batch %d x %d is outside the model's allocation of %d x %d", B, T, m->maxB, m->maxT);
        return -1;
    }
    if (check_tokens(m, tokens, targets, N, err, errlen)) return -1;
    if (pos && check_positions(m, pos, B, T, err, errlen)) return -1;
    if (pos) be->upload(ctx, m->pos_dev, pos, (size_t)N * sizeof(int32_t));
    else if (upload_positions(m, B, T, 0)) return snprintf(err, errlen, "out of memory"), -1;
    m->doc_pos = pos ? m->pos_dev : NULL;
    be->upload(ctx, m->tokens_dev, tokens, (size_t)N * sizeof(int32_t));
    if (targets) be->upload(ctx, m->targets_dev, targets, (size_t)N * sizeof(int32_t));
    m->arch->forward(m, B, T);
    m->curB = B;
    m->curT = T;
    if (!targets || dloss == 0.0f) { /* no backward follows: the head's units go now */
        release_unit(m, m->cfg.n_layer + 1);
        release_unit(m, head_unit(m));
    }
    if (!targets) {
        be->sync(ctx);
        return 0;
    }
    be->xent(ctx, m->losses, m->logits, m->targets_dev, dloss, N, m->cfg.vocab_size, m->Vp); /* logits become their gradient */
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

int ct_model_alloc_grads(ct_model *m, char *err, size_t errlen)
{
    if (m->frozen || m->grads || m->units.fetch) return 0; /* a sharder keeps its own */
    if ((m->grads = ct_model_balloc(m, m->numel * m->be->elem_size))) {
        map_flat(m);
        return 0;
    }
    snprintf(err, errlen, "out of memory for the gradients of a %s model (%.1f MiB)", m->cfg.model_type,
             (double)m->numel * m->be->elem_size / 1048576.0);
    return -1;
}

void ct_model_zero_grad(ct_model *m)
{
    char err[256];
    if (ct_model_alloc_grads(m, err, sizeof err)) {
        fprintf(stderr, "ctrain: error: %s\n", err);
        exit(1);
    }
    ct_trainable t = ct_model_trainable(m);
    if (t.grads) m->be->zero(m->ctx, t.grads, t.numel * m->be->elem_size); /* else a sharder's, zeroed on fetch */
}

void ct_model_backward(ct_model *m, ct_grad_ready_fn ready, void *user)
{
    if (!m->have_targets) {
        fprintf(stderr, "ctrain: internal error: ct_model_backward without a forward with targets\n");
        abort();
    }
    if (!m->frozen && !m->grads && !m->units.fetch) {
        fprintf(stderr, "ctrain: internal error: ct_model_backward before the gradients exist (ct_model_zero_grad)\n");
        abort();
    }
    m->have_targets = 0; /* the probabilities are consumed */
    m->arch->backward(m, m->curB, m->curT, ready, user);
}

int ct_model_kv_alloc(ct_model *m)
{
    if (m->kcache) return 0;
    int L = m->cfg.n_layer;
    size_t bytes = (size_t)m->maxB * m->maxT * m->cfg.n_kv_head * m->cfg.head_dim * m->be->elem_size;
    m->kcache = calloc((size_t)L, sizeof *m->kcache);
    m->vcache = calloc((size_t)L, sizeof *m->vcache);
    if (!m->kcache || !m->vcache) return -1;
    for (int l = 0; l < L; l++)
        if (!(m->kcache[l] = ct_model_balloc(m, bytes)) || !(m->vcache[l] = ct_model_balloc(m, bytes))) return -1;
    return 0;
}

void ct_model_attend_cached(ct_model *m, int l, void *out, const void *q, int ldq, const void *k, const void *v,
                            int ldkv, int B, int Tq, int pos0, int window)
{
    const ct_model_config *c = &m->cfg;
    int KV = c->n_kv_head * c->head_dim;
    size_t es = m->be->elem_size;
    for (int b = 0; b < B; b++) {
        size_t dst = ((size_t)b * m->maxT + pos0) * KV * es, src = (size_t)b * Tq * ldkv * es;
        m->be->copy_rows(m->ctx, (char *)m->kcache[l] + dst, KV, (const char *)k + src, ldkv, Tq, KV);
        m->be->copy_rows(m->ctx, (char *)m->vcache[l] + dst, KV, (const char *)v + src, ldkv, Tq, KV);
    }
    m->be->attention_decode(m->ctx, out, q, m->kcache[l], m->vcache[l], B, Tq, pos0, m->maxT, c->n_head,
                            c->n_kv_head, c->head_dim, ldq, window);
}

int ct_model_decode(ct_model *m, const int32_t *tokens, int B, int Tq, int pos0, char *err, size_t errlen)
{
    m->have_targets = 0;
    if (m->units.fetch) {
        snprintf(err, errlen, "internal: decode of a sharded model (gather its weights first)");
        return -1;
    }
    if (!m->be->attention_decode || !m->be->copy_rows) {
        snprintf(err, errlen, "the %s backend has no %s op, which sampling needs", m->be->name,
                 m->be->attention_decode ? "copy_rows" : "attention_decode");
        return -1;
    }
    if (B <= 0 || Tq <= 0 || pos0 < 0 || B > m->maxB || pos0 + Tq > m->maxT) {
        snprintf(err, errlen, "decode of %d x %d tokens at position %d is outside the model's allocation of %d x %d",
                 B, Tq, pos0, m->maxB, m->maxT);
        return -1;
    }
    if (check_tokens(m, tokens, NULL, B * Tq, err, errlen)) return -1;
    if (ct_model_kv_alloc(m) || upload_positions(m, B, Tq, pos0)) {
        snprintf(err, errlen, "out of memory for the KV cache (%d x %d positions)", m->maxB, m->maxT);
        return -1;
    }
    m->be->upload(m->ctx, m->tokens_dev, tokens, (size_t)B * Tq * sizeof(int32_t));
    m->doc_pos = NULL;
    m->arch->decode(m, B, Tq, pos0);
    m->be->sync(m->ctx);
    return 0;
}
