/* checkpoint.h — HDF5 checkpoints: one file per save, written by every rank at once, resumable
 * exactly on any number of ranks.
 *
 * Layout (docs/DESIGN.md "Formats"; `h5dump -H` shows it):
 *   /model/<HF name>                     fp32, full shape, ctrain's layout ([out, in]; the
 *                                        attribute hf_transposed = 1 marks Conv1D weights, which
 *                                        Hugging Face stores as [in, out])
 *   /optimizer/{master,exp_avg,exp_avg_sq}/<HF name>   fp32 AdamW state, same shapes
 * Every dataset has attribute checksum (uint64): the sum over its elements of a 64-bit mix of
 * (element index, value bits), order-free so each rank adds its own part; verified on load.
 * Root attributes: format "ctrain-checkpoint", version, step, tokens, optim_steps, world (at
 * save), zero_stage, cursor_epoch/step/micro (data loader), rng (uint64[4]), config (the
 * resolved ctrain config as JSON), hf_config (the model's config.json: its family and whole
 * shape, which ct_ckpt_read_config parses), data_tokens, data_sample (uint64) and data_digest
 * (what data.train was: ct_ckpt_state), and, as checkpoints before hf_config carried the
 * shape of a GPT-2 (still read when hf_config is absent): vocab_size, n_positions, n_layer,
 * n_head, n_embd, layer_norm_epsilon.
 *
 * Each rank writes the slice [r*S, (r+1)*S) of the flat buffer of every group (S = padded
 * length / world) and, on load, reads the slice of the new world size: N ranks save, M resume. */
#ifndef CT_TRAIN_CHECKPOINT_H
#define CT_TRAIN_CHECKPOINT_H

#include <stddef.h>
#include <stdint.h>

#include "comm.h"
#include "data.h"
#include "model.h"
#include "optim.h"
#include "rng.h"

#define CT_CKPT_FORMAT "ctrain-checkpoint"
#define CT_CKPT_VERSION 1

typedef struct {
    int64_t step;            /* optimizer steps done */
    int64_t tokens;          /* tokens trained on */
    ct_loader_cursor cursor; /* where the data loader resumes (at a step boundary) */
    ct_rng rng;              /* the run's generator */
    int world, zero_stage;   /* at save: the global batch and ZeRO shards of the run that saved it */
    /* data.train at save (resume.h, ct_resume_data_id), so a resume can tell other data; 0 and ""
     * in checkpoints written before ctrain recorded it */
    uint64_t data_tokens, data_sample;
    char data_digest[24];
} ct_ckpt_state;

/* Writes a checkpoint to path (collective: every rank calls it with the same arguments but its
 * own state). Rank 0 lays out the file with HDF5; each rank then writes its own slices' bytes,
 * and the ranks agree on the outcome. Returns 0 on every rank; otherwise -1 with err filled on
 * the ranks that failed and -2 on the others (an I/O error on any rank fails the save
 * everywhere; the caller removes the partial file). */
int ct_ckpt_write(const char *path, ct_model *m, ct_optim *o, const ct_ckpt_state *st, const char *config_json,
                  ct_comm *comm, char *err, size_t errlen);

/* The model shape a checkpoint holds; also checks its format and version. */
int ct_ckpt_read_config(const char *path, ct_model_config *mc, char *err, size_t errlen);

/* The resolved config the run that saved path used (malloc'd JSON text), or NULL with err. */
char *ct_ckpt_read_config_json(const char *path, char *err, size_t errlen);

/* The run state a checkpoint holds (step, world, cursor, data.train's identity, ...) without
 * its tensors; also checks its format and version. */
int ct_ckpt_read_state(const char *path, ct_ckpt_state *st, char *err, size_t errlen);

/* Loads weights, and with o != NULL the optimizer slice of this rank and *st (collective when o
 * is given). Every dataset's checksum is verified. Returns 0; -1 on the rank(s) that found the
 * problem, with err naming the file and dataset; -2 on ranks where only another rank failed. */
int ct_ckpt_read(const char *path, ct_model *m, ct_optim *o, ct_ckpt_state *st, ct_comm *comm, char *err,
                 size_t errlen);

/* Progress of this rank's bytes of a checkpoint being written (saving 1) or read (0): called with
 * done 0 as it begins, then after each tensor's bytes, done reaching total at the end. */
typedef void (*ct_ckpt_progress_fn)(void *user, const char *path, int saving, uint64_t done, uint64_t total);
/* Every later ct_ckpt_write and ct_ckpt_read of this process reports to fn (NULL: none). */
void ct_ckpt_on_progress(ct_ckpt_progress_fn fn, void *user);

/* ---- checkpoints of a run directory: <dir>/ckpt_<step>.h5, and <dir>/latest naming the newest
 * complete one. */

/* Saves step's checkpoint: written to "<name>.tmp", renamed when every rank has finished, then
 * `latest` is updated and all but the newest `keep` checkpoints removed. A crash or a failed
 * save leaves the previous checkpoint and `latest` as they were. Collective; returns as
 * ct_ckpt_write does. */
int ct_ckpt_save(const char *dir, int keep, ct_model *m, ct_optim *o, const ct_ckpt_state *st,
                 const char *config_json, ct_comm *comm, char *path_out, size_t pathlen, char *err, size_t errlen);

/* The checkpoint `latest` in dir names: 1 with its path, 0 when dir has none, -1 when `latest`
 * names a file that is not there. */
int ct_ckpt_latest(const char *dir, char *path, size_t pathlen, char *err, size_t errlen);

#endif
