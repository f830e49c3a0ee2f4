/* plan.h — the memory a training run will take per rank, before anything is allocated.
 *
 * The model's own buffers (parameters, activations, logits, LoRA's) are counted by setting the
 * model up without allocating (ct_model_init_counting), so the plan follows the code; the
 * optimizer's, the communication slice's and the unit buffers' (ZeRO-2/3) follow optim.c's rules.
 * On a GPU the figures are the device's memory; on the CPU the host's, with the process's own
 * resident memory before the model (libraries, MPI) as a baseline. */
#ifndef CT_TRAIN_PLAN_H
#define CT_TRAIN_PLAN_H

#include <stddef.h>
#include <stdio.h>

#include "config.h"
#include "kernels.h"
#include "model.h"

typedef struct {
    size_t weights;     /* parameters this rank keeps: the whole model or (ZeRO-3) its slice; adapters */
    size_t grads;       /* the whole gradient (stages 0, 1); the adapters' */
    size_t optimizer;   /* AdamW's m and v, and fp32 masters where the weights are not (this rank's slice) */
    size_t comm;        /* the reduced gradients of this rank's slice (stages 1-3) */
    size_t units;       /* gathered weights and unit gradients (stages 2, 3) */
    size_t activations; /* activations, logits, LoRA's intermediates for one micro-batch */
    size_t start;       /* the start's total: loading (a tensor's staging), or a LoRA base before ZeRO-3 shards it */
    size_t save;        /* host memory a checkpoint's writer takes on a GPU (this rank's slices); 0 on the CPU */
    size_t finish;      /* the end's total: the final save's staging (ZeRO-3: the model gathered on rank 0) */
    size_t baseline;    /* the process before the model (CPU; 0 on a GPU) */
    size_t step;        /* baseline + weights + ... + activations */
    size_t peak;        /* the largest of start, step, a resume and finish */
    const char *peak_at;
    int device;         /* the figures are a GPU's memory */
} ct_plan;

/* The plan of cfg for a model of shape mc on backend be (its elem_size and attention memory)
 * and `world` ranks; baseline: the process's resident bytes (CPU), 0 on a GPU. -1 with err
 * (a LoRA target that matches nothing, a shape that cannot be allocated). */
int ct_plan_make(const ct_config *cfg, const ct_model_config *mc, const ct_backend *be, int world, size_t baseline,
                 ct_plan *p, char *err, size_t errlen);

/* The table, one line per part. */
void ct_plan_print(FILE *f, const ct_plan *p, const ct_config *cfg, int world);

/* Memory one rank may use: on a GPU its free memory now (device), on the CPU this node's
 * MemAvailable divided among its local_size ranks, plus the baseline already resident. */
size_t ct_plan_available(const ct_backend *be, int device, int local_size, size_t baseline);

/* This process's resident memory now (VmRSS), and its peak so far (VmHWM); 0 when unknown. */
size_t ct_plan_rss_now(void);
size_t ct_plan_rss_peak(void);

/* 0 when the plan fits `avail`; else -1 with err saying by how much and which changes fit:
 * model.recompute, a smaller micro-batch (more accumulation, the same global batch), a higher
 * ZeRO stage, LoRA. */
int ct_plan_check(const ct_config *cfg, const ct_model_config *mc, const ct_backend *be, int world,
                  const ct_plan *p, size_t avail, char *err, size_t errlen);

/* `ctrain plan CONFIG`: the plan for this job's world size, a table of the peak for other world
 * sizes and stages, and the check; -1 with err when it does not fit. */
#include "comm.h"
int ct_plan_command(const ct_config *cfg, ct_comm *comm, char *err, size_t errlen);

#endif
