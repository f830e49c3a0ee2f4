/* sample.h — `ctrain sample`: text from a trained model. */
#ifndef CT_TRAIN_SAMPLE_H
#define CT_TRAIN_SAMPLE_H

#include <stddef.h>
#include <stdio.h>

#include "config.h"

/* Continues sample.prompt for sample.max_tokens tokens (temperature, top-k, seeded by
 * run.seed) with the model of run.dir (or model.init_from), writing text to out as it goes.
 * Stops early at end-of-text. Returns -1 with err filled when there is no model, or its
 * vocabulary is not the byte tokenizer's. */
int ct_sample(const ct_config *cfg, FILE *out, char *err, size_t errlen);

#endif
