/* prepare.h — the `prepare` verb on every rank of the job: data.text into data.train and
 * data.val (data/data.h, "prepare"), with the tokenizer data.tokenizer resolves to. */
#ifndef CT_TRAIN_PREPARE_H
#define CT_TRAIN_PREPARE_H

#include "comm.h"
#include "config.h"

/* Supervised JSON Lines (ct_data_text_is_sft) go to ct_data_prepare_sft on rank 0; everything else
 * to ct_data_prepare on every rank, data.prepare_threads workers each (0: the node's online cores
 * shared among its ranks). Collective; returns 0, or -1 on every rank after the lowest failing rank
 * printed its message (ct_run_agree). Rank 0 prints what was written on stdout. */
int ct_run_prepare(const ct_config *cfg, ct_comm *comm);

#endif
