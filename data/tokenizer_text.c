/* tokenizer_text.c — the text side of tokenizer.json: UTF-8, the ByteLevel byte map, regexes
 * (PCRE2 in UTF + UCP mode standing in for Oniguruma), normalizers, pre-tokenizers and decoders,
 * each as the tokenizers library defines it. */
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <utf8proc.h>

#include "tokenizer_impl.h"

int tk_buf_add(tk_buf *b, const char *s, size_t n)
{
    if (b->n + n + 1 > b->cap) {
        size_t c = b->cap ? b->cap : 64;
        while (c < b->n + n + 1) c *= 2;
        char *p = realloc(b->p, c);
        if (!p) return -1;
        b->p = p, b->cap = c;
    }
    if (n) memcpy(b->p + b->n, s, n);
    b->n += n;
    b->p[b->n] = 0;
    return 0;
}

int tk_pieces_push(tk_pieces *l, const char *s, size_t n, int orig0, int32_t id)
{
    if (l->n == l->cap) {
        size_t c = l->cap ? l->cap * 2 : 16;
        tk_piece *v = realloc(l->v, c * sizeof *v);
        if (!v) return -1;
        l->v = v, l->cap = c;
    }
    char *c = malloc(n + 1);
    if (!c) return -1;
    if (n) memcpy(c, s, n);
    c[n] = 0;
    l->v[l->n++] = (tk_piece){c, n, orig0, id};
    return 0;
}

void tk_pieces_free(tk_pieces *l)
{
    for (size_t i = 0; i < l->n; i++) free(l->v[i].s);
    free(l->v);
    memset(l, 0, sizeof *l);
}

/* ---- UTF-8 */
int tk_utf8_next(const char *s, size_t n, size_t i, uint32_t *cp)
{
    const unsigned char *u = (const unsigned char *)s + i;
    size_t left = n - i;
    if (u[0] < 0x80 || left < 2) return *cp = u[0], 1;
    if (u[0] < 0xE0) return *cp = (uint32_t)(u[0] & 0x1F) << 6 | (u[1] & 0x3F), 2;
    if (u[0] < 0xF0 || left < 4) {
        if (left < 3) return *cp = u[0], 1;
        return *cp = (uint32_t)(u[0] & 0x0F) << 12 | (uint32_t)(u[1] & 0x3F) << 6 | (u[2] & 0x3F), 3;
    }
    *cp = (uint32_t)(u[0] & 0x07) << 18 | (uint32_t)(u[1] & 0x3F) << 12 | (uint32_t)(u[2] & 0x3F) << 6 | (u[3] & 0x3F);
    return 4;
}

int tk_utf8_put(uint32_t cp, char *o)
{
    if (cp < 0x80) return o[0] = (char)cp, 1;
    if (cp < 0x800) return o[0] = (char)(0xC0 | cp >> 6), o[1] = (char)(0x80 | (cp & 0x3F)), 2;
    if (cp < 0x10000) {
        o[0] = (char)(0xE0 | cp >> 12), o[1] = (char)(0x80 | (cp >> 6 & 0x3F)), o[2] = (char)(0x80 | (cp & 0x3F));
        return 3;
    }
    o[0] = (char)(0xF0 | cp >> 18), o[1] = (char)(0x80 | (cp >> 12 & 0x3F));
    o[2] = (char)(0x80 | (cp >> 6 & 0x3F)), o[3] = (char)(0x80 | (cp & 0x3F));
    return 4;
}

/* Length of the valid sequence at s[i] (1-4), or -k: the first k bytes are the maximal invalid
 * prefix (k >= 1), as Rust's from_utf8_lossy counts them. */
static int utf8_seq(const unsigned char *s, size_t n, size_t i)
{
    unsigned c = s[i];
    if (c < 0x80) return 1;
    int need;
    unsigned lo = 0x80, hi = 0xBF;
    if (c >= 0xC2 && c <= 0xDF) need = 1;
    else if (c >= 0xE0 && c <= 0xEF) {
        need = 2;
        if (c == 0xE0) lo = 0xA0;
        if (c == 0xED) hi = 0x9F;
    } else if (c >= 0xF0 && c <= 0xF4) {
        need = 3;
        if (c == 0xF0) lo = 0x90;
        if (c == 0xF4) hi = 0x8F;
    } else
        return -1;
    for (int k = 1; k <= need; k++) {
        if (i + (size_t)k >= n) return -k;
        unsigned d = s[i + (size_t)k];
        unsigned l = k == 1 ? lo : 0x80, h = k == 1 ? hi : 0xBF;
        if (d < l || d > h) return -k;
    }
    return need + 1;
}

size_t tk_utf8_check(const char *s, size_t n)
{
    for (size_t i = 0; i < n;) {
        int k = utf8_seq((const unsigned char *)s, n, i);
        if (k < 0) return i;
        i += (size_t)k;
    }
    return n;
}

int tk_utf8_lossy(tk_buf *b, const char *s, size_t n)
{
    for (size_t i = 0; i < n;) {
        int k = utf8_seq((const unsigned char *)s, n, i);
        if (k > 0) {
            if (tk_buf_add(b, s + i, (size_t)k)) return -1;
            i += (size_t)k;
        } else {
            if (tk_buf_add(b, "\xEF\xBF\xBD", 3)) return -1;
            i += (size_t)-k;
        }
    }
    return 0;
}

int tk_is_whitespace(uint32_t c)
{
    return (c >= 9 && c <= 13) || c == 32 || c == 0x85 || c == 0xA0 || c == 0x1680 || (c >= 0x2000 && c <= 0x200A) ||
           c == 0x2028 || c == 0x2029 || c == 0x202F || c == 0x205F || c == 0x3000;
}

int tk_is_numeric(uint32_t c)
{
    utf8proc_category_t k = utf8proc_category((utf8proc_int32_t)c);
    return k == UTF8PROC_CATEGORY_ND || k == UTF8PROC_CATEGORY_NL || k == UTF8PROC_CATEGORY_NO;
}

int tk_is_alnum(uint32_t c)
{
    utf8proc_category_t k = utf8proc_category((utf8proc_int32_t)c);
    return (k >= UTF8PROC_CATEGORY_LU && k <= UTF8PROC_CATEGORY_LO) || tk_is_numeric(c);
}

/* ---- ByteLevel's byte map: printable Latin-1 bytes map to themselves, the rest to 256 + n */
static uint32_t byte_char[256];
static pthread_once_t byte_once = PTHREAD_ONCE_INIT;
static void byte_init(void)
{
    uint32_t next = 256;
    for (int b = 0; b < 256; b++)
        byte_char[b] = ((b >= 33 && b <= 126) || (b >= 161 && b <= 172) || b >= 174) ? (uint32_t)b : next++;
}

uint32_t tk_byte_char(unsigned char b)
{
    pthread_once(&byte_once, byte_init);
    return byte_char[b];
}

int tk_char_to_byte(uint32_t cp)
{
    pthread_once(&byte_once, byte_init);
    if (cp < 256) return byte_char[cp] == cp ? (int)cp : -1;
    if (cp < 256 + 68)
        for (int b = 0; b < 256; b++)
            if (byte_char[b] == cp) return b;
    return -1;
}

/* ---- regexes. Oniguruma's \s (what tokenizers compiles) is White_Space; PCRE2's UCP \s differs
 * (U+180E in, U+001C-1F out), so \s and \S are spelled out. */
#define WS_CLASS "\\t\\n\\x{0B}\\f\\r \\x{85}\\x{A0}\\x{1680}\\x{2000}-\\x{200A}\\x{2028}\\x{2029}\\x{202F}\\x{205F}\\x{3000}"

int tk_regex_compile(tk_regex *r, const char *pat, int literal, char *err, size_t errlen)
{
    tk_buf b = {0};
    uint32_t opts = PCRE2_UTF | PCRE2_UCP;
    if (literal) {
        opts = PCRE2_UTF | PCRE2_LITERAL; /* UCP is not allowed with LITERAL (and not needed) */
        if (tk_buf_add(&b, pat, strlen(pat))) goto oom;
    } else {
        int in_class = 0;
        for (size_t i = 0; pat[i]; i++) {
            char c = pat[i];
            if (c == '\\' && pat[i + 1]) {
                char d = pat[++i];
                const char *rep = NULL;
                if (d == 's') rep = in_class ? WS_CLASS : "[" WS_CLASS "]";
                else if (d == 'S' && !in_class) rep = "[^" WS_CLASS "]";
                if (rep) {
                    if (tk_buf_add(&b, rep, strlen(rep))) goto oom;
                } else {
                    char two[2] = {c, d};
                    if (tk_buf_add(&b, two, 2)) goto oom;
                }
                continue;
            }
            if (c == '[' && !in_class) {
                in_class = 1;
                if (tk_buf_add(&b, pat + i, 1)) goto oom;
                if (pat[i + 1] == '^') i++, tk_buf_add(&b, "^", 1);
                if (pat[i + 1] == ']') i++, tk_buf_add(&b, "]", 1);
                continue;
            }
            if (c == ']' && in_class) in_class = 0;
            if (tk_buf_add(&b, pat + i, 1)) goto oom;
        }
    }
    int ec;
    PCRE2_SIZE eo;
    r->re = pcre2_compile((PCRE2_SPTR)b.p, b.n, opts, &ec, &eo, NULL);
    free(b.p);
    if (!r->re) {
        PCRE2_UCHAR msg[256];
        pcre2_get_error_message(ec, msg, sizeof msg);
        snprintf(err, errlen, "regex \"%s\": %s at %zu", pat, (char *)msg, (size_t)eo);
        return -1;
    }
    pcre2_jit_compile(r->re, PCRE2_JIT_COMPLETE); /* without JIT, pcre2_match interprets */
    return 0;
oom:
    free(b.p);
    snprintf(err, errlen, "out of memory");
    return -1;
}

void tk_regex_free(tk_regex *r)
{
    if (r->re) pcre2_code_free(r->re);
    r->re = NULL;
}

int tk_regex_next(const tk_regex *r, pcre2_match_data *md, const char *s, size_t n, size_t off, size_t *ms, size_t *me)
{
    int rc = pcre2_match(r->re, (PCRE2_SPTR)s, n, off, PCRE2_NO_UTF_CHECK, md, NULL);
    if (rc == PCRE2_ERROR_JIT_STACKLIMIT)
        rc = pcre2_match(r->re, (PCRE2_SPTR)s, n, off, PCRE2_NO_UTF_CHECK | PCRE2_NO_JIT, md, NULL);
    if (rc == PCRE2_ERROR_NOMATCH) return 0;
    if (rc < 0) return -1;
    PCRE2_SIZE *ov = pcre2_get_ovector_pointer(md);
    *ms = ov[0], *me = ov[1];
    return 1;
}

/* ---- splitting as tokenizers' NormalizedString::split: a pattern gives (range, is_match) runs
 * covering the text; the behavior decides what becomes a piece. */
typedef struct {
    size_t s, e;
    int m;
} run;
typedef struct {
    run *v;
    size_t n, cap;
} runs;

static int runs_push(runs *r, size_t s, size_t e, int m)
{
    if (r->n == r->cap) {
        size_t c = r->cap ? r->cap * 2 : 32;
        run *v = realloc(r->v, c * sizeof *v);
        if (!v) return -1;
        r->v = v, r->cap = c;
    }
    r->v[r->n++] = (run){s, e, m};
    return 0;
}

/* Matches of a regex (re) or of single characters (pred, with arg). */
static int find_runs(const tk_regex *re, int (*pred)(uint32_t, const void *), const void *arg, const char *s,
                     size_t n, runs *out)
{
    size_t prev = 0;
    if (re) {
        pcre2_match_data *md = pcre2_match_data_create_from_pattern(re->re, NULL);
        if (!md) return -1;
        size_t off = 0, ms, me;
        int rc;
        while (off <= n && (rc = tk_regex_next(re, md, s, n, off, &ms, &me)) == 1) {
            if (ms != prev && runs_push(out, prev, ms, 0)) goto fail;
            if (runs_push(out, ms, me, 1)) goto fail;
            prev = me;
            if (me == ms) {
                if (me >= n) break;
                uint32_t cp;
                off = me + (size_t)tk_utf8_next(s, n, me, &cp);
            } else
                off = me;
        }
        pcre2_match_data_free(md);
        if (rc < 0) return -1;
        goto tail;
    fail:
        pcre2_match_data_free(md);
        return -1;
    }
    for (size_t i = 0; i < n;) {
        uint32_t cp;
        int cl = tk_utf8_next(s, n, i, &cp);
        if (pred(cp, arg)) {
            if (prev < i && runs_push(out, prev, i, 0)) return -1;
            if (runs_push(out, i, i + (size_t)cl, 1)) return -1;
            prev = i + (size_t)cl;
        }
        i += (size_t)cl;
    }
tail:
    if (prev < n && runs_push(out, prev, n, 0)) return -1;
    return 0;
}

/* Applies behavior to the runs: afterwards r->v[i].m = 1 marks a run to drop. -1 out of memory. */
static int apply_behavior(runs *r, int behavior, int invert)
{
    if (invert)
        for (size_t i = 0; i < r->n; i++) r->v[i].m = !r->v[i].m;
    if (behavior == TK_B_REMOVED) return 0;
    if (behavior == TK_B_ISOLATED) {
        for (size_t i = 0; i < r->n; i++) r->v[i].m = 0;
        return 0;
    }
    run *o = malloc((r->n + 1) * sizeof *o);
    if (!o) return -1;
    size_t k = 0;
    int prevm = 0;
    if (behavior == TK_B_NEXT) { /* right to left, then back in order */
        for (size_t i = r->n; i-- > 0;) {
            if (r->v[i].m && !prevm && k) o[k - 1].s = r->v[i].s;
            else o[k++] = (run){r->v[i].s, r->v[i].e, 0};
            prevm = r->v[i].m;
        }
        for (size_t i = 0; i < k; i++) r->v[i] = o[k - 1 - i];
    } else {
        for (size_t i = 0; i < r->n; i++) {
            int merge = behavior == TK_B_CONTIGUOUS ? r->v[i].m == prevm : r->v[i].m && !prevm;
            if (merge && k) o[k - 1].e = r->v[i].e;
            else o[k++] = (run){r->v[i].s, r->v[i].e, 0};
            prevm = r->v[i].m;
        }
        memcpy(r->v, o, k * sizeof *o);
    }
    free(o);
    r->n = k;
    return 0;
}

/* Splits piece p into out (orig0 kept by a first sub-piece at offset 0). A TK_CONT piece is split
 * with the line feed that preceded it in the whole text in front (offset 0 of the split text): a
 * run that starts at 1 begins a piece of its own (the whole text had a boundary there, so later
 * stages treat it as a start), a run that holds the line feed and more keeps TK_CONT without it,
 * and the line feed alone is dropped (it belongs to the part before). */
static int split_piece(const tk_piece *p, const tk_regex *re, int (*pred)(uint32_t, const void *), const void *arg,
                       int behavior, int invert, tk_pieces *out)
{
    runs r = {0};
    if (!p->n) {
        free(r.v);
        return 0;
    }
    const int cont = (p->orig0 & TK_CONT) != 0;
    const char *s = p->s;
    char *ctx = NULL;
    if (cont) {
        if (!(ctx = malloc(p->n + 2))) return -1;
        ctx[0] = '\n';
        memcpy(ctx + 1, p->s, p->n + 1);
        s = ctx;
    }
    const size_t k = cont ? 1 : 0; /* bytes of context in front */
    if (find_runs(re, pred, arg, s, p->n + k, &r)) {
        free(r.v), free(ctx);
        return -1;
    }
    int rc = apply_behavior(&r, behavior, invert);
    for (size_t i = 0; i < r.n && !rc; i++) {
        size_t a = r.v[i].s, e = r.v[i].e;
        if (r.v[i].m || e <= a || e <= k) continue;
        int flags = a == 0 ? p->orig0 : 0; /* with context, a == 0 is a run that holds the line feed */
        if (a < k) a = k;
        rc = tk_pieces_push(out, s + a, e - a, flags, -1);
    }
    free(r.v), free(ctx);
    return rc;
}

/* ---- normalizers */
static int regex_replace(const tk_regex *re, const char *s, size_t n, const char *content, tk_buf *out)
{
    runs r = {0};
    if (find_runs(re, NULL, NULL, s, n, &r)) {
        free(r.v);
        return -1;
    }
    int rc = tk_buf_add(out, "", 0);
    for (size_t i = 0; i < r.n && !rc; i++)
        rc = r.v[i].m ? tk_buf_add(out, content, strlen(content)) : tk_buf_add(out, s + r.v[i].s, r.v[i].e - r.v[i].s);
    free(r.v);
    return rc;
}

int tk_norm_apply(const tk_norm *nm, const char *s, size_t len, char **out, size_t *outn, char *err, size_t errlen)
{
    return tk_norm_apply_cont(nm, s, len, 0, out, outn, err, errlen);
}

int tk_norm_apply_cont(const tk_norm *nm, const char *s, size_t len, int cont, char **out, size_t *outn, char *err,
                       size_t errlen)
{
    tk_buf b = {0};
    switch (nm->kind) {
    case TK_N_NFC: {
        utf8proc_uint8_t *d = NULL;
        utf8proc_ssize_t k = utf8proc_map((const utf8proc_uint8_t *)s, (utf8proc_ssize_t)len, &d,
                                          UTF8PROC_STABLE | UTF8PROC_COMPOSE);
        if (k < 0) {
            snprintf(err, errlen, "NFC: %s", utf8proc_errmsg(k));
            return -1;
        }
        *out = (char *)d, *outn = (size_t)k;
        return 0;
    }
    case TK_N_PREPEND:
        if ((len && !cont && tk_buf_add(&b, nm->str, strlen(nm->str))) || tk_buf_add(&b, s, len)) goto oom;
        break;
    case TK_N_REPLACE:
        if (regex_replace(&nm->re, s, len, nm->content, &b)) goto oom;
        break;
    case TK_N_SEQ: {
        if (tk_buf_add(&b, s, len)) goto oom;
        for (int i = 0; i < nm->nsub; i++) {
            char *o;
            size_t on;
            if (tk_norm_apply_cont(&nm->sub[i], b.p, b.n, cont, &o, &on, err, errlen)) {
                free(b.p);
                return -1;
            }
            free(b.p);
            b.p = o, b.n = b.cap = on;
        }
        if (!b.p && tk_buf_add(&b, "", 0)) goto oom;
        break;
    }
    }
    *out = b.p, *outn = b.n;
    return 0;
oom:
    free(b.p);
    snprintf(err, errlen, "normalizer: out of memory or regex failure");
    return -1;
}

void tk_norm_free(tk_norm *n)
{
    free(n->str), free(n->content);
    tk_regex_free(&n->re);
    for (int i = 0; i < n->nsub; i++) tk_norm_free(&n->sub[i]);
    free(n->sub);
}

/* ---- pre-tokenizers */
static int pred_numeric(uint32_t c, const void *a)
{
    (void)a;
    return tk_is_numeric(c);
}

static int pred_char(uint32_t c, const void *a) { return c == *(const uint32_t *)a; }

/* s with every occurrence of byte-string from replaced by to, then to prepended when asked. */
static int bytelevel_map(const char *s, size_t n, tk_buf *b)
{
    for (size_t i = 0; i < n; i++) {
        char o[4];
        if (tk_buf_add(b, o, (size_t)tk_utf8_put(tk_byte_char((unsigned char)s[i]), o))) return -1;
    }
    return tk_buf_add(b, "", 0);
}

static int pre_one(const tk_pre *p, const tk_piece *in, tk_pieces *out)
{
    tk_buf b = {0};
    tk_piece q = *in;
    int rc = 0;
    switch (p->kind) {
    case TK_P_BYTELEVEL: {
        if (p->add_prefix_space && !(in->orig0 & TK_CONT) && (!in->n || in->s[0] != ' ')) {
            if (tk_buf_add(&b, " ", 1) || tk_buf_add(&b, in->s, in->n)) goto oom;
            q.s = b.p, q.n = b.n;
        }
        tk_pieces tmp = {0};
        if (p->use_regex) rc = split_piece(&q, &p->re, NULL, NULL, TK_B_ISOLATED, 0, &tmp);
        else if (q.n) rc = tk_pieces_push(&tmp, q.s, q.n, q.orig0, -1);
        for (size_t i = 0; i < tmp.n && !rc; i++) {
            tk_buf m = {0};
            rc = bytelevel_map(tmp.v[i].s, tmp.v[i].n, &m);
            if (!rc && tk_pieces_push(out, m.p, m.n, tmp.v[i].orig0, -1)) rc = -1;
            free(m.p);
        }
        tk_pieces_free(&tmp);
        break;
    }
    case TK_P_SPLIT:
        rc = split_piece(in, &p->re, NULL, NULL, p->behavior, p->invert, out);
        break;
    case TK_P_METASPACE: {
        uint32_t rcp;
        size_t rl = strlen(p->repl);
        tk_utf8_next(p->repl, rl, 0, &rcp);
        int starts = (in->n >= rl && !memcmp(in->s, p->repl, rl)) || (in->n && in->s[0] == ' ');
        if (!(in->orig0 & TK_CONT) && ((p->prepend == 2 && !starts) || (p->prepend == 1 && !starts && (in->orig0 & TK_ORIG0))))
            if (tk_buf_add(&b, p->repl, rl)) goto oom;
        for (size_t i = 0; i < in->n; i++)
            if (in->s[i] == ' ' ? tk_buf_add(&b, p->repl, rl) : tk_buf_add(&b, in->s + i, 1)) goto oom;
        if (tk_buf_add(&b, "", 0)) goto oom;
        q.s = b.p, q.n = b.n;
        if (p->split) rc = split_piece(&q, NULL, pred_char, &rcp, TK_B_NEXT, 0, out);
        else if (q.n) rc = tk_pieces_push(out, q.s, q.n, q.orig0, -1);
        break;
    }
    case TK_P_DIGITS:
        rc = split_piece(in, NULL, pred_numeric, NULL, p->individual ? TK_B_ISOLATED : TK_B_CONTIGUOUS, 0, out);
        break;
    }
    free(b.p);
    return rc;
oom:
    free(b.p);
    return -1;
}

int tk_pre_apply(const tk_pre *p, tk_pieces *l, char *err, size_t errlen)
{
    if (p->kind == TK_P_SEQ) {
        for (int i = 0; i < p->nsub; i++)
            if (tk_pre_apply(&p->sub[i], l, err, errlen)) return -1;
        return 0;
    }
    tk_pieces out = {0};
    for (size_t i = 0; i < l->n; i++) {
        int rc = l->v[i].id >= 0 ? tk_pieces_push(&out, l->v[i].s, l->v[i].n, 0, l->v[i].id) : pre_one(p, &l->v[i], &out);
        if (rc) {
            tk_pieces_free(&out);
            snprintf(err, errlen, "pre-tokenizer: out of memory or regex failure");
            return -1;
        }
    }
    tk_pieces_free(l);
    *l = out;
    return 0;
}

void tk_pre_free(tk_pre *p)
{
    tk_regex_free(&p->re);
    for (int i = 0; i < p->nsub; i++) tk_pre_free(&p->sub[i]);
    free(p->sub);
}

/* ---- decoders: a list of token strings in, a list out (the caller joins them) */
static int set_piece(tk_piece *p, tk_buf *b)
{
    if (!b->p && tk_buf_add(b, "", 0)) return -1;
    free(p->s);
    p->s = b->p, p->n = b->n;
    memset(b, 0, sizeof *b);
    return 0;
}

static int hexval(char c)
{
    if (c >= '0' && c <= '9') return c - '0';
    if (c >= 'a' && c <= 'f') return c - 'a' + 10;
    if (c >= 'A' && c <= 'F') return c - 'A' + 10;
    return -1;
}

/* "<0xXX>" -> the byte (u8::from_str_radix accepts a leading '+'), else -1 */
static int byte_token(const tk_piece *t)
{
    if (t->n != 6 || memcmp(t->s, "<0x", 3) || t->s[5] != '>') return -1;
    int a = hexval(t->s[3]), b = hexval(t->s[4]);
    if (t->s[3] == '+' && b >= 0) return b;
    return a >= 0 && b >= 0 ? a * 16 + b : -1;
}

static int dec_one(const tk_dec *d, tk_pieces *t)
{
    tk_buf b = {0};
    switch (d->kind) {
    case TK_D_BYTELEVEL: {
        tk_buf raw = {0};
        for (size_t i = 0; i < t->n; i++) {
            size_t start = raw.n;
            int ok = 1;
            for (size_t j = 0; j < t->v[i].n && ok;) {
                uint32_t cp;
                j += (size_t)tk_utf8_next(t->v[i].s, t->v[i].n, j, &cp);
                int by = tk_char_to_byte(cp);
                char c = (char)by;
                if (by < 0) ok = 0;
                else if (tk_buf_add(&raw, &c, 1)) goto oom_raw;
            }
            if (!ok) {
                raw.n = start;
                if (tk_buf_add(&raw, t->v[i].s, t->v[i].n)) goto oom_raw;
            }
        }
        if (tk_utf8_lossy(&b, raw.p ? raw.p : "", raw.n) || tk_buf_add(&b, "", 0)) goto oom_raw;
        free(raw.p);
        for (size_t i = 1; i < t->n; i++) free(t->v[i].s);
        if (!t->n) {
            free(b.p);
            return 0;
        }
        t->n = 1;
        return set_piece(&t->v[0], &b);
    oom_raw:
        free(raw.p);
        goto oom;
    }
    case TK_D_METASPACE: {
        size_t rl = strlen(d->repl);
        for (size_t i = 0; i < t->n; i++) {
            for (size_t j = 0; j < t->v[i].n;) {
                if (j + rl <= t->v[i].n && !memcmp(t->v[i].s + j, d->repl, rl)) {
                    if (!(i == 0 && d->prepend) && tk_buf_add(&b, " ", 1)) goto oom;
                    j += rl;
                } else if (tk_buf_add(&b, t->v[i].s + j++, 1))
                    goto oom;
            }
            if (set_piece(&t->v[i], &b)) goto oom;
        }
        return 0;
    }
    case TK_D_REPLACE:
        for (size_t i = 0; i < t->n; i++)
            if (regex_replace(&d->re, t->v[i].s, t->v[i].n, d->content, &b) || set_piece(&t->v[i], &b)) goto oom;
        return 0;
    case TK_D_BYTEFALLBACK: {
        tk_pieces o = {0};
        tk_buf bytes = {0};
        for (size_t i = 0; i <= t->n; i++) {
            int by = i < t->n ? byte_token(&t->v[i]) : -1;
            if (by >= 0) {
                char c = (char)by;
                if (tk_buf_add(&bytes, &c, 1)) goto oom_bf;
                continue;
            }
            if (bytes.n) {
                if (tk_utf8_check(bytes.p, bytes.n) == bytes.n) {
                    if (tk_pieces_push(&o, bytes.p, bytes.n, 0, -1)) goto oom_bf;
                } else
                    for (size_t k = 0; k < bytes.n; k++)
                        if (tk_pieces_push(&o, "\xEF\xBF\xBD", 3, 0, -1)) goto oom_bf;
                bytes.n = 0;
            }
            if (i < t->n && tk_pieces_push(&o, t->v[i].s, t->v[i].n, 0, -1)) goto oom_bf;
        }
        free(bytes.p);
        tk_pieces_free(t);
        *t = o;
        return 0;
    oom_bf:
        free(bytes.p);
        tk_pieces_free(&o);
        goto oom;
    }
    case TK_D_FUSE: {
        if (tk_buf_add(&b, "", 0)) goto oom;
        for (size_t i = 0; i < t->n; i++)
            if (tk_buf_add(&b, t->v[i].s, t->v[i].n)) goto oom;
        if (!t->n) {
            tk_pieces_free(t);
            if (tk_pieces_push(t, "", 0, 0, -1)) goto oom;
        }
        for (size_t i = 1; i < t->n; i++) free(t->v[i].s);
        t->n = 1;
        return set_piece(&t->v[0], &b);
    }
    case TK_D_STRIP: {
        char cc[4];
        size_t cl = (size_t)tk_utf8_put(d->strip_char, cc);
        for (size_t i = 0; i < t->n; i++) {
            const char *s = t->v[i].s;
            size_t a = 0, e = t->v[i].n;
            for (int k = 0; k < d->strip_start && a + cl <= e && !memcmp(s + a, cc, cl); k++) a += cl;
            for (int k = 0; k < d->strip_stop && e >= a + cl && !memcmp(s + e - cl, cc, cl); k++) e -= cl;
            if (tk_buf_add(&b, s + a, e - a) || set_piece(&t->v[i], &b)) goto oom;
        }
        return 0;
    }
    case TK_D_SEQ:
        for (int i = 0; i < d->nsub; i++)
            if (dec_one(&d->sub[i], t)) return -1;
        return 0;
    }
    return 0;
oom:
    free(b.p);
    return -1;
}

int tk_dec_apply(const tk_dec *d, tk_pieces *toks) { return dec_one(d, toks); }

void tk_dec_free(tk_dec *d)
{
    tk_regex_free(&d->re);
    free(d->content);
    for (int i = 0; i < d->nsub; i++) tk_dec_free(&d->sub[i]);
    free(d->sub);
}

char *ct_utf8_lossy(const char *s, size_t n)
{
    tk_buf b = {0};
    if (tk_buf_add(&b, "", 0) || tk_utf8_lossy(&b, s, n)) {
        free(b.p);
        return NULL;
    }
    return b.p;
}
