/* dsdump — what a token dataset (one file or an index of shards) holds, as ct_dataset reads it: one
 * line with its token, document and shard counts and FNV-1a digests of the tokens, the loss mask
 * and the document offsets, so that two datasets can be compared with diff.
 * Usage: dsdump DATASET... */
#include <stdio.h>
#include <stdlib.h>

#include "data.h"

static uint64_t fnv(uint64_t h, const void *p, size_t n)
{
    const unsigned char *b = p;
    for (size_t i = 0; i < n; i++) h = (h ^ b[i]) * 1099511628211ull;
    return h;
}

int main(int argc, char **argv)
{
    char err[1024];
    for (int a = 1; a < argc; a++) {
        ct_dataset *ds = NULL;
        if (ct_dataset_open(&ds, argv[a], err, sizeof err)) {
            fprintf(stderr, "dsdump: %s\n", err);
            return 1;
        }
        size_t n = ct_dataset_len(ds), nd = ct_dataset_ndocs(ds);
        uint64_t ht = 1469598103934665603ull, hm = ht, hd = ht;
        uint32_t tok[65536];
        uint8_t mask[65536];
        for (size_t at = 0; at < n; at += 65536) {
            size_t k = n - at < 65536 ? n - at : 65536;
            if (ct_dataset_read(ds, at, k, tok, mask, err, sizeof err)) {
                fprintf(stderr, "dsdump: %s\n", err);
                return 1;
            }
            ht = fnv(ht, tok, k * sizeof *tok);
            hm = fnv(hm, mask, k);
        }
        uint64_t *docs = malloc(nd * sizeof *docs + 1);
        if (!docs || ct_dataset_read_docs(ds, 0, nd, 1, docs, err, sizeof err)) {
            fprintf(stderr, "dsdump: %s\n", docs ? err : "out of memory");
            return 1;
        }
        hd = fnv(hd, docs, nd * sizeof *docs);
        printf("tokens %zu %016llx mask %016llx docs %zu %016llx shards %zu vocab %d tokenizer %s\n", n,
               (unsigned long long)ht, (unsigned long long)hm, nd, (unsigned long long)hd, ct_dataset_shards(ds),
               ct_dataset_vocab_size(ds), ct_dataset_tokenizer(ds));
        free(docs);
        ct_dataset_close(ds);
    }
    return 0;
}
