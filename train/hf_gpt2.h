/* hf_gpt2.h — GPT-2 to and from a Hugging Face model folder (config.json + model.safetensors).
 *
 * Names are transformers' GPT2LMHeadModel names ("transformer.h.0.attn.c_attn.weight"; files
 * written by GPT2Model, without the "transformer." prefix, load too). Conv1D weights are
 * transposed on the way in and out. The LM head is tied to the token embedding.
 * Errors fill err with "<file>: <field or tensor>: <what is wrong>" and return -1. */
#ifndef CT_TRAIN_HF_GPT2_H
#define CT_TRAIN_HF_GPT2_H

#include <stddef.h>

#include "gpt2.h"

/* Reads <dir>/config.json into cfg. Unsupported variants (untied head, other activations,
 * cross-attention, a custom n_inner) are errors naming the field. */
int ct_hf_gpt2_read_config(const char *dir, ct_gpt2_config *cfg, char *err, size_t errlen);

/* Loads <dir>/model.safetensors into m's parameters. Every tensor must be present with its
 * shape; unknown tensors are errors. On error m's parameters may be partly overwritten. */
int ct_hf_gpt2_load(ct_gpt2 *m, const char *dir, char *err, size_t errlen);

/* Writes <dir>/config.json and <dir>/model.safetensors (fp32) that transformers loads as a
 * GPT2LMHeadModel; creates dir if needed. */
int ct_hf_gpt2_save(ct_gpt2 *m, const char *dir, char *err, size_t errlen);

#endif
