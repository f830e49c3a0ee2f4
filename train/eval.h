/* eval.h — the mean cross-entropy of a model on a val set, every rank taking its windows. */
#ifndef CT_TRAIN_EVAL_H
#define CT_TRAIN_EVAL_H

#include <stddef.h>

#include "comm.h"
#include "data.h"
#include "model.h"

/* Rewinds val and evaluates nbatches micro-batches of B x T per rank (0, or more than the
 * set holds: one pass over the whole set); *loss receives the mean over every counted token
 * of every rank. Collective. Returns -1 with err filled on a data or communication error. */
int ct_eval_loss(ct_model *m, ct_loader *val, int nbatches, int B, int T, ct_comm *comm, double *loss, char *err,
                 size_t errlen);

#endif
