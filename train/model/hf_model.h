/* hf_model.h — a model to and from a Hugging Face folder: config.json, the weights (one
 * safetensors file or shards with an index) and, on the way out, the source's tokenizer and
 * generation files, so the folder is a complete model `transformers` loads.
 *
 * Errors fill err with "<file>: <tensor or key>: <what is wrong>" and return -1. */
#ifndef CT_MODEL_HF_MODEL_H
#define CT_MODEL_HF_MODEL_H

#include <stddef.h>
#include <stdint.h>

#include "hf_config.h"
#include "model.h"

/* Shards are cut above this many bytes of weights, as save_pretrained's default "5GB". */
#define CT_HF_SHARD_BYTES 5000000000ull

/* Loads the weights of dir into m (whose shape came from dir's config.json): every parameter
 * exactly once, with the shape config.json implies; an unknown tensor is an error; a tied
 * model's lm_head.weight, where a file has one, must equal the embedding. Converts BF16, F16
 * or F32 one tensor at a time (no second copy of the model). Remembers dir's config.json and
 * its dtype for ct_hf_save. On error m's parameters may be partly overwritten. */
int ct_hf_load(ct_model *m, const char *dir, char *err, size_t errlen);

/* Writes dir/config.json (the source's carried over, else the family's) and the weights in
 * the source's dtype, sharded above max_shard_bytes (0: CT_HF_SHARD_BYTES), and copies the
 * tokenizer and generation files of side_from (a model folder, or NULL). Creates dir. All of it
 * or nothing: every file is written and synced under a temporary name and renamed only when all
 * are (ct_hf_folder_write), so a failed write leaves dir as it was, with err naming the file. */
int ct_hf_save(ct_model *m, const char *dir, const char *side_from, uint64_t max_shard_bytes, char *err,
               size_t errlen);

#endif
