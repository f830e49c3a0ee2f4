/* data.h — tokens in, batches out. This build has the byte-level tokenizer. */
#ifndef CT_DATA_H
#define CT_DATA_H

#include <stddef.h>
#include <stdint.h>

/* Byte-level tokenizer: token i < 256 is byte i; 256 is end-of-text. */
#define CT_TOK_BYTES_EOT 256
#define CT_TOK_BYTES_VOCAB 257

/* Encodes len bytes of text into out[len] (one token per byte); returns len. */
size_t ct_tok_bytes_encode(const char *text, size_t len, int32_t *out);

/* Decodes n tokens into out (capacity cap bytes, NUL-terminated); end-of-text and tokens
 * outside the vocabulary are skipped. Returns the number of bytes written. */
size_t ct_tok_bytes_decode(const int32_t *tokens, size_t n, char *out, size_t cap);

#endif
