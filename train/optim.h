/* optim.h — AdamW over the flat gradient buffer, with ZeRO stages 0 to 3 across ranks.
 *
 * zero_stage 0: gradients all-reduced; every rank keeps the whole optimizer state and updates
 * every parameter. 1: gradients reduce-scattered; rank r keeps fp32 state (m, v, and a master
 * copy when parameters are not fp32) only for its slice [r*S, (r+1)*S) of the flat buffer
 * (S = padded length / world), updates that slice, and the updated parameters are
 * all-gathered. 2: as 1, and no rank holds the whole gradient: each unit's gradients (a block,
 * the embeddings, the head: model.h "Units") are reduced onto their owners as each backward
 * finishes them, every micro-batch. 3: as 2, and each rank keeps only its slice of the weights;
 * a unit is gathered before its use and dropped after. With LoRA the adapters train under
 * stage 1's scheme at stages 1 to 3 (their gradients are small), and stage 3 shards the frozen
 * base. Every stage gives the same parameters (to summation order). */
#ifndef CT_TRAIN_OPTIM_H
#define CT_TRAIN_OPTIM_H

#include <stddef.h>

#include "comm.h"
#include "model.h"

typedef struct {
    float lr, beta1, beta2, eps, weight_decay;
    float grad_clip; /* global-norm clipping threshold; 0: none */
    int hold;        /* nonzero: reduce and measure the gradients, apply nothing (the caller found the
                      * step's loss not finite) */
} ct_optim_hparams;

typedef struct ct_optim ct_optim;

/* Optimizes the model's trainable set (ct_model_trainable: the whole model, or its LoRA
 * adapters), whose flat length must be a multiple of the world size (ct_model_init's shards).
 * Gradients and parameters are reduced where the backend keeps them: attach a device to comm
 * first (ct_comm_attach_device) when the backend's memory is a GPU's. With overlap (and more
 * than one rank) the step's last backward hands its ranges to ct_optim_grad_ready.
 * Returns -1 with err filled when the length is not a multiple or memory runs out. */
int ct_optim_init(ct_optim **out, ct_model *m, ct_comm *comm, int zero_stage, int overlap, char *err, size_t errlen);
void ct_optim_free(ct_optim *o);

/* One optimizer step on the model's accumulated gradients (already scaled so their sum over
 * ranks is the step's gradient): reduce, clip, AdamW, gather. *grad_norm receives the global
 * norm before clipping. Returns 0 when the step was applied; 1 when it was not, because the
 * norm is not finite (NaN or Inf: every rank sees the same reduced value, so every rank
 * returns 1) or h->hold is set: parameters, moments and the step count are then untouched;
 * -1 on a communication error. */
int ct_optim_step(ct_optim *o, const ct_optim_hparams *h, float *grad_norm);

/* Whether the step's last backward should pass ct_optim_grad_ready (with the optimizer as its
 * user pointer): each finished range's reduction then starts while backward goes on, and
 * ct_optim_step reduces nothing more. Earlier micro-batches' backwards pass no callback. */
int ct_optim_overlaps(const ct_optim *o);
void ct_optim_grad_ready(void *optim, size_t lo, size_t hi); /* a ct_grad_ready_fn */
/* What a micro-batch's backward passes as its ready callback (ct_optim_grad_ready or NULL);
 * last: the step's last micro-batch. Stages 2 and 3 reduce every micro-batch's. */
ct_grad_ready_fn ct_optim_ready(const ct_optim *o, int last);

int ct_optim_steps_taken(const ct_optim *o);
void ct_optim_set_steps_taken(ct_optim *o, int t); /* when resuming */

/* This rank's slice of the flat buffer, [*begin, *begin + *len), and its state in backend memory:
 * fp32 master weights, m and v (for checkpoints). */
void ct_optim_slice(const ct_optim *o, size_t *begin, size_t *len);
float *ct_optim_master(ct_optim *o);
float *ct_optim_exp_avg(ct_optim *o);
float *ct_optim_exp_avg_sq(ct_optim *o);
/* This rank's trainable weights from flat element i on (i in its slice), storage dtype: where a
 * checkpoint reads them (stage 3 has no flat buffer). */
void *ct_optim_weights_at(ct_optim *o, size_t i);
/* Sets the trainable weights from all[numel] (fp32, backend memory): the flat buffer, or under
 * stage 3 this rank's slice of it. */
void ct_optim_set_weights(ct_optim *o, const float *all);
/* The same from this rank's slice alone, mine[len] (fp32, backend memory). */
void ct_optim_set_slice_weights(ct_optim *o, const float *mine);
/* Stage 3: gathers the whole model onto rank 0 (its flat weight buffer back), for the final save;
 * the moments and unit buffers are freed first, and the optimizer must not step again (nor a
 * checkpoint be saved). Other stages: nothing. Collective. */
int ct_optim_gather_model(ct_optim *o);
/* Whether every trainable parameter is finite (a sum of squares over each rank's slice, all
 * reduced: NaN and Inf survive any order). Collective; -1 on a communication error. */
int ct_optim_params_finite(ct_optim *o);
/* Bytes of optimizer state this rank holds: m, v and a master copy where parameters are not
 * fp32 (not the reduced-gradient slice, a communication buffer of the same length). */
size_t ct_optim_state_bytes(const ct_optim *o);

#endif
