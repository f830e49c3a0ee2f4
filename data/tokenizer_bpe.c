/* tokenizer_bpe.c — the BPE model of tokenizer.json: hash maps for the vocabulary and the merge
 * ranks, the merge loop of the tokenizers library (lowest rank first, leftmost on ties), and a
 * per-thread cache of the words already encoded (tokenizers keeps one too). */
#include <pthread.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>

#include "tokenizer_impl.h"

static uint64_t hash_bytes(const char *s, size_t n)
{
    uint64_t h = 1469598103934665603ull;
    for (size_t i = 0; i < n; i++) h = (h ^ (unsigned char)s[i]) * 1099511628211ull;
    return h ^ (h >> 29);
}

static uint64_t hash_u64(uint64_t x)
{
    x ^= x >> 33;
    x *= 0xff51afd7ed558ccdull;
    x ^= x >> 33;
    x *= 0xc4ceb9fe1a85ec53ull;
    return x ^ (x >> 33);
}

static int strmap_grow(tk_strmap *m)
{
    size_t cap = m->cap ? m->cap * 2 : 1024;
    tk_strmap g = {calloc(cap, sizeof(char *)), calloc(cap, sizeof(uint32_t)), calloc(cap, sizeof(int32_t)), cap, 0};
    if (!g.keys || !g.lens || !g.vals) {
        free(g.keys), free(g.lens), free(g.vals);
        return -1;
    }
    for (size_t i = 0; i < m->cap; i++) {
        if (!m->keys[i]) continue;
        size_t j = hash_bytes(m->keys[i], m->lens[i]) & (cap - 1);
        while (g.keys[j]) j = (j + 1) & (cap - 1);
        g.keys[j] = m->keys[i], g.lens[j] = m->lens[i], g.vals[j] = m->vals[i];
        g.n++;
    }
    free(m->keys), free(m->lens), free(m->vals);
    *m = g;
    return 0;
}

int tk_strmap_put(tk_strmap *m, const char *k, size_t n, int32_t v)
{
    if ((m->n + 1) * 2 > m->cap && strmap_grow(m)) return -1;
    size_t j = hash_bytes(k, n) & (m->cap - 1);
    while (m->keys[j]) {
        if (m->lens[j] == n && !memcmp(m->keys[j], k, n)) {
            m->vals[j] = v;
            return 0;
        }
        j = (j + 1) & (m->cap - 1);
    }
    char *c = malloc(n + 1);
    if (!c) return -1;
    memcpy(c, k, n);
    c[n] = 0;
    m->keys[j] = c, m->lens[j] = (uint32_t)n, m->vals[j] = v;
    m->n++;
    return 0;
}

int32_t tk_strmap_get(const tk_strmap *m, const char *k, size_t n)
{
    if (!m->cap) return -1;
    size_t j = hash_bytes(k, n) & (m->cap - 1);
    while (m->keys[j]) {
        if (m->lens[j] == n && !memcmp(m->keys[j], k, n)) return m->vals[j];
        j = (j + 1) & (m->cap - 1);
    }
    return -1;
}

void tk_strmap_free(tk_strmap *m)
{
    for (size_t i = 0; i < m->cap; i++) free(m->keys[i]);
    free(m->keys), free(m->lens), free(m->vals);
    memset(m, 0, sizeof *m);
}

static int pairmap_grow(tk_pairmap *m)
{
    size_t cap = m->cap ? m->cap * 2 : 1024;
    tk_pairmap g = {calloc(cap, sizeof(uint64_t)), calloc(cap, sizeof(int32_t)), calloc(cap, sizeof(int32_t)), cap, 0};
    if (!g.keys || !g.rank || !g.merged) {
        free(g.keys), free(g.rank), free(g.merged);
        return -1;
    }
    for (size_t i = 0; i < m->cap; i++) {
        if (!m->keys[i]) continue;
        size_t j = hash_u64(m->keys[i]) & (cap - 1);
        while (g.keys[j]) j = (j + 1) & (cap - 1);
        g.keys[j] = m->keys[i], g.rank[j] = m->rank[i], g.merged[j] = m->merged[i];
        g.n++;
    }
    free(m->keys), free(m->rank), free(m->merged);
    *m = g;
    return 0;
}

int tk_pairmap_put(tk_pairmap *m, int32_t a, int32_t b, int32_t rank, int32_t merged)
{
    if ((m->n + 1) * 2 > m->cap && pairmap_grow(m)) return -1;
    uint64_t k = ((uint64_t)(uint32_t)a << 32 | (uint32_t)b) + 1;
    size_t j = hash_u64(k) & (m->cap - 1);
    while (m->keys[j] && m->keys[j] != k) j = (j + 1) & (m->cap - 1);
    if (!m->keys[j]) m->n++;
    m->keys[j] = k, m->rank[j] = rank, m->merged[j] = merged;
    return 0;
}

int tk_pairmap_get(const tk_pairmap *m, int32_t a, int32_t b, int32_t *rank, int32_t *merged)
{
    if (!m->cap) return 0;
    uint64_t k = ((uint64_t)(uint32_t)a << 32 | (uint32_t)b) + 1;
    size_t j = hash_u64(k) & (m->cap - 1);
    while (m->keys[j]) {
        if (m->keys[j] == k) {
            *rank = m->rank[j], *merged = m->merged[j];
            return 1;
        }
        j = (j + 1) & (m->cap - 1);
    }
    return 0;
}

void tk_pairmap_free(tk_pairmap *m)
{
    free(m->keys), free(m->rank), free(m->merged);
    memset(m, 0, sizeof *m);
}

/* ---- the merge loop: symbols in a linked list, candidate merges in a binary min-heap */
typedef struct {
    int32_t id, prev, next, len; /* len 0: merged away */
} sym;
typedef struct {
    int32_t rank, pos, merged;
} cand;

static int cand_less(cand a, cand b) { return a.rank != b.rank ? a.rank < b.rank : a.pos < b.pos; }

static void heap_push(cand *h, size_t *n, cand c)
{
    size_t i = (*n)++;
    while (i && cand_less(c, h[(i - 1) / 2])) {
        h[i] = h[(i - 1) / 2];
        i = (i - 1) / 2;
    }
    h[i] = c;
}

static cand heap_pop(cand *h, size_t *n)
{
    cand top = h[0], last = h[--*n];
    size_t i = 0;
    for (;;) {
        size_t c = 2 * i + 1;
        if (c >= *n) break;
        if (c + 1 < *n && cand_less(h[c + 1], h[c])) c++;
        if (!cand_less(h[c], last)) break;
        h[i] = h[c];
        i = c;
    }
    if (*n) h[i] = last;
    return top;
}

static int push_id(int32_t **ids, size_t *len, size_t *cap, int32_t id)
{
    if (*len == *cap) {
        size_t c = *cap ? *cap * 2 : 64;
        int32_t *p = realloc(*ids, c * sizeof *p);
        if (!p) return -1;
        *ids = p, *cap = c;
    }
    (*ids)[(*len)++] = id;
    return 0;
}

/* ---- the cache: word -> ids, open addressing over arenas; per thread (a pthread key frees it
 * when the thread ends), for one model at a time. */
enum { CACHE_SLOTS = 1 << 15, CACHE_KEYS = 1 << 20, CACHE_IDS = 1 << 18, CACHE_WORD = 64 };
typedef struct {
    uint64_t hash;
    uint32_t key, klen, ids, nids; /* offsets into the arenas; klen 0: empty */
} cache_slot;
typedef struct {
    uint64_t uid;
    size_t n, keys_used, ids_used;
    cache_slot slot[CACHE_SLOTS];
    char keys[CACHE_KEYS];
    int32_t ids[CACHE_IDS];
} word_cache;

static pthread_key_t cache_key;
static pthread_once_t cache_once = PTHREAD_ONCE_INIT;
static void cache_key_init(void) { pthread_key_create(&cache_key, free); }

uint64_t tk_bpe_uid(void)
{
    static atomic_uint_fast64_t next = 1; /* a counter: the one mutable global here */
    return atomic_fetch_add(&next, 1);
}

/* This thread's cache, emptied when it last served another model; NULL when out of memory. */
static word_cache *thread_cache(const tk_bpe *m)
{
    pthread_once(&cache_once, cache_key_init);
    word_cache *c = pthread_getspecific(cache_key);
    if (!c) {
        if (!(c = malloc(sizeof *c))) return NULL;
        c->uid = 0;
        if (pthread_setspecific(cache_key, c)) {
            free(c);
            return NULL;
        }
    }
    if (c->uid != m->uid) {
        memset(c->slot, 0, sizeof c->slot);
        c->n = c->keys_used = c->ids_used = 0;
        c->uid = m->uid;
    }
    return c;
}

static cache_slot *cache_find(word_cache *c, const char *w, size_t n, uint64_t h)
{
    size_t j = h & (CACHE_SLOTS - 1);
    for (;; j = (j + 1) & (CACHE_SLOTS - 1)) {
        cache_slot *e = &c->slot[j];
        if (!e->klen || (e->hash == h && e->klen == n && !memcmp(c->keys + e->key, w, n))) return e;
    }
}

static void cache_put(word_cache *c, cache_slot *e, const char *w, size_t n, uint64_t h, const int32_t *ids,
                      size_t nids)
{
    if (c->n * 2 >= CACHE_SLOTS || c->keys_used + n > CACHE_KEYS || c->ids_used + nids > CACHE_IDS) {
        memset(c->slot, 0, sizeof c->slot); /* full: start again */
        c->n = c->keys_used = c->ids_used = 0;
        e = cache_find(c, w, n, h);
    }
    memcpy(c->keys + c->keys_used, w, n);
    if (nids) memcpy(c->ids + c->ids_used, ids, nids * sizeof *ids);
    *e = (cache_slot){h, (uint32_t)c->keys_used, (uint32_t)n, (uint32_t)c->ids_used, (uint32_t)nids};
    c->keys_used += n, c->ids_used += nids, c->n++;
}

static int merge_word(const tk_bpe *m, const char *w, size_t n, int32_t **ids, size_t *len, size_t *cap);

int tk_bpe_encode(const tk_bpe *m, const char *w, size_t n, int32_t **ids, size_t *len, size_t *cap)
{
    if (!n) return 0;
    word_cache *c = n <= CACHE_WORD ? thread_cache(m) : NULL;
    if (!c) return merge_word(m, w, n, ids, len, cap);
    uint64_t h = hash_bytes(w, n);
    cache_slot *e = cache_find(c, w, n, h);
    if (e->klen) {
        if (*cap - *len < e->nids) {
            size_t nc = *cap ? *cap : 64;
            while (nc - *len < e->nids) nc *= 2;
            int32_t *g = realloc(*ids, nc * sizeof *g);
            if (!g) return -1;
            *ids = g, *cap = nc;
        }
        if (e->nids) memcpy(*ids + *len, c->ids + e->ids, e->nids * sizeof **ids);
        *len += e->nids;
        return 0;
    }
    size_t before = *len;
    if (merge_word(m, w, n, ids, len, cap)) return -1;
    cache_put(c, e, w, n, h, *ids + before, *len - before);
    return 0;
}

/* The merge loop for one word (no cache). Words up to CACHE_WORD bytes work on the stack. */
static int merge_word(const tk_bpe *m, const char *w, size_t n, int32_t **ids, size_t *len, size_t *cap)
{
    if (m->ignore_merges) {
        int32_t id = tk_strmap_get(&m->vocab, w, n);
        if (id >= 0) return push_id(ids, len, cap, id);
    }
    /* at most n symbols (byte fallback gives one per byte) and 2n heap entries per merge round */
    sym s_small[CACHE_WORD];
    cand h_small[2 * CACHE_WORD + 1];
    int small = n <= CACHE_WORD;
    sym *s = small ? s_small : malloc(n * sizeof *s);
    cand *h = small ? h_small : malloc((2 * n + 1) * sizeof *h);
    if (!s || !h) {
        if (!small) free(s), free(h);
        return -1;
    }
    int32_t ns = 0, unk_len = 0;
    int have_unk = 0;
#define ADD_SYM(ID, L) (s[ns].id = (ID), s[ns].len = (L), s[ns].prev = ns - 1, s[ns].next = ns + 1, ns++)
    for (size_t i = 0; i < n;) {
        uint32_t cp;
        int cl = tk_utf8_next(w, n, i, &cp);
        int32_t id = tk_strmap_get(&m->vocab, w + i, (size_t)cl);
        if (id >= 0) {
            if (have_unk) ADD_SYM(m->unk, unk_len), have_unk = 0;
            ADD_SYM(id, cl);
        } else {
            int done = 0;
            if (m->byte_fallback) {
                int all = 1;
                for (int k = 0; k < cl; k++) all &= m->byte_ids[(unsigned char)w[i + k]] >= 0;
                if (all) {
                    for (int k = 0; k < cl; k++) ADD_SYM(m->byte_ids[(unsigned char)w[i + k]], 1);
                    done = 1;
                }
            }
            if (!done && m->unk >= 0) {
                if (have_unk && m->fuse_unk) unk_len += cl;
                else {
                    if (have_unk) ADD_SYM(m->unk, unk_len);
                    have_unk = 1, unk_len = cl;
                }
            }
        }
        i += (size_t)cl;
    }
    if (have_unk) ADD_SYM(m->unk, unk_len);
#undef ADD_SYM
    if (ns) s[ns - 1].next = -1;
    size_t hn = 0;
    int32_t rank, merged;
    for (int32_t i = 0; i + 1 < ns; i++)
        if (tk_pairmap_get(&m->merges, s[i].id, s[i + 1].id, &rank, &merged))
            heap_push(h, &hn, (cand){rank, i, merged});
    size_t hcap = 2 * n + 1;
    while (hn) {
        cand c = heap_pop(h, &hn);
        sym *a = &s[c.pos];
        if (!a->len || a->next < 0) continue;
        sym *b = &s[a->next];
        if (!tk_pairmap_get(&m->merges, a->id, b->id, &rank, &merged) || merged != c.merged) continue;
        a->id = c.merged;
        a->len += b->len;
        b->len = 0;
        a->next = b->next;
        if (b->next >= 0) s[b->next].prev = c.pos;
        if (hn + 2 > hcap) { /* cannot happen: each merge pops one and pushes at most two, so the heap
                              * holds at most (n - 1) + (n - 1) entries; never overflow all the same */
            if (!small) free(s), free(h);
            return -1;
        }
        if (a->prev >= 0 && tk_pairmap_get(&m->merges, s[a->prev].id, a->id, &rank, &merged))
            heap_push(h, &hn, (cand){rank, a->prev, merged});
        if (a->next >= 0 && tk_pairmap_get(&m->merges, a->id, s[a->next].id, &rank, &merged))
            heap_push(h, &hn, (cand){rank, c.pos, merged});
    }
    int rc = 0;
    for (int32_t i = 0; i < ns && !rc; i++)
        if (s[i].len) rc = push_id(ids, len, cap, s[i].id);
    if (!small) free(s), free(h);
    return rc;
}
