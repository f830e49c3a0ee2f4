/* sample.c — autoregressive sampling with temperature and top-k over a KV cache, on the byte
 * tokenizer or token ids. */
#include "sample.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "data.h"
#include "hf_config.h"
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

/* The model to sample from, on this process's backend, with room for `need` positions (the
 * prompt and what follows, at most the model's context); src receives the folder or file its
 * weights come from. -1 with err filled. */
static int sample_model(const ct_config *cfg, ct_comm *single, const ct_backend *be, ct_kctx *ctx, size_t need,
                        ct_model **m, ct_tokenizer **tok, char *src, char *from, size_t fromlen, char *err,
                        size_t errlen)
{
    ct_model_config probe;
    int is_ckpt;
    if (ct_run_model_source(cfg, CT_WEIGHTS_TRAINED, &probe, src, fromlen, &is_ckpt, err, errlen)) return -1;
    if (!strcmp(cfg->sample.format, "text") && ct_run_tokenizer(cfg, src, tok, err, errlen)) return -1;
    if (!strcmp(cfg->sample.format, "text") && ct_tokenizer_is_bytes(*tok) && probe.vocab_size < 256) {
        snprintf(err, errlen, "model: vocabulary of %d tokens; sample.format \"text\" speaks the byte tokenizer "
                 "(256 bytes and end-of-text) and the model's folder has no tokenizer.json: use sample.format \"ids\"",
                 probe.vocab_size);
        return -1;
    }
    int T = need < (size_t)probe.max_seq_len ? (int)need : probe.max_seq_len;
    return ct_run_model(cfg, CT_WEIGHTS_TRAINED, be, ctx, 1, T, 1, single, m, from, fromlen, err, errlen);
}

/* The prompt as tokens: with the model's tokenizer (its post-processor's BOS included), bytes of
 * the text, or the ids it lists (sample.format "ids"). */
static long encode_prompt(const ct_config *cfg, const ct_tokenizer *tok, int32_t *seq, size_t cap, int V, char *err,
                          size_t errlen)
{
    const char *p = cfg->sample.prompt;
    if (!strcmp(cfg->sample.format, "text") && !ct_tokenizer_is_bytes(tok)) {
        int32_t *ids = NULL;
        size_t icap = 0;
        long n = ct_tokenizer_encode(tok, p, strlen(p), 1, &ids, &icap, err, errlen);
        if (n > (long)cap) {
            snprintf(err, errlen, "sample.prompt: %ld tokens do not fit the %zu the sample holds", n, cap);
            n = -1;
        }
        if (n > 0) memcpy(seq, ids, (size_t)n * sizeof *seq);
        free(ids);
        return n;
    }
    if (!strcmp(cfg->sample.format, "text")) return (long)ct_tok_bytes_encode(p, strlen(p), seq);
    long n = 0;
    for (char *end; *p;) {
        while (*p == ' ' || *p == ',') p++;
        if (!*p) break;
        long id = strtol(p, &end, 10);
        if (end == p || id < 0 || id >= V) {
            snprintf(err, errlen, "sample.prompt: \"%.40s\" is not a token id below the vocabulary size %d", p, V);
            return -1;
        }
        seq[n++] = (int32_t)id;
        p = end;
    }
    return n;
}

/* The ids that end a sample: generation_config.json's or config.json's eos_token_id (one or a
 * list) in the model's folder or model.init_from, else the byte tokenizer's end-of-text; -1
 * with err when a file that says is malformed. */
static int eos_ids(const ct_config *cfg, const char *src, int V, int *eos, char *err, size_t errlen)
{
    int n = ct_hf_eos_ids(src, eos, CT_EOS_MAX, err, errlen);
    if (!n && cfg->model.init_from[0]) n = ct_hf_eos_ids(cfg->model.init_from, eos, CT_EOS_MAX, err, errlen);
    if (!n && V == CT_TOK_BYTES_VOCAB) eos[n++] = CT_TOK_BYTES_EOT;
    return n;
}

/* Prints the newest token: its id, its byte, or, with the model's tokenizer, the text of every
 * generated token decoded again (a token may complete a character or change how the previous
 * ones read) past what was printed, held back while it ends in an unfinished character (U+FFFD)
 * until `last` (the sample is over) flushes it. */
static void emit(FILE *out, int ids, const ct_tokenizer *tok, const int32_t *gen, size_t ngen, size_t *printed,
                 int last)
{
    int t = gen[ngen - 1];
    if (ids) fprintf(out, " %d", t);
    else if (ct_tokenizer_is_bytes(tok) && t < 256) fputc(t, out);
    else if (ct_tokenizer_is_bytes(tok)) fprintf(out, "<|%d|>", t);
    else {
        char err[256];
        size_t len = 0;
        char *text = ct_tokenizer_decode_n(tok, gen, ngen, 1, &len, err, sizeof err);
        int pending = len >= 3 && !memcmp(text + len - 3, "\xEF\xBF\xBD", 3);
        if (text && (!pending || last) && len > *printed) fwrite(text + *printed, 1, len - *printed, out), *printed = len;
        free(text);
    }
    fflush(out);
}

int ct_sample(const ct_config *cfg, FILE *out, char *err, size_t errlen)
{
    /* one process samples: a communicator of its own, for the device choice and the model */
    ct_comm *single = ct_comm_init_single();
    const ct_backend *be = NULL;
    ct_kctx *ctx = NULL;
    int device;
    ct_model *m = NULL;
    ct_tokenizer *tok = NULL;
    char from[CT_PATH_MAX + 64], src[CT_PATH_MAX + 64];
    int32_t *seq = NULL;
    float *logits = NULL, *work = NULL, *row = NULL;
    int rc = -1, ids = !strcmp(cfg->sample.format, "ids");
    if (!single) {
        snprintf(err, errlen, "out of memory");
        return -1;
    }
    size_t plen = strlen(cfg->sample.prompt);
    size_t cap = plen + 1 + (size_t)cfg->sample.max_tokens;
    if (ct_run_backend(cfg, single, &be, &ctx, &device, err, errlen) ||
        sample_model(cfg, single, be, ctx, cap, &m, &tok, src, from, sizeof from, err, errlen))
        goto done;
    int V = ct_model_config_of(m)->vocab_size, Vp = ct_model_logits_stride(m);
    int window = ct_model_max_tokens(m); /* positions the KV cache holds */
    int eos[CT_EOS_MAX], neos = eos_ids(cfg, src, V, eos, err, errlen);
    if (neos < 0) goto done;
    seq = malloc(sizeof(int32_t) * cap);
    logits = malloc(sizeof(float) * V);
    work = malloc(sizeof(float) * V);
    row = be->alloc(sizeof(float) * V); /* the newest position's logits as fp32, backend memory */
    if (!seq || !logits || !work || !row) {
        snprintf(err, errlen, "out of memory");
        goto done;
    }
    long n = encode_prompt(cfg, tok, seq, cap, V, err, errlen);
    if (n < 0) goto done;
    long prompt_n = n;
    size_t printed = 0;
    if (n == 0) seq[n++] = neos ? eos[0] : V - 1; /* no prompt: start as a new document */
    fprintf(stderr, "ctrain: sampling from %s (temperature %g, top-k %d, KV cache of %d positions, %s)\n", from,
            cfg->sample.temperature, cfg->sample.top_k, window,
            ids ? "token ids" : ct_tokenizer_is_bytes(tok) ? "bytes" : "the model's tokenizer.json");
    if (ids) fputs(cfg->sample.prompt, out);
    else fwrite(cfg->sample.prompt, 1, plen, out);
    ct_rng rng;
    ct_rng_seed(&rng, (uint64_t)cfg->run.seed);
    int cached = 0; /* the cache holds seq[n - 1 - cached .. n - 1) at positions 0 .. cached - 1 */
    for (int i = 0; i < cfg->sample.max_tokens; i++) {
        int fed; /* tokens this decode runs; the newest is its last row */
        if (cached == 0 || cached >= window) {
            /* the prompt, or, once the cache is full, the newest half window again from position 0 */
            long keep = cached == 0 ? (n < window ? n : window) : (window / 2 > 0 ? window / 2 : 1);
            if (ct_model_decode(m, seq + n - keep, 1, (int)keep, 0, err, errlen)) goto done;
            fed = (int)keep;
            cached = (int)keep;
        } else {
            if (ct_model_decode(m, seq + n - 1, 1, 1, cached, err, errlen)) goto done;
            fed = 1;
            cached++;
        }
        be->to_f32(ctx, row, (const char *)ct_model_logits(m) + (size_t)(fed - 1) * Vp * be->elem_size, V);
        be->download(ctx, logits, row, sizeof(float) * V);
        int next = pick(logits, V, cfg->sample.temperature, cfg->sample.top_k, &rng, work), stop = 0;
        for (int k = 0; k < neos; k++) stop |= next == eos[k];
        if (stop) break;
        seq[n++] = next;
        emit(out, ids, tok, seq + prompt_n, (size_t)(n - prompt_n), &printed, 0);
    }
    if (!ids && !ct_tokenizer_is_bytes(tok) && n > prompt_n) emit(out, ids, tok, seq + prompt_n, (size_t)(n - prompt_n), &printed, 1);
    fputc('\n', out);
    rc = 0;
done:
    free(seq);
    free(logits);
    free(work);
    if (row) be->free(row);
    ct_model_free(m);
    ct_tokenizer_free(tok);
    if (ctx) be->kctx_free(ctx);
    ct_comm_free(single);
    return rc;
}
