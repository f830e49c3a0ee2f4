/* hf_model.c — a model's weights to and from Hugging Face folders, tensor by tensor. */
#include "hf_model.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "hf_config.h"
#include "hf_weights.h"

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

static size_t largest(const ct_model *m)
{
    size_t n = 1;
    for (int i = 0; i < ct_model_num_tensors(m); i++)
        if (ct_model_tensor(m, i)->numel > n) n = ct_model_tensor(m, i)->numel;
    return n;
}

static int shape_error(const ct_st_tensor *t, const ct_param *p, const char *file, char *err, size_t errlen)
{
    int64_t want[2];
    hf_shape(p, want);
    if (t->ndim == p->ndim && t->shape[0] == want[0] && (p->ndim == 1 || t->shape[1] == want[1])) return 0;
    char got[128] = "", *g = got;
    for (int d = 0; d < t->ndim && g < got + sizeof got - 24; d++)
        g += snprintf(g, 24, "%s%lld", d ? ", " : "", (long long)t->shape[d]);
    if (p->ndim == 1)
        snprintf(err, errlen, "%s: tensor '%s': shape [%s], config.json implies [%lld]", file, t->name, got,
                 (long long)want[0]);
    else
        snprintf(err, errlen, "%s: tensor '%s': shape [%s], config.json implies [%lld, %lld]", file, t->name, got,
                 (long long)want[0], (long long)want[1]);
    return -1;
}

/* The parameter a file's tensor is, by its name or with the base-model prefix added. */
static const ct_param *param_of(const ct_model *m, const char *name)
{
    const ct_param *p = ct_model_find(m, name);
    const char *prefix = ct_model_hf_prefix(m);
    if (!p && strncmp(name, prefix, strlen(prefix))) {
        char full[256];
        snprintf(full, sizeof full, "%s%s", prefix, name);
        p = ct_model_find(m, full);
    }
    return p;
}

/* fp32 host data of the file's tensor t in ctrain's layout (tmp: scratch of the same size). */
static int read_tensor(ct_hf_weights *w, const ct_st_tensor *t, const ct_param *p, float *dst, float *tmp, char *err,
                       size_t errlen)
{
    if (!p->conv1d) return ct_hf_weights_read_f32(w, t, dst, p->numel, err, errlen);
    if (ct_hf_weights_read_f32(w, t, tmp, p->numel, err, errlen)) return -1;
    transpose(dst, tmp, p->shape[1], p->shape[0]);
    return 0;
}

/* A tied model's lm_head.weight, where the file has one, must be the embedding. */
static int check_tied_head(ct_model *m, ct_hf_weights *w, const ct_st_tensor *head, float *a, float *b, char *err,
                           size_t errlen)
{
    const ct_param *emb = ct_model_tensor(m, 0); /* every family's first tensor is the token embedding */
    const ct_st_tensor *et = ct_hf_weights_find(w, emb->name);
    if (!et) et = ct_hf_weights_find(w, emb->name + strlen(ct_model_hf_prefix(m)));
    const char *file = ct_hf_weights_file(w, head);
    if (shape_error(head, emb, file, err, errlen)) return -1;
    if (!et || read_tensor(w, et, emb, a, b, err, errlen) || ct_hf_weights_read_f32(w, head, b, emb->numel, err, errlen))
        return -1;
    if (memcmp(a, b, emb->numel * sizeof(float))) {
        snprintf(err, errlen, "%s: tensor '%s': differs from %s although the model ties them (tie_word_embeddings); "
                 "set tie_word_embeddings to false in config.json to train it as a separate head",
                 file, head->name, emb->name);
        return -1;
    }
    return 0;
}

static char *read_text(const char *path)
{
    FILE *f = fopen(path, "rb");
    if (!f) return NULL;
    char *text = NULL;
    if (fseek(f, 0, SEEK_END) == 0) {
        long n = ftell(f);
        if (n >= 0 && n < (16 << 20) && fseek(f, 0, SEEK_SET) == 0 && (text = malloc((size_t)n + 1))) {
            if (fread(text, 1, (size_t)n, f) != (size_t)n) free(text), text = NULL;
            else text[n] = 0;
        }
    }
    fclose(f);
    return text;
}

int ct_hf_load(ct_model *m, const char *dir, char *err, size_t errlen)
{
    ct_hf_weights *w = NULL;
    if (ct_hf_weights_open(&w, dir, err, errlen)) return -1;
    const ct_backend *be = ct_model_backend(m);
    ct_kctx *ctx = ct_model_kctx(m);
    int nt = ct_model_num_tensors(m), rc = -1;
    size_t big = largest(m);
    float *host = malloc(big * sizeof(float)), *tmp = malloc(big * sizeof(float));
    void *staged = be->alloc(big * sizeof(float));
    char *seen = calloc((size_t)nt, 1);
    if (!host || !tmp || !staged || !seen) {
        snprintf(err, errlen, "%s: out of memory loading the weights", dir);
        goto done;
    }
    for (int i = 0; i < ct_hf_weights_count(w); i++) {
        const ct_st_tensor *t = ct_hf_weights_at(w, i);
        const char *file = ct_hf_weights_file(w, t);
        const ct_param *p = param_of(m, t->name);
        if (!p) {
            if (ct_model_hf_ignorable(m, t->name)) continue;
            if (!strcmp(t->name, "lm_head.weight") && !ct_model_config_of(m)->untied) {
                if (check_tied_head(m, w, t, host, tmp, err, errlen)) goto done;
                continue;
            }
            snprintf(err, errlen, "%s: tensor '%s': not part of a %s model with this config.json", file, t->name,
                     ct_model_config_of(m)->model_type);
            goto done;
        }
        int index = (int)(p - ct_model_tensor(m, 0));
        if (seen[index]++) {
            snprintf(err, errlen, "%s: tensor '%s': given twice (with and without the '%s' prefix)", file, t->name,
                     ct_model_hf_prefix(m));
            goto done;
        }
        if (shape_error(t, p, file, err, errlen) || read_tensor(w, t, p, host, tmp, err, errlen)) goto done;
        be->upload(ctx, staged, host, p->numel * sizeof(float));
        ct_model_store(m, p->offset, staged, p->numel);
        be->sync(ctx); /* host and staged are reused by the next tensor */
    }
    for (int i = 0; i < nt; i++) {
        if (!seen[i]) {
            snprintf(err, errlen, "%s: tensor '%s': missing", dir, ct_model_tensor(m, i)->name);
            goto done;
        }
    }
    char path[4096];
    snprintf(path, sizeof path, "%s/config.json", dir);
    char *json = read_text(path);
    ct_model_set_hf_config(m, json, ct_hf_weights_dtype(w));
    free(json);
    rc = 0;
done:
    free(seen);
    free(host);
    free(tmp);
    if (staged) be->free(staged);
    ct_hf_weights_close(w);
    return rc;
}

typedef struct {
    ct_model *m;
    const int *index; /* output tensor -> model tensor */
    void *staged;     /* fp32, backend memory */
    float *tmp;
} fetch_ctx;

/* Tensor i of the save in fp32, Hugging Face layout. */
static int fetch(void *user, int i, float *dst, char *err, size_t errlen)
{
    fetch_ctx *f = user;
    const ct_backend *be = ct_model_backend(f->m);
    ct_kctx *ctx = ct_model_kctx(f->m);
    const ct_param *p = ct_model_tensor(f->m, f->index[i]);
    be->to_f32(ctx, f->staged, (char *)ct_model_params(f->m) + p->offset * be->elem_size, p->numel);
    be->download(ctx, p->conv1d ? f->tmp : dst, f->staged, p->numel * sizeof(float));
    if (p->conv1d) transpose(dst, f->tmp, p->shape[0], p->shape[1]);
    return 0;
}

int ct_hf_save(ct_model *m, const char *dir, const char *side_from, uint64_t max_shard_bytes, char *err,
               size_t errlen)
{
    if (mkdir(dir, 0777) != 0 && errno != EEXIST) {
        snprintf(err, errlen, "%s: cannot create directory: %s", dir, strerror(errno));
        return -1;
    }
    const ct_backend *be = ct_model_backend(m);
    int nt = ct_model_num_tensors(m), rc = -1;
    size_t big = largest(m);
    ct_hf_out_tensor *out = calloc((size_t)nt, sizeof *out);
    int *index = calloc((size_t)nt, sizeof *index);
    fetch_ctx f = {.m = m, .index = index, .staged = be->alloc(big * sizeof(float)), .tmp = malloc(big * sizeof(float))};
    char *config = ct_hf_config_text(ct_model_config_of(m), ct_model_hf_config(m));
    if (!out || !index || !f.staged || !f.tmp || !config) {
        snprintf(err, errlen, "%s: out of memory", dir);
        goto done;
    }
    for (int i = 0; i < nt; i++) {
        const ct_param *p = ct_model_tensor(m, i);
        out[i].name = p->name;
        out[i].ndim = p->ndim;
        hf_shape(p, out[i].shape);
        index[i] = i;
    }
    static const char *const meta[] = {"format", "pt", NULL};
    if (ct_hf_folder_write(dir, out, nt, (ct_dtype)ct_model_config_of(m)->dtype,
                           max_shard_bytes ? max_shard_bytes : CT_HF_SHARD_BYTES, fetch, &f, meta, config, side_from,
                           err, errlen))
        goto done;
    rc = 0;
done:
    free(config);
    free(out);
    free(index);
    free(f.tmp);
    if (f.staged) be->free(f.staged);
    return rc;
}
