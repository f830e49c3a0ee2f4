/* resume.c — a checkpoint's run against this config: the same data, windows, global batch and
 * model, or a change checkpoint.allow_new_data allows. */
#include "resume.h"

#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "data.h"
#include "fail.h"
#include "run.h"

static uint64_t mix64(uint64_t z)
{
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
}

int ct_resume_data_id(const char *path, uint64_t *tokens, uint64_t *sample, char digest[24], char *err,
                      size_t errlen)
{
    enum { SAMPLES = 16, LEN = 64 };
    ct_dataset *ds = NULL;
    if (ct_dataset_open(&ds, path, err, errlen)) return -1;
    size_t n = ct_dataset_len(ds), len = n < LEN ? n : LEN;
    uint64_t h = mix64(n ^ 0x9E3779B97F4A7C15ull) ^ mix64(ct_dataset_ndocs(ds) + 1);
    uint32_t tok[LEN];
    uint8_t mask[LEN];
    int rc = 0;
    for (size_t k = 0; k < SAMPLES && rc == 0 && len; k++) {
        size_t start = (n - len) / (SAMPLES - 1) * k;
        rc = ct_dataset_read(ds, start, len, tok, mask, err, errlen);
        for (size_t i = 0; i < len && rc == 0; i++)
            h = mix64(h ^ ((uint64_t)(start + i) << 40) ^ ((uint64_t)mask[i] << 32) ^ tok[i]);
    }
    *tokens = n;
    *sample = h;
    snprintf(digest, 24, "%s", ct_dataset_meta_of(ds)->digest);
    ct_dataset_close(ds);
    return rc;
}

/* Whether two config paths name the same file (real paths when both resolve). */
static int same_file(const char *a, const char *b)
{
    char ra[PATH_MAX], rb[PATH_MAX];
    if (realpath(a, ra) && realpath(b, rb)) return !strcmp(ra, rb);
    return !strcmp(a, b);
}

/* The first field in which two model shapes differ, with the config key of a random init's. */
static int model_diff(const ct_model_config *a, const ct_model_config *b, const char **field, const char **key,
                      char *va, char *vb, size_t n)
{
    if (strcmp(a->model_type, b->model_type)) {
        *field = "model_type", *key = "model.arch";
        snprintf(va, n, "%s", a->model_type), snprintf(vb, n, "%s", b->model_type);
        return 1;
    }
    const struct {
        const char *field, *key;
        double a, b;
    } f[] = {
        {"vocab_size", "model.vocab_size", a->vocab_size, b->vocab_size},
        {"max_seq_len", "model.max_seq_len", a->max_seq_len, b->max_seq_len},
        {"n_layer", "model.n_layer", a->n_layer, b->n_layer},
        {"n_embd", "model.n_embd", a->n_embd, b->n_embd},
        {"n_head", "model.n_head", a->n_head, b->n_head},
        {"n_kv_head", "model.n_kv_head", a->n_kv_head, b->n_kv_head},
        {"head_dim", "model.n_embd", a->head_dim, b->head_dim},
        {"n_inner", "model.n_inner", a->n_inner, b->n_inner},
        {"untied", "model.tie_embeddings", a->untied, b->untied},
        {"norm_eps", "model.norm_eps", a->norm_eps, b->norm_eps},
        {"rope_theta", "model.rope_theta", a->rope_theta, b->rope_theta},
    };
    for (size_t i = 0; i < sizeof f / sizeof f[0]; i++) {
        if (f[i].a == f[i].b) continue;
        *field = f[i].field, *key = f[i].key;
        snprintf(va, n, "%g", f[i].a), snprintf(vb, n, "%g", f[i].b);
        return 1;
    }
    if (ct_model_config_same(a, b)) return 0;
    *field = "config.json", *key = "model.init_from";
    snprintf(va, n, "another"), snprintf(vb, n, "another");
    return 1;
}

#define ALLOW "checkpoint.allow_new_data"

int ct_resume_check(const ct_config *cfg, int world, const ct_model_config *mc, const ct_ckpt_state *now,
                    const char *ckpt, const ct_ckpt_state *saved, ct_resume_plan *plan, char *err, size_t errlen)
{
    memset(plan, 0, sizeof *plan);
    char *json = ct_ckpt_read_config_json(ckpt, err, errlen);
    if (!json) return -1;
    ct_config was;
    char name[CT_PATH_MAX + 64];
    snprintf(name, sizeof name, "%s: attribute config", ckpt);
    int rc = ct_config_parse(&was, json, name, err, errlen);
    free(json);
    if (rc) return -1;

    /* the model: its shape, and the same trainable set (full, or the same adapters) */
    ct_model_config held;
    if (ct_ckpt_read_config(ckpt, &held, err, errlen)) return -1;
    const char *field, *key;
    char va[64], vb[64];
    if (model_diff(mc, &held, &field, &key, va, vb, sizeof va)) {
        if (!cfg->model.init_from[0])
            return ct_fail(err, errlen, "%s: %s, but the checkpoint %s holds a model with %s %s: a resume goes on "
                           "with the same model; choose another run.dir to start a new one", key, va, ckpt, field, vb);
        return ct_fail(err, errlen, "model.init_from: \"%s\" holds a model with %s %s, but the checkpoint %s holds "
                       "one with %s %s: a resume goes on with the same model; choose another run.dir to start a new "
                       "one", cfg->model.init_from, field, va, ckpt, field, vb);
    }
    if (ct_run_lora(cfg) != ct_run_lora(&was))
        return ct_fail(err, errlen, "lora.targets: this config trains %s, but the checkpoint %s holds %s: a resume "
                       "goes on training the same parameters; choose another run.dir to start a new run",
                       ct_run_lora(cfg) ? "LoRA adapters" : "the whole model", ckpt,
                       ct_run_lora(&was) ? "LoRA adapters" : "a whole model (no adapters)");
    if (cfg->lora.targets[0] && was.lora.targets[0] && !cfg->lora.init_from[0] && !was.lora.init_from[0]) {
        if (strcmp(cfg->lora.targets, was.lora.targets))
            return ct_fail(err, errlen, "lora.targets: \"%s\", but the checkpoint %s holds adapters on \"%s\": a "
                           "resume goes on with the same adapters", cfg->lora.targets, ckpt, was.lora.targets);
        if (cfg->lora.r != was.lora.r)
            return ct_fail(err, errlen, "lora.r: %d, but the checkpoint %s holds adapters of rank %d: a resume goes "
                           "on with the same adapters", cfg->lora.r, ckpt, was.lora.r);
    }

    /* the data: the same dataset (by identity where the checkpoint records it, else by path) */
    int allow = cfg->checkpoint.allow_new_data;
    size_t used = 0;
    int other_data = saved->data_tokens ? saved->data_tokens != now->data_tokens ||
                                              saved->data_sample != now->data_sample ||
                                              strcmp(saved->data_digest, now->data_digest)
                                        : !same_file(was.data.train, cfg->data.train);
    if (other_data) {
        char what[CT_PATH_MAX + 160];
        if (saved->data_tokens)
            snprintf(what, sizeof what, "(\"%s\": %llu tokens, tokenizer digest %s; now %llu tokens, digest %s%s)",
                     was.data.train, (unsigned long long)saved->data_tokens, saved->data_digest,
                     (unsigned long long)now->data_tokens, now->data_digest,
                     saved->data_tokens == now->data_tokens && !strcmp(saved->data_digest, now->data_digest)
                         ? ", other tokens" : "");
        else
            snprintf(what, sizeof what, "(\"%s\")", was.data.train);
        if (!allow)
            return ct_fail(err, errlen, "data.train: \"%s\" is not the data the checkpoint %s was trained on %s: set "
                           ALLOW "=true to go on with this data on purpose (read from its beginning; the weights, "
                           "optimizer state and step go on), or name the checkpoint's data again",
                           cfg->data.train, ckpt, what);
        used += (size_t)snprintf(plan->note + used, sizeof plan->note - used, "data.train: \"%s\", new since the "
                                 "checkpoint %s", cfg->data.train, what);
        plan->restart = 1;
    }
    if (cfg->data.seq_len != was.data.seq_len) {
        if (!allow)
            return ct_fail(err, errlen, "data.seq_len: %d, but the checkpoint %s was trained on windows of %d: the "
                           "data would be cut differently; set " ALLOW "=true to change it on purpose (the data is "
                           "then read from its beginning), or set data.seq_len=%d", cfg->data.seq_len, ckpt,
                           was.data.seq_len, was.data.seq_len);
        if (used < sizeof plan->note)
            used += (size_t)snprintf(plan->note + used, sizeof plan->note - used, "%sdata.seq_len: %d, was %d",
                                     used ? "; " : "", cfg->data.seq_len, was.data.seq_len);
        plan->restart = 1;
    }
    /* the global batch: the ranks may change, the sequences per step may not */
    uint64_t g_now = (uint64_t)cfg->data.micro_batch * (uint64_t)cfg->parallel.grad_accum * (uint64_t)world;
    uint64_t g_was = (uint64_t)was.data.micro_batch * (uint64_t)was.parallel.grad_accum * (uint64_t)saved->world;
    if (g_now != g_was) {
        const char *k = cfg->data.micro_batch != was.data.micro_batch ? "data.micro_batch" : "parallel.grad_accum";
        uint64_t per = (uint64_t)cfg->data.micro_batch * (uint64_t)world;
        char hint[96] = "";
        if (g_was % per == 0)
            snprintf(hint, sizeof hint, ": parallel.grad_accum=%llu on %d rank%s", (unsigned long long)(g_was / per),
                     world, world > 1 ? "s" : "");
        if (!allow)
            return ct_fail(err, errlen, "%s: the global batch is %llu sequences (data.micro_batch %d x "
                           "parallel.grad_accum %d x %d rank%s), but the checkpoint %s was trained with %llu (%d x %d "
                           "x %d rank%s): keep micro_batch x grad_accum x ranks at %llu (on any number of ranks%s), "
                           "or set " ALLOW "=true to change the batch on purpose", k, (unsigned long long)g_now,
                           cfg->data.micro_batch, cfg->parallel.grad_accum, world, world > 1 ? "s" : "", ckpt,
                           (unsigned long long)g_was, was.data.micro_batch, was.parallel.grad_accum, saved->world,
                           saved->world > 1 ? "s" : "", (unsigned long long)g_was, hint);
        if (used < sizeof plan->note)
            snprintf(plan->note + used, sizeof plan->note - used, "%sglobal batch: %llu sequences, was %llu",
                     used ? "; " : "", (unsigned long long)g_now, (unsigned long long)g_was);
        plan->batch_was = g_was;
    }
    return 0;
}

ct_loader_cursor ct_resume_cursor(const ct_resume_plan *plan, ct_loader_cursor saved, uint64_t batch_now)
{
    if (plan->restart) return (ct_loader_cursor){0, 0, 0};
    if (!plan->batch_was || !batch_now) return saved;
    /* the windows this epoch has used, in batches of the new size (rounded up: none repeats) */
    uint64_t used = saved.step * plan->batch_was;
    return (ct_loader_cursor){saved.epoch, (used + batch_now - 1) / batch_now, 0};
}
