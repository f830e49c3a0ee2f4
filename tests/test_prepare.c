/* test_prepare.c — ct_data_prepare through the public API: every kind of input (a text file,
 * .jsonl documents, folders, globs) against the byte tokenizer's exactly predictable tokens and the
 * split rule of data.h; bad inputs, each an error naming file (and line and field) with nothing
 * left behind; shards read as one dataset by ct_dataset and the loader; the same tokens, masks and
 * document offsets from 1 worker, 3 workers and 2 ranks (simulated in one process with an
 * all-reduce over threads), with a byte-level BPE tokenizer.json too; a rank's failure stopping the
 * other; earlier shard folders removed; broken index files. */
#include "check.h"
#include "data.h"

#include <errno.h>
#include <pthread.h>
#include <sys/stat.h>

#define ERRLEN 2048

/* The call must fail with a message containing both strings. */
#define CHECK_FAILS(call, err, s1, s2)                                                                  \
    do {                                                                                                \
        (err)[0] = 0;                                                                                   \
        int rc_ = (call);                                                                               \
        int ok_ = rc_ < 0 && strstr((err), (s1)) && strstr((err), (s2));                                \
        CHECK(ok_);                                                                                     \
        if (ok_) printf("  expected error: %s\n", (err));                                               \
        else fprintf(stderr, "  rc %d, message \"%s\", wanted \"%s\" and \"%s\"\n", rc_, (err), (s1), (s2)); \
    } while (0)


static void remove_tree(const char *path)
{
    struct stat st;
    if (lstat(path, &st) != 0) return;
    if (S_ISDIR(st.st_mode)) {
        DIR *d = opendir(path);
        struct dirent *e;
        char sub[1024];
        while (d && (e = readdir(d)))
            if (strcmp(e->d_name, ".") && strcmp(e->d_name, "..")) {
                snprintf(sub, sizeof sub, "%s/%s", path, e->d_name);
                remove_tree(sub);
            }
        if (d) closedir(d);
        rmdir(path);
    } else
        unlink(path);
}

/* Entries of a folder (not . and ..). */
static int entries(const char *dir)
{
    DIR *d = opendir(dir);
    int n = 0;
    struct dirent *e;
    while (d && (e = readdir(d))) n += strcmp(e->d_name, ".") && strcmp(e->d_name, "..");
    if (d) closedir(d);
    return n;
}

/* ---- a dataset read whole through ct_dataset */
typedef struct {
    uint32_t *tok;
    uint8_t *mask;
    size_t n;
    uint64_t *doc;
    size_t ndoc, shards;
    int has_mask;
} whole;

static int read_whole(const char *path, whole *w)
{
    char err[ERRLEN];
    memset(w, 0, sizeof *w);
    ct_dataset *ds = NULL;
    if (ct_dataset_open(&ds, path, err, ERRLEN)) {
        fprintf(stderr, "  %s\n", err);
        return -1;
    }
    w->n = ct_dataset_len(ds);
    w->ndoc = ct_dataset_ndocs(ds);
    w->shards = ct_dataset_shards(ds);
    w->has_mask = ct_dataset_has_mask(ds);
    w->tok = malloc(w->n * sizeof *w->tok + 1);
    w->mask = malloc(w->n + 1);
    w->doc = malloc(w->ndoc * sizeof *w->doc + 1);
    int rc = ct_dataset_read(ds, 0, w->n, w->tok, w->mask, err, ERRLEN) ||
             ct_dataset_read_docs(ds, 0, w->ndoc, 1, w->doc, err, ERRLEN);
    if (rc) fprintf(stderr, "  %s\n", err);
    ct_dataset_close(ds);
    return rc ? -1 : 0;
}

static void whole_free(whole *w)
{
    free(w->tok), free(w->mask), free(w->doc);
}

static int same(const whole *a, const whole *b)
{
    return a->n == b->n && a->ndoc == b->ndoc && a->has_mask == b->has_mask &&
           !memcmp(a->tok, b->tok, a->n * sizeof *a->tok) && !memcmp(a->mask, b->mask, a->n) &&
           !memcmp(a->doc, b->doc, a->ndoc * sizeof *a->doc);
}

/* ---- documents and what the byte tokenizer makes of them */
typedef struct {
    char *text[400];
    size_t len[400];
    int n;
} docs;

static void add_doc(docs *d, const char *s, size_t n)
{
    d->text[d->n] = malloc(n + 1);
    memcpy(d->text[d->n], s, n);
    d->text[d->n][n] = 0;
    d->len[d->n++] = n;
}

static void docs_free(docs *d)
{
    for (int i = 0; i < d->n; i++) free(d->text[i]);
    d->n = 0;
}

/* A pseudo-random text of lines (ASCII words, some é), about len bytes, no trailing break. */
static size_t make_text(char *out, size_t len, uint64_t *rng)
{
    static const char *words[] = {"and", "the", "LORD", "said", "unto", "h\xc3\xa9llo", "42", "of", "light", "day,"};
    size_t n = 0;
    while (n + 16 < len) {
        n += (size_t)snprintf(out + n, len - n, "%s", words[ct_test_rand_u64(rng) % 10]);
        out[n++] = ct_test_rand_u64(rng) % 7 ? ' ' : '\n';
    }
    out[n] = 0;
    return n;
}

/* A .jsonl line {"id": i, "text": s} (s has only \n to escape). */
static size_t json_line(char *out, int i, const char *s, size_t n)
{
    size_t k = (size_t)sprintf(out, "{\"id\": %d, \"text\": \"", i);
    for (size_t j = 0; j < n; j++) {
        if (s[j] == '\n') out[k++] = '\\', out[k++] = 'n';
        else out[k++] = s[j];
    }
    return k + (size_t)sprintf(out + k, "\"}\n");
}

/* The expected train (which 0) or val (1) stream of the byte tokenizer: each document's bytes and
 * end-of-text, split as data.h says. */
static whole expect(const docs *d, double frac, int which)
{
    whole w;
    memset(&w, 0, sizeof w);
    size_t total = 0;
    for (int i = 0; i < d->n; i++) total += d->len[i] + 1;
    w.tok = malloc(total * sizeof *w.tok);
    w.mask = malloc(total);
    w.doc = malloc((size_t)d->n * sizeof *w.doc);
    uint64_t N = (uint64_t)d->n, nval = (uint64_t)floor((double)N * frac + 0.5);
    nval = nval < 1 ? 1 : nval > N - 1 ? N - 1 : nval;
    for (uint64_t g = 0; g < N; g++) {
        int val = (g + 1) * nval / N > g * nval / N;
        if (val != which) continue;
        w.doc[w.ndoc++] = w.n;
        for (size_t j = 0; j < d->len[g]; j++) w.tok[w.n++] = (unsigned char)d->text[g][j];
        w.tok[w.n++] = CT_TOK_BYTES_EOT;
    }
    memset(w.mask, 1, w.n);
    return w;
}

static int prep(const char *text, const ct_tokenizer *tok, double frac, size_t chunk, int threads, char *err)
{
    ct_prepare_opts o = {.text = text, .train_path = ct_test_path("train.h5"), .val_path = ct_test_path("val.h5"),
                         .val_fraction = frac, .tok = tok, .chunk_bytes = chunk, .threads = threads};
    return ct_data_prepare(&o, NULL, err, ERRLEN);
}

/* Prepares and compares train and val with the expected streams of d. */
static void check_docs(const char *what, const char *text, const docs *d, double frac, size_t chunk, int threads,
                       int want_index)
{
    char err[ERRLEN];
    if (prep(text, ct_tokenizer_bytes(), frac, chunk, threads, err)) {
        fprintf(stderr, "  %s: %s\n", what, err);
        CHECK(0);
        return;
    }
    for (int which = 0; which < 2; which++) {
        whole got, want = expect(d, frac, which);
        CHECK(read_whole(ct_test_path(which ? "val.h5" : "train.h5"), &got) == 0);
        int ok = same(&got, &want);
        if (!ok)
            fprintf(stderr, "  %s %s: %zu tokens, %zu documents; want %zu, %zu\n", what, which ? "val" : "train",
                    got.n, got.ndoc, want.n, want.ndoc);
        CHECK(ok);
        if (want_index >= 0) CHECK((got.shards > 0) == want_index || (which == 1 && got.shards <= 1));
        whole_free(&got), whole_free(&want);
    }
    printf("  %s: %d documents as expected\n", what, d->n);
}

static void test_inputs(void)
{
    uint64_t rng = 7;
    char *buf = malloc(1 << 20), *line = malloc(1 << 16);
    docs d = {0};
    /* .jsonl documents: blank lines, a byte order mark, an empty text, escapes */
    char dir[512];
    snprintf(dir, sizeof dir, "%s", ct_test_path("in"));
    mkdir(dir, 0777);
    mkdir(ct_test_path("in/sub"), 0777);
    mkdir(ct_test_path("in/.git"), 0777);
    size_t n = (size_t)sprintf(buf, "\xEF\xBB\xBF");
    for (int i = 0; i < 60; i++) {
        char t[400];
        size_t tl = i == 5 ? 0 : make_text(t, 40 + (size_t)(ct_test_rand_u64(&rng) % 300), &rng);
        t[tl] = 0;
        add_doc(&d, t, tl);
        n += json_line(buf + n, i, t, tl);
        if (i % 17 == 3) n += (size_t)sprintf(buf + n, "  \t\r\n\n");
    }
    ct_test_write_file(ct_test_path("in/a.jsonl"), buf, n - 1); /* no final line break */
    docs one = {0};
    for (int i = 0; i < d.n; i++) add_doc(&one, d.text[i], d.len[i]);
    check_docs("one .jsonl file", ct_test_path("in/a.jsonl"), &one, 0.1, 0, 1, 0);
    check_docs("one .jsonl file, 1 KiB chunks, 3 threads", ct_test_path("in/a.jsonl"), &one, 0.1, 1024, 3, 1);
    docs_free(&one);

    /* a folder: a.jsonl, b.txt (many chunks long), sub/c.txt, sub/d.jsonl; skipped: e.md, .git/x.txt */
    size_t bl = make_text(buf, 200000, &rng);
    ct_test_write_file(ct_test_path("in/b.txt"), buf, bl);
    add_doc(&d, buf, bl);
    size_t cl = make_text(buf, 3000, &rng);
    ct_test_write_file(ct_test_path("in/sub/c.txt"), buf, cl);
    add_doc(&d, buf, cl);
    n = 0;
    for (int i = 0; i < 30; i++) {
        char t[200];
        size_t tl = make_text(t, 20 + (size_t)(ct_test_rand_u64(&rng) % 150), &rng);
        add_doc(&d, t, tl);
        n += json_line(buf + n, i, t, tl);
    }
    ct_test_write_file(ct_test_path("in/sub/d.jsonl"), buf, n);
    ct_test_write_file(ct_test_path("in/e.md"), "not an input\n", 13);
    ct_test_write_file(ct_test_path("in/.git/x.txt"), "hidden\n", 7);
    ct_test_write_file(ct_test_path("in/empty.txt"), "", 0); /* no document */
    check_docs("a folder", dir, &d, 0.05, 0, 2, 0);
    check_docs("a folder, 4 KiB chunks, 1 thread", dir, &d, 0.05, 4096, 1, 1);
    check_docs("a folder, 4 KiB chunks, 3 threads", dir, &d, 0.05, 4096, 3, 1);
    check_docs("a folder, 1 KiB chunks, val 0.5", dir, &d, 0.5, 1024, 2, 1);

    /* a glob: b.txt and the sub folder (walked: c.txt, d.jsonl) */
    docs g = {0};
    for (int i = 60; i < d.n; i++) add_doc(&g, d.text[i], d.len[i]);
    check_docs("a glob", ct_test_path("in/[bs]*"), &g, 0.05, 4096, 2, 1);
    docs_free(&g);
    docs_free(&d);
    free(buf), free(line);
}

/* ---- a byte-level BPE tokenizer.json (GPT-2 style: ByteLevel with its regex), written by hand */
static uint32_t byte_char(int b)
{
    static uint32_t map[256];
    if (!map['a']) {
        uint32_t next = 256;
        for (int i = 0; i < 256; i++)
            map[i] = ((i >= 33 && i <= 126) || (i >= 161 && i <= 172) || i >= 174) ? (uint32_t)i : next++;
    }
    return map[b];
}

static void put_utf8(FILE *f, uint32_t cp)
{
    if (cp < 0x80) fputc((int)cp, f);
    else if (cp < 0x800) fputc((int)(0xC0 | cp >> 6), f), fputc((int)(0x80 | (cp & 0x3F)), f);
    else fputc((int)(0xE0 | cp >> 12), f), fputc((int)(0x80 | (cp >> 6 & 0x3F)), f), fputc((int)(0x80 | (cp & 0x3F)), f);
}

static void put_tok(FILE *f, const char *bytes)
{
    fputc('"', f);
    for (const char *p = bytes; *p; p++) {
        uint32_t c = byte_char((unsigned char)*p);
        if (c == '"' || c == '\\') fputc('\\', f);
        put_utf8(f, c);
    }
    fputc('"', f);
}

/* eos: with "<|endoftext|>" as an added token (GPT-2's eos). */
static void write_bpe(const char *path, int eos)
{
    static const char *merges[][2] = {{"t", "h"}, {"th", "e"}, {" ", "the"}, {"a", "n"}, {"an", "d"}, {" ", "and"},
                                      {"L", "O"}, {"LO", "R"}, {"LOR", "D"}, {" ", "LORD"}, {"u", "n"}, {"un", "t"},
                                      {"unt", "o"}, {"s", "a"}, {"sa", "i"}, {"sai", "d"}, {"\n", "\n"}};
    int nm = (int)(sizeof merges / sizeof merges[0]);
    FILE *f = fopen(path, "w");
    fprintf(f, "{\"version\": \"1.0\", \"truncation\": null, \"padding\": null, \"added_tokens\": [");
    if (eos) fprintf(f, "{\"id\": %d, \"content\": \"<|endoftext|>\", \"special\": true}", 256 + nm);
    fprintf(f, "], \"normalizer\": null, \"pre_tokenizer\": {\"type\": \"ByteLevel\", \"add_prefix_space\": false, "
               "\"use_regex\": true}, \"post_processor\": null, \"decoder\": {\"type\": \"ByteLevel\"}, "
               "\"model\": {\"type\": \"BPE\", \"vocab\": {");
    for (int b = 0; b < 256; b++) {
        char s[2] = {(char)b, 0};
        if (b == 0) fputc('"', f), put_utf8(f, byte_char(0)), fprintf(f, "\": 0"); /* put_tok stops at NUL */
        else fprintf(f, ", "), put_tok(f, s), fprintf(f, ": %d", b);
    }
    for (int i = 0; i < nm; i++) {
        char both[32];
        snprintf(both, sizeof both, "%s%s", merges[i][0], merges[i][1]);
        fprintf(f, ", "), put_tok(f, both), fprintf(f, ": %d", 256 + i);
    }
    fprintf(f, "}, \"merges\": [");
    for (int i = 0; i < nm; i++) {
        fprintf(f, "%s[", i ? ", " : "");
        put_tok(f, merges[i][0]), fprintf(f, ", "), put_tok(f, merges[i][1]);
        fprintf(f, "]");
    }
    fprintf(f, "]}}\n");
    fclose(f);
}

/* ---- 2 ranks in one process: threads that sum through a shared buffer */
typedef struct {
    pthread_barrier_t bar;
    pthread_mutex_t mu;
    uint64_t sum[4096];
} fake_world;

typedef struct {
    fake_world *w;
    ct_prepare_opts o;
    int rc;
    char err[ERRLEN];
} fake_rank;

static int fake_allreduce(void *user, uint64_t *buf, size_t n)
{
    fake_world *w = user;
    if (n > 4096) return -1;
    pthread_barrier_wait(&w->bar);
    if (pthread_barrier_wait(&w->bar) == PTHREAD_BARRIER_SERIAL_THREAD) memset(w->sum, 0, n * sizeof *buf);
    pthread_barrier_wait(&w->bar);
    pthread_mutex_lock(&w->mu);
    for (size_t i = 0; i < n; i++) w->sum[i] += buf[i];
    pthread_mutex_unlock(&w->mu);
    pthread_barrier_wait(&w->bar);
    memcpy(buf, w->sum, n * sizeof *buf);
    pthread_barrier_wait(&w->bar);
    return 0;
}

static void *fake_main(void *arg)
{
    fake_rank *r = arg;
    r->rc = ct_data_prepare(&r->o, NULL, r->err, ERRLEN);
    return NULL;
}

/* Runs ct_data_prepare as `world` ranks of `threads` workers each; returns the lowest rank's rc
 * with a message of its own (err), or 0. */
static int prep_ranks(const ct_prepare_opts *base, int world, char *err)
{
    fake_world w;
    pthread_barrier_init(&w.bar, NULL, (unsigned)world);
    pthread_mutex_init(&w.mu, NULL);
    fake_rank r[4];
    pthread_t th[4];
    static int runs;
    char id[16];
    snprintf(id, sizeof id, "fake%d", runs++); /* each run's shard folders are new */
    for (int i = 0; i < world; i++) {
        r[i].w = &w;
        r[i].o = *base;
        r[i].o.rank = i, r[i].o.world = world, r[i].o.run_id = id, r[i].o.allreduce = fake_allreduce;
        r[i].o.user = &w;
        pthread_create(&th[i], NULL, fake_main, &r[i]);
    }
    for (int i = 0; i < world; i++) pthread_join(th[i], NULL);
    int rc = 0;
    for (int i = 0; i < world && !rc; i++)
        if (r[i].rc == -1) rc = -1, snprintf(err, ERRLEN, "rank %d: %s", i, r[i].err);
    for (int i = 0; i < world; i++) CHECK(rc ? r[i].rc != 0 : r[i].rc == 0); /* all fail, or none */
    pthread_barrier_destroy(&w.bar);
    pthread_mutex_destroy(&w.mu);
    return rc;
}

static void test_identity(void)
{
    char err[ERRLEN];
    uint64_t rng = 11;
    write_bpe(ct_test_path("bpe.json"), 1);
    ct_tokenizer *bpe = NULL;
    CHECK(ct_tokenizer_load(&bpe, ct_test_path("bpe.json"), err, ERRLEN) == 0);
    if (!bpe) {
        fprintf(stderr, "  %s\n", err);
        return;
    }
    CHECK(ct_tokenizer_eos(bpe) == 256 + 17);
    mkdir(ct_test_path("id"), 0777);
    char *buf = malloc(1 << 20);
    for (int f = 0; f < 3; f++) { /* two long texts (cut in parts) and documents */
        char name[64];
        snprintf(name, sizeof name, "id/%d.txt", f);
        size_t n = make_text(buf, f == 1 ? 5000 : 150000, &rng);
        ct_test_write_file(ct_test_path(name), buf, n);
    }
    size_t n = make_text(buf, 60000, &rng), m = 0; /* CRLF text: no place to cut (held whole) */
    char *crlf = malloc(2 * n + 1);
    for (size_t i = 0; i < n; i++) {
        if (buf[i] == '\n') crlf[m++] = '\r';
        crlf[m++] = buf[i];
    }
    ct_test_write_file(ct_test_path("id/crlf.txt"), crlf, m);
    free(crlf);
    n = 0;
    for (int i = 0; i < 200; i++) {
        char t[600];
        size_t tl = make_text(t, 50 + (size_t)(ct_test_rand_u64(&rng) % 500), &rng);
        n += json_line(buf + n, i, t, tl);
    }
    ct_test_write_file(ct_test_path("id/docs.jsonl"), buf, n);
    free(buf);
    const ct_tokenizer *toks[2] = {ct_tokenizer_bytes(), bpe};
    char in[512], tr[512], va[512], otr[512], ova[512]; /* ct_test_path's buffers are reused */
    snprintf(in, sizeof in, "%s", ct_test_path("id"));
    snprintf(tr, sizeof tr, "%s", ct_test_path("train.h5"));
    snprintf(va, sizeof va, "%s", ct_test_path("val.h5"));
    snprintf(otr, sizeof otr, "%s", ct_test_path("out/train.h5"));
    snprintf(ova, sizeof ova, "%s", ct_test_path("out/val.h5"));
    for (int k = 0; k < 2; k++) {
        ct_prepare_opts o = {.text = in, .train_path = tr, .val_path = va, .val_fraction = 0.1, .tok = toks[k],
                             .chunk_bytes = 8192, .threads = 1};
        whole ref[2], got[2];
        CHECK(ct_data_prepare(&o, NULL, err, ERRLEN) == 0);
        for (int s = 0; s < 2; s++) CHECK(read_whole(ct_test_path(s ? "val.h5" : "train.h5"), &ref[s]) == 0);
        CHECK(ref[0].shards > 1 && ref[0].ndoc > 100);
        const int runs[3][2] = {{1, 3}, {2, 1}, {2, 2}}; /* ranks, threads */
        for (int r = 0; r < 3; r++) {
            o.threads = runs[r][1];
            int rc = runs[r][0] == 1 ? ct_data_prepare(&o, NULL, err, ERRLEN) : prep_ranks(&o, runs[r][0], err);
            CHECK(rc == 0);
            if (rc) fprintf(stderr, "  %s\n", err);
            for (int s = 0; s < 2; s++) {
                CHECK(read_whole(ct_test_path(s ? "val.h5" : "train.h5"), &got[s]) == 0);
                int ok = same(&got[s], &ref[s]);
                CHECK(ok);
                if (!ok)
                    fprintf(stderr, "  %s, %d ranks x %d threads: %s differs (%zu tokens, %zu documents; %zu, %zu)\n",
                            k ? "bpe" : "bytes", runs[r][0], runs[r][1], s ? "val" : "train", got[s].n, got[s].ndoc,
                            ref[s].n, ref[s].ndoc);
                whole_free(&got[s]);
            }
        }
        printf("  %s: 1 worker = 3 workers = 2 ranks x 1 = 2 ranks x 2 (%zu + %zu tokens, %zu shards)\n",
               k ? "byte-level BPE" : "bytes", ref[0].n, ref[1].n, ref[0].shards);

        /* the loader reads the index as one dataset: every window in order */
        ct_loader_opts lo = {.path = ct_test_path("train.h5"), .seq_len = 64, .micro_batch = 4, .grad_accum = 1,
                             .rank = 0, .world = 1, .seed = 1, .shuffle = 0, .vocab_size = 1 << 20};
        ct_loader *l = NULL;
        CHECK(ct_loader_init(&l, &lo, err, ERRLEN) == 0);
        int32_t x[4 * 64], y[4 * 64];
        size_t bad = 0;
        for (uint64_t b = 0; l && b < ct_loader_steps_per_epoch(l); b++) {
            CHECK(ct_loader_next(l, x, y, NULL, err, ERRLEN) == 0);
            for (size_t i = 0; i < 4 * 64; i++) {
                size_t pos = (size_t)b * 4 * 64 + i;
                bad += (uint32_t)x[i] != ref[0].tok[pos] || (uint32_t)y[i] != ref[0].tok[pos + 1];
            }
        }
        CHECK(l && bad == 0);
        ct_loader_free(l);
        /* ranges across shard boundaries */
        ct_dataset *ds = NULL;
        CHECK(ct_dataset_open(&ds, ct_test_path("train.h5"), err, ERRLEN) == 0);
        uint32_t *t = malloc(20000 * sizeof *t);
        for (int i = 0; ds && i < 200; i++) {
            size_t len = (size_t)(ct_test_rand_u64(&rng) % 20000), start = (size_t)(ct_test_rand_u64(&rng) % (ref[0].n - len));
            CHECK(ct_dataset_read(ds, start, len, t, NULL, err, ERRLEN) == 0);
            CHECK(!memcmp(t, ref[0].tok + start, len * sizeof *t));
        }
        free(t);
        ct_dataset_close(ds);
        for (int s = 0; s < 2; s++) whole_free(&ref[s]);
    }

    /* a rank's failure stops the job: a bad line in a chunk of rank 1; nothing is left behind */
    ct_test_write_file(ct_test_path("id/zz.jsonl"), "{\"text\": \"fine\"}\n{\"text\": 7}\n", 29);
    ct_prepare_opts o = {.text = in, .train_path = otr, .val_path = ova, .val_fraction = 0.1, .tok = bpe,
                         .chunk_bytes = 8192, .threads = 2};
    mkdir(ct_test_path("out"), 0777);
    CHECK_FAILS(prep_ranks(&o, 2, err), err, "zz.jsonl: line 2: field \"text\"", "a number; must be a string");
    CHECK(entries(ct_test_path("out")) == 0);
    CHECK_FAILS(ct_data_prepare(&o, NULL, err, ERRLEN), err, "zz.jsonl: line 2", "a number");
    CHECK(entries(ct_test_path("out")) == 0);
    remove_tree(ct_test_path("out"));
    unlink(ct_test_path("id/zz.jsonl"));

    /* earlier shard folders go once a new dataset is in place; one shard is a plain file */
    CHECK(prep(ct_test_path("id"), bpe, 0.1, 8192, 2, err) == 0);
    CHECK(prep(ct_test_path("id"), bpe, 0.1, 16384, 2, err) == 0);
    int folders = 0;
    DIR *d = opendir(ct_test_dir);
    struct dirent *e;
    while (d && (e = readdir(d))) folders += strstr(e->d_name, "-shards-") != NULL;
    if (d) closedir(d);
    CHECK(folders == 2); /* train's and val's of the last run */
    CHECK(prep(ct_test_path("id"), bpe, 0.1, 1 << 24, 2, err) == 0);
    folders = 0;
    d = opendir(ct_test_dir);
    while (d && (e = readdir(d))) folders += strstr(e->d_name, "-shards-") != NULL;
    if (d) closedir(d);
    CHECK(folders == 0);
    whole w;
    CHECK(read_whole(ct_test_path("train.h5"), &w) == 0 && w.shards == 0);
    whole_free(&w);
    remove_tree(ct_test_path("id"));

    /* invalid UTF-8 is an error naming the byte, with a real tokenizer */
    ct_test_write_file(ct_test_path("bad.txt"), "fine text\nthen \xff bad\nmore\n", 26);
    CHECK_FAILS(prep(ct_test_path("bad.txt"), bpe, 0.3, 0, 1, err), err, "bad.txt: at byte 15", "invalid UTF-8");
    ct_test_write_file(ct_test_path("bad.jsonl"), "{\"text\": \"ok\"}\n{\"text\": \"x\xc3\"}\n", 30);
    CHECK_FAILS(prep(ct_test_path("bad.jsonl"), bpe, 0.3, 0, 1, err), err, "bad.jsonl: line 2: field \"text\"",
                "at byte 1 of the text: invalid UTF-8");
    ct_tokenizer_free(bpe);

    /* a tokenizer without an end-of-sequence token */
    write_bpe(ct_test_path("noeos.json"), 0);
    ct_tokenizer *noeos = NULL;
    CHECK(ct_tokenizer_load(&noeos, ct_test_path("noeos.json"), err, ERRLEN) == 0);
    if (noeos)
        CHECK_FAILS(prep(ct_test_path("bad.jsonl"), noeos, 0.3, 0, 1, err), err, ct_test_path("noeos.json"),
                    "no end-of-sequence token");
    ct_tokenizer_free(noeos);
    unlink(ct_test_path("bad.txt")), unlink(ct_test_path("bad.jsonl"));
}

/* After a failure: the datasets of an earlier run are as they were, and no shard folder is left. */
static int untouched(void)
{
    int ok = 1;
    for (int i = 0; i < 2; i++) {
        char buf[16] = "";
        FILE *f = fopen(ct_test_path(i ? "val.h5" : "train.h5"), "rb");
        ok &= f && fread(buf, 1, sizeof buf, f) == 4 && !memcmp(buf, "old\n", 4);
        if (f) fclose(f);
    }
    DIR *d = opendir(ct_test_dir);
    struct dirent *e;
    while (d && (e = readdir(d))) ok &= !strstr(e->d_name, "-shards-") && !strstr(e->d_name, ".tmp");
    if (d) closedir(d);
    return ok;
}

static void test_bad_inputs(void)
{
    char err[ERRLEN];
    const ct_tokenizer *b = ct_tokenizer_bytes();
    ct_test_write_file(ct_test_path("train.h5"), "old\n", 4);
    ct_test_write_file(ct_test_path("val.h5"), "old\n", 4);
    mkdir(ct_test_path("bad"), 0777);
    CHECK_FAILS(prep(ct_test_path("bad/nope.txt"), b, 0.1, 0, 1, err), err, "bad/nope.txt", "No such file");
    CHECK_FAILS(prep(ct_test_path("bad"), b, 0.1, 0, 1, err), err, "bad", "no .txt or .jsonl files in this folder");
    ct_test_write_file(ct_test_path("bad/x.md"), "words\n", 6);
    CHECK_FAILS(prep(ct_test_path("bad"), b, 0.1, 0, 1, err), err, "bad", "no .txt or .jsonl files");
    CHECK_FAILS(prep(ct_test_path("bad/*.txt"), b, 0.1, 0, 1, err), err, "bad/*.txt", "no file matches");
    ct_test_write_file(ct_test_path("bad/e.txt"), "", 0);
    ct_test_write_file(ct_test_path("bad/f.jsonl"), "", 0);
    CHECK_FAILS(prep(ct_test_path("bad"), b, 0.1, 0, 1, err), err, "bad", "empty files");
    unlink(ct_test_path("bad/e.txt"));

    static const struct {
        const char *text, *want1, *want2;
    } cases[] = {
        {"{\"text\": \"a\"}\n{\"txt\": \"b\"}\n", "line 2: field \"text\"", "missing"},
        {"{\"text\": \"a\"}\n\n{\"text\": [1]}\n", "line 3: field \"text\"", "an array; must be a string"},
        {"{\"text\": \"a\"}\n{\"text\": \"b\",}\n", "line 2, column", "malformed JSON"},
        {"{\"text\": \"a\"}\n[\"b\"]\n", "line 2", "an array; each line must be an object"},
        {"{\"text\": \"a\\u0000b\"}\n{\"text\": \"c\"}\n", "line 1: text: holds", "\\u0000"},
        {"{\"text\": \"a\"}\n{\"text\": \"b\0\"}\n", "line 2", "a raw NUL byte"},
        /* cJSON would read the first "text" and drop the second without a word */
        {"{\"text\": \"a\"}\n{\"text\": \"b\", \"text\": \"c\"}\n", "line 2: text: key given twice", "refused"},
        {"{\"text\": \"a\", \"meta\": {\"k\": 1, \"k\": 2}}\n{\"text\": \"c\"}\n", "line 1: meta.k: key given twice", "refused"},
        {"{\"text\": \"a\"}\n{\"prompt\": \"b\", \"response\": \"c\"}\n", "line 2: field \"text\": missing",
         "supervised examples"},
        {"{\"text\": \"only one\"}\n", "1 document", "too few to split"},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        size_t len = strlen(cases[i].text);
        if (strstr(cases[i].want2, "NUL byte")) len = 28;
        ct_test_write_file(ct_test_path("bad/f.jsonl"), cases[i].text, len);
        CHECK_FAILS(prep(ct_test_path("bad/f.jsonl"), b, 0.1, 0, 1, err), err, cases[i].want1, cases[i].want2);
        CHECK(untouched());
    }
    CHECK(untouched());
    /* a field named otherwise */
    ct_test_write_file(ct_test_path("bad/f.jsonl"), "{\"body\": \"a\"}\n{\"body\": \"b\"}\n", 28);
    char in[512], tr[512], va[512], nodir[512];
    snprintf(in, sizeof in, "%s", ct_test_path("bad/f.jsonl"));
    snprintf(tr, sizeof tr, "%s", ct_test_path("train.h5"));
    snprintf(va, sizeof va, "%s", ct_test_path("val.h5"));
    snprintf(nodir, sizeof nodir, "%s", ct_test_path("nodir/val.h5"));
    ct_prepare_opts o = {.text = in, .text_field = "body", .train_path = tr, .val_path = va, .val_fraction = 0.5,
                         .tok = b};
    CHECK(ct_data_prepare(&o, NULL, err, ERRLEN) == 0);
    o.text_field = NULL;
    CHECK_FAILS(ct_data_prepare(&o, NULL, err, ERRLEN), err, "line 1: field \"text\"", "missing");
    o.val_path = o.train_path;
    CHECK_FAILS(ct_data_prepare(&o, NULL, err, ERRLEN), err, "train.h5", "the same file");
    o.val_path = nodir;
    o.text_field = "body";
    CHECK_FAILS(ct_data_prepare(&o, NULL, err, ERRLEN), err, "nodir/val.h5-shards-", "cannot create");
    o.val_path = va;
    o.val_fraction = 1.0;
    CHECK_FAILS(ct_data_prepare(&o, NULL, err, ERRLEN), err, "f.jsonl", "val_fraction");
    CHECK(ct_data_text_is_sft(ct_test_path("bad/f.jsonl"), "body") == 0);
    ct_test_write_file(ct_test_path("bad/s.jsonl"), "\n{\"messages\": []}\n", 18);
    CHECK(ct_data_text_is_sft(ct_test_path("bad/s.jsonl"), "text") == 1);
    CHECK(ct_data_text_is_sft(ct_test_path("bad/s.jsonl"), "messages") == 0);
    remove_tree(ct_test_path("bad"));
    unlink(ct_test_path("train.h5")), unlink(ct_test_path("val.h5"));
}

/* Index files that do not match their shards: each an error naming index, shard and what differs. */
static void test_bad_index(void)
{
    char err[ERRLEN];
    ct_dataset_meta m;
    ct_dataset_meta_for(&m, ct_tokenizer_bytes(), "plain");
    uint32_t tok[10] = {1, 2, 3, 4, 5, 6, 7, 8, 9, 10};
    uint64_t doc0 = 0;
    CHECK(ct_dataset_write(ct_test_path("s0.h5"), tok, 6, NULL, &doc0, 1, &m, err, ERRLEN) == 0);
    CHECK(ct_dataset_write(ct_test_path("s1.h5"), tok + 6, 4, NULL, NULL, 0, &m, err, ERRLEN) == 0);
    const char *names[2] = {"s0.h5", "s1.h5"};
    uint64_t ntok[2] = {6, 4}, ndoc[2] = {1, 0};
    CHECK(ct_dataset_write_index(ct_test_path("ix.h5"), names, ntok, ndoc, 2, &m, err, ERRLEN) == 0);
    whole w;
    CHECK(read_whole(ct_test_path("ix.h5"), &w) == 0 && w.n == 10 && w.ndoc == 1 && w.shards == 2 &&
          !memcmp(w.tok, tok, sizeof tok));
    whole_free(&w);
    ct_dataset *ds = NULL;
    ntok[1] = 5;
    CHECK(ct_dataset_write_index(ct_test_path("ix.h5"), names, ntok, ndoc, 2, &m, err, ERRLEN) == 0);
    CHECK_FAILS(ct_dataset_open(&ds, ct_test_path("ix.h5"), err, ERRLEN), err, "ix.h5: /shards[1]",
                "token count differs");
    ntok[1] = 4, ndoc[1] = 1;
    CHECK(ct_dataset_write_index(ct_test_path("ix.h5"), names, ntok, ndoc, 2, &m, err, ERRLEN) == 0);
    CHECK_FAILS(ct_dataset_open(&ds, ct_test_path("ix.h5"), err, ERRLEN), err, "s1.h5", "/doc_offsets count");
    ndoc[1] = 0;
    names[1] = "gone.h5";
    CHECK(ct_dataset_write_index(ct_test_path("ix.h5"), names, ntok, ndoc, 2, &m, err, ERRLEN) == 0);
    CHECK_FAILS(ct_dataset_open(&ds, ct_test_path("ix.h5"), err, ERRLEN), err, "ix.h5: /shards[1]", "gone.h5");
    names[1] = "ix.h5";
    CHECK(ct_dataset_write_index(ct_test_path("ix2.h5"), names, ntok, ndoc, 2, &m, err, ERRLEN) == 0);
    rename(ct_test_path("ix2.h5"), ct_test_path("ix.h5"));
    CHECK_FAILS(ct_dataset_open(&ds, ct_test_path("ix.h5"), err, ERRLEN), err, "/shards[", "index itself");
    names[1] = "s1.h5";
    ct_dataset_meta other = m;
    other.vocab_size = 300;
    CHECK(ct_dataset_write_index(ct_test_path("ix.h5"), names, ntok, ndoc, 2, &other, err, ERRLEN) == 0);
    CHECK_FAILS(ct_dataset_open(&ds, ct_test_path("ix.h5"), err, ERRLEN), err, "s0.h5", "differ from the index");
    CHECK_FAILS(ct_dataset_write_index(ct_test_path("ix.h5"), names, ntok, ndoc, 0, &m, err, ERRLEN), err, "ix.h5",
                "no shards");
    CHECK(ds == NULL);
    unlink(ct_test_path("s0.h5")), unlink(ct_test_path("s1.h5")), unlink(ct_test_path("ix.h5"));
}

int main(void)
{
    ct_test_dir_create("ct_test_prepare");
    test_inputs();
    test_identity();
    test_bad_inputs();
    test_bad_index();
    remove_tree(ct_test_dir);
    return ct_test_finish("test_prepare");
}
