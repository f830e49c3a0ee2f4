/* loader.c — the data loader: windows of T+1 tokens in a seeded per-epoch order, cut into
 * global batches of G windows, of which each rank reads only its own micro-batches. The cursor
 * (epoch, step, micro) says everything about where it stands, so a resumed run continues with
 * exactly the windows it would have seen.
 *
 * Masked packing: each window's positions restart at every document start inside it, found in
 * /doc_offsets in bounded memory. At init every stride-th offset is read into an index of at
 * most DOC_INDEX entries (stride = ceil(ndocs / DOC_INDEX)); a window at token `start` then
 * binary-searches the index for the block of stride offsets where those above start begin, and
 * reads that block and the T after it in one range read: (stride + T + 1) * 8 bytes a window,
 * plus the index's 8 * DOC_INDEX bytes once. Positions depend only on the window, so a resumed
 * run gets the same ones. */
#include "data.h"
#include "data_impl.h"

#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

struct ct_loader {
    ct_loader_opts o;     /* o.path points at path */
    char *path;
    ct_dataset *ds;
    uint64_t W;           /* windows */
    uint64_t G;           /* windows per global batch */
    uint64_t steps;       /* global batches per epoch: W / G */
    uint64_t *order;      /* [W] this epoch's window order; NULL when not shuffling (identity) */
    uint64_t order_epoch; /* the epoch order[] belongs to */
    ct_loader_cursor cur;
    uint32_t *win;        /* [T+1] one window's tokens */
    uint8_t *wmask;       /* [T+1] its loss mask */
    /* masked packing (NULL / 0 otherwise) */
    int masked;
    uint64_t ndocs, stride; /* /doc_offsets' entries; the index holds every stride-th */
    uint64_t *index;      /* [nindex] doc_offsets[i * stride] */
    uint64_t nindex;
    uint64_t *docs;       /* [stride + T + 1] the offsets read for one window */
    uint8_t *starts;      /* [T+1] 1 where a document begins in the window (after its first token) */
};

#define DOC_INDEX 65536 /* entries of the /doc_offsets index: 512 KiB */

static int init_docs(ct_loader *l, char *err, size_t errlen);

/* ---- the shuffle's generator: xoshiro256**, seeded through splitmix64 from (seed, epoch). Its
 * own copy here, so that the data order depends on nothing outside this file. */
static uint64_t splitmix64(uint64_t *s)
{
    uint64_t z = (*s += 0x9E3779B97F4A7C15ull);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
}

static uint64_t rotl(uint64_t x, int k) { return (x << k) | (x >> (64 - k)); }

static uint64_t xoshiro_next(uint64_t s[4])
{
    uint64_t r = rotl(s[1] * 5, 7) * 9, t = s[1] << 17;
    s[2] ^= s[0];
    s[3] ^= s[1];
    s[1] ^= s[2];
    s[0] ^= s[3];
    s[2] ^= t;
    s[3] = rotl(s[3], 45);
    return r;
}

/* uniform in [0, n), n > 0: rejection removes the modulo bias */
static uint64_t below(uint64_t s[4], uint64_t n)
{
    uint64_t threshold = (0 - n) % n;
    for (;;) {
        uint64_t r = xoshiro_next(s);
        if (r >= threshold) return r % n;
    }
}

/* Fisher–Yates over the W windows, a fresh stream per (seed, epoch). */
static void make_order(ct_loader *l, uint64_t epoch)
{
    l->order_epoch = epoch;
    if (!l->order) return;
    uint64_t a = l->o.seed, b = epoch ^ 0x6A09E667F3BCC909ull, s[4];
    uint64_t mix = splitmix64(&a) ^ splitmix64(&b);
    for (int i = 0; i < 4; i++) s[i] = splitmix64(&mix);
    for (uint64_t i = 0; i < l->W; i++) l->order[i] = i;
    for (uint64_t i = l->W - 1; i > 0; i--) {
        uint64_t j = below(s, i + 1), t = l->order[i];
        l->order[i] = l->order[j];
        l->order[j] = t;
    }
}

static int check_opts(const ct_loader_opts *o, char *err, size_t errlen)
{
    if (!o || !o->path || !*o->path) return ct_data_fail(err, errlen, "data loader: no dataset path given");
    const char *p = o->path;
    if (o->seq_len < 1) return ct_data_fail(err, errlen, "%s: seq_len %d: must be at least 1", p, o->seq_len);
    if (o->micro_batch < 1) return ct_data_fail(err, errlen, "%s: micro_batch %d: must be at least 1", p, o->micro_batch);
    if (o->grad_accum < 1) return ct_data_fail(err, errlen, "%s: grad_accum %d: must be at least 1", p, o->grad_accum);
    if (o->world < 1) return ct_data_fail(err, errlen, "%s: world %d: must be at least 1", p, o->world);
    if (o->rank < 0 || o->rank >= o->world)
        return ct_data_fail(err, errlen, "%s: rank %d: must be in [0, world = %d)", p, o->rank, o->world);
    if (o->vocab_size < 1) return ct_data_fail(err, errlen, "%s: model vocab_size %d: must be at least 1", p, o->vocab_size);
    return 0;
}

int ct_loader_init(ct_loader **out, const ct_loader_opts *opts, char *err, size_t errlen)
{
    *out = NULL;
    if (check_opts(opts, err, errlen)) return -1;
    ct_loader *l = calloc(1, sizeof *l);
    if (!l) return ct_data_fail(err, errlen, "%s: out of memory", opts->path);
    l->o = *opts;
    l->path = strdup(opts->path);
    l->o.path = l->path;
    const char *p = opts->path;
    const int T = opts->seq_len;
    if (!l->path) {
        ct_data_fail(err, errlen, "%s: out of memory", p);
        goto bad;
    }
    if (ct_dataset_open(&l->ds, p, err, errlen)) goto bad;
    if (ct_dataset_vocab_size(l->ds) > opts->vocab_size) {
        ct_data_fail(err, errlen,
             "%s: attribute vocab_size: the dataset's vocabulary (%d) is larger than the model's (%d); "
             "use a model with vocab_size >= %d or re-tokenize the data",
             p, ct_dataset_vocab_size(l->ds), opts->vocab_size, ct_dataset_vocab_size(l->ds));
        goto bad;
    }
    size_t n = ct_dataset_len(l->ds);
    l->W = n > 0 ? (uint64_t)(n - 1) / (uint64_t)T : 0;
    /* G = micro_batch * grad_accum * world; a product beyond W (or beyond 64 bits) is "too few" */
    uint64_t G = (uint64_t)opts->micro_batch * (uint64_t)opts->grad_accum;
    int too_big = (uint64_t)opts->world > UINT64_MAX / G;
    G = too_big ? UINT64_MAX : G * (uint64_t)opts->world;
    if (too_big || l->W < G) {
        ct_data_fail(err, errlen,
             "%s: /tokens: %zu tokens hold %llu windows of seq_len+1 = %lld tokens, fewer than one global batch "
             "of %llu (micro_batch x grad_accum x world = %d x %d x %d); use more data or smaller batches",
             p, n, (unsigned long long)l->W, (long long)T + 1, (unsigned long long)G, opts->micro_batch,
             opts->grad_accum, opts->world);
        goto bad;
    }
    l->G = G;
    l->steps = l->W / G;
    if (!strcmp(ct_dataset_meta_of(l->ds)->packing, "masked") && init_docs(l, err, errlen)) goto bad;
    l->win = malloc(((size_t)T + 1) * sizeof *l->win);
    l->wmask = malloc((size_t)T + 1);
    if (opts->shuffle) l->order = malloc(l->W * sizeof *l->order);
    if (!l->win || !l->wmask || (opts->shuffle && !l->order)) {
        ct_data_fail(err, errlen, "%s: out of memory for the order of %llu windows", p, (unsigned long long)l->W);
        goto bad;
    }
    make_order(l, 0);
    *out = l;
    return 0;
bad:
    ct_loader_free(l);
    return -1;
}

void ct_loader_free(ct_loader *l)
{
    if (!l) return;
    ct_dataset_close(l->ds);
    free(l->order);
    free(l->win);
    free(l->wmask);
    free(l->index);
    free(l->docs);
    free(l->starts);
    free(l->path);
    free(l);
}

int ct_loader_masked(const ct_loader *l) { return l->masked; }

static int not_increasing(const ct_loader *l, uint64_t at, uint64_t a, uint64_t b, char *err, size_t errlen)
{
    return ct_data_fail(err, errlen,
                        "%s: /doc_offsets: entries %llu and %llu (%llu, %llu) are not increasing; each document's "
                        "first token, in order, below the %zu tokens", l->path, (unsigned long long)at,
                        (unsigned long long)at + 1, (unsigned long long)a, (unsigned long long)b,
                        ct_dataset_len(l->ds));
}

/* documents begin at start + r, 1 <= r <= T: l->starts[r] = 1 (window [start, start + T]) */
static int window_starts(ct_loader *l, uint64_t start, char *err, size_t errlen)
{
    const uint64_t T = (uint64_t)l->o.seq_len;
    memset(l->starts, 0, (size_t)T + 1);
    /* the last index entry at or below start: the offsets above start begin within its block */
    uint64_t lo = 0, hi = l->nindex; /* index[0, lo) <= start < index[hi, nindex) */
    while (lo < hi) {
        uint64_t mid = lo + (hi - lo) / 2;
        if (l->index[mid] <= start) lo = mid + 1;
        else hi = mid;
    }
    const uint64_t first = lo ? (lo - 1) * l->stride : 0;
    const uint64_t n = l->ndocs - first < l->stride + T + 1 ? l->ndocs - first : l->stride + T + 1;
    if (ct_dataset_read_docs(l->ds, (size_t)first, (size_t)n, 1, l->docs, err, errlen)) return -1;
    if (l->docs[0] != l->index[first / l->stride]) /* the file changed under us */
        return ct_data_fail(err, errlen, "%s: /doc_offsets: entry %llu reads %llu, not %llu as before", l->path,
                            (unsigned long long)first, (unsigned long long)l->docs[0],
                            (unsigned long long)l->index[first / l->stride]);
    for (uint64_t i = 0; i < n; i++) {
        if (i + 1 < n && l->docs[i + 1] <= l->docs[i])
            return not_increasing(l, first + i, l->docs[i], l->docs[i + 1], err, errlen);
        if (l->docs[i] > start + T) break;
        if (l->docs[i] > start) l->starts[l->docs[i] - start] = 1;
    }
    return 0;
}

/* Masked packing: the index of /doc_offsets and the buffers of window_starts. */
static int init_docs(ct_loader *l, char *err, size_t errlen)
{
    const size_t T = (size_t)l->o.seq_len;
    l->masked = 1;
    l->ndocs = ct_dataset_ndocs(l->ds); /* at least 1: ct_dataset_open checks */
    l->stride = (l->ndocs + DOC_INDEX - 1) / DOC_INDEX;
    l->nindex = (l->ndocs + l->stride - 1) / l->stride;
    l->index = malloc(l->nindex * sizeof *l->index);
    l->docs = malloc((l->stride + T + 1) * sizeof *l->docs);
    l->starts = malloc(T + 1);
    if (!l->index || !l->docs || !l->starts)
        return ct_data_fail(err, errlen, "%s: out of memory for the /doc_offsets index", l->path);
    if (ct_dataset_read_docs(l->ds, 0, (size_t)l->nindex, (size_t)l->stride, l->index, err, errlen)) return -1;
    for (uint64_t i = 0; i < l->nindex; i++)
        if ((i + 1 < l->nindex && l->index[i + 1] <= l->index[i]) || l->index[i] >= ct_dataset_len(l->ds))
            return not_increasing(l, i * l->stride, l->index[i], i + 1 < l->nindex ? l->index[i + 1] : 0, err, errlen);
    return 0;
}

int ct_loader_next(ct_loader *l, int32_t *tokens, int32_t *targets, int32_t *pos, char *err, size_t errlen)
{
    const int T = l->o.seq_len, B = l->o.micro_batch;
    const uint32_t V = (uint32_t)l->o.vocab_size;
    if (l->order_epoch != l->cur.epoch) make_order(l, l->cur.epoch);
    uint64_t first = l->cur.step * l->G + ((uint64_t)l->cur.micro * (uint64_t)l->o.world + (uint64_t)l->o.rank) * B;
    for (int b = 0; b < B; b++) {
        uint64_t w = l->order ? l->order[first + b] : first + b;
        size_t start = (size_t)(w * (uint64_t)T);
        if (ct_dataset_read(l->ds, start, (size_t)T + 1, l->win, l->wmask, err, errlen)) return -1;
        if (l->masked && window_starts(l, start, err, errlen)) return -1;
        for (int t = 0; t <= T; t++)
            if (l->win[t] >= V)
                return ct_data_fail(err, errlen,
                            "%s: /tokens: token %u at position %zu is beyond the model's vocabulary (vocab_size %d)",
                            l->path, l->win[t], start + (size_t)t, l->o.vocab_size);
        int32_t *x = tokens + (size_t)b * T, *y = targets + (size_t)b * T, *p = pos ? pos + (size_t)b * T : NULL;
        for (int t = 0; t < T; t++) {
            x[t] = (int32_t)l->win[t];
            /* masked: no target across a document boundary (nothing of the next is seen) */
            y[t] = l->wmask[t + 1] && !(l->masked && l->starts[t + 1]) ? (int32_t)l->win[t + 1] : -1;
            if (p) p[t] = t == 0 || (l->masked && l->starts[t]) ? 0 : p[t - 1] + 1;
        }
    }
    /* advance only once the whole micro-batch is in: a failed call leaves the cursor put */
    if (++l->cur.micro == l->o.grad_accum) {
        l->cur.micro = 0;
        if (++l->cur.step == l->steps) {
            l->cur.step = 0;
            l->cur.epoch++;
        }
    }
    return 0;
}

ct_loader_cursor ct_loader_tell(const ct_loader *l) { return l->cur; }

void ct_loader_seek(ct_loader *l, ct_loader_cursor c)
{
    /* carry an out-of-range micro or step forward, so any cursor names a real position */
    if (c.micro < 0) c.micro = 0;
    c.step += (uint64_t)c.micro / (uint64_t)l->o.grad_accum;
    c.micro %= l->o.grad_accum;
    c.epoch += c.step / l->steps;
    c.step %= l->steps;
    l->cur = c; /* the order for c.epoch is made by the next call to next */
}

uint64_t ct_loader_windows(const ct_loader *l) { return l->W; }
uint64_t ct_loader_steps_per_epoch(const ct_loader *l) { return l->steps; }
