/* tokenizer_impl.h — internals shared by the tokenizer.json sources (tokenizer.c: loading, added
 * tokens, the encode pipeline; tokenizer_bpe.c: the BPE model and its hash maps; tokenizer_text.c:
 * normalizers, pre-tokenizers, decoders, UTF-8). Not a public header. */
#ifndef CT_TOKENIZER_IMPL_H
#define CT_TOKENIZER_IMPL_H

#define PCRE2_CODE_UNIT_WIDTH 8
#include <pcre2.h>
#include <stddef.h>
#include <stdint.h>

/* ---- growable byte string and list of pieces */
typedef struct {
    char *p;
    size_t n, cap;
} tk_buf;
int tk_buf_add(tk_buf *b, const char *s, size_t n); /* 0, -1 out of memory (p stays NUL-terminated) */

typedef struct {
    char *s;      /* malloc'd, NUL-terminated */
    size_t n;
    int orig0;    /* TK_ORIG0 and TK_CONT bits (below) */
    int32_t id;   /* >= 0: an added token already (not pre-tokenized nor modelled) */
} tk_piece;
typedef struct {
    tk_piece *v;
    size_t n, cap;
} tk_pieces;
int tk_pieces_push(tk_pieces *l, const char *s, size_t n, int orig0, int32_t id);
/* A piece's orig0 bits. TK_ORIG0: it starts at offset 0 of the original text (Metaspace
 * prepend_scheme "first"). TK_CONT: it starts a part of a text that continues after a line feed
 * (ct_tokenizer_encode_more without CT_ENC_BEGIN): no prefix is added to it (Prepend, ByteLevel
 * add_prefix_space, Metaspace), and splitters see that line feed before it, so that the piece
 * keeps TK_CONT exactly when the whole text would have had no piece boundary at the cut. */
#define TK_ORIG0 1
#define TK_CONT 2
void tk_pieces_free(tk_pieces *l);

/* ---- string -> id hash map (open addressing; keys owned by the map) */
typedef struct {
    char **keys;
    uint32_t *lens;
    int32_t *vals;
    size_t cap, n;
} tk_strmap;
int tk_strmap_put(tk_strmap *m, const char *k, size_t n, int32_t v); /* replaces; -1 out of memory */
int32_t tk_strmap_get(const tk_strmap *m, const char *k, size_t n);  /* -1 if absent */
void tk_strmap_free(tk_strmap *m);

/* (left id, right id) -> (rank, merged id) */
typedef struct {
    uint64_t *keys; /* (a << 32 | b) + 1; 0 = empty */
    int32_t *rank, *merged;
    size_t cap, n;
} tk_pairmap;
int tk_pairmap_put(tk_pairmap *m, int32_t a, int32_t b, int32_t rank, int32_t merged);
int tk_pairmap_get(const tk_pairmap *m, int32_t a, int32_t b, int32_t *rank, int32_t *merged);
void tk_pairmap_free(tk_pairmap *m);

/* ---- BPE model */
typedef struct {
    tk_strmap vocab;
    tk_pairmap merges;
    int32_t unk;          /* -1: none */
    int byte_fallback, fuse_unk, ignore_merges;
    int32_t byte_ids[256]; /* <0xXX> ids, -1 where absent */
    uint64_t uid;          /* this model among all loaded in the process (tk_bpe_uid): names its cache */
} tk_bpe;
/* Appends the ids of one pre-token; -1 on out of memory. Short pre-tokens are remembered in a
 * cache of the calling thread's (a few MB at most, emptied when full or when another model is used),
 * so a word met again costs one lookup. */
int tk_bpe_encode(const tk_bpe *m, const char *w, size_t n, int32_t **ids, size_t *len, size_t *cap);
uint64_t tk_bpe_uid(void); /* a new uid, never 0 */

/* ---- regexes (PCRE2, UTF + UCP, JIT where available) */
typedef struct {
    pcre2_code *re;
} tk_regex;
/* pattern: an Oniguruma-style regex as tokenizers gives it (\s rewritten to Rust's White_Space);
 * literal: escape it. Returns 0 or -1 with err. */
int tk_regex_compile(tk_regex *r, const char *pattern, int literal, char *err, size_t errlen);
void tk_regex_free(tk_regex *r);
/* Next match at or after off: 1 (*s, *e set), 0 none, -1 error. */
int tk_regex_next(const tk_regex *r, pcre2_match_data *md, const char *s, size_t n, size_t off, size_t *ms,
                  size_t *me);

/* ---- normalizers */
enum { TK_N_NFC, TK_N_PREPEND, TK_N_REPLACE, TK_N_SEQ };
typedef struct tk_norm {
    int kind;
    char *str, *content; /* Prepend: str; Replace: pattern (literal) / content */
    tk_regex re;
    int nsub;
    struct tk_norm *sub;
} tk_norm;
/* Applies n to s[len]: a malloc'd result in *out (*outn). 0, -1 on error (err filled). */
int tk_norm_apply(const tk_norm *n, const char *s, size_t len, char **out, size_t *outn, char *err, size_t errlen);
/* The same; cont: s continues a text (TK_CONT), so Prepend adds nothing. */
int tk_norm_apply_cont(const tk_norm *n, const char *s, size_t len, int cont, char **out, size_t *outn, char *err,
                       size_t errlen);
void tk_norm_free(tk_norm *n);

/* ---- pre-tokenizers */
enum { TK_P_BYTELEVEL, TK_P_SPLIT, TK_P_METASPACE, TK_P_DIGITS, TK_P_SEQ };
enum { TK_B_ISOLATED, TK_B_REMOVED, TK_B_PREV, TK_B_NEXT, TK_B_CONTIGUOUS };
typedef struct tk_pre {
    int kind;
    int add_prefix_space, use_regex;   /* ByteLevel */
    tk_regex re;                       /* Split; ByteLevel's GPT-2 regex */
    int behavior, invert;              /* Split */
    char repl[8];                      /* Metaspace replacement (UTF-8) */
    int prepend;                       /* 0 never, 1 first, 2 always */
    int split;                         /* Metaspace */
    int individual;                    /* Digits */
    int nsub;
    struct tk_pre *sub;
} tk_pre;
/* Pre-tokenizes every piece of *l that is not an added token (in place). */
int tk_pre_apply(const tk_pre *p, tk_pieces *l, char *err, size_t errlen);
void tk_pre_free(tk_pre *p);

/* ---- decoders (act on a list of token strings) */
enum { TK_D_BYTELEVEL, TK_D_METASPACE, TK_D_REPLACE, TK_D_BYTEFALLBACK, TK_D_FUSE, TK_D_STRIP, TK_D_SEQ };
typedef struct tk_dec {
    int kind;
    tk_regex re;             /* Replace: its pattern */
    char *content;
    char repl[8];            /* Metaspace */
    int prepend;
    uint32_t strip_char;
    int strip_start, strip_stop;
    int nsub;
    struct tk_dec *sub;
} tk_dec;
int tk_dec_apply(const tk_dec *d, tk_pieces *toks);
void tk_dec_free(tk_dec *d);

/* ---- UTF-8 */
/* Decodes one character at s[i] (valid UTF-8 assumed); returns its length. */
int tk_utf8_next(const char *s, size_t n, size_t i, uint32_t *cp);
int tk_utf8_put(uint32_t cp, char *out); /* bytes written (1-4) */
/* Offset of the first invalid byte, or n when s[n] is valid UTF-8. */
size_t tk_utf8_check(const char *s, size_t n);
/* Appends s[n] to b with invalid sequences replaced by U+FFFD as Rust's from_utf8_lossy does. */
int tk_utf8_lossy(tk_buf *b, const char *s, size_t n);
int tk_is_whitespace(uint32_t cp); /* Rust's char::is_whitespace (White_Space) */
int tk_is_alnum(uint32_t cp);      /* letters and numbers */
int tk_is_numeric(uint32_t cp);    /* Rust's char::is_numeric: Nd, Nl, No */

/* The GPT-2 byte <-> character map of ByteLevel. */
uint32_t tk_byte_char(unsigned char b);
int tk_char_to_byte(uint32_t cp); /* -1 when cp is no byte's character */

#endif
