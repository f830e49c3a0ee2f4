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

/* The tokenizer the model speaks: data.tokenizer when set ("bytes", a folder or a tokenizer.json);
 * else the tokenizer.json in dir (a folder the weights come from: a finished run carries its
 * source's; may be NULL or "") or in model.init_from's folder; else the byte tokenizer. *tok is
 * freed with ct_tokenizer_free. -1 with err naming the file when one is there and unreadable. */
int ct_run_tokenizer(const ct_config *cfg, const char *dir, ct_tokenizer **tok, char *err, size_t errlen);

/* The chat template for tok (data.chat_template, or the one found beside the tokenizer: in
 * data.tokenizer's folder, dir, or model.init_from, the first with a tokenizer.json). */
int ct_run_chat_template(const ct_config *cfg, const char *dir, const ct_tokenizer *tok, ct_chat_template **tpl,
                         char *err, size_t errlen);

/* Refuses a dataset (config key `key`, path) made with another tokenizer than tok, naming both;
 * -1 with err. */
int ct_run_check_dataset(const ct_tokenizer *tok, const char *key, const char *path, char *err, size_t errlen);

/* The folder whose tokenizer, chat template and generation files a saved model carries:
 * data.tokenizer's folder when it names one (a tokenizer.json: the folder holding it), else
 * ct_run_hf_source; NULL for neither. The pointer is valid until the next call. */
const char *ct_run_side_files(const ct_config *cfg);

/* Whether the config fine-tunes with LoRA (lora.targets or lora.init_from set). */
int ct_run_lora(const ct_config *cfg);

/* Where `source` takes the weights from: path receives a Hugging Face folder or a checkpoint
 * file (*is_ckpt), or "" for a random init; mc the model's shape. model.init_from may name
 * either kind. Errors name the config key or file. */
int ct_run_model_source(const ct_config *cfg, ct_weights_source source, ct_model_config *mc, char *path,
                        size_t pathlen, int *is_ckpt, char *err, size_t errlen);

/* Builds the model for micro-batches of B x T on backend be, flat buffers padded to `shards`,
 * and fills its weights as `source` says (weights only from a checkpoint). slice >= 0: the model
 * holds only that rank's slice of its weights (ct_model_init_slice; ZeRO-3 without LoRA), -1 the
 * whole. On success *from names where the weights came from. */
int ct_run_model(const ct_config *cfg, ct_weights_source source, const ct_backend *be, ct_kctx *ctx, int B, int T,
                 int shards, int slice, ct_comm *comm, ct_model **out, char *from, size_t fromlen, char *err,
                 size_t errlen);

/* Agreement after a step every rank did: returns 0 when rc == 0 on every rank; otherwise one
 * rank prints its err ("ctrain: error: ...", with its rank when there are several) and every
 * rank returns -1. The printing rank is the lowest whose rc is -1 (a failure of its own), else
 * the lowest whose rc is -2 (failed because another rank did). Collective. */
int ct_run_agree(ct_comm *comm, int rc, const char *err);

/* Prints "ctrain: error: [rank r: ]msg" on this rank and ends the whole job (every rank). */
_Noreturn void ct_run_die(ct_comm *comm, const char *msg);

#endif
