/* sample.c — autoregressive sampling with temperature and top-k over a KV cache, in the model's
 * tokenizer, bytes or token ids (`ctrain sample`), and conversations in the model's chat template
 * (`ctrain chat`). */
#include "sample.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

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
    return ct_run_model(cfg, CT_WEIGHTS_TRAINED, be, ctx, 1, T, 1, -1, single, m, from, fromlen, err, errlen);
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

/* ---- the generator: one sequence, its KV cache, and sampling */
typedef struct {
    const ct_config *cfg;
    ct_comm *single;
    const ct_backend *be;
    ct_kctx *ctx;
    ct_model *m;
    ct_tokenizer *tok;
    char from[CT_PATH_MAX + 64], src[CT_PATH_MAX + 64];
    int V, Vp, window;           /* window: positions the KV cache holds */
    int eos[CT_EOS_MAX], neos;   /* the ids that end a sample */
    float *logits, *work, *row;  /* row: the newest position's logits as fp32, backend memory */
    ct_rng rng;
    long base, cached;           /* the cache holds seq[base .. base + cached) at positions 0 .. cached - 1 */
} gen;

static void gen_free(gen *g)
{
    free(g->logits);
    free(g->work);
    if (g->row) g->be->free(g->row);
    ct_model_free(g->m);
    ct_tokenizer_free(g->tok);
    if (g->ctx) g->be->kctx_free(g->ctx);
    ct_comm_free(g->single);
}

/* The backend, the model with room for `need` positions, its tokenizer and stop ids. */
static int gen_init(gen *g, const ct_config *cfg, size_t need, char *err, size_t errlen)
{
    memset(g, 0, sizeof *g);
    g->cfg = cfg;
    int device;
    /* one process samples: a communicator of its own, for the device choice and the model */
    if (!(g->single = ct_comm_init_single())) {
        snprintf(err, errlen, "out of memory");
        return -1;
    }
    if (ct_run_backend(cfg, g->single, &g->be, &g->ctx, &device, err, errlen) ||
        sample_model(cfg, g->single, g->be, g->ctx, need, &g->m, &g->tok, g->src, g->from, sizeof g->from, err, errlen))
        return -1;
    g->V = ct_model_config_of(g->m)->vocab_size;
    g->Vp = ct_model_logits_stride(g->m);
    g->window = ct_model_max_tokens(g->m);
    if ((g->neos = eos_ids(cfg, g->src, g->V, g->eos, err, errlen)) < 0) return -1;
    g->logits = malloc(sizeof(float) * g->V);
    g->work = malloc(sizeof(float) * g->V);
    g->row = g->be->alloc(sizeof(float) * g->V);
    if (!g->logits || !g->work || !g->row) {
        snprintf(err, errlen, "out of memory");
        return -1;
    }
    ct_rng_seed(&g->rng, (uint64_t)cfg->run.seed);
    return 0;
}

/* Where the cache stands for a new sequence whose first `same` tokens equal the old one's: the
 * cached positions past them are stale (decode overwrites them). */
static void gen_keep(gen *g, long same)
{
    if (g->base != 0 || same <= 0) g->base = g->cached = 0;
    else if (g->cached > same) g->cached = same;
}

/* Runs the tokens of seq[0 .. n) the cache lacks and picks the next one. Once the cache is full,
 * the newest half window starts again from position 0. */
static int gen_next(gen *g, const int32_t *seq, long n, int *next, char *err, size_t errlen)
{
    if (g->cached >= n - g->base) g->cached = n - g->base - 1; /* at least one token runs: its logits */
    if (n - g->base > g->window) { /* a prompt longer than the cache keeps its tail; a full cache half */
        long keep = g->cached == 0 ? g->window : g->window / 2 > 0 ? g->window / 2 : 1;
        g->base = n - keep;
        g->cached = 0;
    }
    int fed = (int)(n - g->base - g->cached);
    if (ct_model_decode(g->m, seq + g->base + g->cached, 1, fed, (int)g->cached, err, errlen)) return -1;
    g->cached += fed;
    const ct_backend *be = g->be;
    be->to_f32(g->ctx, g->row, (const char *)ct_model_logits(g->m) + (size_t)(fed - 1) * g->Vp * be->elem_size, g->V);
    be->download(g->ctx, g->logits, g->row, sizeof(float) * g->V);
    *next = pick(g->logits, g->V, g->cfg->sample.temperature, g->cfg->sample.top_k, &g->rng, g->work);
    return 0;
}

/* Extends seq[0 .. *n) (capacity cap) by at most max tokens, stopping before any of stop[nstop]
 * or the model's eos; prints each as it comes (emit). Returns the number added, -1 on error. */
static long gen_run(gen *g, int32_t *seq, long *n, size_t cap, int max, const int32_t *stop, int nstop, FILE *out,
                    int ids, char *err, size_t errlen)
{
    long start = *n;
    size_t printed = 0;
    for (int i = 0; i < max && (size_t)*n < cap; i++) {
        int next, halt = 0;
        if (gen_next(g, seq, *n, &next, err, errlen)) return -1;
        for (int k = 0; k < g->neos; k++) halt |= next == g->eos[k];
        for (int k = 0; k < nstop; k++) halt |= next == stop[k];
        if (halt) break;
        seq[(*n)++] = next;
        emit(out, ids, g->tok, seq + start, (size_t)(*n - start), &printed, 0);
    }
    if (!ids && !ct_tokenizer_is_bytes(g->tok) && *n > start) emit(out, ids, g->tok, seq + start, (size_t)(*n - start), &printed, 1);
    return *n - start;
}

int ct_sample(const ct_config *cfg, FILE *out, char *err, size_t errlen)
{
    gen g;
    int32_t *seq = NULL;
    int rc = -1, ids = !strcmp(cfg->sample.format, "ids");
    size_t plen = strlen(cfg->sample.prompt);
    size_t cap = plen + 1 + (size_t)cfg->sample.max_tokens;
    if (gen_init(&g, cfg, cap, err, errlen)) goto done;
    if (!(seq = malloc(sizeof(int32_t) * cap))) {
        snprintf(err, errlen, "out of memory");
        goto done;
    }
    long n = encode_prompt(cfg, g.tok, seq, cap, g.V, err, errlen);
    if (n < 0) goto done;
    if (n == 0) seq[n++] = g.neos ? g.eos[0] : g.V - 1; /* no prompt: start as a new document */
    fprintf(stderr, "ctrain: sampling from %s (temperature %g, top-k %d, KV cache of %d positions, %s)\n", g.from,
            cfg->sample.temperature, cfg->sample.top_k, g.window,
            ids ? "token ids" : ct_tokenizer_is_bytes(g.tok) ? "bytes" : "the model's tokenizer.json");
    if (ids) fputs(cfg->sample.prompt, out);
    else fwrite(cfg->sample.prompt, 1, plen, out);
    if (gen_run(&g, seq, &n, cap, cfg->sample.max_tokens, NULL, 0, out, ids, err, errlen) < 0) goto done;
    fputc('\n', out);
    rc = 0;
done:
    free(seq);
    gen_free(&g);
    return rc;
}

/* ---- ctrain chat */
typedef struct {
    ct_chat_message *v;
    int n, cap;
} conversation;

static int conv_add(conversation *c, const char *role, const char *content)
{
    if (c->n == c->cap) {
        int cap = c->cap ? 2 * c->cap : 16;
        ct_chat_message *g = realloc(c->v, (size_t)cap * sizeof *g);
        if (!g) return -1;
        c->v = g, c->cap = cap;
    }
    char *r = strdup(role), *t = strdup(content);
    if (!r || !t) return free(r), free(t), -1;
    c->v[c->n++] = (ct_chat_message){r, t};
    return 0;
}

/* Drops messages [i, i + k). */
static void conv_drop(conversation *c, int i, int k)
{
    for (int j = i; j < i + k; j++) free((char *)c->v[j].role), free((char *)c->v[j].content);
    memmove(c->v + i, c->v + i + k, (size_t)(c->n - i - k) * sizeof *c->v);
    c->n -= k;
}

int ct_chat(const ct_config *cfg, FILE *in, FILE *out, char *err, size_t errlen)
{
    gen g;
    ct_chat_template *tpl = NULL;
    conversation conv = {0};
    int32_t *seq = NULL, *ids = NULL, stop[16];
    uint8_t *mask = NULL;
    size_t icap = 0, cap = 0;
    char *line = NULL;
    size_t linecap = 0;
    long n = 0;
    int rc = -1, tty = isatty(fileno(in));
    /* the context: data.seq_len, at least 1024, at most the model's (the KV cache and the logits
     * of a whole prompt are allocated for it) */
    if (gen_init(&g, cfg, cfg->data.seq_len > 1024 ? (size_t)cfg->data.seq_len : 1024, err, errlen)) goto done;
    if (!strcmp(cfg->sample.format, "ids")) {
        snprintf(err, errlen, "sample.format: \"ids\": ctrain chat speaks text");
        goto done;
    }
    if (ct_run_chat_template(cfg, g.src, g.tok, &tpl, err, errlen)) goto done;
    int nstop = ct_chat_template_stop_ids(tpl, stop, 16);
    cap = (size_t)g.window;
    if (!(seq = malloc(cap * sizeof *seq))) goto oom;
    if (cfg->sample.system[0] && conv_add(&conv, "system", cfg->sample.system)) goto oom;
    fprintf(stderr, "ctrain: chatting with %s (template %s, temperature %g, top-k %d, context %d); /reset starts over, "
            "/exit ends\n", g.from, ct_chat_template_name(tpl), cfg->sample.temperature, cfg->sample.top_k, g.window);
    for (;;) {
        if (tty) fputs("> ", stderr);
        ssize_t len = getline(&line, &linecap, in);
        if (len < 0) break;
        while (len > 0 && (line[len - 1] == '\n' || line[len - 1] == '\r')) line[--len] = 0;
        if (!strcmp(line, "/exit")) break;
        if (!strcmp(line, "/reset")) {
            int keep = conv.n && !strcmp(conv.v[0].role, "system");
            conv_drop(&conv, keep, conv.n - keep);
            continue;
        }
        if (!len) continue;
        if (conv_add(&conv, "user", line)) goto oom;
        long k;
        for (;;) { /* render; drop the oldest exchange while the reply would not fit the context */
            k = ct_chat_render(tpl, g.tok, conv.v, conv.n, 1, 0, &ids, &mask, &icap, err, errlen);
            if (k < 0) goto done;
            int first = conv.n && !strcmp(conv.v[0].role, "system");
            if (k + cfg->sample.max_tokens <= (long)cap || conv.n - first < 3) break;
            conv_drop(&conv, first, 2);
            fprintf(stderr, "ctrain: the conversation outgrew the context: its oldest exchange is dropped\n");
        }
        if (k >= (long)cap) {
            snprintf(err, errlen, "chat: the message (%ld tokens with the template) does not fit the model's context "
                     "of %zu", k, cap);
            goto done;
        }
        long same = 0;
        while (same < n && same < k && seq[same] == ids[same]) same++;
        gen_keep(&g, same);
        memcpy(seq, ids, (size_t)k * sizeof *seq);
        n = k;
        int room = (int)(cap - (size_t)n) < cfg->sample.max_tokens ? (int)(cap - (size_t)n) : cfg->sample.max_tokens;
        long got = gen_run(&g, seq, &n, cap, room, stop, nstop, out, 0, err, errlen);
        if (got < 0) goto done;
        fputc('\n', out);
        fflush(out);
        size_t rlen = 0; /* a byte-level model may write invalid UTF-8: the template takes only valid text */
        char *raw = ct_tokenizer_decode_n(g.tok, seq + k, (size_t)got, 1, &rlen, err, errlen);
        if (!raw) goto done;
        char *reply = ct_utf8_lossy(raw, rlen);
        free(raw);
        int bad = !reply || conv_add(&conv, "assistant", reply);
        free(reply);
        if (bad) goto oom;
    }
    rc = 0;
    goto done;
oom:
    snprintf(err, errlen, "chat: out of memory");
done:
    free(line);
    free(seq);
    free(ids);
    free(mask);
    while (conv.n) conv_drop(&conv, conv.n - 1, 1);
    free(conv.v);
    ct_chat_template_free(tpl);
    gen_free(&g);
    return rc;
}
