/* hf_gpt2.c — GPT-2 to and from Hugging Face folders: config.json and model.safetensors. */
#include "hf_gpt2.h"

#include <cjson/cJSON.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "json_file.h"
#include "safetensors.h"

static int get_positive_int(const cJSON *root, const char *key, const char *alt, int *out, const char *path,
                            char *err, size_t errlen)
{
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(root, key);
    if (!v && alt) v = cJSON_GetObjectItemCaseSensitive(root, alt), key = v ? alt : key;
    if (!v) {
        snprintf(err, errlen, "%s: %s: missing (a GPT-2 config.json needs it)", path, key);
        return -1;
    }
    if (!cJSON_IsNumber(v) || v->valuedouble != (double)(int)v->valuedouble || v->valuedouble <= 0) {
        snprintf(err, errlen, "%s: %s: expected a positive integer", path, key);
        return -1;
    }
    *out = (int)v->valuedouble;
    return 0;
}

/* A boolean key that must be absent or equal to `want` for ctrain to run the model. */
static int require_bool(const cJSON *root, const char *key, int want, const char *path, char *err, size_t errlen)
{
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(root, key);
    if (!v || cJSON_IsNull(v)) return 0;
    if (!cJSON_IsBool(v)) {
        snprintf(err, errlen, "%s: %s: expected true or false", path, key);
        return -1;
    }
    if (cJSON_IsTrue(v) != want) {
        snprintf(err, errlen, "%s: %s: only %s is supported", path, key, want ? "true" : "false");
        return -1;
    }
    return 0;
}

int ct_hf_gpt2_read_config(const char *dir, ct_gpt2_config *cfg, char *err, size_t errlen)
{
    char path[4096];
    snprintf(path, sizeof path, "%s/config.json", dir);
    cJSON *root = ct_json_load(path, 16 << 20, err, errlen);
    if (!root) return -1;
    int rc = -1;
    if (!cJSON_IsObject(root)) {
        snprintf(err, errlen, "%s: expected a JSON object", path);
        goto done;
    }
    const cJSON *mt = cJSON_GetObjectItemCaseSensitive(root, "model_type");
    if (mt && !(cJSON_IsString(mt) && !strcmp(mt->valuestring, "gpt2"))) {
        snprintf(err, errlen, "%s: model_type: expected \"gpt2\"", path);
        goto done;
    }
    memset(cfg, 0, sizeof *cfg);
    if (get_positive_int(root, "vocab_size", NULL, &cfg->vocab_size, path, err, errlen) ||
        get_positive_int(root, "n_positions", "n_ctx", &cfg->max_seq_len, path, err, errlen) ||
        get_positive_int(root, "n_embd", NULL, &cfg->n_embd, path, err, errlen) ||
        get_positive_int(root, "n_layer", NULL, &cfg->n_layer, path, err, errlen) ||
        get_positive_int(root, "n_head", NULL, &cfg->n_head, path, err, errlen))
        goto done;
    cfg->ln_eps = 1e-5f;
    const cJSON *eps = cJSON_GetObjectItemCaseSensitive(root, "layer_norm_epsilon");
    if (eps) {
        if (!cJSON_IsNumber(eps) || !(eps->valuedouble > 0)) {
            snprintf(err, errlen, "%s: layer_norm_epsilon: expected a positive number", path);
            goto done;
        }
        cfg->ln_eps = (float)eps->valuedouble;
    }
    /* gelu_new, gelu_fast and gelu_pytorch_tanh are the same tanh approximation */
    const cJSON *act = cJSON_GetObjectItemCaseSensitive(root, "activation_function");
    if (act && !(cJSON_IsString(act) && (!strcmp(act->valuestring, "gelu_new") ||
                                         !strcmp(act->valuestring, "gelu_fast") ||
                                         !strcmp(act->valuestring, "gelu_pytorch_tanh")))) {
        snprintf(err, errlen, "%s: activation_function: only the tanh GELU (\"gelu_new\") is supported", path);
        goto done;
    }
    const cJSON *inner = cJSON_GetObjectItemCaseSensitive(root, "n_inner");
    if (inner && !cJSON_IsNull(inner) && !(cJSON_IsNumber(inner) && inner->valuedouble == 4.0 * cfg->n_embd)) {
        snprintf(err, errlen, "%s: n_inner: only null (4 * n_embd) is supported", path);
        goto done;
    }
    if (require_bool(root, "tie_word_embeddings", 1, path, err, errlen) ||
        require_bool(root, "add_cross_attention", 0, path, err, errlen) ||
        require_bool(root, "scale_attn_weights", 1, path, err, errlen) ||
        require_bool(root, "scale_attn_by_inverse_layer_idx", 0, path, err, errlen))
        goto done;
    char cerr[256];
    if (ct_gpt2_config_check(cfg, cerr, sizeof cerr)) {
        snprintf(err, errlen, "%s: %s", path, cerr);
        goto done;
    }
    rc = 0;
done:
    cJSON_Delete(root);
    return rc;
}

/* The model's fp32 parameters in host memory (a malloc'd copy of the flat buffer). */
static float *params_to_host(ct_gpt2 *m)
{
    const ct_backend *be = ct_gpt2_backend(m);
    ct_kctx *ctx = ct_gpt2_kctx(m);
    size_t n = ct_gpt2_numel(m);
    float *host = malloc(n * sizeof(float));
    void *tmp = be->alloc(n * sizeof(float));
    if (host && tmp) {
        be->to_f32(ctx, tmp, ct_gpt2_params(m), n);
        be->download(ctx, host, tmp, n * sizeof(float));
    } else {
        free(host);
        host = NULL;
    }
    if (tmp) be->free(tmp);
    return host;
}

static int params_from_host(ct_gpt2 *m, const float *host)
{
    const ct_backend *be = ct_gpt2_backend(m);
    ct_kctx *ctx = ct_gpt2_kctx(m);
    size_t n = ct_gpt2_numel(m);
    void *tmp = be->alloc(n * sizeof(float));
    if (!tmp) return -1;
    be->upload(ctx, tmp, host, n * sizeof(float));
    be->to_storage(ctx, ct_gpt2_params(m), tmp, n);
    be->sync(ctx);
    be->free(tmp);
    return 0;
}

/* Hugging Face shape of a parameter: Conv1D weights are [in, out]. */
static void hf_shape(const ct_param *p, int64_t shape[2])
{
    shape[0] = p->conv1d ? p->shape[1] : p->shape[0];
    shape[1] = p->conv1d ? p->shape[0] : p->shape[1];
}

static void transpose(float *dst, const float *src, int rows, int cols)
{
    for (int r = 0; r < rows; r++)
        for (int c = 0; c < cols; c++) dst[(size_t)c * rows + r] = src[(size_t)r * cols + c];
}

static int ends_with(const char *s, const char *suffix)
{
    size_t n = strlen(s), k = strlen(suffix);
    return n >= k && !strcmp(s + n - k, suffix);
}

/* Tensors a GPT-2 file may hold that ctrain does not need: attention mask buffers and the tied head. */
static int ignorable(const char *name)
{
    return !strcmp(name, "lm_head.weight") || ends_with(name, ".attn.bias") || ends_with(name, ".attn.masked_bias");
}

int ct_hf_gpt2_load(ct_gpt2 *m, const char *dir, char *err, size_t errlen)
{
    char path[4096];
    snprintf(path, sizeof path, "%s/model.safetensors", dir);
    struct stat sb;
    if (stat(path, &sb) != 0) {
        char other[4096];
        snprintf(other, sizeof other, "%s/model.safetensors.index.json", dir);
        if (stat(other, &sb) == 0)
            snprintf(err, errlen, "%s: sharded safetensors are not supported yet; save with a larger "
                     "max_shard_size", other);
        else
            snprintf(err, errlen, "%s: missing (ctrain reads Hugging Face safetensors; save the model with "
                     "save_pretrained(..., safe_serialization=True))", path);
        return -1;
    }
    ct_safetensors *st = NULL;
    if (ct_st_open(&st, path, err, errlen)) return -1;
    int rc = -1;
    size_t n = ct_gpt2_numel(m);
    float *host = calloc(n, sizeof(float));
    float *tmp = NULL;
    char *seen = calloc((size_t)ct_gpt2_num_tensors(m), 1);
    if (!host || !seen) {
        snprintf(err, errlen, "%s: out of memory", path);
        goto done;
    }
    for (int i = 0; i < ct_st_count(st); i++) {
        const ct_st_tensor *t = ct_st_at(st, i);
        const ct_param *p = ct_gpt2_find(m, t->name);
        if (!p && strncmp(t->name, "transformer.", 12)) {
            char full[256];
            snprintf(full, sizeof full, "transformer.%s", t->name);
            p = ct_gpt2_find(m, full);
        }
        if (!p) {
            if (ignorable(t->name)) continue;
            snprintf(err, errlen, "%s: tensor '%s': not part of a GPT-2 model with this config.json", path,
                     t->name);
            goto done;
        }
        int index = (int)(p - ct_gpt2_tensor(m, 0));
        if (seen[index]++) {
            snprintf(err, errlen, "%s: tensor '%s': given twice (with and without the 'transformer.' prefix)",
                     path, t->name);
            goto done;
        }
        int64_t want[2];
        hf_shape(p, want);
        int shape_ok = t->ndim == p->ndim && t->shape[0] == want[0] && (p->ndim == 1 || t->shape[1] == want[1]);
        if (!shape_ok) {
            char got[128] = "", *g = got;
            for (int d = 0; d < t->ndim && g < got + sizeof got - 24; d++)
                g += snprintf(g, 24, "%s%lld", d ? ", " : "", (long long)t->shape[d]);
            if (p->ndim == 1)
                snprintf(err, errlen, "%s: tensor '%s': shape [%s], config.json implies [%lld]", path, t->name, got,
                         (long long)want[0]);
            else
                snprintf(err, errlen, "%s: tensor '%s': shape [%s], config.json implies [%lld, %lld]", path,
                         t->name, got, (long long)want[0], (long long)want[1]);
            goto done;
        }
        float *dst = host + p->offset;
        if (p->conv1d) {
            free(tmp);
            tmp = malloc(p->numel * sizeof(float));
            if (!tmp) {
                snprintf(err, errlen, "%s: out of memory", path);
                goto done;
            }
            if (ct_st_read_f32(st, t, tmp, p->numel, err, errlen)) goto done;
            transpose(dst, tmp, p->shape[1], p->shape[0]);
        } else if (ct_st_read_f32(st, t, dst, p->numel, err, errlen)) {
            goto done;
        }
    }
    for (int i = 0; i < ct_gpt2_num_tensors(m); i++) {
        if (!seen[i]) {
            snprintf(err, errlen, "%s: tensor '%s': missing", path, ct_gpt2_tensor(m, i)->name);
            goto done;
        }
    }
    if (params_from_host(m, host)) {
        snprintf(err, errlen, "%s: out of memory uploading the weights", path);
        goto done;
    }
    rc = 0;
done:
    free(tmp);
    free(seen);
    free(host);
    ct_st_close(st);
    return rc;
}

static int write_config(const ct_gpt2_config *c, const char *dir, char *err, size_t errlen)
{
    char path[4096];
    snprintf(path, sizeof path, "%s/config.json", dir);
    cJSON *root = cJSON_CreateObject();
    cJSON *arch = cJSON_AddArrayToObject(root, "architectures");
    cJSON_AddItemToArray(arch, cJSON_CreateString("GPT2LMHeadModel"));
    cJSON_AddStringToObject(root, "model_type", "gpt2");
    cJSON_AddNumberToObject(root, "vocab_size", c->vocab_size);
    cJSON_AddNumberToObject(root, "n_positions", c->max_seq_len);
    cJSON_AddNumberToObject(root, "n_embd", c->n_embd);
    cJSON_AddNumberToObject(root, "n_layer", c->n_layer);
    cJSON_AddNumberToObject(root, "n_head", c->n_head);
    cJSON_AddNullToObject(root, "n_inner");
    cJSON_AddStringToObject(root, "activation_function", "gelu_new");
    cJSON_AddNumberToObject(root, "layer_norm_epsilon", c->ln_eps);
    cJSON_AddNumberToObject(root, "initializer_range", 0.02);
    /* ctrain trains without dropout; say so, so a model continued elsewhere behaves the same */
    cJSON_AddNumberToObject(root, "resid_pdrop", 0.0);
    cJSON_AddNumberToObject(root, "embd_pdrop", 0.0);
    cJSON_AddNumberToObject(root, "attn_pdrop", 0.0);
    cJSON_AddBoolToObject(root, "tie_word_embeddings", 1);
    /* the last token is end-of-text in GPT-2's vocabulary and in the byte tokenizer's */
    cJSON_AddNumberToObject(root, "bos_token_id", c->vocab_size - 1);
    cJSON_AddNumberToObject(root, "eos_token_id", c->vocab_size - 1);
    cJSON_AddStringToObject(root, "torch_dtype", "float32");
    char *text = cJSON_Print(root);
    cJSON_Delete(root);
    FILE *f = text ? fopen(path, "w") : NULL;
    int ok = f && fputs(text, f) >= 0 && fputc('\n', f) != EOF;
    if (f && fclose(f) != 0) ok = 0;
    free(text);
    if (!ok) {
        snprintf(err, errlen, "%s: cannot write: %s", path, strerror(errno));
        return -1;
    }
    return 0;
}

int ct_hf_gpt2_save(ct_gpt2 *m, const char *dir, char *err, size_t errlen)
{
    if (mkdir(dir, 0777) != 0 && errno != EEXIST) {
        snprintf(err, errlen, "%s: cannot create directory: %s", dir, strerror(errno));
        return -1;
    }
    if (write_config(ct_gpt2_config_of(m), dir, err, errlen)) return -1;
    int nt = ct_gpt2_num_tensors(m), rc = -1;
    float *host = params_to_host(m);
    ct_st_entry *entries = calloc((size_t)nt, sizeof *entries);
    float **transposed = calloc((size_t)nt, sizeof *transposed);
    char path[4096];
    snprintf(path, sizeof path, "%s/model.safetensors", dir);
    if (!host || !entries || !transposed) {
        snprintf(err, errlen, "%s: out of memory", path);
        goto done;
    }
    for (int i = 0; i < nt; i++) {
        const ct_param *p = ct_gpt2_tensor(m, i);
        ct_st_entry *e = &entries[i];
        e->name = p->name;
        e->ndim = p->ndim;
        hf_shape(p, e->shape);
        e->data = host + p->offset;
        if (p->conv1d) {
            transposed[i] = malloc(p->numel * sizeof(float));
            if (!transposed[i]) {
                snprintf(err, errlen, "%s: out of memory", path);
                goto done;
            }
            transpose(transposed[i], e->data, p->shape[0], p->shape[1]);
            e->data = transposed[i];
        }
    }
    static const char *const meta[] = {"format", "pt", NULL};
    rc = ct_st_write(path, entries, nt, CT_DT_F32, meta, err, errlen);
done:
    for (int i = 0; transposed && i < nt; i++) free(transposed[i]);
    free(transposed);
    free(entries);
    free(host);
    return rc;
}
