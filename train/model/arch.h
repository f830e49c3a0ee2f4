/* arch.h — private to train/model/: what an architecture file provides and the helpers it
 * builds its forward and backward from.
 *
 * An architecture is data plus three short functions. The data: its tensors, one table row
 * each (Hugging Face name, shape in config dimensions, initialisation, weight decay, whether
 * LoRA may wrap it, storage layout, when it exists). The functions: forward up to the logits,
 * backward from the logits' gradient, and decode over the KV cache. model.c derives the flat
 * layout, name lookup, initialisation and LoRA from the table; hf_model.c the Hugging Face
 * mapping. Adding a family is one file (see gpt2.c, llama.c) and a line in hf_config.c's list
 * (docs/DESIGN.md "Models"). */
#ifndef CT_MODEL_ARCH_H
#define CT_MODEL_ARCH_H

#include <cjson/cJSON.h>

#include "model.h"

/* Shapes are written in these dimensions, resolved from the config. */
typedef enum { DIM_NONE, DIM_C, DIM_V, DIM_POS, DIM_Q, DIM_KV, DIM_QKV, DIM_I } ct_dim;
typedef enum { INIT_NORMAL, INIT_RESID, INIT_ONES, INIT_ZEROS } ct_init;
/* When a tensor exists: always, or when the config says so. */
typedef enum { WHEN_ALWAYS, WHEN_QKV_BIAS, WHEN_O_BIAS, WHEN_MLP_BIAS, WHEN_UNTIED } ct_when;

typedef struct {
    int slot;          /* the architecture's name for it in forward/backward code */
    const char *name;  /* Hugging Face name; in a block, after "<layer prefix><l>." */
    ct_dim rows, cols; /* cols DIM_NONE: a vector. DIM_V rows are padded in the buffer (LM head) */
    ct_init init;
    int decay;         /* weight decay applies */
    int lora;          /* the weight of a linear LoRA may wrap (module = name without ".weight") */
    int conv1d;        /* Hugging Face stores it transposed */
    ct_when when;
} ct_tensor_spec;

/* What an architecture's forward, backward and decode read and write beyond the parameters. */
struct ct_arch {
    const char *name;                 /* "gpt2", "llama" (model.arch) */
    const char *const *model_types;   /* the config.json model_type values it reads, NULL-terminated */
    const char *hf_prefix;            /* what a base-model file leaves off ("transformer.") */
    const char *layer_prefix;         /* "transformer.h." */
    const ct_tensor_spec *pre, *block, *post; /* embeddings, one block, the head: in buffer order */
    int npre, nblock, npost;
    int nslots;                       /* slots are numbered [0, nslots) across the three tables */
    int rope;                         /* positions are rotary (m->inv_freq is made) */

    /* Reads the family's keys of a config.json (model_type already matched) into c; errors
     * name path and key. */
    int (*read_hf_config)(const cJSON *root, const char *path, ct_model_config *c, char *err, size_t errlen);
    /* Sets the family's keys in a config.json (a new one, or the source's carried over). */
    void (*write_hf_config)(cJSON *root, const ct_model_config *c);
    /* The name of the first op the family needs that be lacks, or NULL. */
    const char *(*missing_op)(const ct_backend *be);
    /* Activations for B x T (model.c's ct_model_alloc); -1 when memory runs out. */
    int (*alloc)(ct_model *m, int B, int T);
    void (*free)(ct_model *m);
    /* Forward of m->tokens_dev (positions m->pos_dev; documents m->doc_pos) into m->logits. */
    void (*forward)(ct_model *m, int B, int T);
    /* Backward from m->logits (holding their gradient), as ct_model_backward says. */
    void (*backward)(ct_model *m, int B, int T, ct_grad_ready_fn ready, void *user);
    /* Forward of B x Tq new tokens at pos0 over the KV cache into m->logits. */
    void (*decode)(ct_model *m, int B, int Tq, int pos0);
    double (*flops)(const ct_model_config *c, int B, int T);
    /* Hugging Face tensors that are not parameters (buffers), or NULL. */
    int (*ignorable)(const char *name);
};

/* The three tensor tables of an architecture, for its ct_arch initializer. */
#define CT_ARCH_TABLES(pre_, block_, post_)                                                        \
    .pre = pre_, .npre = (int)(sizeof pre_ / sizeof pre_[0]), .block = block_,                      \
    .nblock = (int)(sizeof block_ / sizeof block_[0]), .post = post_, .npost = (int)(sizeof post_ / sizeof post_[0])

extern const ct_arch ct_arch_gpt2;
extern const ct_arch ct_arch_llama;

typedef struct {
    void *A, *B;          /* [r, in], [out, r]: in the adapters' flat parameter buffer */
    void *dA, *dB;        /* the same places in their gradient buffer */
    void *h;              /* [BT, r] drop(x) . A^T, kept for backward */
} ct_adapter;

struct ct_model {
    ct_model_config cfg;
    const ct_arch *arch;
    const ct_backend *be;
    ct_kctx *ctx;
    int maxB, maxT;
    int Vp;                /* vocab_size padded to a multiple of 64 (the LM head's rows) */

    int ntensors;
    ct_param *tensors;     /* [ntensors] */
    int *slot;             /* [(L + 1) * nslots]: tensor index of (layer, slot), -1 if absent; row L: outside blocks */
    size_t *layer_start;   /* [L + 1]: where block l's tensors start; [L] where the head's start */
    size_t numel;          /* flat length, padding included */
    void *params;          /* [numel]; NULL while the weights are sharded (ZeRO-3) */
    void *grads;           /* [numel]; NULL once frozen, and while gradients are sharded (ZeRO-2, 3) */
    void *window;          /* ct_model_init_slice: [win_n] weights of [win_lo, win_lo + win_n) alone */
    size_t win_lo, win_n;
    /* Units (model.c "units"): block l is unit l, the embeddings unit L, the final norm and head
     * unit L + 1. Every weight and gradient is found through its unit's base pointers, which
     * point into params/grads, or, when a sharder is set (ct_model_set_units), into the buffers
     * it maps there between a fetch and a release. */
    size_t *unit_lo, *unit_hi; /* [L + 2]: flat range */
    char **unit_w, **unit_g;   /* [L + 2]: where element unit_lo[u] of the weights / gradients is; NULL: absent */
    ct_model_units units;      /* the sharder's hooks; fetch NULL: none */

    int32_t *tokens_dev, *targets_dev, *pos_dev; /* [BT] */
    const int32_t *doc_pos; /* pos_dev when the last forward was given positions (packed documents,
                             * attention masked to each), else NULL: plain causal attention */
    void *logits;          /* [BT, Vp]: logits, then their gradient (columns past V: 0) */
    float *losses;         /* [BT] */
    float *losses_host;    /* [BT] */
    float *inv_freq;       /* [D/2] RoPE frequencies, backend memory (families with RoPE) */
    int curB, curT;        /* shape of the last forward */
    int have_targets;      /* the last forward computed the loss: backward may run */
    void *acts;            /* the architecture's activations */
    char *hf_json;         /* the source's config.json (ct_model_set_hf_config), or NULL */

    /* KV cache for decode: per layer [maxB, maxT, NKV*D] keys and values, made on first use */
    void **kcache, **vcache;

    /* LoRA (ct_model_add_lora): the base is frozen (grads released) and adapters train */
    int frozen;
    ct_adapter *adapters;  /* [ntensors]; A == NULL where a tensor has none */
    int lora_r;
    float lora_scale, lora_dropout;
    uint64_t dropout_seed;
    int training;          /* dropout only while training, as PEFT */
    ct_param *lora_tensors;
    int lora_ntensors;
    size_t lora_numel;
    void *lora_params, *lora_grads, *lora_scratch;
    size_t *lora_bound;    /* [L + 1]: block l's adapters span [lora_bound[l], lora_bound[l + 1]) */

    void **allocations;    /* every backend allocation, for free */
    int nalloc, capalloc;
    size_t bytes;          /* their sum */
    int counting;          /* ct_model_init_counting: allocations are only counted, nothing exists */
    char base_fp[17];      /* ct_model_base_fingerprint, "" until computed */
    size_t host_cap;       /* host-memory backend: the machine's memory, past which balloc fails
                            * (rather than the OOM killer ending the process); 0: no cap */
    int over_cap;          /* an allocation failed for the cap */
};

/* ---- helpers for architecture files */

/* A backend allocation freed with the model; NULL when memory runs out. */
void *ct_model_balloc(ct_model *m, size_t bytes);
/* Parameter (grad 0) or gradient (grad 1) of (layer, slot), through its unit; layer -1 for the
 * embeddings and head. NULL when the tensor does not exist or has no gradient (frozen). */
void *ct_model_w(const ct_model *m, int grad, int layer, int slot);

/* Units around their use, for a sharder (model.h "Units"; no-ops without one). unit: a block l,
 * CT_UNIT_PRE (the embeddings) or CT_UNIT_POST (final norm, head). A family fetches a unit's
 * weights (CT_UNIT_WEIGHTS) before its forward and releases them after; before its backward it
 * fetches weights and gradients (| CT_UNIT_GRADS); the ready calls (ct_model_layer_ready,
 * _head_ready, _embed_ready) release a unit after its backward. A release of the unit holding
 * the LM head's weight is ignored until the backward's end. */
enum { CT_UNIT_PRE = -1, CT_UNIT_POST = -2 };
void ct_model_fetch(ct_model *m, int unit, int what);
void ct_model_release(ct_model *m, int unit);
/* out[N, out] = x . W^T + b, plus the LoRA adapter where one sits beside W. */
void ct_model_linear_fwd(ct_model *m, int layer, int wslot, int bslot, void *out, const void *x, int N);
/* dx[N, in] += dout . W (+ the adapter's), dW, db += their gradients (skipped when frozen). */
void ct_model_linear_bwd(ct_model *m, int layer, int wslot, int bslot, void *dx, const void *dout, const void *x,
                         int N);
/* The finished-range report for block l of the trainable buffer (ct_grad_ready_fn). */
void ct_model_layer_ready(ct_model *m, int l, ct_grad_ready_fn ready, void *user);
/* The head's range (everything from the last block's end), then the embeddings' (before
 * block 0): reported by backward first and last. */
void ct_model_head_ready(ct_model *m, ct_grad_ready_fn ready, void *user);
void ct_model_embed_ready(ct_model *m, ct_grad_ready_fn ready, void *user);
/* The KV caches, made on first use; -1 when memory runs out. */
int ct_model_kv_alloc(ct_model *m);
/* Decode's attention for block l: appends the B x Tq new keys and values (rows of k and v,
 * stride ldkv) to the cache at pos0 and attends the new queries q (stride ldq) over it. */
void ct_model_attend_cached(ct_model *m, int l, void *out, const void *q, int ldq, const void *k, const void *v,
                            int ldkv, int B, int Tq, int pos0, int window);

#endif
