/* sample.c — autoregressive sampling with temperature and top-k, on the byte tokenizer. */
#include "sample.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "data.h"
#include "model.h"
#include "rng.h"
#include "run.h"

/* Picks a token from logits[V]: greedy at temperature 0, else softmax(logits / temperature)
 * restricted to the top_k largest (top_k 0: all). work[V] is scratch. */
static int pick(const float *logits, int V, double temperature, int top_k, ct_rng *rng, float *work)
{
    int best = 0;
    for (int v = 1; v < V; v++)
        if (logits[v] > logits[best]) best = v;
    if (temperature <= 0) return best;
    /* the k-th largest logit is the cut-off: everything below it gets probability 0 */
    float cut = -INFINITY;
    if (top_k > 0 && top_k < V) {
        memcpy(work, logits, sizeof(float) * V);
        for (int k = 0; k < top_k; k++) { /* partial selection sort: k small */
            int arg = k;
            for (int v = k + 1; v < V; v++)
                if (work[v] > work[arg]) arg = v;
            float t = work[k];
            work[k] = work[arg];
            work[arg] = t;
        }
        cut = work[top_k - 1];
    }
    double z = 0;
    for (int v = 0; v < V; v++) {
        work[v] = logits[v] >= cut ? (float)exp((logits[v] - logits[best]) / temperature) : 0.0f;
        z += work[v];
    }
    double u = ct_rng_uniform(rng) * z, acc = 0;
    for (int v = 0; v < V; v++) {
        acc += work[v];
        if (u < acc && work[v] > 0) return v;
    }
    return best;
}

/* The model to sample from, on this process's backend; -1 with err filled. */
static int sample_model(const ct_config *cfg, ct_comm *single, const ct_backend *be, ct_kctx *ctx, ct_model **m,
                        char *from, size_t fromlen, char *err, size_t errlen)
{
    ct_model_config probe;
    int is_ckpt;
    if (ct_run_model_source(cfg, CT_WEIGHTS_TRAINED, &probe, from, fromlen, &is_ckpt, err, errlen)) return -1;
    if (probe.vocab_size != CT_TOK_BYTES_VOCAB) {
        snprintf(err, errlen, "model: vocabulary of %d tokens; sample knows only the byte tokenizer (%d)",
                 probe.vocab_size, CT_TOK_BYTES_VOCAB);
        return -1;
    }
    /* one sequence of the model's full length */
    return ct_run_model(cfg, CT_WEIGHTS_TRAINED, be, ctx, 1, probe.max_seq_len, 1, single, m, from, fromlen, err,
                        errlen);
}

int ct_sample(const ct_config *cfg, FILE *out, char *err, size_t errlen)
{
    /* one process samples: a communicator of its own, for the device choice and the model */
    ct_comm *single = ct_comm_init_single();
    const ct_backend *be = NULL;
    ct_kctx *ctx = NULL;
    int device;
    ct_model *m = NULL;
    char from[CT_PATH_MAX + 64];
    int32_t *seq = NULL;
    float *logits = NULL, *work = NULL, *row = NULL;
    int rc = -1;
    if (!single) {
        snprintf(err, errlen, "out of memory");
        return -1;
    }
    if (ct_run_backend(cfg, single, &be, &ctx, &device, err, errlen) ||
        sample_model(cfg, single, be, ctx, &m, from, sizeof from, err, errlen))
        goto done;
    int T = ct_model_config_of(m)->max_seq_len;
    int V = ct_model_config_of(m)->vocab_size;
    size_t plen = strlen(cfg->sample.prompt);
    size_t cap = plen + (size_t)cfg->sample.max_tokens + 1;
    seq = malloc(sizeof(int32_t) * cap);
    logits = malloc(sizeof(float) * V);
    work = malloc(sizeof(float) * V);
    row = be->alloc(sizeof(float) * V); /* the last position's logits as fp32, backend memory */
    if (!seq || !logits || !work || !row) {
        snprintf(err, errlen, "out of memory");
        goto done;
    }
    size_t n = 0;
    if (plen) n = ct_tok_bytes_encode(cfg->sample.prompt, plen, seq);
    else seq[n++] = CT_TOK_BYTES_EOT; /* no prompt: start as a new document */
    fprintf(stderr, "ctrain: sampling from %s (temperature %g, top-k %d)\n", from, cfg->sample.temperature,
            cfg->sample.top_k);
    fwrite(cfg->sample.prompt, 1, plen, out);
    ct_rng rng;
    ct_rng_seed(&rng, (uint64_t)cfg->run.seed);
    for (int i = 0; i < cfg->sample.max_tokens; i++) {
        size_t len = n < (size_t)T ? n : (size_t)T; /* the model sees the last T tokens */
        if (ct_model_forward(m, seq + n - len, NULL, 1, (int)len, 0.0f, NULL, NULL, err, errlen)) goto done;
        be->to_f32(ctx, row, (const char *)ct_model_logits(m) + (len - 1) * ct_model_logits_stride(m) * be->elem_size,
                   V);
        be->download(ctx, logits, row, sizeof(float) * V);
        int next = pick(logits, V, cfg->sample.temperature, cfg->sample.top_k, &rng, work);
        if (next == CT_TOK_BYTES_EOT) break;
        seq[n++] = next;
        fputc(next, out);
        fflush(out);
    }
    fputc('\n', out);
    rc = 0;
done:
    free(seq);
    free(logits);
    free(work);
    if (row) be->free(row);
    ct_model_free(m);
    if (ctx) be->kctx_free(ctx);
    ct_comm_free(single);
    return rc;
}
