/* tokdump — the C side of the tokenizer reference test: loads a tokenizer.json (file or folder)
 * and answers requests, one per input line:
 *   E <hex of UTF-8 text>  ->  <ids with special tokens>|<ids without>|<hex decode>|<hex decode, skip special>
 *   D <id> <id> ...        ->  <hex decode>|<hex decode, skip special>
 *   C <hex of UTF-8 text>  ->  <cuts> <differing> <first differing cut or -1>: for every place p where
 *                              ct_tokenizer_cut_ok allows a cut, whether encoding text[0, p) and then
 *                              text[p, n) as its continuation (ct_tokenizer_encode_more) gives the ids
 *                              of the whole text, with special tokens
 * ids space-separated; an error line is "ERR <message>". Usage: tokdump TOKENIZER IN OUT */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "data.h"

static void put_hex(FILE *f, const char *s, size_t n)
{
    for (size_t i = 0; i < n; i++) fprintf(f, "%02x", (unsigned char)s[i]);
}

static void put_ids(FILE *f, const int32_t *v, long n)
{
    for (long i = 0; i < n; i++) fprintf(f, i ? " %d" : "%d", (int)v[i]);
}

/* The text of a request line "X <hex>" (malloc'd, *n bytes). */
static char *unhex(const char *line, size_t ln, size_t *n)
{
    *n = (ln - 2) / 2;
    char *text = malloc(*n + 1);
    for (size_t i = 0; text && i < *n; i++) {
        unsigned v;
        sscanf(line + 2 + 2 * i, "%2x", &v);
        text[i] = (char)v;
    }
    return text;
}

/* The C request: every allowed cut of text[n] against the whole text's ids. */
static void cuts(FILE *f, const ct_tokenizer *t, const char *text, size_t n)
{
    char err[512];
    int32_t *whole = NULL, *a = NULL, *b = NULL;
    size_t wc = 0, ac = 0, bc = 0, ncut = 0, nbad = 0;
    long first = -1;
    long wn = ct_tokenizer_encode(t, text, n, 1, &whole, &wc, err, sizeof err);
    for (size_t p = 1; wn >= 0 && p < n; p++) {
        if (!ct_tokenizer_cut_ok(t, text, n, p)) continue;
        ncut++;
        long an = ct_tokenizer_encode_more(t, text, p, 1, CT_ENC_BEGIN, &a, &ac, err, sizeof err);
        long bn = an < 0 ? -1 : ct_tokenizer_encode_more(t, text + p, n - p, 1, CT_ENC_END, &b, &bc, err, sizeof err);
        if (an < 0 || bn < 0 || an + bn != wn || memcmp(a, whole, (size_t)an * sizeof *a) ||
            memcmp(b, whole + an, (size_t)bn * sizeof *b)) {
            if (!nbad++) first = (long)p;
        }
    }
    if (wn < 0) fprintf(f, "ERR %s\n", err);
    else fprintf(f, "%zu %zu %ld\n", ncut, nbad, first);
    free(whole), free(a), free(b);
}

static int decode_both(FILE *f, const ct_tokenizer *t, const int32_t *v, size_t n, char *err, size_t errlen)
{
    size_t an = 0, bn = 0;
    char *a = ct_tokenizer_decode_n(t, v, n, 0, &an, err, errlen);
    char *b = a ? ct_tokenizer_decode_n(t, v, n, 1, &bn, err, errlen) : NULL;
    if (!a || !b) {
        free(a);
        return -1;
    }
    put_hex(f, a, an);
    fputc('|', f);
    put_hex(f, b, bn);
    free(a), free(b);
    return 0;
}

int main(int argc, char **argv)
{
    if (argc != 4) {
        fprintf(stderr, "usage: tokdump TOKENIZER IN OUT\n");
        return 2;
    }
    char err[512];
    ct_tokenizer *t;
    if (ct_tokenizer_load(&t, argv[1], err, sizeof err)) {
        fprintf(stderr, "tokdump: %s\n", err);
        return 1;
    }
    FILE *in = fopen(argv[2], "r"), *out = fopen(argv[3], "w");
    if (!in || !out) {
        perror("tokdump");
        return 1;
    }
    char *line = NULL;
    size_t lcap = 0, cap = 0, cap2 = 0;
    ssize_t ln;
    int32_t *ids = NULL, *ids2 = NULL;
    while ((ln = getline(&line, &lcap, in)) > 0) {
        if (line[ln - 1] == '\n') line[--ln] = 0;
        if (line[0] == 'C') {
            size_t n;
            char *text = unhex(line, (size_t)ln, &n);
            cuts(out, t, text, n);
            free(text);
        } else if (line[0] == 'E') {
            size_t n;
            char *text = unhex(line, (size_t)ln, &n);
            long a = ct_tokenizer_encode(t, text, n, 1, &ids, &cap, err, sizeof err);
            long b = a < 0 ? -1 : ct_tokenizer_encode(t, text, n, 0, &ids2, &cap2, err, sizeof err);
            free(text);
            if (a < 0 || b < 0) {
                fprintf(out, "ERR %s\n", err);
                continue;
            }
            put_ids(out, ids, a);
            fputc('|', out);
            put_ids(out, ids2, b);
            fputc('|', out);
            if (decode_both(out, t, ids, (size_t)a, err, sizeof err)) fprintf(out, "ERR %s", err);
            fputc('\n', out);
        } else if (line[0] == 'D') {
            size_t n = 0;
            char *p = line + 1, *e;
            for (long v; (v = strtol(p, &e, 10)), e != p; p = e) {
                if (n == cap && !(ids = realloc(ids, (cap = cap ? 2 * cap : 64) * sizeof *ids))) return 1;
                ids[n++] = (int32_t)v;
            }
            if (decode_both(out, t, ids, n, err, sizeof err)) fprintf(out, "ERR %s", err);
            fputc('\n', out);
        }
    }
    free(line), free(ids), free(ids2);
    fclose(in), fclose(out);
    ct_tokenizer_free(t);
    return 0;
}
