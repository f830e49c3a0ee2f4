/* prepare.c — the `prepare` step for plain text: one UTF-8 file in, a train and a val token
 * dataset out, with the byte-level tokenizer. The split falls on a line break so that no line
 * (and no multi-byte character) is cut in two. */
#include "data.h"
#include "data_impl.h"

#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* A cut c (train = [0, c), val = [c, len)) may fall just after a '\n' (lines), or at any
 * character start (not a UTF-8 continuation byte 10xxxxxx). */
static int is_cut(const char *text, size_t c, int lines)
{
    return lines ? text[c - 1] == '\n' : ((unsigned char)text[c] & 0xC0) != 0x80;
}

/* The cut in [1, len-1] nearest to target (the earlier one on a tie): after a line break when
 * the text has one inside it, else at a character boundary. 0 when no cut leaves both parts
 * non-empty. */
static size_t find_cut(const char *text, size_t len, double target)
{
    if (len < 2) return 0;
    size_t mid = target < 1.0 ? 1 : target > (double)(len - 1) ? len - 1 : (size_t)target;
    for (int lines = 1; lines >= 0; lines--) {
        size_t left = mid, right = mid + 1; /* nearest cut at or below mid, nearest above it */
        while (left >= 1 && !is_cut(text, left, lines)) left--;
        while (right <= len - 1 && !is_cut(text, right, lines)) right++;
        int has_left = left >= 1, has_right = right <= len - 1;
        if (has_left && (!has_right || target - (double)left <= (double)right - target)) return left;
        if (has_right) return right;
    }
    return 0;
}

/* Encodes text[0, n) plus end-of-text into buf and writes it as one document. */
static int write_part(const char *path, const char *text, size_t n, uint32_t *buf, char *err, size_t errlen)
{
    /* int32_t and uint32_t may alias each other; token ids < 257 read the same through both */
    ct_tok_bytes_encode(text, n, (int32_t *)buf);
    buf[n] = CT_TOK_BYTES_EOT;
    uint64_t doc0 = 0;
    ct_dataset_meta meta;
    ct_dataset_meta_for(&meta, ct_tokenizer_bytes(), "plain");
    return ct_dataset_write(path, buf, n + 1, NULL, &doc0, 1, &meta, err, errlen);
}

int ct_data_prepare_text(const char *text_path, const char *train_path, const char *val_path, double val_fraction,
                         char *err, size_t errlen)
{
    if (!text_path || !train_path || !val_path) return ct_data_fail(err, errlen, "prepare: a path is missing");
    if (!(val_fraction > 0.0 && val_fraction < 1.0)) /* also catches NaN */
        return ct_data_fail(err, errlen, "%s: val_fraction %g: must be between 0 and 1 (exclusive)", text_path,
                    val_fraction);
    char *text = NULL;
    size_t len = 0;
    if (ct_data_read_all(text_path, &text, &len, err, errlen)) return -1;
    if (len == 0) {
        free(text);
        return ct_data_fail(err, errlen, "%s: empty file; there is no text to prepare", text_path);
    }
    size_t cut = find_cut(text, len, (1.0 - val_fraction) * (double)len);
    if (cut == 0) {
        free(text);
        return ct_data_fail(err, errlen, "%s: too short (%zu bytes) to split into non-empty train and val parts", text_path,
                    len);
    }
    size_t most = cut > len - cut ? cut : len - cut;
    uint32_t *buf = malloc((most + 1) * sizeof *buf);
    if (!buf) {
        free(text);
        return ct_data_fail(err, errlen, "%s: out of memory for %zu tokens", text_path, most + 1);
    }
    int rc = write_part(train_path, text, cut, buf, err, errlen);
    if (!rc) rc = write_part(val_path, text + cut, len - cut, buf, err, errlen);
    free(buf);
    free(text);
    return rc;
}
