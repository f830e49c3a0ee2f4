/* prepare_sft.c — the `prepare` step for supervised fine-tuning: JSON Lines of prompt/response
 * pairs or chat messages in, packed train and val token datasets out, rendered in the model's
 * chat template with its tokenizer, with a loss mask on exactly the tokens the model should learn
 * to write.
 *
 * Three passes, so that nothing is written unless the whole file is good: parse and render
 * every line into one token stream (remembering where each example starts), split the examples
 * into train and val, then pack each part into windows of seq_len+1 tokens and write it. */
#include "data.h"
#include "data_impl.h"
#include "json_check.h"

#include <cjson/cJSON.h>

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

/* A growable token stream with its loss mask. */
typedef struct {
    uint32_t *tok;
    uint8_t *mask;
    size_t n, cap;
} stream;

/* One rendered example: tokens [start, start + len) of the rendered stream. */
typedef struct {
    size_t start, len;
} example;

static void stream_free(stream *s)
{
    free(s->tok);
    free(s->mask);
    s->tok = NULL;
    s->mask = NULL;
    s->n = s->cap = 0;
}

/* Room for more tokens; 0 or -1 (out of memory, s unchanged). */
static int stream_reserve(stream *s, size_t more)
{
    if (s->cap - s->n >= more) return 0;
    size_t cap = s->cap ? s->cap : 4096;
    while (cap - s->n < more) cap *= 2;
    uint32_t *tok = realloc(s->tok, cap * sizeof *tok);
    if (!tok) return -1;
    s->tok = tok;
    uint8_t *mask = realloc(s->mask, cap);
    if (!mask) return -1;
    s->mask = mask;
    s->cap = cap;
    return 0;
}

/* Appends count padding tokens (id pad) with mask m. */
static int put_pad(stream *s, size_t count, uint32_t pad, uint8_t m)
{
    if (stream_reserve(s, count)) return -1;
    for (size_t i = 0; i < count; i++) s->tok[s->n + i] = pad;
    memset(s->mask + s->n, m, count);
    s->n += count;
    return 0;
}

static const char *type_name(const cJSON *v)
{
    if (cJSON_IsString(v)) return "a string";
    if (cJSON_IsNumber(v)) return "a number";
    if (cJSON_IsBool(v)) return "a boolean";
    if (cJSON_IsNull(v)) return "null";
    if (cJSON_IsArray(v)) return "an array";
    if (cJSON_IsObject(v)) return "an object";
    return "an invalid value";
}

/* Where one line's parse and render stand; for messages naming file, line and field. */
typedef struct {
    const char *path;
    long line;
    char *err;
    size_t errlen;
    const ct_sft_opts *o;
    ct_chat_message *msgs; /* this line's conversation (strings borrowed from its JSON) */
    int nmsgs, msgcap;
    int32_t *ids;          /* its rendering */
    uint8_t *mask;
    size_t idcap;
} ctx;

static int oom(const ctx *c) { return ct_data_fail(c->err, c->errlen, "%s: line %ld: out of memory", c->path, c->line); }

/* The string member name of obj (field names the place in messages); NULL with a message when
 * it is missing or not a string. */
static const char *get_string(const ctx *c, const cJSON *obj, const char *name, const char *field, const char *why)
{
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(obj, name);
    if (!v) {
        ct_data_fail(c->err, c->errlen, "%s: line %ld: %s: missing (%s)", c->path, c->line, field, why);
        return NULL;
    }
    if (!cJSON_IsString(v) || !v->valuestring) {
        ct_data_fail(c->err, c->errlen, "%s: line %ld: %s: is %s; must be a string", c->path, c->line, field,
                     type_name(v));
        return NULL;
    }
    return v->valuestring;
}

static int push_msg(ctx *c, const char *role, const char *content)
{
    if (c->nmsgs == c->msgcap) {
        int cap = c->msgcap ? 2 * c->msgcap : 8;
        ct_chat_message *g = realloc(c->msgs, (size_t)cap * sizeof *g);
        if (!g) return oom(c);
        c->msgs = g, c->msgcap = cap;
    }
    c->msgs[c->nmsgs++] = (ct_chat_message){role, content};
    return 0;
}

/* {"prompt": ..., "response": ...}: a user turn and the assistant's answer */
static int collect_pair(ctx *c, const cJSON *ex, size_t *learned)
{
    const char *prompt = get_string(c, ex, "prompt", "prompt", "a response needs the prompt it answers");
    if (!prompt) return -1;
    const char *response = get_string(c, ex, "response", "response", "a prompt needs a response to learn");
    if (!response) return -1;
    *learned = strlen(response);
    return push_msg(c, "user", prompt) || push_msg(c, "assistant", response) ? -1 : 0;
}

/* {"messages": [{"role": ..., "content": ...}, ...]}; the template judges the order of roles */
static int collect_messages(ctx *c, const cJSON *msgs, size_t *learned)
{
    if (!cJSON_IsArray(msgs))
        return ct_data_fail(c->err, c->errlen, "%s: line %ld: messages: is %s; must be an array of {\"role\", \"content\"}",
                            c->path, c->line, type_name(msgs));
    int i = 0;
    size_t total = 0;
    const cJSON *m;
    cJSON_ArrayForEach(m, msgs)
    {
        char field[64];
        if (!cJSON_IsObject(m))
            return ct_data_fail(c->err, c->errlen, "%s: line %ld: messages[%d]: is %s; must be an object with \"role\" and \"content\"",
                                c->path, c->line, i, type_name(m));
        snprintf(field, sizeof field, "messages[%d].role", i);
        const char *role = get_string(c, m, "role", field, "one of system, user, assistant");
        if (!role) return -1;
        if (strcmp(role, "system") && strcmp(role, "user") && strcmp(role, "assistant"))
            return ct_data_fail(c->err, c->errlen, "%s: line %ld: %s: unknown role \"%.40s\"; must be system, user or assistant",
                                c->path, c->line, field, role);
        snprintf(field, sizeof field, "messages[%d].content", i);
        const char *content = get_string(c, m, "content", field, "the text of the message");
        if (!content) return -1;
        if (!strcmp(role, "assistant")) total += strlen(content);
        if (push_msg(c, role, content)) return -1;
        i++;
    }
    *learned = total;
    return 0;
}

/* Parses one non-blank line (NUL-terminated in place) and appends its rendering to s. */
static int render_line(ctx *c, const char *line, int seq_len, stream *s, example *out)
{
    const char *end = NULL;
    cJSON *ex = cJSON_ParseWithOpts(line, &end, 1);
    if (!ex) {
        long col = end && end >= line ? (long)(end - line) + 1 : 0;
        char near[24] = {0};
        size_t k = 0;
        for (const char *p = end && end >= line ? end : line; *p && k < 16; p++) near[k++] = (*p < 32) ? ' ' : *p;
        if (col > 0)
            return ct_data_fail(c->err, c->errlen, "%s: line %ld, column %ld: malformed JSON near \"%s\"", c->path, c->line,
                                col, near);
        return ct_data_fail(c->err, c->errlen, "%s: line %ld: malformed JSON", c->path, c->line);
    }
    int rc = -1;
    size_t start = s->n, learned = 0;
    c->nmsgs = 0;
    char where[4200];
    snprintf(where, sizeof where, "%s: line %ld", c->path, c->line);
    if (ct_json_check(line, strlen(line), ex, where, c->err, c->errlen)) goto out;
    if (!cJSON_IsObject(ex)) {
        ct_data_fail(c->err, c->errlen,
                     "%s: line %ld: example is %s; each line must be an object with \"prompt\" and \"response\", or "
                     "\"messages\"",
                     c->path, c->line, type_name(ex));
        goto out;
    }
    const cJSON *msgs = cJSON_GetObjectItemCaseSensitive(ex, "messages");
    int has_pair = cJSON_HasObjectItem(ex, "prompt") || cJSON_HasObjectItem(ex, "response");
    if (msgs && has_pair) {
        ct_data_fail(c->err, c->errlen, "%s: line %ld: messages: given together with prompt/response; use one form per example",
                     c->path, c->line);
        goto out;
    }
    if (!msgs && !has_pair) {
        ct_data_fail(c->err, c->errlen,
                     "%s: line %ld: prompt/response or messages: neither is present; an example is "
                     "{\"prompt\": ..., \"response\": ...} or {\"messages\": [{\"role\": ..., \"content\": ...}, ...]}",
                     c->path, c->line);
        goto out;
    }
    if (msgs ? collect_messages(c, msgs, &learned) : collect_pair(c, ex, &learned)) goto out;
    if (learned == 0) {
        ct_data_fail(c->err, c->errlen, "%s: line %ld: %s; an example needs %s text to learn from", c->path, c->line,
                     msgs ? "messages: no assistant turn with text" : "response: empty", msgs ? "assistant" : "response");
        goto out;
    }
    char why[512];
    long k = ct_chat_render(c->o->chat, c->o->tok, c->msgs, c->nmsgs, 0, c->o->train_on_prompt, &c->ids, &c->mask,
                            &c->idcap, why, sizeof why);
    if (k < 0) {
        ct_data_fail(c->err, c->errlen, "%s: line %ld: %s", c->path, c->line, why);
        goto out;
    }
    if (stream_reserve(s, (size_t)k)) {
        oom(c);
        goto out;
    }
    for (long i = 0; i < k; i++) s->tok[s->n + (size_t)i] = (uint32_t)c->ids[i];
    memcpy(s->mask + s->n, c->mask, (size_t)k);
    s->n += (size_t)k;
    size_t len = s->n - start;
    if (len > (size_t)seq_len + 1) {
        ct_data_fail(c->err, c->errlen,
                     "%s: line %ld: example of %zu tokens does not fit data.seq_len + 1 = %lld tokens; shorten it or "
                     "raise data.seq_len",
                     c->path, c->line, len, (long long)seq_len + 1);
        goto out;
    }
    out->start = start;
    out->len = len;
    rc = 0;
out:
    if (rc) s->n = start;
    cJSON_Delete(ex);
    return rc;
}

/* Packs examples ex[0, n) of all into out, in order, each inside one window (window w = tokens
 * [w*T, w*T + T]): with `one` (packing none) each starts a window of its own; else where the
 * next example would straddle a window boundary, padding (mask 0) runs to the next window start.
 * The end is padded the same way, to a window boundary, so the loader's last window holds the
 * last example. docs[i] gets the start of example i. */
static int pack(const stream *all, const example *ex, size_t n, int seq_len, int one, uint32_t pad, stream *out,
                uint64_t *docs)
{
    const size_t T = (size_t)seq_len;
    for (size_t i = 0; i < n; i++) {
        size_t p = out->n, next = (p + T - 1) / T * T; /* the first window start at or after p */
        if (one ? p != next : p + ex[i].len > (p / T + 1) * T + 1) {
            if (!one) next = (p / T + 1) * T;
            if (put_pad(out, next - p, pad, 0)) return -1;
        }
        docs[i] = out->n;
        if (stream_reserve(out, ex[i].len)) return -1;
        memcpy(out->tok + out->n, all->tok + ex[i].start, ex[i].len * sizeof *out->tok);
        memcpy(out->mask + out->n, all->mask + ex[i].start, ex[i].len);
        out->n += ex[i].len;
    }
    size_t last = out->n - 1; /* the stream's last index must be a window end: a multiple of T */
    if (last % T) return put_pad(out, T - last % T, pad, 0);
    return 0;
}

static int write_part(const char *path, const stream *all, const example *ex, size_t n, int seq_len,
                      const ct_sft_opts *o, const char *src, char *err, size_t errlen)
{
    stream s = {0};
    uint64_t *docs = malloc(n * sizeof *docs);
    int32_t eos = ct_tokenizer_eos(o->tok);
    int rc;
    if (!docs || pack(all, ex, n, seq_len, !strcmp(o->packing, "none"), eos >= 0 ? (uint32_t)eos : 0, &s, docs))
        rc = ct_data_fail(err, errlen, "%s: out of memory packing %zu examples for %s", src, n, path);
    else
    {
        ct_dataset_meta meta;
        ct_dataset_meta_for(&meta, o->tok, o->packing);
        rc = ct_dataset_write(path, s.tok, s.n, s.mask, docs, n, &meta, err, errlen);
    }
    free(docs);
    stream_free(&s);
    return rc;
}

int ct_data_prepare_sft(const char *jsonl_path, const char *train_path, const char *val_path, double val_fraction,
                        int seq_len, const ct_sft_opts *opts, char *err, size_t errlen)
{
    if (!jsonl_path || !train_path || !val_path) return ct_data_fail(err, errlen, "prepare: a path is missing");
    if (!opts || !opts->tok || !opts->chat) return ct_data_fail(err, errlen, "prepare: no tokenizer or chat template");
    ct_sft_opts o = *opts;
    if (!o.packing || !o.packing[0]) o.packing = "masked";
    if (strcmp(o.packing, "masked") && strcmp(o.packing, "plain") && strcmp(o.packing, "none"))
        return ct_data_fail(err, errlen, "%s: data.packing \"%s\": must be masked, plain or none", jsonl_path, o.packing);
    if (!strcmp(train_path, val_path))
        return ct_data_fail(err, errlen, "%s: train and val paths are the same (%s); they must differ", jsonl_path,
                            train_path);
    if (!(val_fraction > 0.0 && val_fraction < 1.0)) /* also catches NaN */
        return ct_data_fail(err, errlen, "%s: val_fraction %g: must be between 0 and 1 (exclusive)", jsonl_path,
                            val_fraction);
    if (seq_len < 1) return ct_data_fail(err, errlen, "%s: data.seq_len %d: must be at least 1", jsonl_path, seq_len);

    char *text = NULL;
    size_t len = 0;
    if (ct_data_read_all(jsonl_path, &text, &len, err, errlen)) return -1;
    if (len == 0) {
        free(text);
        return ct_data_fail(err, errlen, "%s: empty file; expected JSON Lines, one example per line", jsonl_path);
    }

    stream all = {0};
    example *ex = NULL;
    size_t nex = 0, excap = 0;
    int rc = -1;
    ctx c = {jsonl_path, 0, err, errlen, &o, NULL, 0, 0, NULL, NULL, 0};
    char *p = text, *end = text + len;
    if (len >= 3 && !memcmp(p, "\xEF\xBB\xBF", 3)) p += 3; /* a UTF-8 byte order mark */
    while (p < end) {
        char *nl = memchr(p, '\n', (size_t)(end - p));
        char *eol = nl ? nl : end;
        c.line++;
        *eol = 0; /* the line is now a C string... */
        if (strlen(p) != (size_t)(eol - p)) { /* ...unless it holds a NUL byte of its own */
            ct_data_fail(err, errlen, "%s: line %ld: holds a NUL byte; expected UTF-8 JSON text", jsonl_path, c.line);
            goto out;
        }
        if (strspn(p, " \t\r\f\v") < (size_t)(eol - p)) {
            if (nex == excap) {
                size_t cap = excap ? excap * 2 : 256;
                example *bigger = realloc(ex, cap * sizeof *ex);
                if (!bigger) {
                    oom(&c);
                    goto out;
                }
                ex = bigger;
                excap = cap;
            }
            if (render_line(&c, p, seq_len, &all, &ex[nex])) goto out;
            nex++;
        }
        p = eol + 1;
    }
    if (nex < 2) {
        ct_data_fail(err, errlen, "%s: %zu example%s; need at least 2 (one for train, one for val)", jsonl_path, nex,
                     nex == 1 ? "" : "s");
        goto out;
    }

    /* the last val_fraction of the examples, rounded to nearest, at least one each side */
    double want = val_fraction * (double)nex + 0.5; /* truncated below: rounds to nearest */
    size_t nval = want < 1.0 ? 1 : want > (double)(nex - 1) ? nex - 1 : (size_t)want;
    size_t ntrain = nex - nval;
    rc = write_part(train_path, &all, ex, ntrain, seq_len, &o, jsonl_path, err, errlen);
    if (!rc) {
        rc = write_part(val_path, &all, ex + ntrain, nval, seq_len, &o, jsonl_path, err, errlen);
        if (rc) unlink(train_path); /* no half pair: a new train beside an old val would mislead */
    }
out:
    free(c.msgs);
    free(c.ids);
    free(c.mask);
    free(ex);
    stream_free(&all);
    free(text);
    return rc;
}
