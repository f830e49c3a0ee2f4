/* chat_template.c — chat templates without Jinja (data.h, "chat templates"): a model's template is
 * reduced to a canonical token form, recognised by its family's markers and told apart from the
 * family's other variants by fingerprints of that form; the conversation is then rendered as a list
 * of text segments (fixed template text, message contents, each with its loss mask) and tokenized.
 *
 * Tokenizing: the ids are always those of the whole rendered text (what transformers does). The
 * mask needs to know which tokens come from which segment. Added tokens split the text into pieces
 * that the tokenizer handles independently, so the text is also encoded in chunks cut just before
 * the template's special tokens, and the concatenation is checked against the whole; inside a chunk,
 * a boundary between segments is located by encoding the chunk up to it and taking the longest
 * common prefix with the chunk's ids. A token the prefix does not account for straddles the
 * boundary and counts as a target (it overlaps the assistant's span). If the chunks disagree with
 * the whole text (an added token with lstrip, say), boundaries are located on prefixes of the whole
 * text instead. */
#include "data.h"
#include "data_impl.h"
#include "json_check.h"
#include "tokenizer_impl.h"

#include <cjson/cJSON.h>
#include <ctype.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#define FAIL(...) ct_data_fail(err, errlen, __VA_ARGS__)

enum { F_CHATML, F_LLAMA3, F_LLAMA2, F_MISTRAL, F_GEMMA, F_PLAIN, F_COUNT };
static const char *const family_names[F_COUNT] = {"chatml", "llama3", "llama2", "mistral", "gemma", "plain"};
#define KNOWN_NAMES "chatml, llama3, llama2, mistral, gemma, plain"

/* Where an [INST] template puts a first system message. */
enum { SYS_REFUSE, SYS_LLAMA2, SYS_FIRST_USER, SYS_LAST_USER };

struct ct_chat_template {
    int fam;
    char desc[1024];
    char *bos, *eos; /* bos_token / eos_token text ("" when the folder names none) */
    int has_bos, has_eos;
    int bos_at_start;     /* the template writes bos_token first */
    char *default_system; /* ChatML: inserted when the first message is not a system message */
    /* Llama-3 */
    int sys_header; /* Llama-3.1+: a system header with the knowledge date and today's date */
    char *kd_line;  /* "Cutting Knowledge Date: December 2023\n" */
    char date[64];
    /* [INST] families */
    int sys_mode, bos_per_user, user_strip, asst_trim;
    char *user_pre, *user_suf, *sys_sep, *asst_pre, *asst_mid, *asst_suf;
    char alt_msg[200], sys_msg[200];
    const char *eot; /* the end-of-turn marker's text */
    int32_t stop[2];
    int nstop;
    int32_t pre_ids[8]; /* plain: the post-processor's leading ids */
    int npre;
    int32_t plain_eos;  /* plain: the id that ends each reply */
    char *markers[8]; /* template texts that are single tokens: chunks are cut before them */
    int nmarkers;
};

/* ---- text helpers; tk_buf is the tokenizer's growable string */
typedef tk_buf sbuf;
#define sb_add tk_buf_add
static int sb_str(sbuf *b, const char *s) { return tk_buf_add(b, s, strlen(s)); }

static char *dupn(const char *s, size_t n)
{
    char *p = malloc(n + 1);
    if (p) memcpy(p, s, n), p[n] = 0;
    return p;
}
static char *dup0(const char *s) { return dupn(s, strlen(s)); }

/* ---- Python's str.strip() (Jinja's trim): the characters str.isspace() accepts */
static int py_space(uint32_t c)
{
    return (c >= 0x09 && c <= 0x0D) || (c >= 0x1C && c <= 0x20) || c == 0x85 || c == 0xA0 || c == 0x1680 ||
           (c >= 0x2000 && c <= 0x200A) || c == 0x2028 || c == 0x2029 || c == 0x202F || c == 0x205F || c == 0x3000;
}

/* Trims valid UTF-8 s[*n] as Python's str.strip(): *s advanced, *n shortened. */
static void py_strip(const char **s, size_t *n)
{
    size_t a = 0, b = *n;
    while (a < b) {
        uint32_t cp;
        int l = tk_utf8_next(*s, b, a, &cp);
        if (!py_space(cp)) break;
        a += (size_t)l;
    }
    while (b > a) {
        size_t j = b - 1;
        while (j > a && ((unsigned char)(*s)[j] & 0xC0) == 0x80) j--;
        uint32_t cp;
        tk_utf8_next(*s, b, j, &cp);
        if (!py_space(cp)) break;
        b = j;
    }
    *s += a;
    *n = b - a;
}

/* ---- the template's canonical form
 * Every {{ }} and {% %} tag becomes "{{ tok tok ... }}" / "{% ... %}": whitespace control dropped,
 * tokens separated by one space, string literals written '...' with \\ \' \n \t \r escapes, and
 * x['name'] written x . name. Comments are dropped. Every string literal (and every text outside
 * tags that is not blank) is also kept decoded, for the markers. */
typedef struct {
    sbuf canon;
    char **lits;
    size_t nlits, cap;
} tmpl_form;

static void form_free(tmpl_form *f)
{
    free(f->canon.p);
    for (size_t i = 0; i < f->nlits; i++) free(f->lits[i]);
    free(f->lits);
}

static int form_lit(tmpl_form *f, const char *s, size_t n)
{
    if (f->nlits == f->cap) {
        size_t c = f->cap ? f->cap * 2 : 32;
        char **l = realloc(f->lits, c * sizeof *l);
        if (!l) return -1;
        f->lits = l, f->cap = c;
    }
    if (!(f->lits[f->nlits] = dupn(s, n))) return -1;
    f->nlits++;
    return 0;
}

static int hexval(const char *s, int k, uint32_t *v)
{
    *v = 0;
    for (int i = 0; i < k; i++) {
        int c = (unsigned char)s[i], d = isdigit(c) ? c - '0' : isxdigit(c) ? (tolower(c) - 'a' + 10) : -1;
        if (d < 0) return -1;
        *v = *v << 4 | (uint32_t)d;
    }
    return 0;
}

static int put_utf8(sbuf *b, uint32_t cp)
{
    char o[4];
    return sb_add(b, o, (size_t)tk_utf8_put(cp, o));
}

/* A Jinja string literal at t[i] (its quote): decoded into out as Python's unicode-escape does.
 * Returns the index after the closing quote, or 0 when it is not closed. */
static size_t lex_string(const char *t, size_t n, size_t i, sbuf *out)
{
    char q = t[i++];
    while (i < n && t[i] != q) {
        int r = 0;
        if (t[i] == '\\' && i + 1 < n) {
            char e = t[i + 1];
            uint32_t v;
            i += 2;
            switch (e) {
            case 'n': r = sb_add(out, "\n", 1); break;
            case 't': r = sb_add(out, "\t", 1); break;
            case 'r': r = sb_add(out, "\r", 1); break;
            case '\\': r = sb_add(out, "\\", 1); break;
            case '\'': r = sb_add(out, "'", 1); break;
            case '"': r = sb_add(out, "\"", 1); break;
            case 'a': r = sb_add(out, "\a", 1); break;
            case 'b': r = sb_add(out, "\b", 1); break;
            case 'f': r = sb_add(out, "\f", 1); break;
            case 'v': r = sb_add(out, "\v", 1); break;
            case '\n': break;
            case 'x':
            case 'u':
            case 'U': {
                int k = e == 'x' ? 2 : e == 'u' ? 4 : 8;
                if (i + (size_t)k <= n && !hexval(t + i, k, &v) && v < 0x110000) {
                    r = put_utf8(out, v);
                    i += (size_t)k;
                } else {
                    r = sb_add(out, t + i - 2, 2);
                }
                break;
            }
            default: r = sb_add(out, t + i - 2, 2);
            }
        } else if (t[i] == '\r' && i + 1 < n && t[i + 1] == '\n') {
            r = sb_add(out, "\n", 1), i += 2;
        } else {
            r = sb_add(out, t + i, 1), i++;
        }
        if (r) return 0;
    }
    return i < n ? i + 1 : 0;
}

static int canon_lit(sbuf *c, const char *s, size_t n)
{
    if (sb_add(c, "'", 1)) return -1;
    for (size_t i = 0; i < n; i++) {
        const char *e = s[i] == '\\'   ? "\\\\"
                        : s[i] == '\'' ? "\\'"
                        : s[i] == '\n' ? "\\n"
                        : s[i] == '\t' ? "\\t"
                        : s[i] == '\r' ? "\\r"
                                       : NULL;
        if (e ? sb_str(c, e) : sb_add(c, s + i, 1)) return -1;
    }
    return sb_add(c, "'", 1);
}

static int ident_like(const char *s)
{
    if (!(isalpha((unsigned char)*s) || *s == '_')) return 0;
    for (; *s; s++)
        if (!(isalnum((unsigned char)*s) || *s == '_')) return 0;
    return 1;
}

typedef struct {
    char type; /* 'w' word, 'o' operator, 's' string */
    char *text;
} jtok;

/* Returns 0, or -1 with *why set (unterminated tag, string or comment; out of memory). */
static int form_build(tmpl_form *f, const char *t, size_t n, const char **why)
{
    jtok *tk = NULL;
    size_t ntk = 0, tkcap = 0;
    int rc = -1;
    *why = "out of memory";
    size_t i = 0;
    while (i < n) {
        if (t[i] == '{' && i + 1 < n && t[i + 1] == '#') {
            const char *e = NULL;
            for (size_t j = i + 2; j + 1 < n; j++)
                if (t[j] == '#' && t[j + 1] == '}') {
                    e = t + j;
                    break;
                }
            if (!e) {
                *why = "a comment {# is not closed";
                goto done;
            }
            i = (size_t)(e - t) + 2;
            continue;
        }
        if (!(t[i] == '{' && i + 1 < n && (t[i + 1] == '{' || t[i + 1] == '%'))) {
            size_t j = i;
            int blank = 1;
            while (j < n && !(t[j] == '{' && j + 1 < n && (t[j + 1] == '{' || t[j + 1] == '%' || t[j + 1] == '#'))) {
                if (!isspace((unsigned char)t[j])) blank = 0;
                j++;
            }
            if (!blank && form_lit(f, t + i, j - i)) goto done;
            i = j;
            continue;
        }
        char close = t[i + 1] == '{' ? '}' : '%';
        if (sb_str(&f->canon, close == '}' ? "{{" : "{%")) goto done;
        i += 2;
        if (i < n && (t[i] == '-' || t[i] == '+')) i++;
        ntk = 0;
        for (;;) {
            while (i < n && isspace((unsigned char)t[i])) i++;
            if (i >= n) {
                *why = close == '}' ? "a {{ tag is not closed" : "a {% tag is not closed";
                goto done;
            }
            if ((t[i] == '-' || t[i] == '+') && i + 2 < n && t[i + 1] == close && t[i + 2] == '}') {
                i += 3;
                break;
            }
            if (t[i] == close && i + 1 < n && t[i + 1] == '}') {
                i += 2;
                break;
            }
            if (ntk == tkcap) {
                size_t c = tkcap ? tkcap * 2 : 32;
                jtok *g = realloc(tk, c * sizeof *g);
                if (!g) goto done;
                tk = g, tkcap = c;
            }
            jtok *k = &tk[ntk];
            sbuf s = {0};
            if (t[i] == '\'' || t[i] == '"') {
                size_t e = lex_string(t, n, i, &s);
                if (sb_add(&s, "", 0)) goto done;
                if (!e) {
                    free(s.p);
                    *why = "a string literal is not closed";
                    goto done;
                }
                k->type = 's';
                if (form_lit(f, s.p, s.n)) {
                    free(s.p);
                    goto done;
                }
                i = e;
            } else if (isalnum((unsigned char)t[i]) || t[i] == '_') {
                size_t j = i;
                while (j < n && (isalnum((unsigned char)t[j]) || t[j] == '_')) j++;
                k->type = 'w';
                if (sb_add(&s, t + i, j - i)) goto done;
                i = j;
            } else {
                static const char *const two[] = {"==", "!=", "<=", ">=", "**", "//"};
                size_t len = 1;
                for (int o = 0; o < 6; o++)
                    if (i + 1 < n && t[i] == two[o][0] && t[i + 1] == two[o][1]) len = 2;
                k->type = 'o';
                if (sb_add(&s, t + i, len)) goto done;
                i += len;
            }
            k->text = s.p;
            ntk++;
        }
        for (size_t k = 0; k < ntk; k++) {
            int r;
            if (k + 2 < ntk && tk[k].type == 'o' && !strcmp(tk[k].text, "[") && tk[k + 1].type == 's' &&
                ident_like(tk[k + 1].text) && tk[k + 2].type == 'o' && !strcmp(tk[k + 2].text, "]")) {
                r = sb_str(&f->canon, " . ") || sb_str(&f->canon, tk[k + 1].text);
                k += 2;
            } else if (tk[k].type == 's') {
                r = sb_str(&f->canon, " ") || canon_lit(&f->canon, tk[k].text, strlen(tk[k].text));
            } else {
                r = sb_str(&f->canon, " ") || sb_str(&f->canon, tk[k].text);
            }
            if (r) goto done;
        }
        for (size_t k = 0; k < ntk; k++) free(tk[k].text), tk[k].text = NULL;
        ntk = 0;
        if (sb_str(&f->canon, close == '}' ? " }}" : " %}")) goto done;
    }
    rc = sb_add(&f->canon, "", 0);
done:
    for (size_t k = 0; k < ntk; k++) free(tk[k].text);
    free(tk);
    return rc;
}

/* Matches pat against the canonical form at every position; in pat, '@' stands for one string
 * literal, whose decoded text goes to caps (malloc'd). 1 on the first match, 0 on none (caps
 * untouched), -1 out of memory. */
static int pat_find(const tmpl_form *f, const char *pat, char **caps, int ncaps)
{
    const char *c = f->canon.p;
    for (size_t start = 0; c[start]; start++) {
        const char *p = pat, *q = c + start;
        int k = 0, ok = 1;
        char *got[4] = {0};
        while (*p && ok) {
            if (*p == '@') {
                if (*q != '\'' || k >= 4) {
                    ok = 0;
                    break;
                }
                sbuf s = {0};
                q++;
                while (*q && *q != '\'') {
                    char ch = *q;
                    if (*q == '\\' && q[1]) {
                        q++;
                        ch = *q == 'n' ? '\n' : *q == 't' ? '\t' : *q == 'r' ? '\r' : *q;
                    }
                    if (sb_add(&s, &ch, 1)) {
                        for (int j = 0; j < k; j++) free(got[j]);
                        free(s.p);
                        return -1;
                    }
                    q++;
                }
                if (*q != '\'' || sb_add(&s, "", 0)) {
                    free(s.p);
                    ok = 0;
                    break;
                }
                got[k++] = s.p;
                q++, p++;
            } else if (*p == *q) {
                p++, q++;
            } else {
                ok = 0;
            }
        }
        if (ok && !*p) {
            for (int j = 0; j < k; j++) {
                if (j < ncaps)
                    caps[j] = got[j];
                else
                    free(got[j]);
            }
            return 1;
        }
        for (int j = 0; j < k; j++) free(got[j]);
    }
    return 0;
}

static int has(const tmpl_form *f, const char *s) { return strstr(f->canon.p, s) != NULL; }

static int lit_has(const tmpl_form *f, const char *s)
{
    for (size_t i = 0; i < f->nlits; i++)
        if (strstr(f->lits[i], s)) return 1;
    return 0;
}

/* The first raise_exception message holding `word`, into out. */
static void raise_msg(const tmpl_form *f, const char *word, char *out, size_t cap)
{
    const char *c = f->canon.p;
    while ((c = strstr(c, "raise_exception ( '"))) {
        c += 19;
        size_t k = 0;
        char buf[200];
        while (*c && *c != '\'' && k + 1 < sizeof buf) {
            if (*c == '\\' && c[1]) c++;
            buf[k++] = *c++;
        }
        buf[k] = 0;
        if (strstr(buf, word)) {
            snprintf(out, cap, "%s", buf);
            return;
        }
    }
}

/* ---- recognising a template: 0 and t filled, or -1 with why (a sentence) */
static int detect_family(const tmpl_form *f)
{
    if (lit_has(f, "<|im_start|>")) return F_CHATML;
    if (lit_has(f, "<|start_header_id|>") && lit_has(f, "<|end_header_id|>")) return F_LLAMA3;
    if (lit_has(f, "<start_of_turn>")) return F_GEMMA;
    if (lit_has(f, "[INST]")) return lit_has(f, "<<SYS>>") ? F_LLAMA2 : F_MISTRAL;
    return -1;
}

static int starts_bos(const tmpl_form *f) { return has(f, "{{ bos_token }}"); }

static int analyse_chatml(ct_chat_template *t, const tmpl_form *f, const char **why)
{
    if (!has(f, "'<|im_start|>' + message . role + '\\n' + message . content + '<|im_end|>' + '\\n'")) {
        *why = "its messages are not written '<|im_start|>' + role + '\\n' + content + '<|im_end|>' + '\\n'";
        return -1;
    }
    if (lit_has(f, "<|im_start|>assistant\n") == 0 && has(f, "add_generation_prompt")) {
        *why = "its generation prompt is not '<|im_start|>assistant\\n'";
        return -1;
    }
    t->bos_at_start = starts_bos(f);
    for (size_t i = 0; i < f->nlits; i++) {
        const char *a = strstr(f->lits[i], "<|im_start|>system\n"), *e;
        if (a && (e = strstr(a + 19, "<|im_end|>")) && e > a + 19) {
            if (!(t->default_system = dupn(a + 19, (size_t)(e - a - 19)))) return *why = "out of memory", -1;
            break;
        }
    }
    return 0;
}

static int analyse_llama3(ct_chat_template *t, const tmpl_form *f, const char **why)
{
    if (!has(f, "'<|start_header_id|>' + message . role + '<|end_header_id|>\\n\\n' + message . content | trim + "
                "'<|eot_id|>'")) {
        *why = "its messages are not written '<|start_header_id|>' + role + '<|end_header_id|>\\n\\n' + content | "
               "trim + '<|eot_id|>'";
        return -1;
    }
    t->bos_at_start = starts_bos(f) || has(f, "set content = bos_token + content");
    if (!lit_has(f, "Cutting Knowledge Date:")) return 0;
    if (!has(f, "'<|start_header_id|>system<|end_header_id|>\\n\\n'") ||
        !has(f, "'Today Date: ' + date_string + '\\n\\n'") ||
        !has(f, "set system_message = messages [ 0 ] . content | trim")) {
        *why =
            "its system header is not the Llama-3.1 one (system header, \"Cutting Knowledge Date\", \"Today Date: \" + "
            "date_string, the first system message trimmed)";
        return -1;
    }
    for (size_t i = 0; i < f->nlits; i++)
        if (!strncmp(f->lits[i], "Cutting Knowledge Date:", 23)) {
            if (!(t->kd_line = dup0(f->lits[i]))) return *why = "out of memory", -1;
            break;
        }
    if (!t->kd_line) return *why = "its \"Cutting Knowledge Date\" line is not one string", -1;
    char *d = NULL;
    if (pat_find(f, "set date_string = @ %}", &d, 1) != 1) {
        *why = "it gives date_string no fixed fallback value";
        return -1;
    }
    snprintf(t->date, sizeof t->date, "%s", d);
    free(d);
    t->sys_header = 1;
    return 0;
}

static int analyse_gemma(ct_chat_template *t, const tmpl_form *f, const char **why)
{
    if (!has(f, "'<start_of_turn>' + role + '\\n' + message . content | trim + '<end_of_turn>\\n'") ||
        !has(f, "set role = 'model'") || !has(f, "'<start_of_turn>model\\n'")) {
        *why =
            "its turns are not written '<start_of_turn>' + role ('model' for the assistant) + '\\n' + content | trim "
            "+ '<end_of_turn>\\n'";
        return -1;
    }
    if (!has(f, "( message . role == 'user' ) != ( loop . index0 % 2 == 0 )") ||
        !has(f, "raise_exception ( 'System role not supported' )")) {
        *why = "it does not both require user/assistant alternation and refuse a system role (Gemma 1 and 2 do)";
        return -1;
    }
    t->bos_at_start = starts_bos(f);
    raise_msg(f, "alternate", t->alt_msg, sizeof t->alt_msg);
    snprintf(t->sys_msg, sizeof t->sys_msg, "System role not supported");
    return 0;
}

static int set_str(char **dst, const char *s, const char **why)
{
    free(*dst);
    if (!(*dst = dup0(s))) return *why = "out of memory", -1;
    return 0;
}

/* Llama-2-chat as published: <<SYS>> in the first user turn, BOS before every [INST], strip(). */
static int analyse_llama2(ct_chat_template *t, const tmpl_form *f, const char **why)
{
    if (!has(f, "{{ bos_token + '[INST] ' + content . strip ( ) + ' [/INST]' }}") ||
        !has(f, "{{ ' ' + content . strip ( ) + ' ' + eos_token }}") ||
        !has(f, "set content = '<<SYS>>\\n' + system_message + '\\n<</SYS>>\\n\\n' + message . content") ||
        !has(f, "system_message != false") || !has(f, "( message . role == 'user' ) != ( loop . index0 % 2 == 0 )")) {
        *why = "it is not Llama-2-chat's (bos_token + '[INST] ' + content.strip() + ' [/INST]', ' ' + content.strip() "
               "+ ' ' + eos_token, <<SYS>> in the first user message)";
        return -1;
    }
    t->sys_mode = SYS_LLAMA2;
    t->bos_per_user = 1, t->user_strip = 1, t->asst_trim = 1;
    if (set_str(&t->user_pre, "[INST] ", why) || set_str(&t->user_suf, " [/INST]", why) ||
        set_str(&t->asst_pre, " ", why) || set_str(&t->asst_mid, " ", why) || set_str(&t->asst_suf, "", why) ||
        set_str(&t->sys_sep, "", why))
        return -1;
    raise_msg(f, "alternate", t->alt_msg, sizeof t->alt_msg);
    return 0;
}

/* The Mistral [INST] templates: v0.1 (and Mixtral's), v0.2 with a system message before the first
 * user message, v3 (control tokens, tools; the system message before the last user message). */
static int analyse_mistral(ct_chat_template *t, const tmpl_form *f, const char **why)
{
    char *c[3] = {0};
    int r = pat_find(f, "{{ @ + message . content + @ }}", c, 2);
    if (r < 0) return *why = "out of memory", -1;
    if (r == 0 || !strstr(c[0], "[INST]") || !strstr(c[1], "[/INST]")) {
        free(c[0]), free(c[1]);
        *why = "its user turns are not written '[INST] ' + content + ' [/INST]' (or a variant in spacing)";
        return -1;
    }
    t->user_pre = c[0], t->user_suf = c[1];
    if (!has(f, "( message . role == 'user' ) != ( loop . index0 % 2 == 0 )") &&
        !has(f, "( message . role == 'user' ) != ( ns . index % 2 == 0 )")) {
        *why = "it does not require user/assistant alternation";
        return -1;
    }
    raise_msg(f, "alternate", t->alt_msg, sizeof t->alt_msg);
    int first = has(f, "if loop . first and system_message is defined"),
        last = has(f, "if loop . last and system_message is defined");
    if (first || last) {
        char *s[3] = {0};
        r = pat_find(f, "{{ @ + system_message + @ + message . content + @ }}", s, 3);
        if (r < 0) return *why = "out of memory", -1;
        int same = r == 1 && !strcmp(s[0], t->user_pre) && !strcmp(s[2], t->user_suf);
        t->sys_sep = s[1];
        free(s[0]), free(s[2]);
        if (!same) {
            *why = "its system message is not written like a user turn with the system text and a separator first";
            return -1;
        }
        t->sys_mode = first ? SYS_FIRST_USER : SYS_LAST_USER;
    } else if (has(f, "system_message")) {
        *why = "it places a system message in a way ctrain does not know";
        return -1;
    } else {
        t->sys_mode = SYS_REFUSE;
        raise_msg(f, "Only user and assistant", t->sys_msg, sizeof t->sys_msg);
    }
    char *a = NULL;
    if ((r = pat_find(f, "{{ @ + message . content | trim + eos_token }}", &a, 1)) == 1) {
        t->asst_pre = a, t->asst_trim = 1;
    } else if (r == 0 && (r = pat_find(f, "{{ @ + message . content + eos_token }}", &a, 1)) == 1) {
        t->asst_pre = a;
    } else if (r == 0 && (r = pat_find(f, "{{ message . content + eos_token + @ }}", &a, 1)) == 1) {
        t->asst_suf = a;
    } else if (r == 0 && has(f, "{{ message . content + eos_token }}")) {
        r = 1;
    }
    if (r < 0) return *why = "out of memory", -1;
    if (r == 0) {
        *why = "its assistant turns are not written content + eos_token (with a leading space, a trim or a trailing "
               "space)";
        return -1;
    }
    if ((!t->asst_pre && set_str(&t->asst_pre, "", why)) || (!t->asst_suf && set_str(&t->asst_suf, "", why)) ||
        set_str(&t->asst_mid, "", why) || (!t->sys_sep && set_str(&t->sys_sep, "", why)))
        return -1;
    t->bos_at_start = starts_bos(f);
    return 0;
}

/* The first published form of each family, analysed like a folder's template when a name is forced
 * and the folder's template is not a known variant of that family. */
static const char *builtin_src(int fam)
{
    static const char *const src[F_COUNT] = {
        /* ChatML (teknium/OpenHermes-2.5-Mistral-7B) */
        "{% for message in messages %}{{'<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + "
        "'\\n'}}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}",
        /* meta-llama/Meta-Llama-3-8B-Instruct */
        "{% set loop_messages = messages %}{% for message in loop_messages %}{% set content = '<|start_header_id|>' + "
        "message['role'] + '<|end_header_id|>\\n\\n'+ message['content'] | trim + '<|eot_id|>' %}{% if loop.index0 == "
        "0 %}{% set content = bos_token + content %}{% endif %}{{ content }}{% endfor %}{% if add_generation_prompt "
        "%}{{ '<|start_header_id|>assistant<|end_header_id|>\\n\\n' }}{% endif %}",
        /* meta-llama/Llama-2-13b-chat-hf */
        "{% if messages[0]['role'] == 'system' %}{% set loop_messages = messages[1:] %}{% set system_message = "
        "messages[0]['content'] %}{% else %}{% set loop_messages = messages %}{% set system_message = false %}{% endif "
        "%}{% for message in loop_messages %}{% if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}{{ "
        "raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}{% endif %}{% if "
        "loop.index0 == 0 and system_message != false %}{% set content = '<<SYS>>\\n' + system_message + "
        "'\\n<</SYS>>\\n\\n' + message['content'] %}{% else %}{% set content = message['content'] %}{% endif %}{% if "
        "message['role'] == 'user' %}{{ bos_token + '[INST] ' + content.strip() + ' [/INST]' }}{% elif message['role'] "
        "== 'assistant' %}{{ ' '  + content.strip() + ' ' + eos_token }}{% endif %}{% endfor %}",
        /* mistralai/Mixtral-8x7B-Instruct-v0.1 */
        "{{ bos_token }}{% for message in messages %}{% if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}{{ "
        "raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}{% endif %}{% if "
        "message['role'] == 'user' %}{{ '[INST] ' + message['content'] + ' [/INST]' }}{% elif message['role'] == "
        "'assistant' %}{{ message['content'] + eos_token}}{% else %}{{ raise_exception('Only user and assistant roles "
        "are supported!') }}{% endif %}{% endfor %}",
        /* google/gemma-7b-it (the same text as gemma-2-2b-it) */
        "{{ bos_token }}{% if messages[0]['role'] == 'system' %}{{ raise_exception('System role not supported') }}{% "
        "endif %}{% for message in messages %}{% if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}{{ "
        "raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}{% endif %}{% if "
        "(message['role'] == 'assistant') %}{% set role = 'model' %}{% else %}{% set role = message['role'] %}{% endif "
        "%}{{ '<start_of_turn>' + role + '\\n' + message['content'] | trim + '<end_of_turn>\\n' }}{% endfor %}{% if "
        "add_generation_prompt %}{{'<start_of_turn>model\\n'}}{% endif %}",
        NULL,
    };
    return src[fam];
}

/* Guards against what the renderers do not write: reasoning blocks (Qwen3, DeepSeek-R1 style) in
 * any family, and ChatML templates that also write eos_token (zephyr-gemma ends with it). */
static int analyse(ct_chat_template *t, const tmpl_form *f, const char **why)
{
    if (lit_has(f, "<think>") || has(f, "reasoning_content") || has(f, "enable_thinking")) {
        *why = "it renders reasoning (<think>, reasoning_content), which ctrain does not";
        return -1;
    }
    if (t->fam == F_CHATML && has(f, "eos_token")) {
        *why = "it also writes eos_token";
        return -1;
    }
    switch (t->fam) {
    case F_CHATML: return analyse_chatml(t, f, why);
    case F_LLAMA3: return analyse_llama3(t, f, why);
    case F_LLAMA2: return analyse_llama2(t, f, why);
    case F_MISTRAL: return analyse_mistral(t, f, why);
    case F_GEMMA: return analyse_gemma(t, f, why);
    }
    return 0;
}

/* ---- loading */
static int file_exists(const char *p)
{
    struct stat st;
    return !stat(p, &st) && S_ISREG(st.st_mode);
}

/* A special-token entry of tokenizer_config.json: a string, {"content": ...}, or null/absent. */
static int token_entry(const cJSON *c, const char *key, char **out, int *present)
{
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(c, key);
    if (!v) return 0;
    *present = 1;
    if (cJSON_IsObject(v)) v = cJSON_GetObjectItemCaseSensitive(v, "content");
    free(*out);
    *out = NULL;
    if (cJSON_IsString(v) && !(*out = dup0(v->valuestring))) return -1;
    return 0;
}

static cJSON *read_json(const char *path, char *err, size_t errlen)
{
    char *buf;
    size_t len;
    if (ct_data_read_all(path, &buf, &len, err, errlen)) return NULL;
    cJSON *j = cJSON_ParseWithLength(buf, len);
    if (!j) {
        const char *w = cJSON_GetErrorPtr();
        if (w && w >= buf && w <= buf + len)
            FAIL("%s: malformed JSON near byte %zu", path, (size_t)(w - buf));
        else
            FAIL("%s: malformed JSON", path);
    } else if (ct_json_check(buf, len, j, path, err, errlen)) {
        cJSON_Delete(j);
        j = NULL;
    } else if (!cJSON_IsObject(j)) {
        FAIL("%s: not a JSON object", path);
        cJSON_Delete(j);
        j = NULL;
    }
    free(buf);
    return j;
}

/* The folder's template (*tmpl, malloc'd, NULL if none; *src the file it came from) and its
 * bos_token/eos_token. */
static int read_folder(const char *dir, char **tmpl, char *src, size_t srclen, char **bos, int *has_bos, char **eos,
                       int *has_eos, char *err, size_t errlen)
{
    char path[4096];
    size_t len;
    *tmpl = NULL;
    if (!dir || !*dir) return 0;
    snprintf(path, sizeof path, "%s/chat_template.jinja", dir);
    if (file_exists(path)) {
        if (ct_data_read_all(path, tmpl, &len, err, errlen)) return -1;
        char *z = realloc(*tmpl, len + 1);
        if (!z) return free(*tmpl), *tmpl = NULL, FAIL("%s: out of memory", path);
        *tmpl = z, z[len] = 0;
        if (strlen(z) != len) return FAIL("%s: holds a NUL byte", path);
        snprintf(src, srclen, "%s", path);
    }
    int bp = 0, ep = 0;
    snprintf(path, sizeof path, "%s/tokenizer_config.json", dir);
    if (file_exists(path)) {
        cJSON *c = read_json(path, err, errlen);
        if (!c) return -1;
        int rc = 0;
        if (token_entry(c, "bos_token", bos, &bp) || token_entry(c, "eos_token", eos, &ep))
            rc = FAIL("%s: out of memory", path);
        const cJSON *ct = cJSON_GetObjectItemCaseSensitive(c, "chat_template");
        if (!rc && !*tmpl && ct && !cJSON_IsNull(ct)) {
            const char *s = NULL;
            if (cJSON_IsString(ct)) {
                s = ct->valuestring;
            } else if (cJSON_IsArray(ct)) {
                const cJSON *e;
                cJSON_ArrayForEach(e, ct)
                {
                    const cJSON *nm = cJSON_GetObjectItemCaseSensitive(e, "name");
                    const cJSON *tp = cJSON_GetObjectItemCaseSensitive(e, "template");
                    if (cJSON_IsString(nm) && !strcmp(nm->valuestring, "default") && cJSON_IsString(tp))
                        s = tp->valuestring;
                }
                if (!s) rc = FAIL("%s: chat_template: a list of templates without a \"default\" one", path);
            } else {
                rc = FAIL("%s: chat_template: not a string or a list of {\"name\", \"template\"}", path);
            }
            if (s && !(*tmpl = dup0(s))) rc = FAIL("%s: out of memory", path);
            if (s) snprintf(src, srclen, "%s: chat_template", path);
        }
        cJSON_Delete(c);
        if (rc) return -1;
    }
    snprintf(path, sizeof path, "%s/special_tokens_map.json", dir);
    if ((!bp || !ep) && file_exists(path)) {
        cJSON *c = read_json(path, err, errlen);
        if (!c) return -1;
        int rc = 0, dummy = 0;
        if ((!bp && token_entry(c, "bos_token", bos, &dummy)) || (!ep && token_entry(c, "eos_token", eos, &dummy)))
            rc = FAIL("%s: out of memory", path);
        cJSON_Delete(c);
        if (rc) return -1;
    }
    *has_bos = *bos != NULL, *has_eos = *eos != NULL;
    return 0;
}

/* The id of text when it is exactly one token of tok, else -1. */
static int32_t single_token(const ct_tokenizer *tok, const char *text)
{
    int32_t *ids = NULL;
    size_t cap = 0;
    char e[200];
    long n = ct_tokenizer_encode(tok, text, strlen(text), 0, &ids, &cap, e, sizeof e);
    int32_t id = n == 1 ? ids[0] : -1;
    free(ids);
    return id;
}

static int add_marker(ct_chat_template *t, const ct_tokenizer *tok, const char *s)
{
    if (!s || !*s || t->nmarkers == 8 || single_token(tok, s) < 0) return 0;
    for (int i = 0; i < t->nmarkers; i++)
        if (!strcmp(t->markers[i], s)) return 0;
    if (!(t->markers[t->nmarkers] = dup0(s))) return -1;
    t->nmarkers++;
    return 0;
}

static int add_stop(ct_chat_template *t, int32_t id)
{
    if (id < 0) return 0;
    for (int i = 0; i < t->nstop; i++)
        if (t->stop[i] == id) return 0;
    if (t->nstop < 2) t->stop[t->nstop++] = id;
    return 0;
}

void ct_chat_template_free(ct_chat_template *t)
{
    if (!t) return;
    free(t->bos), free(t->eos), free(t->default_system), free(t->kd_line);
    free(t->user_pre), free(t->user_suf), free(t->sys_sep), free(t->asst_pre), free(t->asst_mid), free(t->asst_suf);
    for (int i = 0; i < t->nmarkers; i++) free(t->markers[i]);
    free(t);
}

const char *ct_chat_template_name(const ct_chat_template *t) { return family_names[t->fam]; }
const char *ct_chat_template_describe(const ct_chat_template *t) { return t->desc; }
void ct_chat_template_set_date(ct_chat_template *t, const char *date) { snprintf(t->date, sizeof t->date, "%s", date); }

int ct_chat_template_stop_ids(const ct_chat_template *t, int32_t *ids, int max)
{
    for (int i = 0; i < t->nstop && i < max; i++) ids[i] = t->stop[i];
    return t->nstop;
}

static void describe(ct_chat_template *t, const char *src)
{
    char d[400] = "";
    switch (t->fam) {
    case F_CHATML:
        snprintf(d, sizeof d, "%s%s%.200s%s", t->bos_at_start ? "BOS first; " : "",
                 t->default_system ? "default system message \"" : "no default system message",
                 t->default_system ? t->default_system : "", t->default_system ? "\"" : "");
        break;
    case F_LLAMA3:
        if (t->sys_header)
            snprintf(d, sizeof d, "Llama-3.1+ system header, %.*s, date %s", (int)strcspn(t->kd_line, "\n"), t->kd_line,
                     t->date);
        else
            snprintf(d, sizeof d, "Llama-3 (no system header)");
        break;
    case F_LLAMA2: snprintf(d, sizeof d, "Llama-2-chat (<<SYS>> in the first user message)"); break;
    case F_MISTRAL:
        snprintf(d, sizeof d, "user \"%s\"...\"%s\", assistant \"%s\"...%s+eos%s%s, system %s", t->user_pre,
                 t->user_suf, t->asst_pre, t->asst_trim ? "(trimmed)" : "", *t->asst_suf ? "+\" \"" : "",
                 t->bos_at_start ? ", BOS first" : "",
                 t->sys_mode == SYS_REFUSE       ? "refused"
                 : t->sys_mode == SYS_FIRST_USER ? "before the first user message"
                                                 : "before the last message when it is a user message");
        break;
    case F_GEMMA: snprintf(d, sizeof d, "Gemma (system role refused, assistant is 'model')"); break;
    case F_PLAIN: snprintf(d, sizeof d, "### System/User/Assistant headers, eos after each reply"); break;
    }
    snprintf(t->desc, sizeof t->desc, "%s: %.300s; from %.600s", family_names[t->fam], d, src);
}

int ct_chat_template_load(ct_chat_template **out, const char *dir, const char *name, const ct_tokenizer *tok, char *err,
                          size_t errlen)
{
    *out = NULL;
    ct_chat_template *t = calloc(1, sizeof *t);
    if (!t) return FAIL("chat template: out of memory");
    char *tmpl = NULL, src[4200] = "";
    tmpl_form f = {0};
    const char *why = NULL;
    int want = -1;
    if (name && *name) {
        for (int i = 0; i < F_COUNT; i++)
            if (!strcmp(name, family_names[i])) want = i;
        if (want < 0) {
            FAIL("data.chat_template: unknown template \"%s\": set it to one of %s, or \"\" for the model's own", name,
                 KNOWN_NAMES);
            goto fail;
        }
    }
    if (read_folder(dir, &tmpl, src, sizeof src, &t->bos, &t->has_bos, &t->eos, &t->has_eos, err, errlen)) goto fail;
    if (!t->bos && !(t->bos = dup0(""))) goto oom;
    if (!t->eos && !(t->eos = dup0(""))) goto oom;
    int fam = -1;
    if (tmpl) {
        if (form_build(&f, tmpl, strlen(tmpl), &why)) {
            if (want < 0) {
                FAIL("%s: %s", src, why);
                goto fail;
            }
        } else {
            fam = detect_family(&f);
        }
    }
    if (want < 0 && !tmpl) want = F_PLAIN, snprintf(src, sizeof src, "ctrain (the folder has no chat template)");
    if (want < 0 && fam < 0) {
        FAIL("%s: a chat template ctrain does not recognise (none of the markers <|im_start|>, <|start_header_id|>, "
             "[INST], <start_of_turn>): set data.chat_template to one of %s",
             src, KNOWN_NAMES);
        goto fail;
    }
    t->fam = want >= 0 ? want : fam;
    if (t->fam != F_PLAIN) {
        int own = fam == t->fam && !analyse(t, &f, &why);
        if (!own && want < 0) {
            FAIL("%s: a %s template (by its markers), but %s, unlike the variants ctrain renders: set "
                 "data.chat_template "
                 "to one of %s to render the family's standard form instead",
                 src, family_names[t->fam], why, KNOWN_NAMES);
            goto fail;
        }
        if (!own) {
            ct_chat_template *fresh = calloc(1, sizeof *fresh);
            if (!fresh) goto oom;
            fresh->fam = t->fam, fresh->bos = t->bos, fresh->eos = t->eos;
            fresh->has_bos = t->has_bos, fresh->has_eos = t->has_eos;
            t->bos = t->eos = NULL;
            ct_chat_template_free(t);
            t = fresh;
            form_free(&f);
            memset(&f, 0, sizeof f);
            const char *b = builtin_src(t->fam);
            if (form_build(&f, b, strlen(b), &why) || analyse(t, &f, &why)) {
                FAIL("chat template %s: builtin form: %s", family_names[t->fam], why);
                goto fail;
            }
            snprintf(src, sizeof src, "ctrain's builtin %s form (data.chat_template)", family_names[t->fam]);
        }
    }
    /* the end-of-turn marker and the special tokens the template writes */
    t->eot = t->fam == F_CHATML   ? "<|im_end|>"
             : t->fam == F_LLAMA3 ? "<|eot_id|>"
             : t->fam == F_GEMMA  ? "<end_of_turn>"
                                  : t->eos;
    int needs_bos = t->bos_at_start || t->bos_per_user, needs_eos = t->fam == F_LLAMA2 || t->fam == F_MISTRAL;
    if (needs_bos && !t->has_bos) {
        FAIL("%s: the %s template writes bos_token, but %s/tokenizer_config.json names none", src, family_names[t->fam],
             dir ? dir : ".");
        goto fail;
    }
    if (needs_eos && !*t->eos) {
        FAIL("%s: the %s template ends a reply with eos_token, but %s/tokenizer_config.json names none", src,
             family_names[t->fam], dir ? dir : ".");
        goto fail;
    }
    /* plain ends a reply with the eos id itself (the byte tokenizer has no text for it) */
    t->plain_eos = t->fam != F_PLAIN ? -1 : *t->eos ? single_token(tok, t->eos) : ct_tokenizer_eos(tok);
    if (t->fam == F_PLAIN && t->plain_eos < 0) {
        FAIL("%s: the plain template ends a reply with eos, but the tokenizer has none (name eos_token in %s/"
             "tokenizer_config.json)", src, dir && *dir ? dir : ".");
        goto fail;
    }
    int32_t eot = t->fam == F_PLAIN ? t->plain_eos : single_token(tok, t->eot);
    if (eot < 0) {
        FAIL("%s: the %s template's end-of-turn marker \"%s\" is not one token of the tokenizer", src,
             family_names[t->fam], t->eot);
        goto fail;
    }
    add_stop(t, eot);
    if (*t->eos) add_stop(t, single_token(tok, t->eos));
    static const char *const marks[F_COUNT][3] = {
        {"<|im_start|>", "<|im_end|>"}, {"<|start_header_id|>", "<|eot_id|>"}, {"[INST]", "[/INST]"},
        {"[INST]", "[/INST]"},          {"<start_of_turn>", "<end_of_turn>"},  {NULL}};
    for (int i = 0; i < 3 && marks[t->fam][i]; i++)
        if (add_marker(t, tok, marks[t->fam][i])) goto oom;
    if (add_marker(t, tok, t->bos) || add_marker(t, tok, t->eos)) goto oom;
    if (t->fam == F_PLAIN) {
        /* the ids the post-processor puts before a sequence (BOS), from encoding one letter both ways */
        int32_t *a = NULL, *b = NULL;
        size_t ca = 0, cb = 0;
        long na = ct_tokenizer_encode(tok, "a", 1, 1, &a, &ca, err, errlen);
        long nb = na < 0 ? -1 : ct_tokenizer_encode(tok, "a", 1, 0, &b, &cb, err, errlen);
        int ok = na >= 0 && nb >= 0;
        for (long k = 0; ok && k + nb <= na; k++)
            if (!memcmp(a + k, b, (size_t)nb * sizeof *b)) {
                t->npre = (int)(k < 8 ? k : 8);
                memcpy(t->pre_ids, a, (size_t)t->npre * sizeof *a);
                break;
            }
        free(a), free(b);
        if (!ok) goto fail;
    }
    describe(t, src);
    free(tmpl);
    form_free(&f);
    *out = t;
    return 0;
oom:
    FAIL("chat template: out of memory");
fail:
    free(tmpl);
    form_free(&f);
    ct_chat_template_free(t);
    return -1;
}

/* ---- rendering: the text and its segments */
typedef struct {
    size_t off, len;
    uint8_t mask;
    uint8_t marker; /* a template special token: a chunk starts here */
} seg;

typedef struct {
    const ct_chat_template *t;
    sbuf text;
    seg *s;
    size_t n, cap;
    char *err;
    size_t errlen;
} render;

static int push_seg(render *r, const char *s, size_t n, uint8_t mask, uint8_t marker)
{
    if (!n) return 0;
    if (r->n == r->cap) {
        size_t c = r->cap ? r->cap * 2 : 64;
        seg *g = realloc(r->s, c * sizeof *g);
        if (!g) return -1;
        r->s = g, r->cap = c;
    }
    r->s[r->n++] = (seg){r->text.n, n, mask, marker};
    return sb_add(&r->text, s, n);
}

/* Fixed template text, split before and after the template's special tokens. */
static int fixed(render *r, const char *s, uint8_t mask)
{
    size_t n = strlen(s), i = 0, from = 0;
    while (i < n) {
        int hit = -1;
        for (int k = 0; k < r->t->nmarkers; k++)
            if (!strncmp(s + i, r->t->markers[k], strlen(r->t->markers[k])) &&
                (hit < 0 || strlen(r->t->markers[k]) > strlen(r->t->markers[hit])))
                hit = k;
        if (hit < 0) {
            i++;
            continue;
        }
        size_t ml = strlen(r->t->markers[hit]);
        if (push_seg(r, s + from, i - from, mask, 0) || push_seg(r, s + i, ml, mask, 1)) return -1;
        i += ml, from = i;
    }
    return push_seg(r, s + from, n - from, mask, 0);
}

static int content(render *r, const char *s, size_t n, uint8_t mask) { return push_seg(r, s, n, mask, 0); }

static int role_of(const char *role)
{
    return !role ? -1 : !strcmp(role, "system") ? 0 : !strcmp(role, "user") ? 1 : !strcmp(role, "assistant") ? 2 : -1;
}

#define RFAIL(...) ct_data_fail(r->err, r->errlen, __VA_ARGS__)

static int render_chatml(render *r, const ct_chat_message *m, int n, int agp)
{
    const ct_chat_template *t = r->t;
    if (t->bos_at_start && fixed(r, t->bos, 0)) return -1;
    if (t->default_system && strcmp(m[0].role, "system")) {
        if (fixed(r, "<|im_start|>system\n", 0) || content(r, t->default_system, strlen(t->default_system), 0) ||
            fixed(r, "<|im_end|>\n", 0))
            return -1;
    }
    for (int i = 0; i < n; i++) {
        int a = role_of(m[i].role) == 2;
        if (fixed(r, "<|im_start|>", 0) || fixed(r, m[i].role, 0) || fixed(r, "\n", 0) ||
            content(r, m[i].content, strlen(m[i].content), (uint8_t)a) || fixed(r, "<|im_end|>", (uint8_t)a) ||
            fixed(r, "\n", 0))
            return -1;
    }
    return agp ? fixed(r, "<|im_start|>assistant\n", 0) : 0;
}

static int render_llama3(render *r, const ct_chat_message *m, int n, int agp)
{
    const ct_chat_template *t = r->t;
    if (t->bos_at_start && fixed(r, t->bos, 0)) return -1;
    int i = 0;
    if (t->sys_header) {
        const char *s = "";
        size_t sn = 0;
        if (!strcmp(m[0].role, "system")) s = m[0].content, sn = strlen(s), py_strip(&s, &sn), i = 1;
        if (fixed(r, "<|start_header_id|>system<|end_header_id|>\n\n", 0) || fixed(r, t->kd_line, 0) ||
            fixed(r, "Today Date: ", 0) || fixed(r, t->date, 0) || fixed(r, "\n\n", 0) || content(r, s, sn, 0) ||
            fixed(r, "<|eot_id|>", 0))
            return -1;
    }
    for (; i < n; i++) {
        int a = role_of(m[i].role) == 2;
        const char *s = m[i].content;
        size_t sn = strlen(s);
        py_strip(&s, &sn);
        if (fixed(r, "<|start_header_id|>", 0) || fixed(r, m[i].role, 0) || fixed(r, "<|end_header_id|>\n\n", 0) ||
            content(r, s, sn, (uint8_t)a) || fixed(r, "<|eot_id|>", (uint8_t)a))
            return -1;
    }
    return agp ? fixed(r, "<|start_header_id|>assistant<|end_header_id|>\n\n", 0) : 0;
}

/* user/assistant alternation from m[first], as the [INST] and Gemma templates check it */
static int check_turns(render *r, const ct_chat_message *m, int n, int first)
{
    const ct_chat_template *t = r->t;
    for (int i = first; i < n; i++) {
        int k = role_of(m[i].role);
        if (k == 0)
            return RFAIL("message %d (system): %s", i,
                         t->sys_mode == SYS_REFUSE && *t->sys_msg && i == 0
                             ? t->sys_msg
                             : "a system message may only come first (the template would drop it or misplace it)");
        if ((k == 1) != ((i - first) % 2 == 0))
            return RFAIL("message %d (%s): %s", i, m[i].role,
                         *t->alt_msg ? t->alt_msg
                                     : "Conversation roles must alternate user/assistant/user/assistant/...");
    }
    return 0;
}

static int render_gemma(render *r, const ct_chat_message *m, int n, int agp)
{
    const ct_chat_template *t = r->t;
    if (!strcmp(m[0].role, "system")) return RFAIL("message 0 (system): %s", t->sys_msg);
    if (check_turns(r, m, n, 0)) return -1;
    if (t->bos_at_start && fixed(r, t->bos, 0)) return -1;
    for (int i = 0; i < n; i++) {
        int a = role_of(m[i].role) == 2;
        const char *s = m[i].content;
        size_t sn = strlen(s);
        py_strip(&s, &sn);
        if (fixed(r, "<start_of_turn>", 0) || fixed(r, a ? "model" : m[i].role, 0) || fixed(r, "\n", 0) ||
            content(r, s, sn, (uint8_t)a) || fixed(r, "<end_of_turn>", (uint8_t)a) || fixed(r, "\n", 0))
            return -1;
    }
    return agp ? fixed(r, "<start_of_turn>model\n", 0) : 0;
}

static int render_inst(render *r, const ct_chat_message *m, int n)
{
    const ct_chat_template *t = r->t;
    int first = 0;
    const char *sys = NULL;
    if (!strcmp(m[0].role, "system")) {
        if (t->sys_mode == SYS_REFUSE)
            return RFAIL("message 0 (system): %s", *t->sys_msg ? t->sys_msg : "system role not supported");
        sys = m[0].content, first = 1;
    }
    if (check_turns(r, m, n, first)) return -1;
    if (t->bos_at_start && fixed(r, t->bos, 0)) return -1;
    sbuf u = {0};
    for (int i = first; i < n; i++) {
        const char *s = m[i].content;
        size_t sn = strlen(s);
        if (role_of(m[i].role) == 1) {
            u.n = 0;
            int with_sys =
                sys && ((t->sys_mode == SYS_LLAMA2 && i == first) || (t->sys_mode == SYS_FIRST_USER && i == first) ||
                        (t->sys_mode == SYS_LAST_USER && i == n - 1));
            if (with_sys) {
                int e = t->sys_mode == SYS_LLAMA2 ? sb_str(&u, "<<SYS>>\n") || sb_str(&u, sys) ||
                                                        sb_str(&u, "\n<</SYS>>\n\n") || sb_add(&u, s, sn)
                                                  : sb_str(&u, sys) || sb_str(&u, t->sys_sep) || sb_add(&u, s, sn);
                if (e || sb_add(&u, "", 0)) goto oom;
                s = u.p, sn = u.n;
            }
            if (t->user_strip) py_strip(&s, &sn);
            if ((t->bos_per_user && fixed(r, t->bos, 0)) || fixed(r, t->user_pre, 0) || content(r, s, sn, 0) ||
                fixed(r, t->user_suf, 0))
                goto oom;
        } else {
            if (t->asst_trim) py_strip(&s, &sn);
            if (fixed(r, t->asst_pre, 0) || content(r, s, sn, 1) || fixed(r, t->asst_mid, 1) || fixed(r, t->eos, 1) ||
                fixed(r, t->asst_suf, 0))
                goto oom;
        }
    }
    free(u.p);
    return 0;
oom:
    free(u.p);
    return RFAIL("chat template: out of memory");
}

static const char *const plain_hdr[3] = {"### System:\n", "### User:\n", "### Assistant:\n"};

/* The text of the plain template (ct_chat_render_text): eos as its token's text. */
static int render_plain(render *r, const ct_chat_message *m, int n, int agp)
{
    for (int i = 0; i < n; i++) {
        int k = role_of(m[i].role), a = k == 2;
        if (fixed(r, plain_hdr[k], 0) || content(r, m[i].content, strlen(m[i].content), (uint8_t)a) ||
            (a && fixed(r, r->t->eos, 1)) || fixed(r, "\n", 0))
            return -1;
    }
    return agp ? fixed(r, plain_hdr[2], 0) : 0;
}

static int render_all(render *r, const ct_chat_message *m, int n, int agp)
{
    if (n < 1) return RFAIL("chat template: no messages");
    for (int i = 0; i < n; i++) {
        if (role_of(m[i].role) < 0)
            return RFAIL("message %d (%s): unknown role: roles are system, user and assistant", i,
                         m[i].role ? m[i].role : "null");
        if (!m[i].content) return RFAIL("message %d (%s): no content", i, m[i].role);
        size_t len = strlen(m[i].content), bad = tk_utf8_check(m[i].content, len);
        if (bad < len) return RFAIL("message %d (%s): invalid UTF-8 at byte %zu", i, m[i].role, bad);
    }
    int rc;
    switch (r->t->fam) {
    case F_CHATML: rc = render_chatml(r, m, n, agp); break;
    case F_LLAMA3: rc = render_llama3(r, m, n, agp); break;
    case F_GEMMA: rc = render_gemma(r, m, n, agp); break;
    case F_PLAIN: rc = render_plain(r, m, n, agp); break;
    default: rc = render_inst(r, m, n); break;
    }
    if (rc && !*r->err) RFAIL("chat template: out of memory");
    if (!rc && sb_add(&r->text, "", 0)) rc = RFAIL("chat template: out of memory");
    return rc;
}

char *ct_chat_render_text(const ct_chat_template *t, const ct_chat_message *m, int n, int add_generation_prompt,
                          char *err, size_t errlen)
{
    char dummy[1];
    render r = {.t = t, .err = err ? err : dummy, .errlen = err ? errlen : sizeof dummy};
    r.err[0] = 0;
    if (render_all(&r, m, n, add_generation_prompt)) {
        free(r.text.p), free(r.s);
        return NULL;
    }
    free(r.s);
    return r.text.p;
}

/* ---- tokenizing */
typedef struct {
    int32_t *v;
    size_t cap;
} idbuf;

static long enc(const ct_tokenizer *tok, const char *s, size_t n, idbuf *b, char *err, size_t errlen)
{
    if (!n) return 0;
    return ct_tokenizer_encode(tok, s, n, 0, &b->v, &b->cap, err, errlen);
}

static size_t lcp(const int32_t *a, size_t na, const int32_t *b, size_t nb)
{
    size_t k = 0;
    while (k < na && k < nb && a[k] == b[k]) k++;
    return k;
}

/* Masks tokens [ts, te) of ids, which encode text[cs, ce): segments [s0, s1) cover that text. Each
 * boundary where the mask changes is located by encoding text[cs, boundary) (see the file's
 * comment). */
static int mask_span(const render *r, const ct_tokenizer *tok, const int32_t *ids, uint8_t *mask, size_t ts, size_t te,
                     size_t cs, size_t s0, size_t s1, idbuf *tmp, char *err, size_t errlen)
{
    size_t pos = ts;
    uint8_t cur = r->s[s0].mask;
    for (size_t k = s0 + 1; k < s1; k++) {
        if (r->s[k].mask == cur) continue;
        size_t b = r->s[k].off;
        long np = enc(tok, r->text.p + cs, b - cs, tmp, err, errlen);
        if (np < 0) return -1;
        size_t c = ts + lcp(tmp->v, (size_t)np, ids + ts, te - ts);
        if (c < pos) c = pos;
        if (c > te) c = te;
        memset(mask + pos, cur, c - pos);
        pos = c;
        if (ts + (size_t)np != c && pos < te) mask[pos++] = 1; /* straddles the boundary */
        cur = r->s[k].mask;
    }
    if (pos < te) memset(mask + pos, cur, te - pos);
    return 0;
}

static int grow(int32_t **ids, uint8_t **mask, size_t *cap, size_t need)
{
    if (*cap >= need && *mask) return 0;
    size_t c = *cap > need ? *cap : need;
    int32_t *a = realloc(*ids, c * sizeof *a);
    if (!a) return -1;
    *ids = a;
    uint8_t *m = realloc(*mask, c);
    if (!m) return -1;
    *mask = m, *cap = c;
    return 0;
}

/* ctrain's own template has no text form to agree with: its ids are the post-processor's
 * leading ids, then piece by piece the header, the content, eos (the id) after a reply, "\n". */
static long render_plain_ids(const ct_chat_template *t, const ct_tokenizer *tok, const ct_chat_message *m, int n,
                             int agp, int train_on_prompt, int32_t **ids, uint8_t **mask, size_t *cap, char *err,
                             size_t errlen)
{
    idbuf b = {0};
    size_t total = 0;
    long rc = -1;
    if (grow(ids, mask, cap, (size_t)t->npre + 1)) goto oom;
    memcpy(*ids, t->pre_ids, (size_t)t->npre * sizeof **ids);
    memset(*mask, 0, (size_t)t->npre);
    total = (size_t)t->npre;
    for (int i = 0; i <= n; i++) {
        int k = i < n ? role_of(m[i].role) : 2, a = k == 2 && i < n;
        if (i == n && !agp) break;
        const char *piece[3] = {plain_hdr[k], i < n ? m[i].content : "", i < n ? "\n" : ""};
        for (int p = 0; p < 3; p++) {
            long c = enc(tok, piece[p], strlen(piece[p]), &b, err, errlen);
            if (c < 0) goto done;
            if (grow(ids, mask, cap, total + (size_t)c + 1)) goto oom;
            if (c) memcpy(*ids + total, b.v, (size_t)c * sizeof **ids);
            memset(*mask + total, p == 1 && a, (size_t)c);
            total += (size_t)c;
            if (p == 1 && a) (*ids)[total] = t->plain_eos, (*mask)[total++] = 1;
        }
    }
    if (train_on_prompt && total > 1) memset(*mask + 1, 1, total - 1);
    rc = (long)total;
    goto done;
oom:
    ct_data_fail(err, errlen, "chat template: out of memory");
done:
    free(b.v);
    return rc;
}

long ct_chat_render(const ct_chat_template *t, const ct_tokenizer *tok, const ct_chat_message *m, int n,
                    int add_generation_prompt, int train_on_prompt, int32_t **ids, uint8_t **mask, size_t *cap,
                    char *err, size_t errlen)
{
    char dummy[1];
    render r = {.t = t, .err = err ? err : dummy, .errlen = err ? errlen : sizeof dummy};
    r.err[0] = 0;
    idbuf whole = {0}, part = {0}, tmp = {0};
    long rc = -1;
    if (render_all(&r, m, n, add_generation_prompt)) goto done; /* checks the messages for every family */
    if (t->fam == F_PLAIN) {
        rc = render_plain_ids(t, tok, m, n, add_generation_prompt, train_on_prompt, ids, mask, cap, r.err, r.errlen);
        goto done;
    }
    long nw = enc(tok, r.text.p, r.text.n, &whole, r.err, r.errlen);
    if (nw < 0) goto done;
    size_t np = (size_t)t->npre, total = np + (size_t)nw;
    if (grow(ids, mask, cap, total ? total : 1)) {
        ct_data_fail(r.err, r.errlen, "chat template: out of memory");
        goto done;
    }
    memcpy(*ids, t->pre_ids, np * sizeof **ids);
    if (nw) memcpy(*ids + np, whole.v, (size_t)nw * sizeof **ids);
    memset(*mask, 0, total);
    if (train_on_prompt) {
        if (total) memset(*mask + 1, 1, total - 1);
        rc = (long)total;
        goto done;
    }
    if (!nw || !r.n) {
        rc = (long)total;
        goto done;
    }
    const int32_t *w = *ids + np;
    /* chunks cut before each template special token; their ids must concatenate to the whole's */
    size_t ts = 0, s0 = 0, agree = 1;
    for (size_t k = 0; k <= r.n && agree; k++) {
        if (k < r.n && !(r.s[k].marker && k > s0)) continue;
        size_t cs = r.s[s0].off, ce = k < r.n ? r.s[k].off : r.text.n;
        long nc = enc(tok, r.text.p + cs, ce - cs, &part, r.err, r.errlen);
        if (nc < 0) goto done;
        if (ts + (size_t)nc > (size_t)nw || lcp(part.v, (size_t)nc, w + ts, (size_t)nc) != (size_t)nc) {
            agree = 0;
            break;
        }
        if (mask_span(&r, tok, w, *mask + np, ts, ts + (size_t)nc, cs, s0, k, &tmp, r.err, r.errlen)) goto done;
        ts += (size_t)nc, s0 = k;
    }
    if (agree && ts != (size_t)nw) agree = 0;
    if (!agree) { /* boundaries from prefixes of the whole text */
        memset(*mask, 0, total);
        if (mask_span(&r, tok, w, *mask + np, 0, (size_t)nw, 0, 0, r.n, &tmp, r.err, r.errlen)) goto done;
    }
    rc = (long)total;
done:
    free(r.text.p), free(r.s), free(whole.v), free(part.v), free(tmp.v);
    return rc;
}
