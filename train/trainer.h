/* trainer.h — `ctrain train`: the training loop over every rank. */
#ifndef CT_TRAIN_TRAINER_H
#define CT_TRAIN_TRAINER_H

#include "comm.h"
#include "config.h"

/* Trains as cfg says, on every rank of comm (collective). Returns 0, or -1 after the lowest
 * failing rank printed why; a rank that fails mid-run ends the whole job (ct_run_die). */
int ct_train(const ct_config *cfg, ct_comm *comm);

/* The learning rate at step (1-based): linear warmup, then cosine or linear decay to
 * optim.min_lr at optim.max_steps, or constant. */
float ct_lr_at(const ct_config *cfg, int step);

#endif
