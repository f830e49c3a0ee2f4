/* model.h — the one model interface the trainer, optimizer, checkpoints, LoRA, eval, sample,
 * export and merge use. They never name an architecture: GPT-2 and the Llama family (Llama,
 * Mistral, Qwen2, SmolLM2) are entries of an architecture table (arch.h, docs/DESIGN.md
 * "Models").
 *
 * Parameters live in one flat buffer and gradients in another of the same layout, so
 * sharding, reduction, clipping and checkpointing are one loop each. Tensors are stored in
 * nn.Linear layout [out, in] under their Hugging Face names; GPT-2's Conv1D weights, which
 * Hugging Face keeps transposed, carry ct_param.conv1d. */
#ifndef CT_MODEL_H
#define CT_MODEL_H

#include <stddef.h>
#include <stdint.h>

#include "kernels.h"

typedef struct ct_arch ct_arch;

/* Limits on a model's shape, from config.json, a checkpoint or the model.* keys: far above every
 * published model (the largest figure each names), low enough that no size derived from them
 * overflows int (q = heads x head_dim < 2^27) and that one number cannot ask for an absurd
 * allocation. A shape past one is refused naming the key, before anything is allocated. */
#define CT_MAX_VOCAB (1 << 24)     /* 16,777,216 ids; Gemma 3 has 262,144 */
#define CT_MAX_POSITIONS (1 << 24) /* 16,777,216 positions; Llama 4 Scout has 10M */
#define CT_MAX_LAYERS 1024         /* Llama-3.1-405B has 126 */
#define CT_MAX_WIDTH (1 << 16)     /* hidden size 65,536, and head_dim; 405B: 16,384 */
#define CT_MAX_INNER (1 << 20)     /* MLP width 1,048,576; 405B: 53,248 */
#define CT_MAX_HEADS 1024          /* query (and key/value) heads; 405B: 128 */
#define CT_MAX_PARAMS (1ull << 40) /* 1.1e12 parameters, counted in size_t; 405B has 4.1e11 */

/* A model's shape, as its config.json describes it. Zero fields take their family's default
 * at ct_model_init (n_kv_head = n_head, head_dim = n_embd / n_head, n_inner = 4 n_embd for
 * GPT-2); arch NULL is GPT-2. */
typedef struct {
    const ct_arch *arch;  /* the family (ct_arch_gpt2, ct_arch_llama) */
    char model_type[16];  /* Hugging Face model_type: gpt2, llama, mistral, qwen2 */
    int vocab_size;       /* V */
    int max_seq_len;      /* n_positions / max_position_embeddings */
    int n_layer;          /* L */
    int n_head;           /* NH: query heads */
    int n_kv_head;        /* NKV: key/value heads (grouped-query attention) */
    int head_dim;         /* D */
    int n_embd;           /* C */
    int n_inner;          /* I: the MLP's hidden width */
    float norm_eps;
    int untied;           /* the LM head has its own weight (lm_head.weight) */
    int qkv_bias, o_bias, mlp_bias; /* Llama family: which linears have biases */
    double rope_theta;
    int rope_llama3;      /* rope_scaling type llama3, with: */
    double rope_factor, rope_low_freq, rope_high_freq;
    int rope_orig_max;
    int window;           /* sliding-window attention width, 0: none */
    int window_from;      /* layers >= window_from use the window (Qwen2's max_window_layers) */
    int dtype;            /* ct_dtype the weights came in (export writes it back); 0: F32 */
} ct_model_config;

/* One parameter tensor inside the flat buffer. */
typedef struct {
    char name[96];   /* Hugging Face name, e.g. "model.layers.3.self_attn.q_proj.weight" */
    int ndim;
    int shape[2];    /* ctrain layout: weights [out, in] */
    size_t offset;   /* in elements from the start of the flat buffer */
    size_t numel;
    int conv1d;      /* stored transposed ([in, out]) in Hugging Face files (GPT-2) */
    int decay;       /* matrices and embeddings get weight decay; biases and norms do not */
    int layer;       /* the block it belongs to; -1 outside the blocks */
    int lora;        /* the weight of a linear LoRA may wrap */
} ct_param;

typedef struct ct_model ct_model;

/* Fills the family's defaults into zero fields and checks the shape: the limits above, then the
 * parameter count (in size_t, overflow-checked) against CT_MAX_PARAMS. On error fills err naming
 * the field ("model.<field>: ...") and returns -1. */
int ct_model_config_check(ct_model_config *cfg, char *err, size_t errlen);

/* Whether two checked configs describe the same tensors and computation (dtype aside). */
int ct_model_config_same(const ct_model_config *a, const ct_model_config *b);

/* Allocates parameters, gradients and activations for micro-batches of up to B x T tokens on
 * backend be (ctx from be->kctx_init). The flat buffers' length is padded to a multiple of
 * `shards` (the world size under ZeRO-1, so every rank's slice has the same length).
 * Weights start zero: call ct_model_init_weights or load. Returns -1 with err filled on a bad
 * config, an op the backend lacks (named), or when memory runs out; *out stays NULL. */
int ct_model_init(ct_model **out, const ct_model_config *cfg, const ct_backend *be, ct_kctx *ctx, int B, int T,
                  int shards, char *err, size_t errlen);
void ct_model_free(ct_model *m);
/* ZeRO-3: the same model holding only rank's slice of the weights, [rank * S, (rank + 1) * S)
 * with S = padded numel / shards (ct_model_window), never the whole: ct_model_params is NULL and
 * loading writes through ct_model_store, which keeps the slice's part. The optimizer takes the
 * slice over (ct_optim_init at stage 3). */
int ct_model_init_slice(ct_model **out, const ct_model_config *cfg, const ct_backend *be, ct_kctx *ctx, int B,
                        int T, int shards, int rank, char *err, size_t errlen);
void *ct_model_window(ct_model *m, size_t *lo, size_t *n); /* NULL: the model holds the whole */
/* Writes n fp32 values (backend memory) at flat offset as weights, in the storage dtype: into the
 * flat buffer, or the part inside the slice of a ct_model_init_slice model. */
void ct_model_store(ct_model *m, size_t offset, const float *src, size_t n);

/* For a memory plan: the same set-up without allocating anything, only counting the bytes each
 * buffer would take (ct_model_bytes); adapters may be added (ct_model_add_lora) to count theirs.
 * Such a model has a layout, units and linears, and nothing else: it must not run. */
int ct_model_init_counting(ct_model **out, const ct_model_config *cfg, const ct_backend *be, int B, int T,
                           int shards, char *err, size_t errlen);
/* Bytes of backend memory the model allocated (or counted), parameters included. */
size_t ct_model_bytes(const ct_model *m);

const ct_model_config *ct_model_config_of(const ct_model *m);
int ct_model_max_tokens(const ct_model *m); /* T of the allocation: the longest sequence, the KV cache's length */
const char *ct_model_arch_name(const ct_model *m);
int ct_model_has_rope(const ct_model *m); /* rotary positions (rope_theta, scaling, window apply) */
const ct_backend *ct_model_backend(const ct_model *m);
ct_kctx *ct_model_kctx(const ct_model *m);
int ct_model_num_tensors(const ct_model *m);
const ct_param *ct_model_tensor(const ct_model *m, int i);
const ct_param *ct_model_find(const ct_model *m, const char *name); /* NULL if absent */
size_t ct_model_numel(const ct_model *m);  /* length of the flat buffers, padding included */
size_t ct_model_count(const ct_model *m);  /* number of parameters, padding excluded */
void *ct_model_params(ct_model *m);        /* flat parameters, backend memory, storage dtype */
void *ct_model_grads(ct_model *m);         /* flat gradients, same layout; NULL until allocated, and once frozen (LoRA) */
/* The gradient buffer of a model that trains whole, made on first need (ct_optim_init and
 * ct_model_zero_grad call this): a model that only evaluates or samples, or whose base LoRA
 * freezes, never holds one. -1 with err filled when memory runs out; 0 when frozen. */
int ct_model_alloc_grads(ct_model *m, char *err, size_t errlen);
/* The config.json the weights came with (its text, carried into exports and checkpoints), or
 * NULL for a model ctrain made. Setting it copies json (NULL clears it) and records the dtype
 * the weights were published in (export writes that dtype back). */
const char *ct_model_hf_config(const ct_model *m);
int ct_model_set_hf_config(ct_model *m, const char *json, int dtype);
/* The prefix a base-model file (GPT2Model, LlamaModel) leaves off the names: "transformer.", "model." */
const char *ct_model_hf_prefix(const ct_model *m);
/* Whether a tensor of a Hugging Face file is not a parameter ctrain keeps (attention-mask
 * buffers, the tied head's copy: the caller checks that copy equals the embedding). */
int ct_model_hf_ignorable(const ct_model *m, const char *name);

/* What the optimizer updates and a checkpoint saves: one flat buffer of parameters, one of
 * gradients of the same layout, and the table of the tensors in them. The whole model, or,
 * once LoRA adapters are added, only the adapters. */
typedef struct {
    int ntensors;
    const ct_param *tensors;
    size_t numel;         /* flat length, padded to the shard multiple */
    void *params, *grads; /* backend memory, storage dtype */
} ct_trainable;
ct_trainable ct_model_trainable(ct_model *m);

/* ---- Units, for sharding (ZeRO-2 and 3, train/optim.c). The flat buffer splits into units, each
 * a contiguous range: block l is unit l (l < L), the embeddings unit L, the final norm and LM
 * head unit L + 1. A sharder installs hooks: the model then calls fetch before it reads a unit's
 * weights or writes its gradients, and release when it is done with them; the sharder makes the
 * unit's buffers present with ct_model_map_unit. Without hooks every unit points into the flat
 * buffers. The forward fetches and releases each block in turn; the unit of the LM head's weight
 * stays from the head's forward to the end of the backward; a backward releases each unit after
 * its ready range (the gradients' release is the sharder's, after it reduced them). */
typedef struct {
    void *user;
    void (*fetch)(void *user, int unit, int what); /* what: CT_UNIT_WEIGHTS | CT_UNIT_GRADS */
    void (*release)(void *user, int unit);         /* the unit's weights are not needed now */
} ct_model_units;
enum { CT_UNIT_WEIGHTS = 1, CT_UNIT_GRADS = 2 };
int ct_model_num_units(const ct_model *m);
void ct_model_unit_range(const ct_model *m, int unit, size_t *lo, size_t *hi);
int ct_model_unit_of(const ct_model *m, size_t offset); /* the unit holding flat element offset */
/* Installs hooks (NULL: none; units then point into the flat buffers again, which must exist). */
void ct_model_set_units(ct_model *m, const ct_model_units *hooks);
/* Where unit u's weights and gradients are now (element unit_lo first); NULL: not present. */
void ct_model_map_unit(ct_model *m, int unit, void *w, void *g);
/* The flat weight buffer goes (sharded weights live in the sharder) or comes back (zeroed
 * for the sharder to fill); returns -1 when memory runs out. */
void ct_model_drop_params(ct_model *m);
int ct_model_restore_params(ct_model *m);
/* The flat gradient buffer goes (sharded gradients). */
void ct_model_drop_grads(ct_model *m);

/* ---- LoRA. The linear layers adapters can sit beside, named as PEFT's module paths
 * ("transformer.h.<l>.attn.c_attn", "model.layers.<l>.self_attn.q_proj"); i in [0, num). */
int ct_model_num_linears(const ct_model *m);
void ct_model_linear_name(const ct_model *m, int i, char *out, size_t n);
/* Freezes the base weights (their gradient buffer is released: no base gradient is ever
 * computed) and adds a rank-r adapter beside every linear i with select[i] != 0:
 * out += scale * dropout(x) . A^T . B^T. Adapter tensors are named as PEFT saves them
 * ("base_model.model.<module>.lora_A.weight", A [r, in], B [out, r]) and start at zero: the
 * caller initialises A (lora.c). Their flat buffers are padded to `shards`.
 * Returns -1 with err filled when r <= 0, nothing is selected, or memory runs out. */
int ct_model_add_lora(ct_model *m, const unsigned char *select, int r, float scale, float dropout, int shards,
                      char *err, size_t errlen);
int ct_model_has_lora(const ct_model *m);
float ct_model_lora_scale(const ct_model *m);
/* What a LoRA run records of its base and checks again before adapters meet a base (continue,
 * eval, merge): NULL when memory runs out, else 16 hex digits of a 64-bit hash of the family and the config fields no tensor
 * shows (heads, head_dim, norm epsilon, rope and window settings), then every base tensor's name,
 * shape and whole content rounded to bf16 (so the same base in F32, BF16 or on either backend
 * matches; another model, another fine-tune of it or an edited config does not). Computed on the
 * first call (the base weights are downloaded once, in chunks) and kept: the base is frozen.
 * ct_model_base_changed forgets it (ct_lora_merge changes the base). */
const char *ct_model_base_fingerprint(ct_model *m);
void ct_model_base_changed(ct_model *m);
/* The seed of the adapters' dropout masks for the next forward and its backward. */
void ct_model_set_dropout_seed(ct_model *m, uint64_t seed);
/* Training mode turns dropout on; a model starts in inference mode (evaluation, sampling). */
void ct_model_set_training(ct_model *m, int on);

/* The family's initialisation, as the architecture table says: normal(0, 0.02) for weights
 * and embeddings (GPT-2's residual projections scaled by 1/sqrt(2 n_layer)), biases 0, norm
 * weights 1. Deterministic in seed. */
void ct_model_init_weights(ct_model *m, uint64_t seed);

/* Forward pass on host arrays tokens[B*T] and targets[B*T] (target < 0: not counted).
 * pos[B*T] (host, may be NULL) packs several documents into a row: pos[b*T+t] is token (b,t)'s
 * position in its document, 0 where a document begins (always at t = 0) and one more than the
 * token before otherwise. Each token then attends only to the earlier tokens of its own
 * document and takes pos[b*T+t] as its position (GPT-2's learned embedding, Llama's RoPE), so
 * a row's loss and gradient are the sums of its documents' computed alone. NULL: one document
 * per row, positions 0..T-1. Its backward uses the same positions.
 * With targets, *loss_sum receives the sum of the counted tokens' losses and *ntok their
 * number, and the gradient of dloss * loss_sum at the logits is formed on the way (the fused
 * classifier loss), so a backward may follow; dloss is normally 1 / (tokens counted across
 * the whole step), 0 when no backward follows. With targets == NULL only logits are computed
 * (ct_model_logits). Returns -1 with err filled for B or T beyond the allocation, a token or
 * target outside the vocabulary, or positions that break the rule above or reach max_seq_len;
 * nothing is computed then. */
int ct_model_forward(ct_model *m, const int32_t *tokens, const int32_t *targets, const int32_t *pos, int B, int T,
                     float dloss, double *loss_sum, long *ntok, char *err, size_t errlen);

/* Told during a backward each time the elements [lo, hi) of the trainable flat buffer hold
 * their final gradient of this backward, so their reduction can start while backward goes
 * on. Over one backward the ranges partition [0, numel); layers arrive last to first, the
 * embeddings (full training) last. Called on the host as work is enqueued: on an
 * asynchronous backend the gradients are complete in stream order, not yet in time. */
typedef void (*ct_grad_ready_fn)(void *user, size_t lo, size_t hi);

/* Adds the gradient of the last forward's dloss * loss_sum to the gradient buffer; ready
 * (may be NULL) hears of each finished range. Needs the buffer: ct_model_zero_grad first. */
void ct_model_backward(ct_model *m, ct_grad_ready_fn ready, void *user);
/* Zeroes the trainable gradients, making the buffer first where there is none (ending the
 * process with a message when memory runs out: call ct_model_alloc_grads to handle that). */
void ct_model_zero_grad(ct_model *m);

/* Inference with a KV cache: runs the Tq new tokens of each of B sequences (tokens[B*Tq]),
 * at positions pos0 .. pos0+Tq-1, attending to the cached keys of positions < pos0, and
 * stores their keys in the cache. pos0 = 0 starts new sequences. B at most the allocation's;
 * pos0 + Tq at most its T. The logits of the new tokens are then ct_model_logits' first
 * B*Tq rows. Returns -1 with err filled on bad arguments or an op the backend lacks. */
int ct_model_decode(ct_model *m, const int32_t *tokens, int B, int Tq, int pos0, char *err, size_t errlen);

/* Logits in backend memory and storage dtype, valid after a forward without targets or a
 * decode: rows of ct_model_logits_stride(m) elements, the vocabulary padded to a multiple of
 * 64 (the padding columns hold 0; the first vocab_size are the logits). */
const void *ct_model_logits(const ct_model *m);
int ct_model_logits_stride(const ct_model *m);

/* FLOPs of one forward + backward over B x T tokens (matmuls and attention, 2 per multiply-add). */
double ct_model_step_flops(const ct_model_config *cfg, int B, int T);

#endif
