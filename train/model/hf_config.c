/* hf_config.c — config.json to and from ct_model_config; the family list. */
#include "hf_config.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "arch.h"
#include "json_check.h"
#include "json_file.h"
#include "safetensors.h"

/* Every family ctrain runs. A new one is a file like llama.c and a line here. */
static const ct_arch *const arches[] = {&ct_arch_gpt2, &ct_arch_llama};
#define NARCH (int)(sizeof arches / sizeof arches[0])

const ct_arch *ct_arch_by_name(const char *name)
{
    for (int i = 0; i < NARCH; i++)
        if (!strcmp(arches[i]->name, name)) return arches[i];
    return NULL;
}

const ct_arch *ct_arch_by_model_type(const char *model_type)
{
    for (int i = 0; i < NARCH; i++)
        for (const char *const *t = arches[i]->model_types; *t; t++)
            if (!strcmp(*t, model_type)) return arches[i];
    return NULL;
}

const char *ct_arch_model_types(void)
{
    static char list[256];
    if (!list[0])
        for (int i = 0; i < NARCH; i++)
            for (const char *const *t = arches[i]->model_types; *t; t++)
                snprintf(list + strlen(list), sizeof list - strlen(list), "%s%s", list[0] ? ", " : "", *t);
    return list;
}

/* ---------------------------------------------------------------- typed readers */

static const cJSON *item(const cJSON *root, const char *key)
{
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(root, key);
    return v && !cJSON_IsNull(v) ? v : NULL;
}

static int whole(const cJSON *v) { return cJSON_IsNumber(v) && v->valuedouble == floor(v->valuedouble) && fabs(v->valuedouble) < 2e9; }

/* v as an int in [lo, max]; the error names the key and, past max, the limit. */
static int int_in(const cJSON *v, const char *key, int lo, int max, int *out, const char *path, char *err,
                  size_t errlen)
{
    int integral = cJSON_IsNumber(v) && isfinite(v->valuedouble) && v->valuedouble == floor(v->valuedouble);
    if (integral && v->valuedouble > max)
        return snprintf(err, errlen, "%s: %s: %.17g is more than ctrain's limit of %d", path, key, v->valuedouble, max),
               -1;
    if (!integral || v->valuedouble < lo)
        return snprintf(err, errlen, "%s: %s: expected a %s integer", path, key, lo ? "positive" : "non-negative"), -1;
    *out = (int)v->valuedouble;
    return 0;
}

int ct_hfc_int(const cJSON *root, const char *key, const char *alt, int max, int *out, const char *path, char *err,
               size_t errlen)
{
    const cJSON *v = item(root, key);
    if (!v && alt) v = item(root, alt), key = v ? alt : key;
    if (!v) return snprintf(err, errlen, "%s: %s: missing", path, key), -1;
    return int_in(v, key, 1, max, out, path, err, errlen);
}

int ct_hfc_int_opt(const cJSON *root, const char *key, int dflt, int max, int *out, const char *path, char *err,
                   size_t errlen)
{
    const cJSON *v = item(root, key);
    *out = dflt;
    if (!v) return 0;
    return int_in(v, key, 0, max, out, path, err, errlen);
}

int ct_hfc_double(const cJSON *root, const char *key, double dflt, double *out, const char *path, char *err,
                  size_t errlen)
{
    const cJSON *v = item(root, key);
    *out = dflt;
    if (!v) return 0;
    if (!cJSON_IsNumber(v) || !(v->valuedouble > 0) || !isfinite(v->valuedouble))
        return snprintf(err, errlen, "%s: %s: expected a positive number", path, key), -1;
    *out = v->valuedouble;
    return 0;
}

int ct_hfc_float(const cJSON *root, const char *key, double dflt, float *out, const char *path, char *err,
                 size_t errlen)
{
    double d;
    if (ct_hfc_double(root, key, dflt, &d, path, err, errlen)) return -1;
    *out = (float)d;
    return 0;
}

int ct_hfc_bool(const cJSON *root, const char *key, int dflt, int *out, const char *path, char *err, size_t errlen)
{
    const cJSON *v = item(root, key);
    *out = dflt;
    if (!v) return 0;
    if (!cJSON_IsBool(v)) return snprintf(err, errlen, "%s: %s: expected true or false", path, key), -1;
    *out = cJSON_IsTrue(v);
    return 0;
}

int ct_hfc_bool_is(const cJSON *root, const char *key, int want, const char *path, char *err, size_t errlen)
{
    int got;
    if (ct_hfc_bool(root, key, want, &got, path, err, errlen)) return -1;
    if (got != want) return snprintf(err, errlen, "%s: %s: only %s is supported", path, key, want ? "true" : "false"), -1;
    return 0;
}

int ct_hfc_one_of(const cJSON *root, const char *key, const char *const *allowed, const char *path, char *err,
                  size_t errlen)
{
    const cJSON *v = item(root, key);
    if (!v) return 0;
    for (const char *const *a = allowed; cJSON_IsString(v) && *a; a++)
        if (!strcmp(v->valuestring, *a)) return 0;
    char list[256] = "";
    for (const char *const *a = allowed; *a; a++)
        snprintf(list + strlen(list), sizeof list - strlen(list), "%s\"%s\"", list[0] ? ", " : "", *a);
    char *shown = cJSON_PrintUnformatted(v);
    snprintf(err, errlen, "%s: %s: %s is not supported (ctrain runs %s)", path, key, shown ? shown : "?", list);
    free(shown);
    return -1;
}

double ct_hfc_short(float f)
{
    char buf[32];
    for (int digits = 1; digits < 10; digits++) {
        snprintf(buf, sizeof buf, "%.*g", digits, (double)f);
        if ((float)strtod(buf, NULL) == f) break;
    }
    return strtod(buf, NULL);
}

void ct_hfc_set(cJSON *root, const char *key, cJSON *value)
{
    if (cJSON_GetObjectItemCaseSensitive(root, key)) cJSON_ReplaceItemInObjectCaseSensitive(root, key, value);
    else cJSON_AddItemToObject(root, key, value);
}

/* ---------------------------------------------------------------- whole configs */

static const char *const dtype_names[] = {"float32", "bfloat16", "float16", NULL};

/* torch_dtype (transformers 4) or dtype (5): the dtype the weights are published in */
static int read_dtype(const cJSON *root, const char *path, int *out, char *err, size_t errlen)
{
    const char *key = item(root, "dtype") ? "dtype" : "torch_dtype";
    if (ct_hfc_one_of(root, key, dtype_names, path, err, errlen)) return -1;
    const cJSON *v = item(root, key);
    *out = !v || !strcmp(v->valuestring, "float32") ? CT_DT_F32 : !strcmp(v->valuestring, "bfloat16") ? CT_DT_BF16
                                                                                                       : CT_DT_F16;
    return 0;
}

int ct_hf_config_parse(const cJSON *root, const char *path, ct_model_config *c, char *err, size_t errlen)
{
    memset(c, 0, sizeof *c);
    if (!cJSON_IsObject(root)) return snprintf(err, errlen, "%s: expected a JSON object", path), -1;
    const cJSON *mt = item(root, "model_type");
    /* older GPT-2 files have no model_type */
    const char *type = !mt ? "gpt2" : cJSON_IsString(mt) ? mt->valuestring : "";
    c->arch = ct_arch_by_model_type(type);
    if (!c->arch) {
        char *shown = cJSON_PrintUnformatted(mt);
        snprintf(err, errlen, "%s: model_type: %s is not a family ctrain runs (%s)", path, shown ? shown : "?",
                 ct_arch_model_types());
        free(shown);
        return -1;
    }
    snprintf(c->model_type, sizeof c->model_type, "%s", type);
    if (read_dtype(root, path, &c->dtype, err, errlen) || c->arch->read_hf_config(root, path, c, err, errlen))
        return -1;
    char cerr[256];
    if (ct_model_config_check(c, cerr, sizeof cerr)) return snprintf(err, errlen, "%s: %s", path, cerr), -1;
    return 0;
}

int ct_hf_config_parse_text(const char *text, const char *name, ct_model_config *c, char *err, size_t errlen)
{
    cJSON *root = cJSON_Parse(text);
    if (!root) return snprintf(err, errlen, "%s: malformed model config JSON", name), -1;
    int rc = ct_json_check(text, strlen(text), root, name, err, errlen);
    if (rc == 0) rc = ct_hf_config_parse(root, name, c, err, errlen);
    cJSON_Delete(root);
    return rc;
}

int ct_hf_read_config(const char *dir, ct_model_config *c, char *err, size_t errlen)
{
    char path[4096];
    snprintf(path, sizeof path, "%s/config.json", dir);
    cJSON *root = ct_json_load(path, 16 << 20, err, errlen);
    if (!root) return -1;
    int rc = ct_hf_config_parse(root, path, c, err, errlen);
    cJSON_Delete(root);
    return rc;
}

char *ct_hf_config_text(const ct_model_config *c, const char *source)
{
    cJSON *root = source ? cJSON_Parse(source) : NULL;
    const char *dtype = c->dtype == CT_DT_BF16 ? "bfloat16" : c->dtype == CT_DT_F16 ? "float16" : "float32";
    if (root) {
        /* carried over: only the dtype the weights are now written in can differ */
        int v5 = cJSON_GetObjectItemCaseSensitive(root, "dtype") != NULL;
        ct_hfc_set(root, v5 ? "dtype" : "torch_dtype", cJSON_CreateString(dtype));
    } else {
        root = cJSON_CreateObject();
        if (!root) return NULL;
        c->arch->write_hf_config(root, c);
        /* the last token is end-of-text in the byte tokenizer's vocabulary (and GPT-2's) */
        ct_hfc_set(root, "bos_token_id", cJSON_CreateNumber(c->vocab_size - 1));
        ct_hfc_set(root, "eos_token_id", cJSON_CreateNumber(c->vocab_size - 1));
        ct_hfc_set(root, "torch_dtype", cJSON_CreateString(dtype));
    }
    char *text = cJSON_Print(root);
    cJSON_Delete(root);
    return text;
}

/* eos_token_id of a JSON file: how many ids (at most max), 0 when the file or the key is
 * absent, -1 with err when the file is unreadable or the key not an id or a list of ids. */
static int eos_from(const char *path, int *ids, int max, char *err, size_t errlen)
{
    FILE *f = fopen(path, "rb");
    if (!f) return 0;
    fclose(f);
    cJSON *root = ct_json_load(path, 1 << 20, err, errlen);
    if (!root) return -1;
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(root, "eos_token_id"), *e;
    int n = 0, ok = !v || cJSON_IsNull(v) || (whole(v) && v->valuedouble >= 0) || cJSON_IsArray(v);
    if (ok && whole(v)) ids[n++] = (int)v->valuedouble;
    if (ok && cJSON_IsArray(v))
        cJSON_ArrayForEach(e, v)
        {
            if (!whole(e) || e->valuedouble < 0) ok = 0;
            else if (n < max) ids[n++] = (int)e->valuedouble;
        }
    cJSON_Delete(root);
    if (!ok) return snprintf(err, errlen, "%s: eos_token_id: expected a token id or a list of them", path), -1;
    return n;
}

int ct_hf_eos_ids(const char *dir, int *ids, int max, char *err, size_t errlen)
{
    char path[4096];
    snprintf(path, sizeof path, "%s/generation_config.json", dir);
    int n = eos_from(path, ids, max, err, errlen);
    if (n) return n;
    snprintf(path, sizeof path, "%s/config.json", dir);
    return eos_from(path, ids, max, err, errlen);
}
