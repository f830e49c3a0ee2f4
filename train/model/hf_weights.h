/* hf_weights.h — the weights of a Hugging Face model folder, whatever the architecture:
 * <dir>/model.safetensors, or <dir>/model.safetensors.index.json and the shards it names.
 *
 * Reading validates the whole folder at open: the index, every shard (each bounds-checked by
 * ct_st_open), and that the index and the shards agree exactly (each tensor in exactly one shard,
 * the one the index names). Tensor data stays on disk and is read one tensor at a time with
 * pread. When both model.safetensors and an index exist, model.safetensors is used and the index
 * ignored, as transformers does (modeling_utils checks SAFE_WEIGHTS_NAME first).
 *
 * Writing streams: one tensor at a time is fetched from the caller into a buffer sized to the
 * largest tensor, converted and written; shards are split as transformers' save_pretrained
 * (huggingface_hub's split_state_dict_into_shards) splits them.
 *
 * Errors fill err with "<path>: <tensor or key>: <what is wrong>" and return -1. */
#ifndef CT_TRAIN_MODEL_HF_WEIGHTS_H
#define CT_TRAIN_MODEL_HF_WEIGHTS_H

#include <stddef.h>
#include <stdint.h>

#include "safetensors.h"

/* ---- reading ---- */
typedef struct ct_hf_weights ct_hf_weights;

/* Opens every file of the folder and checks it; *out stays NULL on error. Errors: no weights
 * ("<dir>: no model.safetensors or model.safetensors.index.json"); an index that is not JSON, has
 * no "weight_map" object of strings, names a tensor twice, or names a shard that is not a plain
 * file name in the folder; a shard missing or invalid (its own error, then the index that names
 * it); a tensor the index lists but its shard lacks; a tensor in a shard the index does not list;
 * a tensor in two shards. */
int ct_hf_weights_open(ct_hf_weights **out, const char *dir, char *err, size_t errlen);
void ct_hf_weights_close(ct_hf_weights *w); /* NULL is a no-op */

int ct_hf_weights_count(const ct_hf_weights *w);
/* Every tensor of the folder: shards in file-name order, each in its file order; NULL out of range. */
const ct_st_tensor *ct_hf_weights_at(const ct_hf_weights *w, int i);
const ct_st_tensor *ct_hf_weights_find(const ct_hf_weights *w, const char *name); /* NULL if absent */
/* Path of the file holding t ("<dir>/<shard>"); NULL when t is not a tensor of w. */
const char *ct_hf_weights_file(const ct_hf_weights *w, const ct_st_tensor *t);
/* Reads t converted to fp32 into dst[n] (n == t->numel), as ct_st_read_f32. */
int ct_hf_weights_read_f32(ct_hf_weights *w, const ct_st_tensor *t, float *dst, size_t n, char *err, size_t errlen);
/* The floating dtype holding the most parameters (elements) among F32, BF16 and F16 tensors; F32
 * when there are none; ties go to F32, then BF16. */
ct_dtype ct_hf_weights_dtype(const ct_hf_weights *w);

/* ---- writing ---- */
typedef struct {
    const char *name;
    int ndim;
    int64_t shape[CT_ST_MAX_DIMS];
} ct_hf_out_tensor;

/* Fills dst (t[i]'s element count) with tensor i in fp32; returns 0, or non-zero with err filled. */
typedef int (*ct_hf_fetch_fn)(void *user, int i, float *dst, char *err, size_t errlen);

/* Writes <dir>/model.safetensors, or, when the data (in dtype) exceeds max_shard_bytes,
 * model-00001-of-0000N.safetensors ... and model.safetensors.index.json
 * ({"metadata": {"total_size": data bytes}, "weight_map": {name: shard}}), in dtype F32, BF16 or F16
 * (round to nearest even). max_shard_bytes 0 means no limit. Shards split between tensors as
 * transformers does: tensors fill a shard in order until the next would pass the limit; a tensor
 * larger than the limit gets a shard of its own, numbered before the shard being filled.
 * fetch is called once per tensor, in shard order. Every file is written to "<name>.tmp" and
 * renamed only when all are complete (shards, then the index); afterwards weight files of an
 * earlier save that this one does not produce (model.safetensors, the index, model-NNNNN-of-NNNNN
 * shards) are removed. dir is created when missing (one level). meta as ct_st_write
 * (transformers writes "format" "pt"). On error no .tmp file is left behind; an error while
 * renaming or removing stale files can leave a mixed folder (reported). */
int ct_hf_weights_write(const char *dir, const ct_hf_out_tensor *t, int n, ct_dtype dtype, uint64_t max_shard_bytes,
                        ct_hf_fetch_fn fetch, void *user, const char *const *meta, char *err, size_t errlen);

/* The whole folder in one save: as ct_hf_weights_write, and config_json (when not NULL) as
 * config.json with a final newline, and side_from's tokenizer and generation files (when not
 * NULL; as ct_hf_copy_side_files). Every file is first written in full as "<name>.tmp" and
 * synced, the small ones first; only when all are complete are they renamed into place, the
 * weights last, so a folder with this save's weights holds all of it. A failed write (a full
 * disk, a file-size limit) leaves the folder as it was, without .tmp files, and err names the
 * file. */
int ct_hf_folder_write(const char *dir, const ct_hf_out_tensor *t, int n, ct_dtype dtype, uint64_t max_shard_bytes,
                       ct_hf_fetch_fn fetch, void *user, const char *const *meta, const char *config_json,
                       const char *side_from, char *err, size_t errlen);

/* Copies the tokenizer and generation files of a model folder into dst where present
 * (tokenizer.json, tokenizer_config.json, special_tokens_map.json, generation_config.json,
 * vocab.json, merges.txt, tokenizer.model, added_tokens.json, chat_template.jinja): all are written
 * as "<name>.tmp" and synced, then renamed. Missing files are not an error; an unreadable or
 * unwritable one is, and then none is renamed and no .tmp is left.
 * src and dst the same folder is a no-op; dst is created when missing (one level). */
int ct_hf_copy_side_files(const char *src, const char *dst, char *err, size_t errlen);

#endif
