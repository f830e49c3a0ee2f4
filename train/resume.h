/* resume.h — what a resume must share with the run that saved the checkpoint: the training
 * data (data.train's identity), its windows (data.seq_len), the global batch
 * (data.micro_batch x parallel.grad_accum x ranks; the ranks alone may change) and the model
 * (shape, full or LoRA, the adapters' targets and rank). The checkpoint holds the config it was
 * saved with and data.train's identity (ct_ckpt_state); checkpoint.allow_new_data lets the data,
 * the windows and the batch change on purpose. */
#ifndef CT_TRAIN_RESUME_H
#define CT_TRAIN_RESUME_H

#include <stddef.h>
#include <stdint.h>

#include "checkpoint.h"
#include "config.h"
#include "model.h"

/* data.train's identity, as checkpoints record it (ct_ckpt_state's data_* fields): its token
 * count, a hash of 16 spread samples of its tokens and loss mask and of its document count,
 * and its tokenizer's digest. Reads about 1,000 tokens. */
int ct_resume_data_id(const char *path, uint64_t *tokens, uint64_t *sample, char digest[24], char *err,
                      size_t errlen);

/* How the data goes on after a resume the config was allowed to change. */
typedef struct {
    int restart;        /* other data or windows: the loader starts from the beginning */
    uint64_t batch_was; /* another global batch: the checkpoint's (0: the same) */
    char note[CT_PATH_MAX + 512]; /* what changed by checkpoint.allow_new_data, for the log ("" nothing) */
} ct_resume_plan;

/* Compares the checkpoint ckpt (saved: its run state, ct_ckpt_read_state) with this config, on
 * world ranks, building the model mc, training on data whose identity is now (data_* fields).
 * -1 with err naming the key (and the key that would allow it, where one does) when the data,
 * the windows, the global batch or the model changed and is not allowed. */
int ct_resume_check(const ct_config *cfg, int world, const ct_model_config *mc, const ct_ckpt_state *now,
                    const char *ckpt, const ct_ckpt_state *saved, ct_resume_plan *plan, char *err, size_t errlen);

/* Where the loader resumes: the checkpoint's cursor, the beginning of the data (restart), or
 * the same share of the epoch in batches of batch_now windows (another global batch: fewer than
 * batch_now windows skipped, none repeated). */
ct_loader_cursor ct_resume_cursor(const ct_resume_plan *plan, ct_loader_cursor saved, uint64_t batch_now);

#endif
