/* prepare.c — the `prepare` step for text: files, folders or globs of .txt and .jsonl documents in;
 * train and val token datasets out, with any tokenizer; streaming (one chunk of the inputs per
 * worker in memory) and parallel (worker threads, and ranks through the caller's all-reduce). The
 * contract, the split rule, the memory bound and the formats are in data.h ("prepare").
 *
 * Two passes over chunk k = [bound(k C), bound((k+1) C)) of the concatenated inputs, each run by
 * rank k mod world: count the documents that start in each chunk (so every document has a global
 * index, whatever the workers), then encode each chunk into a train and a val shard. Every tick
 * of the main thread sums (failed, running, bytes, tokens) over the ranks, so that a failure
 * anywhere stops every rank and the progress line counts the whole job. */
#include "data.h"
#include "data_impl.h"
#include "json_check.h"
#include "tokenizer_impl.h"

#include <cjson/cJSON.h>

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <math.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

enum { PHASE_COUNT, PHASE_ENCODE };
enum { R_TRAIN_TOK, R_TRAIN_DOCS, R_VAL_TOK, R_VAL_DOCS, NRES }; /* per-chunk results */
enum { CUT_NONE, CUT_TOKENIZER, CUT_ANY };                      /* where a text file may be cut */
#define PIECE ((size_t)1 << 16) /* a text is encoded in pieces of about this many bytes */
#define ERRMAX 1024

/* HDF5 is not built thread-safe: every call into it from the workers of any prepare in this
 * process goes through this lock (the one piece of global state here, like a pthread_once). */
static pthread_mutex_t h5_lock = PTHREAD_MUTEX_INITIALIZER;

typedef struct {
    uint32_t *tok;
    size_t n, cap;
    uint64_t *doc;
    size_t ndoc, doccap;
} part;

typedef struct {
    const ct_prepare_opts *o;
    const ct_tokenizer *tok;
    const char *field;
    ct_prep_file *f;
    size_t nf;
    uint64_t total, C;
    size_t nchunks;
    int rank, world, threads;
    int cut_mode;
    uint64_t doc_cut;      /* a one-file corpus: where val begins (global); else UINT64_MAX */
    uint64_t *docs_before; /* [nchunks + 1]: documents that start before chunk k */
    uint64_t *bounds;      /* [nchunks + 1]: chunk k is [bounds[k], bounds[k + 1]) */
    uint64_t ndocs, nval;
    int32_t eos;
    int add_eos;
    ct_dataset_meta meta;
    char run_id[40];
    char *dir[2];          /* the shard folders of train and val */
    uint64_t *res;         /* [nchunks][NRES], this rank's chunks */
    /* this rank's workers */
    int phase;
    pthread_mutex_t mu;
    pthread_cond_t cv;
    size_t next;           /* this rank's chunks handed out so far */
    int running, failed;
    size_t fail_chunk;
    char ferr[ERRMAX];
    atomic_int stop;
    atomic_uint_fast64_t bytes_done, tokens_done;
} prep;

/* One worker's buffers, reused from chunk to chunk. */
typedef struct {
    char *buf;
    size_t bufcap;
    int32_t *ids;
    size_t idcap;
    part out[2];
    char *err;
} worker;

static double now(void)
{
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (double)t.tv_sec + 1e-9 * (double)t.tv_nsec;
}

/* ---- reading */

static int read_at(const char *path, uint64_t off, size_t len, char *buf, char *err)
{
    int fd = open(path, O_RDONLY);
    if (fd < 0) return ct_data_fail(err, ERRMAX, "%s: cannot open: %s", path, strerror(errno));
    size_t got = 0;
    while (got < len) {
        ssize_t r = pread(fd, buf + got, len - got, (off_t)(off + got));
        if (r <= 0) {
            close(fd);
            if (r == 0) return ct_data_fail(err, ERRMAX, "%s: shorter than when it was listed (changed meanwhile?)", path);
            return ct_data_fail(err, ERRMAX, "%s: read error at byte %llu: %s", path, (unsigned long long)(off + got),
                                strerror(errno));
        }
        got += (size_t)r;
    }
    close(fd);
    return 0;
}

/* The file holding global position x < total. */
static size_t file_of(const prep *P, uint64_t x)
{
    size_t lo = 0, hi = P->nf;
    while (hi - lo > 1) {
        size_t mid = lo + (hi - lo) / 2;
        if (P->f[mid].start <= x) lo = mid;
        else hi = mid;
    }
    return lo;
}

/* The first position >= o (0 < o < size) of file f where a document part may begin: a line start
 * (.jsonl), or a cut the tokenizer allows (text). size when there is none. */
static int next_boundary(const prep *P, const ct_prep_file *f, uint64_t o, uint64_t *out, char *err)
{
    if (!f->jsonl && P->cut_mode != CUT_TOKENIZER) { /* anywhere (bytes), or nowhere */
        *out = P->cut_mode == CUT_ANY ? o : f->size;
        return 0;
    }
    enum { B = 1 << 16, LEFT = 4096, RIGHT = 4096 }; /* context for ct_tokenizer_cut_ok */
    char buf[B];
    uint64_t p = o; /* the next candidate */
    while (p < f->size) {
        uint64_t base = p >= LEFT ? p - LEFT : 0;
        size_t n = f->size - base < B ? (size_t)(f->size - base) : B;
        if (read_at(f->path, base, n, buf, err)) return -1;
        /* candidates need RIGHT bytes after them unless the window reaches the file's end */
        uint64_t last = base + n == f->size ? f->size : base + n - RIGHT;
        while (p < last) {
            char *lf = memchr(buf + (p - 1 - base), '\n', (size_t)(last - p + 1));
            if (!lf) {
                p = last;
                break;
            }
            p = base + (uint64_t)(lf - buf) + 1;
            if (p >= last && p != f->size) break;
            if (f->jsonl || p == f->size || ct_tokenizer_cut_ok(P->tok, buf, n, (size_t)(p - base))) {
                *out = p;
                return 0;
            }
            p++;
        }
    }
    *out = f->size;
    return 0;
}

/* Where each chunk boundary k * C really falls: the first document boundary at or after it, into
 * P->bounds[0..nchunks]. In order, so that a stretch without a boundary is read once, not once
 * for every chunk boundary inside it (the first boundary after x is the one found after an
 * earlier x' < x whenever that one is >= x). Every rank finds the same. */
static int find_bounds(prep *P, char *err)
{
    uint64_t last = 0;
    for (size_t k = 0; k <= P->nchunks; k++) {
        uint64_t x = (uint64_t)k * P->C;
        if (x >= P->total) {
            P->bounds[k] = P->total;
            continue;
        }
        const ct_prep_file *f = &P->f[file_of(P, x)];
        uint64_t b = 0;
        if (x == f->start || last >= x) {
            P->bounds[k] = x == f->start ? x : last;
            if (x == f->start) last = x;
            continue;
        }
        if (next_boundary(P, f, x - f->start, &b, err)) return -1;
        P->bounds[k] = last = f->start + b;
    }
    return 0;
}

/* Line number (1-based) of the line starting at byte off of file f: only for messages. */
static long line_of(const ct_prep_file *f, uint64_t off)
{
    char buf[1 << 16];
    long lines = 1;
    int fd = open(f->path, O_RDONLY);
    if (fd < 0) return 0;
    for (uint64_t at = 0; at < off;) {
        size_t n = off - at < sizeof buf ? (size_t)(off - at) : sizeof buf;
        ssize_t r = pread(fd, buf, n, (off_t)at);
        if (r <= 0) break;
        for (ssize_t i = 0; i < r; i++) lines += buf[i] == '\n';
        at += (uint64_t)r;
    }
    close(fd);
    return lines;
}

/* Grows by a quarter (not doubling: the slack counts in the memory bound of data.h). */
static int grow(void **p, size_t *cap, size_t need, size_t elem)
{
    if (need <= *cap) return 0;
    size_t c = *cap ? *cap : 4096;
    while (c < need) c += c / 4;
    void *g = realloc(*p, c * elem);
    if (!g) return -1;
    *p = g, *cap = c;
    return 0;
}

/* Reads global [s, e) (inside one file) into w->buf, NUL-terminated. */
static int read_segment(worker *w, const ct_prep_file *f, uint64_t s, uint64_t e)
{
    size_t len = (size_t)(e - s);
    if (grow((void **)&w->buf, &w->bufcap, len + 1, 1))
        return ct_data_fail(w->err, ERRMAX, "%s: out of memory for %zu bytes", f->path, len + 1);
    if (read_at(f->path, s - f->start, len, w->buf, w->err)) return -1;
    w->buf[len] = 0;
    return 0;
}

static int is_blank(const char *s, size_t n)
{
    for (size_t i = 0; i < n; i++)
        if (s[i] != ' ' && s[i] != '\t' && s[i] != '\r') return 0;
    return 1;
}

/* The lines of w->buf[0, len): calls fn for each non-blank one (NUL-terminated in place). */
static int each_line(worker *w, size_t len, int at_file_start, int (*fn)(void *, char *, size_t, size_t), void *arg)
{
    size_t p = 0;
    if (at_file_start && len >= 3 && !memcmp(w->buf, "\xEF\xBB\xBF", 3)) p = 3; /* a byte order mark */
    while (p < len) {
        char *nl = memchr(w->buf + p, '\n', len - p);
        size_t e = nl ? (size_t)(nl - w->buf) : len;
        if (!is_blank(w->buf + p, e - p)) {
            w->buf[e] = 0;
            int rc = fn(arg, w->buf + p, e - p, p);
            if (rc) return rc;
        }
        p = e + 1;
    }
    return 0;
}

/* ---- pass 1: documents per chunk */

static int count_line(void *arg, char *line, size_t n, size_t at)
{
    (void)line, (void)n, (void)at;
    ++*(uint64_t *)arg;
    return 0;
}

static int count_chunk(prep *P, worker *w, size_t k)
{
    uint64_t a = P->bounds[k], b = P->bounds[k + 1], docs = 0;
    for (size_t i = a < b ? file_of(P, a) : P->nf; i < P->nf && P->f[i].start < b; i++) {
        const ct_prep_file *f = &P->f[i];
        uint64_t s = a > f->start ? a : f->start, e = b < f->start + f->size ? b : f->start + f->size;
        if (!f->jsonl) {
            docs += s == f->start;
            docs += P->doc_cut >= s && P->doc_cut < e; /* where val begins in a one-file corpus */
            continue;
        }
        if (read_segment(w, f, s, e)) return -1;
        each_line(w, (size_t)(e - s), s == f->start, count_line, &docs);
    }
    P->res[k * NRES] = docs;
    atomic_fetch_add(&P->bytes_done, b - a);
    return 0;
}

/* ---- pass 2: encode */

static int is_val(const prep *P, uint64_t g)
{
    __extension__ typedef unsigned __int128 u128;
    return (u128)(g + 1) * P->nval / P->ndocs > (u128)g * P->nval / P->ndocs;
}

static int put_ids(part *p, const int32_t *ids, size_t n)
{
    if (grow((void **)&p->tok, &p->cap, p->n + n, sizeof *p->tok)) return -1;
    for (size_t i = 0; i < n; i++) p->tok[p->n + i] = (uint32_t)ids[i];
    p->n += n;
    return 0;
}

static int put_doc(part *p)
{
    if (grow((void **)&p->doc, &p->doccap, p->ndoc + 1, sizeof *p->doc)) return -1;
    p->doc[p->ndoc++] = p->n;
    return 0;
}

/* Where a text comes from, for messages: bytes of a text file from off, or a .jsonl line's field
 * (its line number found only when there is something to say). */
typedef struct {
    const ct_prep_file *f;
    uint64_t off;      /* the text's first byte in the file; for .jsonl: its line's */
    const char *field; /* NULL: a text file */
} place;

static int fail_at(worker *w, const place *pl, uint64_t byte, const char *what)
{
    if (!pl->field)
        return ct_data_fail(w->err, ERRMAX, "%s: at byte %llu: %s", pl->f->path, (unsigned long long)(pl->off + byte),
                            what);
    return ct_data_fail(w->err, ERRMAX, "%s: line %ld: field \"%s\": at byte %llu of the text: %s", pl->f->path,
                        line_of(pl->f, pl->off), pl->field, (unsigned long long)byte, what);
}

/* Encodes text[0, n), a part of document g: part_flags say whether it begins (CT_ENC_BEGIN) and
 * ends (CT_ENC_END) the document. In pieces of about PIECE bytes, cut where the tokenizer allows.
 * 0, -1 (w->err), 1: told to stop. */
static int encode_text(prep *P, worker *w, const char *text, size_t n, int part_flags, uint64_t g, const place *pl)
{
    part *p = &w->out[is_val(P, g)];
    char e[256];
    if (!ct_tokenizer_is_bytes(P->tok)) {
        size_t bad = tk_utf8_check(text, n);
        if (bad < n) return fail_at(w, pl, bad, "invalid UTF-8");
    }
    size_t pos = 0;
    int first = (part_flags & CT_ENC_BEGIN) != 0;
    if (first && put_doc(p)) goto oom;
    while (pos < n || (first && n == 0)) {
        size_t cut = n;
        if (n - pos > PIECE && P->cut_mode != CUT_NONE) {
            if (P->cut_mode == CUT_ANY) cut = pos + PIECE;
            else
                for (size_t q = pos + PIECE; q < n; q++) {
                    const char *lf = memchr(text + q - 1, '\n', n - q + 1);
                    if (!lf) break;
                    q = (size_t)(lf - text) + 1;
                    if (q < n && ct_tokenizer_cut_ok(P->tok, text, n, q)) {
                        cut = q;
                        break;
                    }
                }
        }
        int flags = (first ? CT_ENC_BEGIN : 0) | (cut == n ? part_flags & CT_ENC_END : 0);
        long k = ct_tokenizer_encode_more(P->tok, text + pos, cut - pos, 1, flags, &w->ids, &w->idcap, e, sizeof e);
        if (k < 0) return fail_at(w, pl, pos, e);
        if (put_ids(p, w->ids, (size_t)k)) goto oom;
        atomic_fetch_add(&P->tokens_done, (uint64_t)k);
        pos = cut;
        first = 0;
        if (atomic_load(&P->stop)) return 1;
    }
    if ((part_flags & CT_ENC_END) && P->add_eos) {
        int32_t eos = P->eos;
        if (put_ids(p, &eos, 1)) goto oom;
    }
    return 0;
oom:
    return fail_at(w, pl, pos, "out of memory for the tokens of a chunk");
}

static const char *json_type(const cJSON *v)
{
    return cJSON_IsString(v) ? "a string" : cJSON_IsNumber(v) ? "a number" : cJSON_IsBool(v) ? "a boolean"
           : cJSON_IsNull(v) ? "null" : cJSON_IsArray(v) ? "an array" : cJSON_IsObject(v) ? "an object" : "invalid";
}

typedef struct {
    prep *P;
    worker *w;
    const ct_prep_file *f;
    uint64_t seg_off; /* the segment's first byte in the file */
    uint64_t g;       /* the next document */
} line_ctx;

static int encode_line(void *arg, char *line, size_t n, size_t at)
{
    line_ctx *c = arg;
    const char *F = c->f->path, *field = c->P->field;
    char *err = c->w->err;
    uint64_t off = c->seg_off + at;
    if (memchr(line, 0, n))
        return ct_data_fail(err, ERRMAX, "%s: line %ld: a raw NUL byte; JSON text cannot hold one", F, line_of(c->f, off));
    const char *end = NULL;
    cJSON *j = cJSON_ParseWithOpts(line, &end, 1);
    if (!j) {
        long col = end && end >= line ? (long)(end - line) + 1 : 0;
        return ct_data_fail(err, ERRMAX, "%s: line %ld, column %ld: malformed JSON", F, line_of(c->f, off), col);
    }
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(j, field);
    char where[4200];
    snprintf(where, sizeof where, "%s: line %ld", F, line_of(c->f, off));
    int rc = ct_json_check(line, n, j, where, err, ERRMAX);
    if (rc)
        ;
    else if (!cJSON_IsObject(j))
        rc = ct_data_fail(err, ERRMAX, "%s: line %ld: %s; each line must be an object with a string \"%s\"", F,
                          line_of(c->f, off), json_type(j), field);
    else if (!v)
        rc = ct_data_fail(err, ERRMAX, "%s: line %ld: field \"%s\": missing%s", F, line_of(c->f, off), field,
                          cJSON_GetObjectItemCaseSensitive(j, "messages") || cJSON_GetObjectItemCaseSensitive(j, "prompt")
                              ? " (supervised examples: prepare such a .jsonl file on its own)" : " (data.text_field)");
    else if (!cJSON_IsString(v))
        rc = ct_data_fail(err, ERRMAX, "%s: line %ld: field \"%s\": %s; must be a string", F, line_of(c->f, off), field,
                          json_type(v));
    if (!rc) {
        place pl = {c->f, off, field};
        rc = encode_text(c->P, c->w, v->valuestring, strlen(v->valuestring), CT_ENC_BEGIN | CT_ENC_END, c->g++, &pl);
    }
    cJSON_Delete(j);
    return rc;
}

static int write_shard(prep *P, worker *w, size_t k, int which)
{
    part *p = &w->out[which];
    uint64_t *r = &P->res[k * NRES + (which ? R_VAL_TOK : R_TRAIN_TOK)];
    r[0] = p->n, r[1] = p->ndoc;
    if (!p->n) return 0;
    char path[4200];
    snprintf(path, sizeof path, "%s/%06zu.h5", P->dir[which], k);
    pthread_mutex_lock(&h5_lock);
    int rc = ct_dataset_write(path, p->tok, p->n, NULL, p->ndoc ? p->doc : NULL, p->ndoc, &P->meta, w->err, ERRMAX);
    pthread_mutex_unlock(&h5_lock);
    return rc;
}

/* 0, -1 (w->err), or 1 when told to stop. */
static int encode_chunk(prep *P, worker *w, size_t k)
{
    uint64_t a = P->bounds[k], b = P->bounds[k + 1];
    for (int i = 0; i < 2; i++) w->out[i].n = w->out[i].ndoc = 0;
    uint64_t g_next = P->docs_before[k], g_cur = g_next ? g_next - 1 : 0;
    for (size_t i = a < b ? file_of(P, a) : P->nf; i < P->nf && P->f[i].start < b; i++) {
        const ct_prep_file *f = &P->f[i];
        uint64_t fend = f->start + f->size;
        uint64_t s = a > f->start ? a : f->start, e = b < fend ? b : fend;
        if (read_segment(w, f, s, e)) return -1;
        int rc;
        if (f->jsonl) {
            line_ctx c = {P, w, f, s - f->start, g_next};
            rc = each_line(w, (size_t)(e - s), s == f->start, encode_line, &c);
            g_next = c.g;
        } else {
            rc = 0;
            for (uint64_t u = s; u < e && !rc;) {
                int begin = u == f->start || u == P->doc_cut;
                uint64_t v = P->doc_cut > u && P->doc_cut < e ? P->doc_cut : e;
                int end = v == fend || v == P->doc_cut;
                if (begin) g_cur = g_next++;
                place pl = {f, u - f->start, NULL};
                rc = encode_text(P, w, w->buf + (u - s), (size_t)(v - u),
                                 (begin ? CT_ENC_BEGIN : 0) | (end ? CT_ENC_END : 0), g_cur, &pl);
                u = v;
            }
        }
        if (rc) return rc;
        atomic_fetch_add(&P->bytes_done, e - s);
    }
    if (g_next != P->docs_before[k + 1])
        return ct_data_fail(w->err, ERRMAX, "%s: %llu documents in chunk %zu, %llu when counted (did a file change?)",
                            P->f[file_of(P, a)].path, (unsigned long long)(g_next - P->docs_before[k]), k,
                            (unsigned long long)(P->docs_before[k + 1] - P->docs_before[k]));
    return write_shard(P, w, k, 0) || write_shard(P, w, k, 1) ? -1 : 0;
}

/* ---- the workers and the main thread's ticks */

static void *work(void *arg)
{
    prep *P = arg;
    char err[ERRMAX] = "";
    worker w = {.err = err};
    for (;;) {
        pthread_mutex_lock(&P->mu);
        size_t j = P->next++;
        int stop = P->failed || atomic_load(&P->stop);
        pthread_mutex_unlock(&P->mu);
        size_t k = (size_t)P->rank + j * (size_t)P->world;
        if (stop || k >= P->nchunks) break;
        int rc = P->phase == PHASE_COUNT ? count_chunk(P, &w, k) : encode_chunk(P, &w, k);
        if (rc < 0) {
            pthread_mutex_lock(&P->mu);
            if (!P->failed || k < P->fail_chunk) {
                snprintf(P->ferr, sizeof P->ferr, "%s", err);
                P->fail_chunk = k;
            }
            P->failed = 1;
            atomic_store(&P->stop, 1);
            pthread_cond_broadcast(&P->cv);
            pthread_mutex_unlock(&P->mu);
            break;
        }
        if (rc > 0) break;
    }
    free(w.buf), free(w.ids);
    for (int i = 0; i < 2; i++) free(w.out[i].tok), free(w.out[i].doc);
    pthread_mutex_lock(&P->mu);
    P->running--;
    pthread_cond_broadcast(&P->cv);
    pthread_mutex_unlock(&P->mu);
    return NULL;
}

static int sync_sum(const prep *P, uint64_t *v, size_t n)
{
    return P->world > 1 ? P->o->allreduce(P->o->user, v, n) : 0;
}

static void fmt_time(double s, char *out, size_t cap)
{
    if (s < 60) snprintf(out, cap, "%.0fs", s);
    else if (s < 3600) snprintf(out, cap, "%dm%02ds", (int)(s / 60), (int)fmod(s, 60));
    else snprintf(out, cap, "%dh%02dm", (int)(s / 3600), (int)fmod(s / 60, 60));
}

static void progress(const prep *P, uint64_t bytes, uint64_t tokens, double elapsed, int *printed)
{
    double mb = (double)bytes / 1e6, total = (double)P->total / 1e6, rate = elapsed > 0 ? mb / elapsed : 0;
    char eta[32] = "?";
    if (rate > 0) fmt_time((total - mb) / rate, eta, sizeof eta);
    int tty = isatty(STDERR_FILENO);
    if (P->phase == PHASE_COUNT)
        fprintf(stderr, "%sprepare: counting documents: %.1f of %.1f MB%s", tty ? "\r" : "", mb, total,
                tty ? "\033[K" : "\n");
    else
        fprintf(stderr, "%sprepare: %.1f of %.1f MB (%.1f%%), %.1f MB/s, %.1fM tokens, ETA %s%s", tty ? "\r" : "", mb,
                total, total > 0 ? 100 * mb / total : 100.0, rate, (double)tokens / 1e6, eta, tty ? "\033[K" : "\n");
    fflush(stderr);
    *printed = tty;
}

/* Runs one pass over this rank's chunks on its threads, ticking with the other ranks. 0; -1 (this
 * rank failed: err); -2 (another rank did). */
static int run_phase(prep *P, int phase, char *err, size_t errlen)
{
    P->phase = phase;
    P->next = 0;
    P->failed = 0;
    atomic_store(&P->stop, 0);
    atomic_store(&P->bytes_done, 0);
    atomic_store(&P->tokens_done, 0);
    size_t mine = P->nchunks > (size_t)P->rank ? (P->nchunks - (size_t)P->rank - 1) / (size_t)P->world + 1 : 0;
    int nt = (size_t)P->threads < mine ? P->threads : (int)mine;
    pthread_t *th = calloc((size_t)nt + 1, sizeof *th);
    int started = 0;
    P->running = 0;
    for (; th && started < nt; started++) {
        pthread_mutex_lock(&P->mu);
        P->running++;
        pthread_mutex_unlock(&P->mu);
        if (pthread_create(&th[started], NULL, work, P)) {
            pthread_mutex_lock(&P->mu);
            P->running--;
            pthread_mutex_unlock(&P->mu);
            break;
        }
    }
    if (started < nt) {
        pthread_mutex_lock(&P->mu);
        P->failed = 1;
        atomic_store(&P->stop, 1);
        snprintf(P->ferr, sizeof P->ferr, "prepare: cannot start worker thread %d of %d", started + 1, nt);
        pthread_mutex_unlock(&P->mu);
    }
    double t0 = now(), last = t0;
    const double tick = P->world > 1 ? 0.25 : 1.0;
    int printed = 0;
    uint64_t v[4] = {0};
    for (;;) {
        pthread_mutex_lock(&P->mu);
        double deadline = now() + tick;
        while (!P->failed && !(P->running == 0 && P->world == 1) && now() < deadline) {
            struct timespec ts;
            clock_gettime(CLOCK_REALTIME, &ts);
            double d = deadline - now();
            ts.tv_sec += (time_t)d;
            ts.tv_nsec += (long)((d - (double)(time_t)d) * 1e9);
            if (ts.tv_nsec >= 1000000000L) ts.tv_sec++, ts.tv_nsec -= 1000000000L;
            pthread_cond_timedwait(&P->cv, &P->mu, &ts);
        }
        v[0] = (uint64_t)P->failed, v[1] = P->running > 0;
        pthread_mutex_unlock(&P->mu);
        v[2] = atomic_load(&P->bytes_done), v[3] = atomic_load(&P->tokens_done);
        if (sync_sum(P, v, 4)) {
            atomic_store(&P->stop, 1);
            v[0] = 1;
            pthread_mutex_lock(&P->mu);
            if (!P->failed) snprintf(P->ferr, sizeof P->ferr, "prepare: the ranks cannot agree (all-reduce failed)");
            P->failed = 1;
            pthread_mutex_unlock(&P->mu);
        }
        if (v[0]) {
            atomic_store(&P->stop, 1);
            break;
        }
        if (!v[1]) break;
        if (P->o->progress && now() - last >= 1.0) {
            last = now();
            progress(P, v[2], v[3], last - t0, &printed);
        }
    }
    for (int i = 0; i < started; i++) pthread_join(th[i], NULL);
    free(th);
    if (printed) fprintf(stderr, "\n");
    if (!v[0]) return 0;
    if (P->failed) return ct_data_fail(err, errlen, "%s", P->ferr);
    ct_data_fail(err, errlen, "prepare: stopped because another rank failed");
    return -2;
}

/* ---- set-up and the end */

static void remove_dir(const char *dir)
{
    DIR *d = opendir(dir);
    if (!d) return;
    struct dirent *e;
    char path[4200];
    while ((e = readdir(d)))
        if (strcmp(e->d_name, ".") && strcmp(e->d_name, "..")) {
            snprintf(path, sizeof path, "%s/%s", dir, e->d_name);
            unlink(path);
        }
    closedir(d);
    rmdir(dir);
}

/* Removes the shard folders of earlier runs beside path ("<name>-shards-<id>", id != keep). */
static void remove_stale(const char *path, const char *keep)
{
    char dir[4200], prefix[4200];
    const char *slash = strrchr(path, '/');
    snprintf(dir, sizeof dir, "%.*s", slash ? (int)(slash - path) : 1, slash ? path : ".");
    if (slash && slash == path) snprintf(dir, sizeof dir, "/");
    snprintf(prefix, sizeof prefix, "%s-shards-", slash ? slash + 1 : path);
    DIR *d = opendir(dir);
    if (!d) return;
    struct dirent *e;
    size_t pl = strlen(prefix);
    while ((e = readdir(d))) {
        const char *id = e->d_name + pl;
        if (strncmp(e->d_name, prefix, pl) || !*id || !strcmp(id, keep) || strspn(id, "0123456789abcdefghijklmnopqrstuvwxyz") != strlen(id))
            continue;
        char sub[8500];
        snprintf(sub, sizeof sub, "%s/%s", dir, e->d_name);
        struct stat st;
        if (stat(sub, &st) == 0 && S_ISDIR(st.st_mode)) remove_dir(sub);
    }
    closedir(d);
}

static int setup(prep *P, const ct_prepare_opts *o, char *err, size_t errlen)
{
    P->o = o;
    P->tok = o->tok;
    P->field = o->text_field && *o->text_field ? o->text_field : "text";
    P->rank = o->rank;
    P->world = o->world > 0 ? o->world : 1;
    long cores = sysconf(_SC_NPROCESSORS_ONLN);
    P->threads = o->threads > 0 ? o->threads : cores > 0 ? (int)cores : 1;
    P->C = o->chunk_bytes ? o->chunk_bytes : CT_PREPARE_CHUNK;
    P->doc_cut = UINT64_MAX;
    const char *T = o->text ? o->text : "";
    if (!o->train_path || !*o->train_path || !o->val_path || !*o->val_path)
        return ct_data_fail(err, errlen, "prepare: a path is missing (data.train, data.val)");
    if (!strcmp(o->train_path, o->val_path))
        return ct_data_fail(err, errlen, "%s: data.train and data.val name the same file", o->train_path);
    if (!(o->val_fraction > 0.0 && o->val_fraction < 1.0)) /* also catches NaN */
        return ct_data_fail(err, errlen, "%s: val_fraction %g: must be between 0 and 1 (exclusive)", T, o->val_fraction);
    if (!o->tok) return ct_data_fail(err, errlen, "%s: no tokenizer given", T);
    if (P->rank < 0 || P->rank >= P->world || (P->world > 1 && (!o->allreduce || !o->run_id)))
        return ct_data_fail(err, errlen, "prepare: rank %d of %d: needs an all-reduce and a run id", P->rank, P->world);
    if ((P->eos = ct_tokenizer_eos(o->tok)) < 0)
        return ct_data_fail(err, errlen, "%s: the tokenizer has no end-of-sequence token (tokenizer_config.json's "
                            "eos_token, the post-processor's last token, or <|endoftext|>): documents could not be told "
                            "apart", ct_tokenizer_file(o->tok));
    P->add_eos = !ct_tokenizer_ends_with_eos(o->tok);
    if (o->run_id) {
        size_t n = strlen(o->run_id);
        if (!n || n > 32 || strspn(o->run_id, "0123456789abcdefghijklmnopqrstuvwxyz") != n)
            return ct_data_fail(err, errlen, "prepare: run id \"%s\": 1 to 32 characters of [0-9a-z]", o->run_id);
        snprintf(P->run_id, sizeof P->run_id, "%s", o->run_id);
    } else {
        struct timespec ts;
        clock_gettime(CLOCK_REALTIME, &ts);
        snprintf(P->run_id, sizeof P->run_id, "%llx%04x",
                 (unsigned long long)ts.tv_sec * 1000000000ull + (unsigned long long)ts.tv_nsec,
                 (unsigned)getpid() & 0xffff);
    }
    if (ct_prep_list(T, &P->f, &P->nf, err, errlen)) return -1;
    P->total = P->f[P->nf - 1].start + P->f[P->nf - 1].size;
    P->nchunks = (size_t)((P->total + P->C - 1) / P->C);
    P->cut_mode = ct_tokenizer_is_bytes(o->tok) ? CUT_ANY : ct_tokenizer_cut_ok(o->tok, NULL, 0, 0) ? CUT_TOKENIZER
                                                                                                 : CUT_NONE;
    if (P->nf == 1 && !P->f[0].jsonl) { /* one document: cut it at a line break, as always */
        uint64_t c;
        if (ct_prep_find_cut(P->f[0].path, P->f[0].size, (1.0 - o->val_fraction) * (double)P->f[0].size, &c, err,
                             errlen))
            return -1;
        if (c == 0)
            return ct_data_fail(err, errlen, "%s: too short (%llu bytes) to split into non-empty train and val parts",
                                P->f[0].path, (unsigned long long)P->f[0].size);
        P->doc_cut = c;
    }
    ct_dataset_meta_for(&P->meta, o->tok, "plain");
    P->docs_before = calloc(P->nchunks + 1, sizeof *P->docs_before);
    P->bounds = calloc(P->nchunks + 1, sizeof *P->bounds);
    P->res = calloc(P->nchunks * NRES + 1, sizeof *P->res);
    const char *paths[2] = {o->train_path, o->val_path};
    for (int i = 0; i < 2; i++) {
        size_t n = strlen(paths[i]) + strlen(P->run_id) + 16;
        if ((P->dir[i] = malloc(n))) snprintf(P->dir[i], n, "%s-shards-%s", paths[i], P->run_id);
    }
    if (!P->docs_before || !P->bounds || !P->res || !P->dir[0] || !P->dir[1])
        return ct_data_fail(err, errlen, "%s: out of memory for %zu chunks", T, P->nchunks);
    char e[ERRMAX];
    if (find_bounds(P, e)) return ct_data_fail(err, errlen, "%s", e);
    if (P->rank == 0)
        for (int i = 0; i < 2; i++)
            if (mkdir(P->dir[i], 0777) != 0) {
                ct_data_fail(err, errlen, "%s: cannot create the shard folder: %s", P->dir[i], strerror(errno));
                if (i) rmdir(P->dir[0]);
                return -1;
            }
    return 0;
}

/* Rank 0: each set's shards become its dataset (one shard: renamed to the path; more: an index). */
static int finish(prep *P, const uint64_t *res, ct_prepare_stats *st, char *err, size_t errlen)
{
    const char *paths[2] = {P->o->train_path, P->o->val_path};
    char **names = calloc(P->nchunks + 1, sizeof *names);
    uint64_t *tok = calloc(P->nchunks + 1, sizeof *tok), *docs = calloc(P->nchunks + 1, sizeof *docs);
    int rc = 0, done = 0;
    if (!names || !tok || !docs) rc = ct_data_fail(err, errlen, "%s: out of memory", paths[0]);
    for (int which = 0; which < 2 && !rc; which++) {
        const char *slash = strrchr(paths[which], '/'), *base = slash ? slash + 1 : paths[which];
        size_t n = 0;
        for (size_t k = 0; k < P->nchunks && !rc; k++) {
            const uint64_t *r = &res[k * NRES + (which ? R_VAL_TOK : R_TRAIN_TOK)];
            if (!r[0]) continue;
            char full[4200];
            snprintf(full, sizeof full, "%s/%06zu.h5", P->dir[which], k);
            if (access(full, R_OK) != 0) {
                rc = ct_data_fail(err, errlen, "%s: written by rank %zu but not found by rank 0: every rank must see "
                                  "the folder of data.train and data.val (a shared file system)", full,
                                  k % (size_t)P->world);
                break;
            }
            size_t len = strlen(base) + strlen(P->run_id) + 32;
            if (!(names[n] = malloc(len))) {
                rc = ct_data_fail(err, errlen, "%s: out of memory", paths[which]);
                break;
            }
            snprintf(names[n], len, "%s-shards-%s/%06zu.h5", base, P->run_id, k);
            tok[n] = r[0], docs[n] = r[1];
            st->tokens[which] += r[0], st->docs[which] += r[1];
            n++;
        }
        st->shards[which] = n;
        if (!rc && n == 0) rc = ct_data_fail(err, errlen, "%s: no tokens for this set", paths[which]);
        if (!rc && n == 1) {
            char full[4200];
            snprintf(full, sizeof full, "%s/%s", P->dir[which], strchr(names[0], '/') + 1);
            if (rename(full, paths[which]) != 0)
                rc = ct_data_fail(err, errlen, "%s: cannot rename %s to it: %s", paths[which], full, strerror(errno));
            else
                rmdir(P->dir[which]);
        } else if (!rc) {
            pthread_mutex_lock(&h5_lock);
            rc = ct_dataset_write_index(paths[which], (const char *const *)names, tok, docs, n, &P->meta, err, errlen);
            pthread_mutex_unlock(&h5_lock);
        }
        for (size_t i = 0; i < n; i++) free(names[i]), names[i] = NULL;
        if (!rc) done = which + 1;
    }
    free(names), free(tok), free(docs);
    if (rc && done == 1) unlink(paths[0]); /* val failed: the new train goes too (its old one is gone already) */
    if (!rc)
        for (int i = 0; i < 2; i++) remove_stale(paths[i], P->run_id);
    return rc;
}

static void prep_free(prep *P)
{
    ct_prep_list_free(P->f, P->nf);
    free(P->docs_before), free(P->bounds), free(P->res), free(P->dir[0]), free(P->dir[1]);
    pthread_mutex_destroy(&P->mu);
    pthread_cond_destroy(&P->cv);
}

/* After pass 1: every chunk's document count, summed over the ranks; then N and nval. */
static int number_documents(prep *P, char *err, size_t errlen)
{
    uint64_t *counts = malloc(P->nchunks * sizeof *counts + 1);
    if (!counts) return ct_data_fail(err, errlen, "prepare: out of memory");
    for (size_t k = 0; k < P->nchunks; k++) counts[k] = P->res[k * NRES];
    int rc = sync_sum(P, counts, P->nchunks) ? ct_data_fail(err, errlen, "prepare: the ranks cannot agree") : 0;
    for (size_t k = 0; !rc && k < P->nchunks; k++) P->docs_before[k + 1] = P->docs_before[k] + counts[k];
    free(counts);
    memset(P->res, 0, P->nchunks * NRES * sizeof *P->res);
    P->ndocs = P->docs_before[P->nchunks];
    if (!rc && P->ndocs < 2)
        rc = ct_data_fail(err, errlen, "%s: %llu document%s: too few to split into train and val (give more "
                          "documents, or one text file)", P->o->text, (unsigned long long)P->ndocs,
                          P->ndocs == 1 ? "" : "s");
    double nv = floor((double)P->ndocs * P->o->val_fraction + 0.5);
    P->nval = nv < 1 ? 1 : nv > (double)(P->ndocs - 1) ? P->ndocs - 1 : (uint64_t)nv;
    return rc;
}

int ct_data_prepare(const ct_prepare_opts *o, ct_prepare_stats *stats, char *err, size_t errlen)
{
    ct_prepare_stats st;
    memset(&st, 0, sizeof st);
    prep P;
    memset(&P, 0, sizeof P);
    pthread_mutex_init(&P.mu, NULL);
    pthread_cond_init(&P.cv, NULL);
    double t0 = now();
    int rc = setup(&P, o, err, errlen);
    int made_dirs = P.rank == 0 && rc == 0;
    uint64_t v = rc != 0; /* every rank learns whether any set-up failed */
    if (P.world > 1 && sync_sum(&P, &v, 1)) rc = ct_data_fail(err, errlen, "prepare: the ranks cannot agree");
    else if (v && !rc) rc = -2, ct_data_fail(err, errlen, "prepare: stopped because another rank failed");
    if (!rc) rc = run_phase(&P, PHASE_COUNT, err, errlen);
    if (!rc) rc = number_documents(&P, err, errlen);
    if (!rc) {
        rc = run_phase(&P, PHASE_ENCODE, err, errlen);
        /* a failure stops every rank; wait until all have joined their workers (no shard is being
         * written any more) before rank 0 clears the folders */
        uint64_t barrier = 0;
        if (rc && P.world > 1) sync_sum(&P, &barrier, 1);
    }
    if (!rc && sync_sum(&P, P.res, P.nchunks * NRES)) rc = ct_data_fail(err, errlen, "prepare: the ranks cannot agree");
    if (!rc && P.rank == 0) rc = finish(&P, P.res, &st, err, errlen);
    if (rc && made_dirs)
        for (int i = 0; i < 2; i++) remove_dir(P.dir[i]);
    st.bytes = P.total;
    st.seconds = now() - t0;
    if (stats) *stats = st;
    prep_free(&P);
    return rc;
}

/* ---- the byte tokenizer's prepare of one text file (the original entry point) */
int ct_data_prepare_text(const char *text_path, const char *train_path, const char *val_path, double val_fraction,
                         char *err, size_t errlen)
{
    if (!text_path || !train_path || !val_path) return ct_data_fail(err, errlen, "prepare: a path is missing");
    ct_prepare_opts o = {.text = text_path, .train_path = train_path, .val_path = val_path,
                         .val_fraction = val_fraction, .tok = ct_tokenizer_bytes(), .threads = 1};
    return ct_data_prepare(&o, NULL, err, errlen) ? -1 : 0;
}
