/* hf_config.h — a Hugging Face config.json to and from ct_model_config, for every family, and
 * the small typed readers the architectures' own config code uses.
 *
 * Errors fill err with "<path>: <key>: <what is wrong>" (the key and its value when it is
 * one ctrain does not run) and return -1. */
#ifndef CT_MODEL_HF_CONFIG_H
#define CT_MODEL_HF_CONFIG_H

#include <cjson/cJSON.h>
#include <stddef.h>

#include "model.h"

/* The family a model.arch name (gpt2, llama) or config.json model_type names, or NULL. */
const ct_arch *ct_arch_by_name(const char *name);
const ct_arch *ct_arch_by_model_type(const char *model_type);
/* "gpt2, llama, mistral, qwen2": every model_type ctrain reads, for messages. */
const char *ct_arch_model_types(void);

/* A parsed config.json (path names it in messages) into c. */
int ct_hf_config_parse(const cJSON *root, const char *path, ct_model_config *c, char *err, size_t errlen);
/* The same from JSON text (a checkpoint's copy). */
int ct_hf_config_parse_text(const char *text, const char *name, ct_model_config *c, char *err, size_t errlen);
/* <dir>/config.json into c. */
int ct_hf_read_config(const char *dir, ct_model_config *c, char *err, size_t errlen);
/* The config.json of a model: source (a config.json's text, or NULL) carried over with only its
 * dtype set to c->dtype's; without a source, the family's keys from c. Malloc'd text or NULL. */
char *ct_hf_config_text(const ct_model_config *c, const char *source);

/* The end-of-sequence ids of a model folder: generation_config.json's eos_token_id (a number
 * or a list), else config.json's. Returns how many (at most max); 0 when neither says; -1 with
 * err naming the file when one is malformed or its eos_token_id is not ids. */
#define CT_EOS_MAX 8
int ct_hf_eos_ids(const char *dir, int *ids, int max, char *err, size_t errlen);

/* ---- typed readers: a missing required key is an error; optional ones take dflt when absent
 * or null. Integers above max (a CT_MAX_* limit of model.h) are refused naming the key and the
 * limit, before anything is sized from them. */
int ct_hfc_int(const cJSON *root, const char *key, const char *alt, int max, int *out, const char *path, char *err,
               size_t errlen);
int ct_hfc_int_opt(const cJSON *root, const char *key, int dflt, int max, int *out, const char *path, char *err,
                   size_t errlen);
int ct_hfc_float(const cJSON *root, const char *key, double dflt, float *out, const char *path, char *err,
                 size_t errlen);
int ct_hfc_double(const cJSON *root, const char *key, double dflt, double *out, const char *path, char *err,
                  size_t errlen);
int ct_hfc_bool(const cJSON *root, const char *key, int dflt, int *out, const char *path, char *err, size_t errlen);
/* A boolean key that must be absent, null or equal to want. */
int ct_hfc_bool_is(const cJSON *root, const char *key, int want, const char *path, char *err, size_t errlen);
/* A string key that must be absent or one of allowed (NULL-terminated). */
int ct_hfc_one_of(const cJSON *root, const char *key, const char *const *allowed, const char *path, char *err,
                  size_t errlen);
/* The shortest decimal that reads back as f (1e-06, not 9.99999997e-07), for writing a float
 * a person wrote. */
double ct_hfc_short(float f);
/* Sets root[key] = value, replacing what was there. */
void ct_hfc_set(cJSON *root, const char *key, cJSON *value);

#endif
