/* gpt2.h — GPT-2 of any size: learned positions, pre-LN blocks, tied embedding and LM head.
 *
 * Forward and backward are written out over the kernel backend table. Parameters live in one
 * flat buffer and gradients in another of the same layout (DESIGN.md: sharding, reduction,
 * clipping and checkpointing are then one loop each). Tensors are stored in nn.Linear layout
 * [out, in]; Hugging Face's GPT-2 keeps its Conv1D weights transposed ([in, out]), which the
 * import/export code handles (ct_param.conv1d). */
#ifndef CT_TRAIN_GPT2_H
#define CT_TRAIN_GPT2_H

#include <stddef.h>
#include <stdint.h>

#include "kernels.h"

typedef struct {
    int vocab_size;  /* V */
    int max_seq_len; /* n_positions */
    int n_layer;     /* L */
    int n_head;      /* NH */
    int n_embd;      /* C */
    float ln_eps;
} ct_gpt2_config;

/* One parameter tensor inside the flat buffer. */
typedef struct {
    char name[64];   /* Hugging Face name, e.g. "transformer.h.3.attn.c_attn.weight" */
    int ndim;
    int shape[2];    /* ctrain layout: weights [out, in] */
    size_t offset;   /* in elements from the start of the flat buffer */
    size_t numel;
    int conv1d;      /* stored transposed ([in, out]) in Hugging Face GPT-2 files */
    int decay;       /* matrices and embeddings get weight decay; biases and norms do not */
} ct_param;

typedef struct ct_gpt2 ct_gpt2;

/* Checks the config; on error fills err naming the field and returns -1. */
int ct_gpt2_config_check(const ct_gpt2_config *cfg, char *err, size_t errlen);

/* Allocates parameters, gradients and activations for micro-batches of up to B x T tokens on
 * backend be (ctx from be->kctx_init). The flat buffers' length is padded to a multiple of
 * `shards` (the world size under ZeRO-1, so every rank's slice has the same length).
 * Weights start zero: call ct_gpt2_init_weights or load.
 * Returns -1 with err filled on a bad config or when memory runs out; *out stays NULL. */
int ct_gpt2_init(ct_gpt2 **out, const ct_gpt2_config *cfg, const ct_backend *be, ct_kctx *ctx, int B, int T,
                 int shards, char *err, size_t errlen);
void ct_gpt2_free(ct_gpt2 *m);

const ct_gpt2_config *ct_gpt2_config_of(const ct_gpt2 *m);
const ct_backend *ct_gpt2_backend(const ct_gpt2 *m);
ct_kctx *ct_gpt2_kctx(const ct_gpt2 *m);
int ct_gpt2_num_tensors(const ct_gpt2 *m);
const ct_param *ct_gpt2_tensor(const ct_gpt2 *m, int i);
const ct_param *ct_gpt2_find(const ct_gpt2 *m, const char *name); /* NULL if absent */
size_t ct_gpt2_numel(const ct_gpt2 *m);  /* length of the flat buffers, padding included */
size_t ct_gpt2_count(const ct_gpt2 *m);  /* number of parameters, padding excluded */
void *ct_gpt2_params(ct_gpt2 *m);        /* flat parameters, backend memory, storage dtype */
void *ct_gpt2_grads(ct_gpt2 *m);         /* flat gradients, same layout; NULL once frozen (LoRA) */

/* What the optimizer updates and a checkpoint saves: one flat buffer of parameters, one of
 * gradients of the same layout, and the table of the tensors in them. The whole model, or,
 * once LoRA adapters are added, only the adapters. */
typedef struct {
    int ntensors;
    const ct_param *tensors;
    size_t numel;         /* flat length, padded to the shard multiple */
    void *params, *grads; /* backend memory, storage dtype */
} ct_trainable;
ct_trainable ct_gpt2_trainable(ct_gpt2 *m);

/* ---- LoRA. The linear layers adapters can sit beside, named as PEFT does:
 * "transformer.h.<l>.attn.c_attn", ".attn.c_proj", ".mlp.c_fc", ".mlp.c_proj"; i in [0, num). */
int ct_gpt2_num_linears(const ct_gpt2 *m);
void ct_gpt2_linear_name(const ct_gpt2 *m, int i, char *out, size_t n);
/* Freezes the base weights (their gradient buffer is released: no base gradient is ever
 * computed) and adds a rank-r adapter beside every linear i with select[i] != 0:
 * out += scale * dropout(x) . A^T . B^T. Adapter tensors are named as PEFT saves them
 * ("base_model.model.transformer.h.0.attn.c_attn.lora_A.weight", A [r, in], B [out, r]) and
 * start at zero: the caller initialises A (lora.c). Their flat buffers are padded to `shards`.
 * Returns -1 with err filled when r <= 0, nothing is selected, or memory runs out. */
int ct_gpt2_add_lora(ct_gpt2 *m, const unsigned char *select, int r, float scale, float dropout, int shards,
                     char *err, size_t errlen);
int ct_gpt2_has_lora(const ct_gpt2 *m);
float ct_gpt2_lora_scale(const ct_gpt2 *m);
/* The seed of the adapters' dropout masks for the next forward and its backward. */
void ct_gpt2_set_dropout_seed(ct_gpt2 *m, uint64_t seed);
/* Training mode turns dropout on; a model starts in inference mode (evaluation, sampling). */
void ct_gpt2_set_training(ct_gpt2 *m, int on);

/* GPT-2 initialisation: normal(0, 0.02) for weights and embeddings, the two residual
 * projections scaled by 1/sqrt(2 n_layer), biases 0, layernorm weights 1. Deterministic in seed. */
void ct_gpt2_init_weights(ct_gpt2 *m, uint64_t seed);

/* Forward pass on host arrays tokens[B*T] and targets[B*T] (target < 0: not counted).
 * With targets, *loss_sum receives the sum of the counted tokens' losses and *ntok their
 * number, and the gradient of dloss * loss_sum at the logits is formed on the way (the fused
 * classifier loss), so a backward may follow; dloss is normally 1 / (tokens counted across
 * the whole step), 0 when no backward follows. With targets == NULL only logits are computed
 * (ct_gpt2_logits). Returns -1 with err filled for B or T beyond the allocation or a token
 * or target outside the vocabulary; nothing is computed then. */
int ct_gpt2_forward(ct_gpt2 *m, const int32_t *tokens, const int32_t *targets, int B, int T, float dloss,
                    double *loss_sum, long *ntok, char *err, size_t errlen);

/* Told during a backward each time the elements [lo, hi) of the trainable flat buffer hold
 * their final gradient of this backward, so their reduction can start while backward goes
 * on. Over one backward the ranges partition [0, numel); layers arrive last to first, the
 * embeddings (full training) last. Called on the host as work is enqueued: on an
 * asynchronous backend the gradients are complete in stream order, not yet in time. */
typedef void (*ct_grad_ready_fn)(void *user, size_t lo, size_t hi);

/* Adds the gradient of the last forward's dloss * loss_sum to the gradient buffer; ready
 * (may be NULL) hears of each finished range. */
void ct_gpt2_backward(ct_gpt2 *m, ct_grad_ready_fn ready, void *user);
void ct_gpt2_zero_grad(ct_gpt2 *m);

/* Logits in backend memory and storage dtype, valid after a forward without targets: B*T rows
 * of ct_gpt2_logits_stride(m) elements, the vocabulary padded to a multiple of 64 (the padding
 * columns hold 0; the first vocab_size are the logits). */
const void *ct_gpt2_logits(const ct_gpt2 *m);
int ct_gpt2_logits_stride(const ct_gpt2 *m);

/* FLOPs of one forward + backward over B x T tokens (matmuls and attention, 2 per multiply-add). */
double ct_gpt2_step_flops(const ct_gpt2_config *cfg, int B, int T);

#endif
