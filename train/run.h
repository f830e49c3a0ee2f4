/* run.h — what every verb sets up from a config: the backend, threads per rank, the model
 * (random, from a Hugging Face folder, or from a finished run), and failing together. */
#ifndef CT_TRAIN_RUN_H
#define CT_TRAIN_RUN_H

#include <stddef.h>

#include "comm.h"
#include "config.h"
#include "data.h"
#include "model.h"

/* run.device: auto picks CUDA where this build has it and a GPU is found; cuda insists on it.
 * Starts the backend's context on device local_rank % (devices visible): one GPU per rank
 * (Slurm's per-task CUDA_VISIBLE_DEVICES leaves one visible, and it is taken). On success *be,
 * *ctx (free with (*be)->kctx_free) and *device; -1 with err filled naming run.device. */
int ct_run_backend(const ct_config *cfg, ct_comm *comm, const ct_backend **be, ct_kctx **ctx, int *device,
                   char *err, size_t errlen);

/* OpenMP threads per rank: the node's cores shared among its ranks, unless OMP_NUM_THREADS says. */
void ct_run_threads(ct_comm *comm);

/* Where a verb's weights come from. */
typedef enum {
    CT_WEIGHTS_CONFIG,   /* model.init_from when set, else a random init from the model keys */
    CT_WEIGHTS_TRAINED,  /* run.dir's final weights, else its latest checkpoint, else model.init_from */
} ct_weights_source;

/* model.init_from when it names a Hugging Face folder (whose tokenizer and generation files an
 * exported model carries), else NULL. */
const char *ct_run_hf_source(const ct_config *cfg);

/* Whether the config fine-tunes with LoRA (lora.targets or lora.init_from set). */
int ct_run_lora(const ct_config *cfg);

/* Where `source` takes the weights from: path receives a Hugging Face folder or a checkpoint
 * file (*is_ckpt), or "" for a random init; mc the model's shape. model.init_from may name
 * either kind. Errors name the config key or file. */
int ct_run_model_source(const ct_config *cfg, ct_weights_source source, ct_model_config *mc, char *path,
                        size_t pathlen, int *is_ckpt, char *err, size_t errlen);

/* Builds the model for micro-batches of B x T on backend be, flat buffers padded to `shards`,
 * and fills its weights as `source` says (weights only from a checkpoint). On success *from
 * names where the weights came from. */
int ct_run_model(const ct_config *cfg, ct_weights_source source, const ct_backend *be, ct_kctx *ctx, int B, int T,
                 int shards, ct_comm *comm, ct_model **out, char *from, size_t fromlen, char *err, size_t errlen);

/* The tokenizer of `prepare` and of the model (data.tokenizer): "bytes" the byte-level one; a
 * folder (its tokenizer.json, and tokenizer_config.json beside it) or a tokenizer.json file; ""
 * model.init_from's tokenizer.json when it is a folder that has one, else bytes. Free *out with
 * ct_tokenizer_free (the byte tokenizer is static: freeing it does nothing). Errors name the key
 * or the file. */
int ct_run_tokenizer(const ct_config *cfg, ct_tokenizer **out, char *err, size_t errlen);

/* Agreement after a step every rank did: returns 0 when rc == 0 on every rank; otherwise one
 * rank prints its err ("ctrain: error: ...", with its rank when there are several) and every
 * rank returns -1. The printing rank is the lowest whose rc is -1 (a failure of its own), else
 * the lowest whose rc is -2 (failed because another rank did). Collective. */
int ct_run_agree(ct_comm *comm, int rc, const char *err);

/* Prints "ctrain: error: [rank r: ]msg" on this rank and ends the whole job (every rank). */
_Noreturn void ct_run_die(ct_comm *comm, const char *msg);

#endif
