/* tokenizer_bytes.c — the byte-level tokenizer: no vocabulary file, any text round-trips. */
#include "data.h"

size_t ct_tok_bytes_encode(const char *text, size_t len, int32_t *out)
{
    for (size_t i = 0; i < len; i++) out[i] = (unsigned char)text[i];
    return len;
}

size_t ct_tok_bytes_decode(const int32_t *tokens, size_t n, char *out, size_t cap)
{
    size_t w = 0;
    if (!cap) return 0;
    for (size_t i = 0; i < n && w + 1 < cap; i++)
        if (tokens[i] >= 0 && tokens[i] < 256) out[w++] = (char)tokens[i];
    out[w] = 0;
    return w;
}
