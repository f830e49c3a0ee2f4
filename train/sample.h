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

/* `ctrain chat`: a conversation with the model of run.dir (or model.init_from) in its chat
 * template (data.chat_template, or the one its folder names), one user message per line of in,
 * the replies written to out as they are generated (sample.max_tokens at most each, stopping at
 * the template's end of turn). sample.system starts the conversation; "/reset" starts over and
 * "/exit" or the end of in stops. The context is data.seq_len tokens, at least 1024, at most the
 * model's; the oldest exchanges are dropped when the conversation outgrows it. */
int ct_chat(const ct_config *cfg, FILE *in, FILE *out, char *err, size_t errlen);

#endif
