/* tokenizer.c — Hugging Face tokenizer.json: loading (every component checked, the unsupported
 * ones named in the error), added tokens, the encode pipeline (added tokens -> normalizer ->
 * pre-tokenizer -> BPE -> post-processor) and decode, as the tokenizers library runs them. */
#include <cjson/cJSON.h>
#include <limits.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "data.h"
#include "data_impl.h"
#include "json_check.h"
#include "tokenizer_impl.h"

typedef struct {
    char *content, *match; /* match: content, normalized when `normalized` and there is a normalizer */
    size_t match_len;
    int32_t id;
    int special, lstrip, rstrip, single_word, normalized;
} added_tok;

struct ct_tokenizer {
    tk_bpe bpe;
    tk_norm *norm;
    tk_pre *pre;
    tk_dec *dec;
    int32_t *pre_ids, *post_ids; /* the post-processor's tokens around the sequence */
    int npre, npost;
    added_tok *added;
    int nadded;
    uint8_t added_first[2][256]; /* [normalized pass][byte]: some added token starts with it */
    int32_t vocab_size;
    char **id_tok;  /* id -> token (borrowed from the vocabulary keys or added contents) */
    uint8_t *special;
    uint64_t digest;
    char name[256];
    int32_t eos, bos;       /* -1: none */
    int is_bytes;           /* the byte-level tokenizer: no tables, the static object below */
    int line_cuts;          /* no token joins a line feed to what follows it (ct_tokenizer_cut_ok) */
    size_t strip_max;       /* the longest added token with lstrip or rstrip (content or match form) */
    char *file;             /* the tokenizer.json read */
};

/* ---- loading helpers. F: the file name for errors; FAIL fills err and gives -1 */
#define FAIL(...) ct_data_fail(err, errlen, __VA_ARGS__)

static const char *jstr(const cJSON *o, const char *k)
{
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(o, k);
    return cJSON_IsString(v) ? v->valuestring : NULL;
}

/* A boolean member: def when absent or null; -1 when of another type. */
static int jbool(const cJSON *o, const char *k, int def)
{
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(o, k);
    if (!v || cJSON_IsNull(v)) return def;
    return cJSON_IsBool(v) ? cJSON_IsTrue(v) : -1;
}

static int jint(const cJSON *o, const char *k, long lo, long hi, long *out)
{
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(o, k);
    if (!cJSON_IsNumber(v) || v->valuedouble != (double)(long)v->valuedouble || v->valuedouble < lo ||
        v->valuedouble > hi)
        return -1;
    *out = (long)v->valuedouble;
    return 0;
}

static char *dupstr(const char *s)
{
    size_t n = strlen(s);
    char *c = malloc(n + 1);
    if (c) memcpy(c, s, n + 1);
    return c;
}

/* {"String": s} or {"Regex": r} */
static int load_pattern(const char *F, const char *what, const cJSON *o, tk_regex *re, char *err, size_t errlen)
{
    const cJSON *p = cJSON_GetObjectItemCaseSensitive(o, "pattern");
    const char *s = jstr(p, "String"), *r = jstr(p, "Regex");
    if (!s && !r) return FAIL("%s: %s: pattern: expected {\"String\": ...} or {\"Regex\": ...}", F, what);
    char e[300];
    if (tk_regex_compile(re, s ? s : r, s != NULL, e, sizeof e)) return FAIL("%s: %s: pattern: %s", F, what, e);
    return 0;
}

static int one_char(const char *s, char *out8, uint32_t *cp)
{
    size_t n = strlen(s);
    if (!n || n > 4 || tk_utf8_check(s, n) != n) return -1;
    uint32_t c;
    if ((size_t)tk_utf8_next(s, n, 0, &c) != n) return -1;
    if (out8) memcpy(out8, s, n + 1);
    if (cp) *cp = c;
    return 0;
}

static int load_norm(const char *F, const cJSON *o, tk_norm *n, char *err, size_t errlen)
{
    const char *type = jstr(o, "type");
    memset(n, 0, sizeof *n);
    if (!type) return FAIL("%s: normalizer: missing \"type\"", F);
    if (!strcmp(type, "NFC")) n->kind = TK_N_NFC;
    else if (!strcmp(type, "Prepend")) {
        n->kind = TK_N_PREPEND;
        const char *s = jstr(o, "prepend");
        if (!s || !(n->str = dupstr(s))) return FAIL("%s: normalizer Prepend: \"prepend\" missing", F);
    } else if (!strcmp(type, "Replace")) {
        n->kind = TK_N_REPLACE;
        const char *c = jstr(o, "content");
        if (!c || !(n->content = dupstr(c))) return FAIL("%s: normalizer Replace: \"content\" missing", F);
        return load_pattern(F, "normalizer Replace", o, &n->re, err, errlen);
    } else if (!strcmp(type, "Sequence")) {
        n->kind = TK_N_SEQ;
        const cJSON *a = cJSON_GetObjectItemCaseSensitive(o, "normalizers");
        if (!cJSON_IsArray(a)) return FAIL("%s: normalizer Sequence: \"normalizers\" is not an array", F);
        n->sub = calloc((size_t)cJSON_GetArraySize(a) + 1, sizeof *n->sub);
        if (!n->sub) return FAIL("%s: out of memory", F);
        const cJSON *e;
        cJSON_ArrayForEach(e, a) if (load_norm(F, e, &n->sub[n->nsub++], err, errlen)) return -1;
    } else
        return FAIL("%s: normalizer: unsupported type \"%s\" (supported: NFC, Prepend, Replace, Sequence)", F, type);
    return 0;
}

static const char GPT2_RE[] = "'s|'t|'re|'ve|'m|'ll|'d| ?\\p{L}+| ?\\p{N}+| ?[^\\s\\p{L}\\p{N}]+|\\s+(?!\\S)|\\s+";

static int prepend_scheme(const char *F, const char *what, const cJSON *o, int *out, char *err, size_t errlen)
{
    const char *s = jstr(o, "prepend_scheme");
    if (!s) {
        int a = jbool(o, "add_prefix_space", 1);
        if (a < 0) return FAIL("%s: %s: add_prefix_space: not a boolean", F, what);
        *out = a ? 2 : 0;
    } else if (!strcmp(s, "always")) *out = 2;
    else if (!strcmp(s, "first")) *out = 1;
    else if (!strcmp(s, "never")) *out = 0;
    else return FAIL("%s: %s: prepend_scheme: unknown \"%s\"", F, what, s);
    return 0;
}

static int load_pre(const char *F, const cJSON *o, tk_pre *p, char *err, size_t errlen)
{
    const char *type = jstr(o, "type");
    memset(p, 0, sizeof *p);
    if (!type) return FAIL("%s: pre_tokenizer: missing \"type\"", F);
    if (!strcmp(type, "ByteLevel")) {
        p->kind = TK_P_BYTELEVEL;
        p->add_prefix_space = jbool(o, "add_prefix_space", 1);
        p->use_regex = jbool(o, "use_regex", 1);
        if (p->add_prefix_space < 0 || p->use_regex < 0)
            return FAIL("%s: pre_tokenizer ByteLevel: add_prefix_space/use_regex: not a boolean", F);
        char e[300];
        if (p->use_regex && tk_regex_compile(&p->re, GPT2_RE, 0, e, sizeof e))
            return FAIL("%s: pre_tokenizer ByteLevel: %s", F, e);
    } else if (!strcmp(type, "Split")) {
        p->kind = TK_P_SPLIT;
        const char *b = jstr(o, "behavior");
        static const char *names[] = {"Isolated", "Removed", "MergedWithPrevious", "MergedWithNext", "Contiguous"};
        p->behavior = -1;
        for (int i = 0; b && i < 5; i++)
            if (!strcmp(b, names[i])) p->behavior = i;
        if (p->behavior < 0) return FAIL("%s: pre_tokenizer Split: behavior: unsupported \"%s\"", F, b ? b : "(missing)");
        p->invert = jbool(o, "invert", 0);
        if (p->invert < 0) return FAIL("%s: pre_tokenizer Split: invert: not a boolean", F);
        return load_pattern(F, "pre_tokenizer Split", o, &p->re, err, errlen);
    } else if (!strcmp(type, "Metaspace")) {
        p->kind = TK_P_METASPACE;
        const char *r = jstr(o, "replacement");
        if (!r || one_char(r, p->repl, NULL)) return FAIL("%s: pre_tokenizer Metaspace: replacement: not one character", F);
        p->split = jbool(o, "split", 1);
        if (p->split < 0) return FAIL("%s: pre_tokenizer Metaspace: split: not a boolean", F);
        return prepend_scheme(F, "pre_tokenizer Metaspace", o, &p->prepend, err, errlen);
    } else if (!strcmp(type, "Digits")) {
        p->kind = TK_P_DIGITS;
        p->individual = jbool(o, "individual_digits", 0);
        if (p->individual < 0) return FAIL("%s: pre_tokenizer Digits: individual_digits: not a boolean", F);
    } else if (!strcmp(type, "Sequence")) {
        p->kind = TK_P_SEQ;
        const cJSON *a = cJSON_GetObjectItemCaseSensitive(o, "pretokenizers");
        if (!cJSON_IsArray(a)) return FAIL("%s: pre_tokenizer Sequence: \"pretokenizers\" is not an array", F);
        p->sub = calloc((size_t)cJSON_GetArraySize(a) + 1, sizeof *p->sub);
        if (!p->sub) return FAIL("%s: out of memory", F);
        const cJSON *e;
        cJSON_ArrayForEach(e, a) if (load_pre(F, e, &p->sub[p->nsub++], err, errlen)) return -1;
    } else
        return FAIL("%s: pre_tokenizer: unsupported type \"%s\" (supported: ByteLevel, Split, Metaspace, Digits, "
                    "Sequence)", F, type);
    return 0;
}

static int load_dec(const char *F, const cJSON *o, tk_dec *d, char *err, size_t errlen)
{
    const char *type = jstr(o, "type");
    memset(d, 0, sizeof *d);
    if (!type) return FAIL("%s: decoder: missing \"type\"", F);
    if (!strcmp(type, "ByteLevel")) d->kind = TK_D_BYTELEVEL;
    else if (!strcmp(type, "ByteFallback")) d->kind = TK_D_BYTEFALLBACK;
    else if (!strcmp(type, "Fuse")) d->kind = TK_D_FUSE;
    else if (!strcmp(type, "Metaspace")) {
        d->kind = TK_D_METASPACE;
        const char *r = jstr(o, "replacement");
        if (!r || one_char(r, d->repl, NULL)) return FAIL("%s: decoder Metaspace: replacement: not one character", F);
        return prepend_scheme(F, "decoder Metaspace", o, &d->prepend, err, errlen);
    } else if (!strcmp(type, "Replace")) {
        d->kind = TK_D_REPLACE;
        const char *c = jstr(o, "content");
        if (!c || !(d->content = dupstr(c))) return FAIL("%s: decoder Replace: \"content\" missing", F);
        return load_pattern(F, "decoder Replace", o, &d->re, err, errlen);
    } else if (!strcmp(type, "Strip")) {
        d->kind = TK_D_STRIP;
        const char *c = jstr(o, "content");
        long a, b;
        if (!c || one_char(c, NULL, &d->strip_char)) return FAIL("%s: decoder Strip: content: not one character", F);
        if (jint(o, "start", 0, INT_MAX, &a) || jint(o, "stop", 0, INT_MAX, &b))
            return FAIL("%s: decoder Strip: start/stop: not a count", F);
        d->strip_start = (int)a, d->strip_stop = (int)b;
    } else if (!strcmp(type, "Sequence")) {
        d->kind = TK_D_SEQ;
        const cJSON *a = cJSON_GetObjectItemCaseSensitive(o, "decoders");
        if (!cJSON_IsArray(a)) return FAIL("%s: decoder Sequence: \"decoders\" is not an array", F);
        d->sub = calloc((size_t)cJSON_GetArraySize(a) + 1, sizeof *d->sub);
        if (!d->sub) return FAIL("%s: out of memory", F);
        const cJSON *e;
        cJSON_ArrayForEach(e, a) if (load_dec(F, e, &d->sub[d->nsub++], err, errlen)) return -1;
    } else
        return FAIL("%s: decoder: unsupported type \"%s\" (supported: ByteLevel, Metaspace, Replace, ByteFallback, "
                    "Fuse, Strip, Sequence)", F, type);
    return 0;
}

static int add_ids(int32_t **v, int *n, const int32_t *ids, int k, int front)
{
    int32_t *g = realloc(*v, (size_t)(*n + k + 1) * sizeof *g);
    if (!g) return -1;
    if (!k) {
        *v = g;
        return 0;
    }
    if (front) {
        memmove(g + k, g, (size_t)*n * sizeof *g);
        memcpy(g, ids, (size_t)k * sizeof *g);
    } else
        memcpy(g + *n, ids, (size_t)k * sizeof *g);
    *v = g, *n += k;
    return 0;
}

static int load_post(const char *F, const cJSON *o, ct_tokenizer *t, char *err, size_t errlen)
{
    const char *type = jstr(o, "type");
    if (!type) return FAIL("%s: post_processor: missing \"type\"", F);
    if (!strcmp(type, "ByteLevel")) return 0; /* offsets only */
    if (!strcmp(type, "Sequence")) {
        const cJSON *a = cJSON_GetObjectItemCaseSensitive(o, "processors"), *e;
        if (!cJSON_IsArray(a)) return FAIL("%s: post_processor Sequence: \"processors\" is not an array", F);
        cJSON_ArrayForEach(e, a) if (load_post(F, e, t, err, errlen)) return -1;
        return 0;
    }
    if (strcmp(type, "TemplateProcessing"))
        return FAIL("%s: post_processor: unsupported type \"%s\" (supported: TemplateProcessing, ByteLevel, Sequence)",
                    F, type);
    const cJSON *single = cJSON_GetObjectItemCaseSensitive(o, "single"), *sp = cJSON_GetObjectItemCaseSensitive(o, "special_tokens");
    if (!cJSON_IsArray(single)) return FAIL("%s: post_processor TemplateProcessing: \"single\" is not an array", F);
    int32_t *before = NULL, *after = NULL;
    int nb = 0, na = 0, seen = 0;
    const cJSON *it;
    cJSON_ArrayForEach(it, single)
    {
        const cJSON *st = cJSON_GetObjectItemCaseSensitive(it, "SpecialToken");
        if (cJSON_GetObjectItemCaseSensitive(it, "Sequence")) {
            if (seen++) goto bad;
            continue;
        }
        const char *id = jstr(st, "id");
        const cJSON *ids = cJSON_GetObjectItemCaseSensitive(cJSON_GetObjectItemCaseSensitive(sp, id ? id : ""), "ids"), *x;
        if (!id || !cJSON_IsArray(ids)) {
            free(before), free(after);
            return FAIL("%s: post_processor TemplateProcessing: special token \"%s\" not in special_tokens", F,
                        id ? id : "(missing)");
        }
        cJSON_ArrayForEach(x, ids)
        {
            if (!cJSON_IsNumber(x) || x->valuedouble < 0 || x->valuedouble >= t->vocab_size) goto bad;
            int32_t v = (int32_t)x->valuedouble;
            if (add_ids(seen ? &after : &before, seen ? &na : &nb, &v, 1, 0)) goto bad;
        }
    }
    if (seen != 1) goto bad;
    /* an outer template wraps the inner one */
    if (add_ids(&t->pre_ids, &t->npre, before, nb, 1) || add_ids(&t->post_ids, &t->npost, after, na, 0)) goto bad;
    free(before), free(after);
    return 0;
bad:
    free(before), free(after);
    return FAIL("%s: post_processor TemplateProcessing: \"single\" needs one $A sequence and special tokens with "
                "ids in the vocabulary", F);
}

static int load_model(const char *F, const cJSON *m, ct_tokenizer *t, char *err, size_t errlen)
{
    tk_bpe *b = &t->bpe;
    const char *type = jstr(m, "type");
    if (!cJSON_IsObject(m)) return FAIL("%s: model: missing", F);
    if (type && strcmp(type, "BPE")) return FAIL("%s: model: unsupported type \"%s\" (supported: BPE)", F, type);
    if (!type && !cJSON_GetObjectItemCaseSensitive(m, "merges")) return FAIL("%s: model: missing \"type\"", F);
    const cJSON *dr = cJSON_GetObjectItemCaseSensitive(m, "dropout");
    if (dr && !cJSON_IsNull(dr) && !(cJSON_IsNumber(dr) && dr->valuedouble == 0))
        return FAIL("%s: model BPE: dropout is not supported (encoding would not be deterministic)", F);
    const char *opts[] = {"continuing_subword_prefix", "end_of_word_suffix"};
    for (int i = 0; i < 2; i++) {
        const cJSON *v = cJSON_GetObjectItemCaseSensitive(m, opts[i]);
        if (v && !cJSON_IsNull(v) && !(cJSON_IsString(v) && !v->valuestring[0]))
            return FAIL("%s: model BPE: %s is not supported", F, opts[i]);
    }
    b->uid = tk_bpe_uid();
    b->byte_fallback = jbool(m, "byte_fallback", 0);
    b->fuse_unk = jbool(m, "fuse_unk", 0);
    b->ignore_merges = jbool(m, "ignore_merges", 0);
    if (b->byte_fallback < 0 || b->fuse_unk < 0 || b->ignore_merges < 0)
        return FAIL("%s: model BPE: byte_fallback/fuse_unk/ignore_merges: not a boolean", F);
    const cJSON *vocab = cJSON_GetObjectItemCaseSensitive(m, "vocab"), *e;
    if (!cJSON_IsObject(vocab)) return FAIL("%s: model BPE: vocab: not an object", F);
    cJSON_ArrayForEach(e, vocab)
    {
        if (!cJSON_IsNumber(e) || e->valuedouble < 0 || e->valuedouble >= INT_MAX - 1 ||
            e->valuedouble != (double)(int32_t)e->valuedouble)
            return FAIL("%s: model BPE: vocab: \"%s\": id is not a non-negative integer", F, e->string);
        int32_t id = (int32_t)e->valuedouble;
        if (tk_strmap_put(&b->vocab, e->string, strlen(e->string), id)) return FAIL("%s: out of memory", F);
        if (id + 1 > t->vocab_size) t->vocab_size = id + 1;
    }
    const char *unk = jstr(m, "unk_token");
    b->unk = -1;
    if (unk && (b->unk = tk_strmap_get(&b->vocab, unk, strlen(unk))) < 0)
        return FAIL("%s: model BPE: unk_token \"%s\" is not in the vocabulary", F, unk);
    for (int i = 0; i < 256; i++) {
        char name[8];
        snprintf(name, sizeof name, "<0x%02X>", i);
        b->byte_ids[i] = tk_strmap_get(&b->vocab, name, 6);
    }
    const cJSON *merges = cJSON_GetObjectItemCaseSensitive(m, "merges");
    if (!cJSON_IsArray(merges)) return FAIL("%s: model BPE: merges: not an array", F);
    int32_t rank = 0;
    cJSON_ArrayForEach(e, merges)
    {
        const char *l = NULL, *r = NULL;
        size_t ln = 0, rn = 0;
        if (cJSON_IsString(e)) {
            const char *sp = strchr(e->valuestring, ' ');
            if (!sp || strchr(sp + 1, ' ')) return FAIL("%s: model BPE: merges[%d]: \"%s\" is not \"a b\"", F, rank, e->valuestring);
            l = e->valuestring, ln = (size_t)(sp - l), r = sp + 1, rn = strlen(r);
        } else if (cJSON_IsArray(e) && cJSON_GetArraySize(e) == 2 && cJSON_IsString(cJSON_GetArrayItem(e, 0)) &&
                   cJSON_IsString(cJSON_GetArrayItem(e, 1))) {
            l = cJSON_GetArrayItem(e, 0)->valuestring, ln = strlen(l);
            r = cJSON_GetArrayItem(e, 1)->valuestring, rn = strlen(r);
        } else
            return FAIL("%s: model BPE: merges[%d]: neither \"a b\" nor [\"a\", \"b\"]", F, rank);
        char *both = malloc(ln + rn + 1);
        if (!both) return FAIL("%s: out of memory", F);
        memcpy(both, l, ln), memcpy(both + ln, r, rn);
        int32_t a = tk_strmap_get(&b->vocab, l, ln), c = tk_strmap_get(&b->vocab, r, rn);
        int32_t ab = tk_strmap_get(&b->vocab, both, ln + rn);
        free(both);
        if (a < 0 || c < 0 || ab < 0)
            return FAIL("%s: model BPE: merges[%d]: \"%.*s\" + \"%.*s\": %s not in the vocabulary", F, rank, (int)ln, l,
                        (int)rn, r, a < 0 ? "left token" : c < 0 ? "right token" : "merged token");
        if (tk_pairmap_put(&b->merges, a, c, rank, ab)) return FAIL("%s: out of memory", F);
        rank++;
    }
    return 0;
}

static int load_added(const char *F, const cJSON *a, ct_tokenizer *t, char *err, size_t errlen)
{
    if (!a || cJSON_IsNull(a)) return 0;
    if (!cJSON_IsArray(a)) return FAIL("%s: added_tokens: not an array", F);
    t->added = calloc((size_t)cJSON_GetArraySize(a) + 1, sizeof *t->added);
    if (!t->added) return FAIL("%s: out of memory", F);
    const cJSON *e;
    cJSON_ArrayForEach(e, a)
    {
        added_tok *k = &t->added[t->nadded];
        long id;
        const char *c = jstr(e, "content");
        if (!c || !c[0] || jint(e, "id", 0, INT_MAX - 2, &id))
            return FAIL("%s: added_tokens[%d]: needs a non-empty \"content\" and an integer \"id\"", F, t->nadded);
        if (!(k->content = dupstr(c))) return FAIL("%s: out of memory", F);
        t->nadded++;
        k->id = (int32_t)id;
        k->special = jbool(e, "special", 0), k->lstrip = jbool(e, "lstrip", 0), k->rstrip = jbool(e, "rstrip", 0);
        k->single_word = jbool(e, "single_word", 0), k->normalized = jbool(e, "normalized", 1);
        if (k->special < 0 || k->lstrip < 0 || k->rstrip < 0 || k->single_word < 0 || k->normalized < 0)
            return FAIL("%s: added_tokens[%d] (\"%s\"): a flag is not a boolean", F, t->nadded - 1, c);
        if (k->id + 1 > t->vocab_size) t->vocab_size = k->id + 1;
    }
    return 0;
}

/* Applies the whole normalizer to each normalized added token's content (they match normalized text). */
static int added_match_forms(const char *F, ct_tokenizer *t, char *err, size_t errlen)
{
    for (int i = 0; i < t->nadded; i++) {
        added_tok *k = &t->added[i];
        if (k->normalized && t->norm) {
            char e[200];
            if (tk_norm_apply(t->norm, k->content, strlen(k->content), &k->match, &k->match_len, e, sizeof e))
                return FAIL("%s: added_tokens[%d]: %s", F, i, e);
        } else {
            if (!(k->match = dupstr(k->content))) return FAIL("%s: out of memory", F);
            k->match_len = strlen(k->content);
        }
        if (k->match_len) t->added_first[k->normalized][(unsigned char)k->match[0]] = 1;
    }
    return 0;
}

static int build_ids(const char *F, ct_tokenizer *t, char *err, size_t errlen)
{
    t->id_tok = calloc((size_t)t->vocab_size + 1, sizeof *t->id_tok);
    t->special = calloc((size_t)t->vocab_size + 1, 1);
    if (!t->id_tok || !t->special) return FAIL("%s: out of memory", F);
    for (size_t i = 0; i < t->bpe.vocab.cap; i++)
        if (t->bpe.vocab.keys[i]) t->id_tok[t->bpe.vocab.vals[i]] = t->bpe.vocab.keys[i];
    for (int i = 0; i < t->nadded; i++) {
        t->id_tok[t->added[i].id] = t->added[i].content;
        t->special[t->added[i].id] = (uint8_t)t->added[i].special;
    }
    return 0;
}

/* tokenizer_config.json beside tokenizer.json: transformers 4.x's LlamaTokenizerFast (and
 * CodeLlama's) rebuilds the post-processor from add_bos_token (default true) and add_eos_token
 * (default false) whenever it loads. (transformers 5 keeps tokenizer.json's post-processor.) */
static int load_config(const char *dir, ct_tokenizer *t, char *err, size_t errlen)
{
    char path[4096];
    snprintf(path, sizeof path, "%s/tokenizer_config.json", dir);
    struct stat st;
    if (stat(path, &st)) return 0;
    char *buf;
    size_t len;
    if (ct_data_read_all(path, &buf, &len, err, errlen)) return -1;
    cJSON *c = cJSON_ParseWithLength(buf, len);
    if (c && ct_json_check(buf, len, c, path, err, errlen)) {
        free(buf);
        cJSON_Delete(c);
        return -1;
    }
    free(buf);
    if (!c) return FAIL("%s: malformed JSON", path);
    const char *keys[2] = {"bos_token", "eos_token"};
    for (int i = 0; i < 2; i++) { /* the named tokens, when the vocabulary has them */
        const cJSON *v = cJSON_GetObjectItemCaseSensitive(c, keys[i]);
        const char *tok = cJSON_IsString(v) ? v->valuestring : jstr(v, "content");
        int32_t id = tok ? ct_tokenizer_id(t, tok) : -1;
        if (id >= 0) *(i ? &t->eos : &t->bos) = id;
    }
    const char *cls = jstr(c, "tokenizer_class");
    int llama = cls && (!strncmp(cls, "LlamaTokenizer", 14) || !strncmp(cls, "CodeLlamaTokenizer", 18));
    if (!llama) {
        cJSON_Delete(c);
        return 0;
    }
    int add[2] = {jbool(c, "add_bos_token", 1), jbool(c, "add_eos_token", 0)};
    int32_t ids[2] = {-1, -1};
    for (int i = 0; i < 2; i++) {
        if (add[i] < 0) {
            cJSON_Delete(c);
            return FAIL("%s: add_%s: not a boolean", path, keys[i]);
        }
        if (!add[i]) continue;
        const cJSON *v = cJSON_GetObjectItemCaseSensitive(c, keys[i]);
        const char *tok = cJSON_IsString(v) ? v->valuestring : jstr(v, "content");
        if (!tok || (ids[i] = ct_tokenizer_id(t, tok)) < 0) {
            cJSON_Delete(c);
            return FAIL("%s: %s: missing or not in the vocabulary (add_%s is true)", path, keys[i], keys[i]);
        }
    }
    t->npre = t->npost = 0;
    if (add[0] && add_ids(&t->pre_ids, &t->npre, &ids[0], 1, 0)) goto oom;
    if (add[1] && add_ids(&t->post_ids, &t->npost, &ids[1], 1, 0)) goto oom;
    for (int i = 0; i < 2; i++) { /* the overrides name the tokenizer too */
        uint64_t v = (uint64_t)(add[i] ? ids[i] + 1 : 0);
        for (int b = 0; b < 8; b++) t->digest = (t->digest ^ ((v >> (8 * b)) & 0xFF)) * 1099511628211ull;
    }
    cJSON_Delete(c);
    return 0;
oom:
    cJSON_Delete(c);
    return FAIL("%s: out of memory", path);
}

/* The name (the folder's) and, where tokenizer_config.json named none, eos and bos from the
 * post-processor or GPT-2's <|endoftext|>. */
static void name_and_ends(ct_tokenizer *t, const char *file)
{
    char dir[4096], real[4096];
    snprintf(dir, sizeof dir, "%s", file);
    char *slash = strrchr(dir, '/');
    if (slash) *slash = 0;
    else snprintf(dir, sizeof dir, ".");
    const char *d = realpath(dir, real) ? real : dir;
    const char *base = strrchr(d, '/');
    base = base && base[1] ? base + 1 : d;
    size_t n = strlen(base) < sizeof t->name - 1 ? strlen(base) : sizeof t->name - 1;
    memcpy(t->name, base, n);
    t->name[n] = 0;
    if (t->eos < 0 && t->npost) t->eos = t->post_ids[t->npost - 1];
    if (t->bos < 0 && t->npre) t->bos = t->pre_ids[0];
    if (t->eos < 0) t->eos = ct_tokenizer_id(t, "<|endoftext|>");
}

/* 1 at a line feed as a token spells it: the byte itself, ByteLevel's "Ċ" or byte fallback's
 * <0x0A>; *len gets its length. */
static int lf_at(const char *s, size_t n, size_t i, size_t *len)
{
    if (s[i] == '\n') return *len = 1, 1;
    if (i + 1 < n && !memcmp(s + i, "\xC4\x8A", 2)) return *len = 2, 1;
    if (i + 5 < n && !memcmp(s + i, "<0x0A>", 6)) return *len = 6, 1;
    return 0;
}

/* 1 at white space as a token spells it (after a line feed it does not matter where the line
 * feed is cut off): the bytes, ByteLevel's Ċ č Ġ ĉ, Metaspace's ▁ or byte fallback's. */
static int ws_at(const char *s, size_t n, size_t i)
{
    static const char *const forms[] = {"\n", "\r", " ", "\t", "\xC4\x8A", "\xC4\x8D", "\xC4\xA0", "\xC4\x89",
                                        "\xE2\x96\x81", "<0x0A>", "<0x0D>", "<0x20>", "<0x09>"};
    for (size_t k = 0; k < sizeof forms / sizeof forms[0]; k++) {
        size_t l = strlen(forms[k]);
        if (i + l <= n && !memcmp(s + i, forms[k], l)) return 1;
    }
    return 0;
}

/* Whether a text may be cut after a line feed (ct_tokenizer_cut_ok): no vocabulary entry or
 * added token holds a line feed followed by anything but white space, so no merge and no added
 * token spans such a cut. */
static int check_line_cuts(const ct_tokenizer *t)
{
    for (int32_t id = 0; id < t->vocab_size; id++) {
        const char *s = t->id_tok[id];
        if (!s) continue;
        size_t n = strlen(s), l;
        for (size_t i = 0; i < n; i++)
            if (lf_at(s, n, i, &l) && i + l < n && !ws_at(s, n, i + l)) return 0;
    }
    return 1;
}

int ct_tokenizer_load(ct_tokenizer **out, const char *path, char *err, size_t errlen)
{
    *out = NULL;
    char file[4096];
    struct stat st;
    int is_dir = !stat(path, &st) && S_ISDIR(st.st_mode);
    snprintf(file, sizeof file, is_dir ? "%s/tokenizer.json" : "%s", path);
    const char *F = file;
    char *buf;
    size_t len;
    if (ct_data_read_all(file, &buf, &len, err, errlen)) return -1;
    cJSON *j = cJSON_ParseWithLength(buf, len);
    ct_tokenizer *t = calloc(1, sizeof *t);
    if (!j || !t) {
        const char *where = cJSON_GetErrorPtr();
        if (!j && where && where >= buf && where <= buf + len)
            FAIL("%s: malformed JSON near byte %zu", F, (size_t)(where - buf));
        else
            FAIL("%s: %s", F, j ? "out of memory" : "malformed JSON");
        free(buf), free(t), cJSON_Delete(j);
        return -1;
    }
    t->digest = 1469598103934665603ull;
    for (size_t i = 0; i < len; i++) t->digest = (t->digest ^ (unsigned char)buf[i]) * 1099511628211ull;
    const cJSON *x;
    int rc = ct_json_check(buf, len, j, F, err, errlen);
    free(buf);
    if (!rc && !cJSON_IsObject(j)) rc = FAIL("%s: not a JSON object", F);
    if (!rc && (x = cJSON_GetObjectItemCaseSensitive(j, "truncation")) && !cJSON_IsNull(x))
        rc = FAIL("%s: truncation: not supported (set it to null)", F);
    if (!rc && (x = cJSON_GetObjectItemCaseSensitive(j, "padding")) && !cJSON_IsNull(x)) {
        const cJSON *s = cJSON_GetObjectItemCaseSensitive(x, "strategy");
        if (!(cJSON_IsString(s) && !strcmp(s->valuestring, "BatchLongest")))
            rc = FAIL("%s: padding: only null or strategy BatchLongest is supported", F);
    }
    if (!rc) rc = load_model(F, cJSON_GetObjectItemCaseSensitive(j, "model"), t, err, errlen);
    if (!rc) rc = load_added(F, cJSON_GetObjectItemCaseSensitive(j, "added_tokens"), t, err, errlen);
    if (!rc && (x = cJSON_GetObjectItemCaseSensitive(j, "normalizer")) && !cJSON_IsNull(x))
        rc = !(t->norm = calloc(1, sizeof *t->norm)) ? FAIL("%s: out of memory", F) : load_norm(F, x, t->norm, err, errlen);
    if (!rc && (x = cJSON_GetObjectItemCaseSensitive(j, "pre_tokenizer")) && !cJSON_IsNull(x))
        rc = !(t->pre = calloc(1, sizeof *t->pre)) ? FAIL("%s: out of memory", F) : load_pre(F, x, t->pre, err, errlen);
    if (!rc && (x = cJSON_GetObjectItemCaseSensitive(j, "decoder")) && !cJSON_IsNull(x))
        rc = !(t->dec = calloc(1, sizeof *t->dec)) ? FAIL("%s: out of memory", F) : load_dec(F, x, t->dec, err, errlen);
    if (!rc && (x = cJSON_GetObjectItemCaseSensitive(j, "post_processor")) && !cJSON_IsNull(x))
        rc = load_post(F, x, t, err, errlen);
    if (!rc) rc = added_match_forms(F, t, err, errlen);
    if (!rc) rc = build_ids(F, t, err, errlen);
    t->eos = t->bos = -1;
    if (!rc && is_dir) rc = load_config(path, t, err, errlen);
    if (!rc) name_and_ends(t, file);
    if (!rc) t->line_cuts = check_line_cuts(t);
    for (int i = 0; !rc && i < t->nadded; i++) {
        const added_tok *a = &t->added[i];
        size_t l = strlen(a->content) > a->match_len ? strlen(a->content) : a->match_len;
        if ((a->lstrip || a->rstrip) && l > t->strip_max) t->strip_max = l;
    }
    if (!rc && !(t->file = dupstr(file))) rc = FAIL("%s: out of memory", F);
    cJSON_Delete(j);
    if (rc) {
        ct_tokenizer_free(t);
        return -1;
    }
    *out = t;
    return 0;
}

void ct_tokenizer_free(ct_tokenizer *t)
{
    if (!t || t->is_bytes) return;
    tk_strmap_free(&t->bpe.vocab);
    tk_pairmap_free(&t->bpe.merges);
    if (t->norm) tk_norm_free(t->norm);
    if (t->pre) tk_pre_free(t->pre);
    if (t->dec) tk_dec_free(t->dec);
    free(t->norm), free(t->pre), free(t->dec);
    for (int i = 0; i < t->nadded; i++) free(t->added[i].content), free(t->added[i].match);
    free(t->added), free(t->pre_ids), free(t->post_ids), free(t->id_tok), free(t->special);
    free(t->file);
    free(t);
}

int ct_tokenizer_vocab_size(const ct_tokenizer *t) { return t->vocab_size; }
uint64_t ct_tokenizer_digest(const ct_tokenizer *t) { return t->digest; }
const char *ct_tokenizer_name(const ct_tokenizer *t) { return t->name; }
int32_t ct_tokenizer_eos(const ct_tokenizer *t) { return t->eos; }
int32_t ct_tokenizer_bos(const ct_tokenizer *t) { return t->bos; }
int ct_tokenizer_is_bytes(const ct_tokenizer *t) { return t->is_bytes; }
const char *ct_tokenizer_file(const ct_tokenizer *t) { return t->file ? t->file : ""; }

int ct_tokenizer_ends_with_eos(const ct_tokenizer *t)
{
    if (t->is_bytes) return 0; /* it has no post-processor */
    return t->eos >= 0 && t->npost > 0 && t->post_ids[t->npost - 1] == t->eos;
}

/* The character that ends just before s[i] (i > 0; valid UTF-8 assumed), and its start. */
static uint32_t char_ending_at(const char *s, size_t i, size_t *start)
{
    size_t j = i - 1;
    while (j > 0 && i - j < 4 && ((unsigned char)s[j] & 0xC0) == 0x80) j--;
    uint32_t cp;
    tk_utf8_next(s, i, j, &cp);
    *start = j;
    return cp;
}

int ct_tokenizer_cut_ok(const ct_tokenizer *t, const char *text, size_t n, size_t p)
{
    if (!text) return t->is_bytes || t->line_cuts; /* may it cut at all */
    if (t->is_bytes) return p > 0 && p < n;
    if (!t->line_cuts || p < 2 || p >= n || text[p - 1] != '\n') return 0;
    size_t start;
    uint32_t before = char_ending_at(text, p - 1, &start), after;
    if (before == '\n' || tk_is_whitespace(before) || tk_utf8_check(text + start, p - 1 - start) != p - 1 - start)
        return 0;
    if (tk_utf8_check(text + p, n - p < 4 ? n - p : 4) == 0) return 0; /* invalid: the encoder refuses it */
    tk_utf8_next(text, n, p, &after);
    if (!tk_is_alnum(after)) return 0;
    /* an added token that takes the white space beside it: rstrip ending just before the line feed
     * would take it (the part after would then begin a segment of its own), lstrip at p too. Too
     * little text around to see: no cut. */
    if (!t->strip_max) return 1;
    if (p - 1 < t->strip_max || n - p < t->strip_max) return 0;
    for (int i = 0; i < t->nadded; i++) {
        const added_tok *a = &t->added[i];
        const char *forms[2] = {a->content, a->match};
        for (int k = 0; k < 2; k++) {
            size_t l = forms[k] ? strlen(forms[k]) : 0;
            if (!l) continue;
            if (a->rstrip && !memcmp(text + p - 1 - l, forms[k], l)) return 0;
            if (a->lstrip && !memcmp(text + p, forms[k], l)) return 0;
        }
    }
    return 1;
}

void ct_tokenizer_digest_str(const ct_tokenizer *t, char out[17])
{
    if (t->is_bytes) snprintf(out, 17, "%s", CT_TOK_BYTES_DIGEST);
    else snprintf(out, 17, "%016llx", (unsigned long long)t->digest);
}

/* ---- the byte-level tokenizer */
static char bytes_eot[] = "<|endoftext|>";
static const ct_tokenizer bytes_tok = {.vocab_size = CT_TOK_BYTES_VOCAB, .name = "bytes", .eos = CT_TOK_BYTES_EOT,
                                       .bos = -1, .is_bytes = 1};

const ct_tokenizer *ct_tokenizer_bytes(void) { return &bytes_tok; }

static long bytes_encode(const char *text, size_t len, int add_special, int32_t **ids, size_t *cap, char *err,
                         size_t errlen)
{
    (void)add_special; /* no post-processor: documents get their end-of-text from whoever ends them */
    size_t n = len;
    if (*cap < n) {
        int32_t *g = realloc(*ids, n * sizeof *g);
        if (!g) return FAIL("encode: out of memory");
        *ids = g, *cap = n;
    }
    ct_tok_bytes_encode(text, len, *ids);
    return (long)n;
}

static char *bytes_decode(const int32_t *ids, size_t n, int skip_special, size_t *len, char *err, size_t errlen)
{
    tk_buf b = {0};
    if (tk_buf_add(&b, "", 0)) goto oom;
    for (size_t i = 0; i < n; i++) {
        if (ids[i] < 0 || ids[i] >= CT_TOK_BYTES_VOCAB) {
            free(b.p);
            FAIL("decode: id %d (position %zu) is not in the vocabulary", (int)ids[i], i);
            return NULL;
        }
        char c = (char)ids[i];
        int r = ids[i] < 256 ? tk_buf_add(&b, &c, 1) : skip_special ? 0 : tk_buf_add(&b, bytes_eot, sizeof bytes_eot - 1);
        if (r) {
            free(b.p);
            goto oom;
        }
    }
    if (len) *len = b.n;
    return b.p;
oom:
    FAIL("decode: out of memory");
    return NULL;
}

int ct_tokenizer_id(const ct_tokenizer *t, const char *token)
{
    if (t->is_bytes) return !strcmp(token, bytes_eot) ? CT_TOK_BYTES_EOT : -1;
    for (int i = 0; i < t->nadded; i++)
        if (!strcmp(t->added[i].content, token)) return t->added[i].id;
    return tk_strmap_get(&t->bpe.vocab, token, strlen(token));
}

/* ---- encode */
static uint32_t char_before(const char *s, size_t i)
{
    size_t j = i;
    while (j > 0 && ((unsigned char)s[j - 1] & 0xC0) == 0x80) j--;
    if (j > 0) j--;
    uint32_t cp;
    tk_utf8_next(s, i, j, &cp);
    return cp;
}

/* Splits s[n] at the added tokens whose `normalized` flag is norm_pass, leftmost-longest as
 * aho-corasick finds them; lstrip/rstrip take the whitespace beside a match into the token. */
static int split_added(const ct_tokenizer *t, int norm_pass, const char *s, size_t n, int orig0, tk_pieces *out)
{
    size_t prev = 0, i = 0;
    while (i < n) {
        int best = -1;
        if (!t->added_first[norm_pass][(unsigned char)s[i]]) {
            i++;
            continue;
        }
        for (int k = 0; k < t->nadded; k++) {
            const added_tok *a = &t->added[k];
            if (a->normalized != norm_pass || !a->match_len || a->match_len > n - i || a->match[0] != s[i]) continue;
            if ((best < 0 || a->match_len > t->added[best].match_len) && !memcmp(s + i, a->match, a->match_len)) best = k;
        }
        if (best < 0) {
            i++;
            continue;
        }
        const added_tok *a = &t->added[best];
        size_t ms = i, me = i + a->match_len;
        i = me;
        if (a->single_word) {
            uint32_t cp;
            if (ms > 0 && tk_is_alnum(char_before(s, ms))) continue;
            if (me < n && (tk_utf8_next(s, n, me, &cp), tk_is_alnum(cp))) continue;
        }
        if (a->lstrip)
            while (ms > prev) {
                size_t j = ms;
                while (j > 0 && ((unsigned char)s[j - 1] & 0xC0) == 0x80) j--;
                if (!tk_is_whitespace(char_before(s, ms))) break;
                ms = j - 1 < prev ? prev : j - 1;
            }
        if (a->rstrip)
            while (me < n) {
                uint32_t cp;
                int cl = tk_utf8_next(s, n, me, &cp);
                if (!tk_is_whitespace(cp)) break;
                me += (size_t)cl;
            }
        if (ms > prev && tk_pieces_push(out, s + prev, ms - prev, prev == 0 ? orig0 : 0, -1)) return -1;
        if (tk_pieces_push(out, s + ms, me - ms, 0, a->id)) return -1;
        prev = i = me;
    }
    if (n > prev && tk_pieces_push(out, s + prev, n - prev, prev == 0 ? orig0 : 0, -1)) return -1;
    return 0;
}

static int push_id(int32_t **v, size_t *n, size_t *cap, int32_t id)
{
    if (*n == *cap) {
        size_t c = *cap ? *cap * 2 : 64;
        int32_t *g = realloc(*v, c * sizeof *g);
        if (!g) return -1;
        *v = g, *cap = c;
    }
    (*v)[(*n)++] = id;
    return 0;
}

long ct_tokenizer_encode(const ct_tokenizer *t, const char *text, size_t len, int add_special, int32_t **ids,
                         size_t *cap, char *err, size_t errlen)
{
    return ct_tokenizer_encode_more(t, text, len, add_special, CT_ENC_BEGIN | CT_ENC_END, ids, cap, err, errlen);
}

long ct_tokenizer_encode_more(const ct_tokenizer *t, const char *text, size_t len, int add_special, int part,
                              int32_t **ids, size_t *cap, char *err, size_t errlen)
{
    if (t->is_bytes) return bytes_encode(text, len, add_special && (part & CT_ENC_END), ids, cap, err, errlen);
    const int begin = (part & CT_ENC_BEGIN) != 0, end = (part & CT_ENC_END) != 0;
    size_t bad = tk_utf8_check(text, len);
    if (bad < len) return FAIL("encode: invalid UTF-8 at byte %zu", bad);
    tk_pieces raw = {0}, l = {0};
    size_t n = 0;
    long rc = -1;
    /* grow *ids so that the caller's buffer is ours to append to */
    int32_t *v = *ids;
    size_t vcap = *cap;
    if (split_added(t, 0, text, len, begin ? TK_ORIG0 : TK_CONT, &raw)) goto oom;
    for (size_t i = 0; i < raw.n; i++) {
        tk_piece *p = &raw.v[i];
        if (p->id >= 0) {
            if (tk_pieces_push(&l, p->s, p->n, 0, p->id)) goto oom;
            continue;
        }
        char *s = p->s;
        size_t sn = p->n;
        if (t->norm && tk_norm_apply_cont(t->norm, p->s, p->n, (p->orig0 & TK_CONT) != 0, &s, &sn, err, errlen))
            goto fail;
        int r = split_added(t, 1, s, sn, p->orig0, &l);
        if (s != p->s) free(s);
        if (r) goto oom;
    }
    if (t->pre && tk_pre_apply(t->pre, &l, err, errlen)) goto fail;
    if (add_special && begin)
        for (int i = 0; i < t->npre; i++)
            if (push_id(&v, &n, &vcap, t->pre_ids[i])) goto oom;
    for (size_t i = 0; i < l.n; i++) {
        if (l.v[i].id >= 0) {
            if (push_id(&v, &n, &vcap, l.v[i].id)) goto oom;
        } else if (tk_bpe_encode(&t->bpe, l.v[i].s, l.v[i].n, &v, &n, &vcap))
            goto oom;
    }
    if (add_special && end)
        for (int i = 0; i < t->npost; i++)
            if (push_id(&v, &n, &vcap, t->post_ids[i])) goto oom;
    rc = (long)n;
    goto done;
oom:
    FAIL("encode: out of memory");
fail:
    rc = -1;
done:
    *ids = v, *cap = vcap;
    tk_pieces_free(&raw), tk_pieces_free(&l);
    return rc;
}

char *ct_tokenizer_decode(const ct_tokenizer *t, const int32_t *ids, size_t n, int skip_special, char *err,
                          size_t errlen)
{
    return ct_tokenizer_decode_n(t, ids, n, skip_special, NULL, err, errlen);
}

char *ct_tokenizer_decode_n(const ct_tokenizer *t, const int32_t *ids, size_t n, int skip_special, size_t *len,
                            char *err, size_t errlen)
{
    if (t->is_bytes) return bytes_decode(ids, n, skip_special, len, err, errlen);
    tk_pieces toks = {0};
    for (size_t i = 0; i < n; i++) {
        if (ids[i] < 0 || ids[i] >= t->vocab_size || !t->id_tok[ids[i]]) {
            tk_pieces_free(&toks);
            FAIL("decode: id %d (position %zu) is not in the vocabulary", (int)ids[i], i);
            return NULL;
        }
        if (skip_special && t->special[ids[i]]) continue;
        if (tk_pieces_push(&toks, t->id_tok[ids[i]], strlen(t->id_tok[ids[i]]), 0, -1)) goto oom;
    }
    if (t->dec && tk_dec_apply(t->dec, &toks)) goto oom;
    tk_buf b = {0};
    if (tk_buf_add(&b, "", 0)) goto oom;
    for (size_t i = 0; i < toks.n; i++)
        if ((i && !t->dec && tk_buf_add(&b, " ", 1)) || tk_buf_add(&b, toks.v[i].s, toks.v[i].n)) {
            free(b.p);
            goto oom;
        }
    tk_pieces_free(&toks);
    if (len) *len = b.n;
    return b.p;
oom:
    tk_pieces_free(&toks);
    FAIL("decode: out of memory");
    return NULL;
}
