/* lora.c — target matching, PEFT's initialisation, PEFT adapter folders, merging. */
#include "lora.h"

#include <cjson/cJSON.h>
#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "hf_config.h"
#include "json_file.h"
#include "rng.h"
#include "safetensors.h"
#include "write_file.h"

static float spec_scale(const ct_lora_spec *s) { return s->rslora ? s->alpha / sqrtf((float)s->r) : s->alpha / s->r; }

/* How adapter_config.json's keys are read (PEFT 0.21's LoraConfig, every key it saves):
 *  K_READ:  read by ct_lora_read_peft_config (peft_type, r, lora_alpha, lora_dropout,
 *           target_modules, use_rslora: a boolean);
 *  K_ANY:   changes nothing ctrain computes: bookkeeping (task_type, base_model_name_or_path,
 *           revision, inference_mode, auto_mapping, peft_version), fan_in_fan_out (PEFT itself sets
 *           it from the layer type: true for GPT-2's Conv1D, false for nn.Linear), qalora_group_size
 *           and megatron_core (read only with use_qalora / megatron_config), ensure_weight_tying (only
 *           with modules_to_save or trainable tokens, both refused when set), runtime_config;
 *  K_INIT:  init_lora_weights: how PEFT draws fresh adapters. A loaded adapter has its weights,
 *           so true, false, "gaussian", "orthogonal" and "eva" change nothing; "pissa*", "olora",
 *           "corda", "loftq" and "lora_ga" also rewrite the base weights (the adapter belongs to a
 *           residual base ctrain does not rebuild) and are refused, as is any other value;
 *  K_UNSET: changes the math (or what trains) when set and is not implemented: must be absent,
 *           null, false, "none" (bias), or empty ({} [] ""): use_dora, bias, rank_pattern,
 *           alpha_pattern, layers_to_transform, layers_pattern, exclude_modules, modules_to_save,
 *           lora_bias, trainable_token_indices, layer_replication, target_parameters, use_qalora,
 *           megatron_config, alora_invocation_tokens, use_bdlora, arrow_config, kasa_config,
 *           velora_config, monteclora_config, loftq_config; the *_config of the init methods
 *           (eva_config, corda_config, lora_ga_config) only with those methods, so K_ANY.
 * A key ctrain does not know (a newer PEFT's) is K_UNSET: accepted at its neutral value, refused
 * with any other, never silently ignored. */
enum { K_READ, K_ANY, K_INIT, K_UNSET };
static const struct {
    const char *key;
    int kind;
} peft_keys[] = {
    {"peft_type", K_READ}, {"r", K_READ}, {"lora_alpha", K_READ}, {"lora_dropout", K_READ},
    {"target_modules", K_READ}, {"use_rslora", K_READ},
    {"task_type", K_ANY}, {"base_model_name_or_path", K_ANY}, {"revision", K_ANY}, {"inference_mode", K_ANY},
    {"auto_mapping", K_ANY}, {"peft_version", K_ANY}, {"fan_in_fan_out", K_ANY}, {"qalora_group_size", K_ANY},
    {"megatron_core", K_ANY}, {"ensure_weight_tying", K_ANY}, {"runtime_config", K_ANY}, {"eva_config", K_ANY},
    {"corda_config", K_ANY}, {"lora_ga_config", K_ANY},
    {"init_lora_weights", K_INIT},
};

/* null, false, "none", "", [] or {}: what PEFT writes for an option that is off */
static int neutral(const cJSON *v)
{
    return cJSON_IsNull(v) || cJSON_IsFalse(v) || ((cJSON_IsArray(v) || cJSON_IsObject(v)) && !v->child) ||
           (cJSON_IsString(v) && (!v->valuestring[0] || !strcmp(v->valuestring, "none")));
}

/* PEFT options that would change what the adapter computes and that ctrain does not run: an
 * error naming the key and its value, never a silent difference. */
static int unsupported_peft(const cJSON *root, const char *path, char *err, size_t errlen)
{
    for (const cJSON *v = root->child; v; v = v->next) {
        int kind = K_UNSET;
        for (size_t i = 0; i < sizeof peft_keys / sizeof peft_keys[0]; i++)
            if (!strcmp(v->string, peft_keys[i].key)) kind = peft_keys[i].kind;
        if (kind == K_READ || kind == K_ANY) continue;
        if (kind == K_INIT) {
            static const char *const fresh_only[] = {"gaussian", "orthogonal", "eva", NULL};
            int ok = cJSON_IsBool(v);
            for (const char *const *f = fresh_only; !ok && *f && cJSON_IsString(v); f++) ok = !strcmp(v->valuestring, *f);
            if (ok) continue;
        } else if (neutral(v)) {
            continue;
        }
        char *shown = cJSON_PrintUnformatted(v);
        if (kind == K_INIT)
            snprintf(err, errlen, "%s: init_lora_weights: %.80s is not supported (it rewrites the base weights, which "
                     "ctrain does not; convert the adapter to a plain LoRA with PEFT first)", path, shown ? shown : "?");
        else
            snprintf(err, errlen, "%s: %s: %.80s is not supported (ctrain runs plain LoRA: the same r and alpha on "
                     "every targeted linear of every layer, no DoRA, no bias, nothing else trained)", path, v->string,
                     shown ? shown : "?");
        free(shown);
        return -1;
    }
    const cJSON *rs = cJSON_GetObjectItemCaseSensitive(root, "use_rslora");
    if (rs && !cJSON_IsBool(rs)) return snprintf(err, errlen, "%s: use_rslora: expected true or false", path), -1;
    const cJSON *t = cJSON_GetObjectItemCaseSensitive(root, "target_modules");
    if (cJSON_IsString(t) && strcmp(t->valuestring, "all-linear"))
        return snprintf(err, errlen, "%s: target_modules: \"%s\" is a regular expression to PEFT, which ctrain does "
                        "not match: list the module names", path, t->valuestring), -1;
    return 0;
}

int ct_lora_read_peft_config(const char *dir, ct_lora_spec *spec, char *err, size_t errlen)
{
    char path[CT_PATH_MAX + 32];
    snprintf(path, sizeof path, "%s/adapter_config.json", dir);
    cJSON *root = ct_json_load(path, 1 << 20, err, errlen);
    if (!root) return -1;
    int rc = -1;
    const cJSON *type = cJSON_GetObjectItemCaseSensitive(root, "peft_type");
    const cJSON *r = cJSON_GetObjectItemCaseSensitive(root, "r");
    const cJSON *alpha = cJSON_GetObjectItemCaseSensitive(root, "lora_alpha");
    const cJSON *drop = cJSON_GetObjectItemCaseSensitive(root, "lora_dropout");
    const cJSON *targets = cJSON_GetObjectItemCaseSensitive(root, "target_modules");
    const cJSON *rs = cJSON_GetObjectItemCaseSensitive(root, "use_rslora");
    memset(spec, 0, sizeof *spec);
    if (unsupported_peft(root, path, err, errlen))
        ; /* err names the key */
    else if (!cJSON_IsString(type) || strcmp(type->valuestring, "LORA"))
        snprintf(err, errlen, "%s: peft_type: expected \"LORA\"", path);
    else if (!cJSON_IsNumber(r) || r->valuedouble < 1 || r->valuedouble > 65536 ||
             r->valuedouble != floor(r->valuedouble))
        snprintf(err, errlen, "%s: r: expected a whole number in [1, 65536]", path);
    else if (!cJSON_IsNumber(alpha) || !(alpha->valuedouble > 0))
        snprintf(err, errlen, "%s: lora_alpha: expected a positive number", path);
    else if (drop && !(cJSON_IsNumber(drop) && drop->valuedouble >= 0 && drop->valuedouble < 1))
        snprintf(err, errlen, "%s: lora_dropout: expected a number in [0, 1)", path);
    else if (!(cJSON_IsArray(targets) || cJSON_IsString(targets)))
        snprintf(err, errlen, "%s: target_modules: expected a list of module names or a string", path);
    else {
        spec->r = (int)r->valuedouble;
        spec->alpha = (float)alpha->valuedouble;
        spec->dropout = drop ? (float)drop->valuedouble : 0.0f;
        spec->rslora = cJSON_IsTrue(rs);
        rc = 0;
        if (cJSON_IsString(targets)) {
            snprintf(spec->targets, sizeof spec->targets, "%s", targets->valuestring);
        } else {
            size_t n = 0;
            const cJSON *t;
            cJSON_ArrayForEach(t, targets)
            {
                if (!cJSON_IsString(t)) {
                    snprintf(err, errlen, "%s: target_modules: expected strings", path);
                    rc = -1;
                    break;
                }
                int w = snprintf(spec->targets + n, sizeof spec->targets - n, "%s%s", n ? "," : "", t->valuestring);
                if (w < 0 || (size_t)w >= sizeof spec->targets - n) {
                    snprintf(err, errlen, "%s: target_modules: longer than %zu characters in all", path,
                             sizeof spec->targets - 1);
                    rc = -1;
                    break;
                }
                n += (size_t)w;
            }
        }
    }
    cJSON_Delete(root);
    return rc;
}

int ct_lora_spec_from_config(const ct_config *cfg, ct_lora_spec *spec, char *err, size_t errlen)
{
    if (cfg->lora.init_from[0]) return ct_lora_read_peft_config(cfg->lora.init_from, spec, err, errlen);
    snprintf(spec->targets, sizeof spec->targets, "%s", cfg->lora.targets);
    spec->r = cfg->lora.r;
    spec->alpha = (float)cfg->lora.alpha;
    spec->dropout = (float)cfg->lora.dropout;
    spec->rslora = cfg->lora.rslora;
    return 0;
}

/* PEFT's rule: the module's name is the target, or ends with "." + target. */
static int matches(const char *module, const char *target, size_t tlen)
{
    size_t mlen = strlen(module);
    if (mlen == tlen) return !strncmp(module, target, tlen);
    return mlen > tlen && module[mlen - tlen - 1] == '.' && !strncmp(module + mlen - tlen, target, tlen);
}

/* "q_proj, k_proj, ...": the distinct last parts of the linears' module names, for messages. */
static void module_names(const ct_model *m, char *out, size_t n)
{
    char name[128];
    out[0] = 0;
    for (int i = 0; i < ct_model_num_linears(m); i++) {
        ct_model_linear_name(m, i, name, sizeof name);
        const char *last = strrchr(name, '.') + 1; /* module paths always have a block prefix */
        int seen = 0;
        for (int j = 0; j < i && !seen; j++) {
            char other[128];
            ct_model_linear_name(m, j, other, sizeof other);
            seen = !strcmp(strrchr(other, '.') + 1, last);
        }
        if (!seen) snprintf(out + strlen(out), n - strlen(out), "%s%s", out[0] ? ", " : "", last);
    }
}

int ct_lora_attach(ct_model *m, const ct_lora_spec *spec, int shards, char *err, size_t errlen)
{
    int n = ct_model_num_linears(m);
    unsigned char *select = calloc((size_t)n, 1);
    if (!select) return snprintf(err, errlen, "out of memory"), -1;
    char name[128];
    int all = !strcmp(spec->targets, "all-linear");
    for (const char *t = spec->targets; !all && *t;) {
        while (*t == ' ' || *t == ',') t++;
        size_t len = strcspn(t, ",");
        while (len && t[len - 1] == ' ') len--;
        if (!len) break;
        int hit = 0;
        for (int i = 0; i < n; i++) {
            ct_model_linear_name(m, i, name, sizeof name);
            if (matches(name, t, len)) select[i] = 1, hit = 1;
        }
        if (!hit) {
            char known[512];
            module_names(m, known, sizeof known);
            ct_model_linear_name(m, 0, name, sizeof name);
            snprintf(err, errlen, "lora.targets: '%.*s' matches no module; the model's linear modules are %s, or "
                     "full names such as %s (\"all-linear\": all of them)", (int)len, t, known, name);
            free(select);
            return -1;
        }
        t += len;
        while (*t && *t != ',') t++;
    }
    for (int i = 0; all && i < n; i++) select[i] = 1;
    int rc = ct_model_add_lora(m, select, spec->r, spec_scale(spec), spec->dropout, shards, err, errlen);
    free(select);
    return rc;
}

int ct_lora_add(ct_model *m, const ct_lora_spec *spec, uint64_t seed, int shards, char *err, size_t errlen)
{
    if (ct_lora_attach(m, spec, shards, err, errlen)) return -1;

    /* A ~ kaiming_uniform_(a=sqrt(5)) = U(-1/sqrt(in), 1/sqrt(in)); B = 0 (PEFT's default) */
    const ct_backend *be = ct_model_backend(m);
    ct_kctx *ctx = ct_model_kctx(m);
    ct_trainable tr = ct_model_trainable(m);
    float *host = calloc(tr.numel ? tr.numel : 1, sizeof(float));
    void *tmp = be->alloc(tr.numel * sizeof(float));
    if (!host || !tmp) {
        free(host);
        if (tmp) be->free(tmp);
        return snprintf(err, errlen, "out of memory"), -1;
    }
    ct_rng rng;
    ct_rng_seed(&rng, seed ^ 0x4C6F5241ull); /* not the base's init stream */
    for (int i = 0; i < tr.ntensors; i++) {
        const ct_param *p = &tr.tensors[i];
        if (!strstr(p->name, ".lora_A.")) continue;
        float bound = 1.0f / sqrtf((float)p->shape[1]);
        for (size_t k = 0; k < p->numel; k++) host[p->offset + k] = (2.0f * ct_rng_uniform(&rng) - 1.0f) * bound;
    }
    be->upload(ctx, tmp, host, tr.numel * sizeof(float));
    be->to_storage(ctx, tr.params, tmp, tr.numel);
    be->sync(ctx);
    be->free(tmp);
    free(host);
    return 0;
}

/* fp32 host copy of the trainable buffer (the adapters); NULL when out of memory. */
static float *adapters_to_host(ct_model *m)
{
    const ct_backend *be = ct_model_backend(m);
    ct_kctx *ctx = ct_model_kctx(m);
    ct_trainable tr = ct_model_trainable(m);
    float *host = malloc(tr.numel * sizeof(float) + 1);
    void *tmp = be->alloc(tr.numel * sizeof(float));
    if (host && tmp) {
        be->to_f32(ctx, tmp, tr.params, tr.numel);
        be->download(ctx, host, tmp, tr.numel * sizeof(float));
    } else {
        free(host), host = NULL;
    }
    if (tmp) be->free(tmp);
    return host;
}

int ct_lora_check_base(ct_model *m, const char *recorded, const char *recorded_name, const char *where, char *err,
                       size_t errlen)
{
    if (!recorded) return 0; /* made by PEFT, or by a ctrain that did not record it */
    const char *here = ct_model_base_fingerprint(m);
    if (!here) return snprintf(err, errlen, "%s: out of memory computing the base model's fingerprint", where), -1;
    if (!strcmp(recorded, here)) return 0;
    int named = recorded_name && *recorded_name;
    return snprintf(err, errlen, "%s: these adapters were trained on another base model (%s%sfingerprint %.16s) than "
                    "the one given here (model.init_from, fingerprint %s): use the base they were trained on (the same "
                    "config.json and weights, in any dtype)", where, named ? recorded_name : "", named ? ", " : "",
                    recorded, here), -1;
}

int ct_lora_load_peft(ct_model *m, const char *dir, char *err, size_t errlen)
{
    char path[CT_PATH_MAX + 32];
    snprintf(path, sizeof path, "%s/adapter_model.safetensors", dir);
    ct_safetensors *st = NULL;
    if (ct_st_open(&st, path, err, errlen)) return -1;
    char where[CT_PATH_MAX + 128];
    snprintf(where, sizeof where, "%s: __metadata__.%s", path, CT_LORA_BASE_KEY);
    if (ct_lora_check_base(m, ct_st_metadata(st, CT_LORA_BASE_KEY), ct_st_metadata(st, CT_LORA_BASE_NAME_KEY), where,
                           err, errlen)) {
        ct_st_close(st);
        return -1;
    }
    ct_trainable tr = ct_model_trainable(m);
    const ct_backend *be = ct_model_backend(m);
    ct_kctx *ctx = ct_model_kctx(m);
    float *host = calloc(tr.numel + 1, sizeof(float));
    int rc = -1;
    if (!host) {
        snprintf(err, errlen, "out of memory");
        goto done;
    }
    for (int i = 0; i < ct_st_count(st); i++) {
        const ct_st_tensor *t = ct_st_at(st, i);
        int found = 0;
        for (int k = 0; k < tr.ntensors; k++) found |= !strcmp(tr.tensors[k].name, t->name);
        if (!found) {
            snprintf(err, errlen, "%s: tensor '%s': not an adapter of this model and lora settings", path, t->name);
            goto done;
        }
    }
    for (int k = 0; k < tr.ntensors; k++) {
        const ct_param *p = &tr.tensors[k];
        const ct_st_tensor *t = ct_st_find(st, p->name);
        if (!t) {
            snprintf(err, errlen, "%s: tensor '%s': missing", path, p->name);
            goto done;
        }
        if (t->ndim != 2 || t->shape[0] != p->shape[0] || t->shape[1] != p->shape[1]) {
            snprintf(err, errlen, "%s: tensor '%s': shape [%lld, %lld] does not fit the base (want [%d, %d])", path,
                     p->name, (long long)t->shape[0], (long long)(t->ndim > 1 ? t->shape[1] : 0), p->shape[0],
                     p->shape[1]);
            goto done;
        }
        if (ct_st_read_f32(st, t, host + p->offset, p->numel, err, errlen)) goto done;
    }
    void *tmp = be->alloc(tr.numel * sizeof(float));
    if (!tmp) {
        snprintf(err, errlen, "out of memory");
        goto done;
    }
    be->upload(ctx, tmp, host, tr.numel * sizeof(float));
    be->to_storage(ctx, tr.params, tmp, tr.numel);
    be->sync(ctx);
    be->free(tmp);
    rc = 0;
done:
    free(host);
    ct_st_close(st);
    return rc;
}

int ct_lora_save_peft(ct_model *m, const ct_lora_spec *spec, const char *base_model, const char *dir, char *err,
                      size_t errlen)
{
    if (mkdir(dir, 0777) != 0 && errno != EEXIST)
        return snprintf(err, errlen, "%s: cannot create directory: %s", dir, strerror(errno)), -1;
    char path[CT_PATH_MAX + 32];
    snprintf(path, sizeof path, "%s/adapter_config.json", dir);
    cJSON *root = cJSON_CreateObject();
    cJSON_AddStringToObject(root, "peft_type", "LORA");
    cJSON_AddStringToObject(root, "task_type", "CAUSAL_LM");
    cJSON_AddStringToObject(root, "base_model_name_or_path", base_model ? base_model : "");
    cJSON_AddNumberToObject(root, "r", spec->r);
    cJSON_AddNumberToObject(root, "lora_alpha", spec->alpha);
    cJSON_AddNumberToObject(root, "lora_dropout", spec->dropout);
    cJSON_AddBoolToObject(root, "use_rslora", spec->rslora);
    /* GPT-2's Conv1D stores [in, out]; nn.Linear (the Llama family) [out, in] */
    int conv1d = 0;
    for (int i = 0; i < ct_model_num_tensors(m); i++) conv1d |= ct_model_tensor(m, i)->lora && ct_model_tensor(m, i)->conv1d;
    cJSON_AddBoolToObject(root, "fan_in_fan_out", conv1d);
    cJSON_AddStringToObject(root, "bias", "none");
    cJSON_AddBoolToObject(root, "inference_mode", 1);
    if (!strcmp(spec->targets, "all-linear")) {
        cJSON_AddStringToObject(root, "target_modules", "all-linear");
    } else {
        cJSON *list = cJSON_AddArrayToObject(root, "target_modules");
        for (const char *t = spec->targets; *t;) {
            while (*t == ' ' || *t == ',') t++;
            size_t len = strcspn(t, ",");
            while (len && t[len - 1] == ' ') len--;
            if (!len) break;
            char one[256];
            snprintf(one, sizeof one, "%.*s", (int)len, t);
            cJSON_AddItemToArray(list, cJSON_CreateString(one));
            t += len;
            while (*t && *t != ',') t++;
        }
    }
    char *text = cJSON_Print(root);
    cJSON_Delete(root);
    /* both files written and synced under .tmp names before either is renamed, the weights last:
     * a failed write (a full disk) leaves the folder as it was */
    char cfg_tmp[CT_PATH_MAX + 40], st_path[CT_PATH_MAX + 32], st_tmp[CT_PATH_MAX + 40];
    snprintf(cfg_tmp, sizeof cfg_tmp, "%s.tmp", path);
    snprintf(st_path, sizeof st_path, "%s/adapter_model.safetensors", dir);
    snprintf(st_tmp, sizeof st_tmp, "%s.tmp", st_path);
    ct_trainable tr = ct_model_trainable(m);
    float *host = adapters_to_host(m);
    ct_st_entry *e = calloc((size_t)tr.ntensors, sizeof *e);
    ct_st_writer *w = NULL;
    const char *fp = ct_model_base_fingerprint(m); /* which base the adapters belong to */
    const char *meta[] = {"format", "pt", CT_LORA_BASE_KEY, fp, CT_LORA_BASE_NAME_KEY, base_model ? base_model : "",
                          NULL};
    int rc = -1, staged = 0;
    if (!text || !host || !e || !fp) {
        snprintf(err, errlen, "out of memory");
        goto done;
    }
    for (int i = 0; i < tr.ntensors; i++) {
        const ct_param *p = &tr.tensors[i];
        e[i] = (ct_st_entry){.name = p->name, .data = host + p->offset, .ndim = 2, .shape = {p->shape[0], p->shape[1]}};
    }
    if (ct_st_writer_open(&w, st_tmp, e, tr.ntensors, CT_DT_F32, meta, err, errlen)) goto done;
    int put = 0;
    for (int i = 0; i < tr.ntensors && !put; i++)
        put = ct_st_writer_put(w, e[i].data, (size_t)e[i].shape[0] * (size_t)e[i].shape[1], err, errlen);
    if (put) {
        ct_st_writer_abort(w); /* removes st_tmp */
        goto done;
    }
    if (ct_st_writer_close(w, err, errlen)) goto done; /* synced, or removed */
    staged = 1;
    if (ct_file_write(cfg_tmp, text, strlen(text), err, errlen)) goto done;
    if (rename(cfg_tmp, path) != 0) {
        snprintf(err, errlen, "%s: cannot rename %s into place: %s", path, cfg_tmp, strerror(errno));
        unlink(cfg_tmp);
        goto done;
    }
    if (rename(st_tmp, st_path) != 0) {
        snprintf(err, errlen, "%s: cannot rename %s into place: %s", st_path, st_tmp, strerror(errno));
        goto done;
    }
    staged = 0;
    rc = 0;
done:
    if (staged) unlink(st_tmp);
    free(text);
    free(e);
    free(host);
    return rc;
}

/* The base weight an adapter pair (A, B) sits beside. */
static const ct_param *base_of(const ct_model *m, const ct_param *A)
{
    /* "base_model.model.<module>.lora_A.weight" -> "<module>.weight" */
    char base[160];
    const char *mod = A->name + strlen("base_model.model.");
    snprintf(base, sizeof base, "%.*s.weight", (int)(strstr(mod, ".lora_A.") - mod), mod);
    return ct_model_find(m, base);
}

int ct_lora_merge(ct_model *m, char *err, size_t errlen)
{
    if (!ct_model_has_lora(m)) return snprintf(err, errlen, "merge: the model has no LoRA adapters"), -1;
    const ct_backend *be = ct_model_backend(m);
    ct_kctx *ctx = ct_model_kctx(m);
    ct_trainable tr = ct_model_trainable(m);
    /* one base weight at a time: memory beyond the model is its largest adapted weight */
    size_t big = tr.numel;
    for (int i = 0; i + 1 < tr.ntensors; i += 2) {
        const ct_param *W = base_of(m, &tr.tensors[i]);
        if (!W) return snprintf(err, errlen, "internal: no base weight for %s", tr.tensors[i].name), -1;
        if (W->numel > big) big = W->numel;
    }
    float *ad = adapters_to_host(m), *w = malloc(big * sizeof(float));
    void *tmp = be->alloc(big * sizeof(float));
    int rc = -1;
    if (!ad || !w || !tmp) {
        snprintf(err, errlen, "out of memory merging the adapters");
        goto done;
    }
    float scale = ct_model_lora_scale(m);
    for (int i = 0; i + 1 < tr.ntensors; i += 2) {
        const ct_param *A = &tr.tensors[i], *B = &tr.tensors[i + 1], *W = base_of(m, A); /* pairs: A, B */
        void *wp = (char *)ct_model_params(m) + W->offset * be->elem_size;
        be->to_f32(ctx, tmp, wp, W->numel);
        be->download(ctx, w, tmp, W->numel * sizeof(float));
        int out = B->shape[0], in = A->shape[1], r = A->shape[0];
        const float *a = ad + A->offset, *b = ad + B->offset;
#pragma omp parallel for schedule(static)
        for (int o = 0; o < out; o++)
            for (int k = 0; k < in; k++) {
                double d = 0;
                for (int j = 0; j < r; j++) d += (double)b[(size_t)o * r + j] * a[(size_t)j * in + k];
                w[(size_t)o * in + k] += (float)(scale * d);
            }
        be->upload(ctx, tmp, w, W->numel * sizeof(float));
        be->to_storage(ctx, wp, tmp, W->numel);
        be->sync(ctx); /* w and tmp serve the next weight */
        memset(ad + B->offset, 0, B->numel * sizeof(float)); /* the adapter is in the base now */
    }
    be->upload(ctx, tmp, ad, tr.numel * sizeof(float));
    be->to_storage(ctx, tr.params, tmp, tr.numel);
    be->sync(ctx);
    ct_model_base_changed(m);
    rc = 0;
done:
    free(ad);
    free(w);
    if (tmp) be->free(tmp);
    return rc;
}

static void with_commas(char *out, size_t n, size_t v)
{
    char digits[32];
    int len = snprintf(digits, sizeof digits, "%zu", v), w = 0;
    for (int i = 0; i < len && (size_t)w + 2 < n; i++) {
        if (i && (len - i) % 3 == 0) out[w++] = ',';
        out[w++] = digits[i];
    }
    out[w] = 0;
}

void ct_lora_describe(ct_model *m, char *out, size_t n)
{
    ct_trainable tr = ct_model_trainable(m);
    size_t trainable = 0, base = ct_model_count(m);
    for (int i = 0; i < tr.ntensors; i++) trainable += tr.tensors[i].numel;
    size_t all = ct_model_has_lora(m) ? base + trainable : base;
    char a[32], b[32];
    with_commas(a, sizeof a, trainable);
    with_commas(b, sizeof b, all);
    snprintf(out, n, "trainable params: %s || all params: %s || trainable%%: %.4f", a, b, 100.0 * trainable / all);
}
