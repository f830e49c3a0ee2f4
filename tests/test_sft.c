/* test_sft.c — the fine-tuning prepare step (ct_data_prepare_sft) through the public API, with the
 * byte tokenizer and ctrain's plain chat template: both example forms rendered (compared token by
 * token), the loss mask exactly on the assistant bytes and the end-of-text closing each reply,
 * doc_offsets, the packing modes (masked and plain: no example straddles a loader window; none:
 * one example per window), train_on_prompt, the train/val split, the loader's -1 targets on the
 * written file, and every malformed input giving a clear error with file, line and field.
 * /doc_offsets is read with the HDF5 C API: data.h has no reader for it. */
#include "check.h"
#include "data.h"

#include <hdf5.h>

#include <dirent.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#define ERRLEN 1024

/* The options of every call: the byte tokenizer, the plain template, the packing under test. */
static ct_sft_opts opts;
static int prepare(const char *src, const char *tr, const char *va, double frac, int T, char *err)
{
    return ct_data_prepare_sft(src, tr, va, frac, T, &opts, err, ERRLEN);
}

static void write_file(const char *path, const char *text)
{
    FILE *f = fopen(path, "wb");
    size_t len = strlen(text);
    if (!f || fwrite(text, 1, len, f) != len) {
        fprintf(stderr, "cannot write %s\n", path);
        exit(2);
    }
    fclose(f);
}

/* ---- expected examples: a rendering as segments of text, each learned (1) or not (0); the
 * segment EOT stands for the end-of-text token */
typedef struct {
    const char *text;
    int learn;
} seg;
static const char EOT[] = "<end-of-text>";

#define MAXSEG 20
typedef struct {
    seg s[MAXSEG]; /* ends at the first NULL text */
} want_ex;

/* The tokens of w into tok, their mask into mask (train_on_prompt: all but the first learned);
 * returns the count. */
static size_t render(const want_ex *w, uint32_t *tok, uint8_t *mask)
{
    size_t n = 0;
    for (int i = 0; i < MAXSEG && w->s[i].text; i++) {
        if (w->s[i].text == EOT) {
            tok[n] = CT_TOK_BYTES_EOT, mask[n++] = (uint8_t)w->s[i].learn;
            continue;
        }
        size_t k = strlen(w->s[i].text);
        for (size_t j = 0; j < k; j++) tok[n + j] = (unsigned char)w->s[i].text[j];
        memset(mask + n, w->s[i].learn, k);
        n += k;
    }
    if (opts.train_on_prompt && n > 1) memset(mask + 1, 1, n - 1);
    return n;
}

/* /doc_offsets as uint64; returns how many (at most cap), -1 when absent. */
static long h5_doc_offsets(const char *path, uint64_t *out, size_t cap)
{
    hid_t f = H5Fopen(path, H5F_ACC_RDONLY, H5P_DEFAULT);
    if (f < 0) return -1;
    if (H5Lexists(f, "doc_offsets", H5P_DEFAULT) <= 0) {
        H5Fclose(f);
        return -1;
    }
    hid_t d = H5Dopen2(f, "doc_offsets", H5P_DEFAULT);
    hid_t sp = H5Dget_space(d);
    hsize_t n;
    H5Sget_simple_extent_dims(sp, &n, NULL);
    if (n <= cap) H5Dread(d, H5T_NATIVE_UINT64, H5S_ALL, H5S_ALL, H5P_DEFAULT, out);
    H5Sclose(sp);
    H5Dclose(d);
    H5Fclose(f);
    return (long)n;
}

/* Checks a prepared part against the expected examples w[0, nw) with seq_len T: each document's
 * tokens and mask, doc_offsets at each start, padding (end-of-text, mask 0) only where the packing
 * mode puts it (masked, plain: where the next example would straddle a window; none: up to the
 * next window start) and at the end up to a window boundary, and no example straddling a window.
 * Returns the padding tokens. */
static size_t check_part(const char *path, const want_ex *w, int nw, int T)
{
    char err[ERRLEN];
    ct_dataset *ds = NULL;
    CHECK(ct_dataset_open(&ds, path, err, ERRLEN) == 0);
    if (!ds) {
        fprintf(stderr, "  %s\n", err);
        return 0;
    }
    const ct_dataset_meta *meta = ct_dataset_meta_of(ds);
    CHECK(strcmp(meta->tokenizer, "bytes") == 0 && strcmp(meta->digest, CT_TOK_BYTES_DIGEST) == 0);
    CHECK(strcmp(meta->packing, opts.packing) == 0);
    CHECK(ct_dataset_vocab_size(ds) == CT_TOK_BYTES_VOCAB);
    CHECK(ct_dataset_has_mask(ds) == 1);
    size_t n = ct_dataset_len(ds);
    uint32_t *tok = malloc(n * sizeof *tok);
    uint8_t *mask = malloc(n);
    CHECK(ct_dataset_read(ds, 0, n, tok, mask, err, ERRLEN) == 0);
    ct_dataset_close(ds);
    uint64_t docs[64];
    CHECK(h5_doc_offsets(path, docs, 64) == nw);
    CHECK((n - 1) % (size_t)T == 0); /* the end is a window boundary: the loader reads it all */

    uint32_t *want = malloc((n + 1) * sizeof *want);
    uint8_t *wmask = malloc(n + 1);
    int one = !strcmp(opts.packing, "none");
    size_t pos = 0, pad = 0;
    int tok_ok = 1, mask_ok = 1, pad_ok = 1, window_ok = 1, place_ok = 1;
    for (int e = 0; e < nw; e++) {
        size_t len = render(&w[e], want, wmask);
        /* where the packing rule puts it */
        size_t next = (pos / T + 1) * (size_t)T, first = (pos + T - 1) / T * (size_t)T;
        size_t at = one ? first : pos + len > next + 1 ? next : pos;
        place_ok &= docs[e] == at;
        if (docs[e] != at || docs[e] + len > n) break;
        for (size_t i = pos; i < at; i++) pad_ok &= tok[i] == CT_TOK_BYTES_EOT && mask[i] == 0;
        pad += at - pos;
        size_t s = docs[e];
        window_ok &= s + len - 1 <= (s / T) * (size_t)T + (size_t)T; /* ends in the window it starts in */
        int same = 1;
        for (size_t i = 0; i < len; i++) {
            same &= tok[s + i] == want[i];
            mask_ok &= mask[s + i] == wmask[i];
        }
        tok_ok &= same;
        if (!same) fprintf(stderr, "  %s: document %d differs\n", path, e);
        pos = s + len;
    }
    for (size_t i = pos; i < n; i++) pad_ok &= tok[i] == CT_TOK_BYTES_EOT && mask[i] == 0;
    pad += n - pos;
    CHECK(place_ok);
    CHECK(tok_ok);
    CHECK(mask_ok);
    CHECK(pad_ok);
    CHECK(window_ok);
    free(want);
    free(wmask);
    free(tok);
    free(mask);
    return pad;
}

/* ---- round trips */

#define USER "### User:\n"
#define ASSISTANT "### Assistant:\n"
static const want_ex pairs[] = {
    {{{USER, 0}, {"What is 2+2?", 0}, {"\n", 0}, {ASSISTANT, 0}, {"4", 1}, {EOT, 1}, {"\n", 0}}},
    {{{USER, 0}, {"Say \"hi\"\nplease", 0}, {"\n", 0}, {ASSISTANT, 0}, {"hi \xC3\xA9t\xC3\xA9\n!", 1}, {EOT, 1}, {"\n", 0}}},
    {{{USER, 0}, {"", 0}, {"\n", 0}, {ASSISTANT, 0}, {"Anything.", 1}, {EOT, 1}, {"\n", 0}}},
};
static const char *pairs_jsonl = "{\"prompt\": \"What is 2+2?\", \"response\": \"4\"}\n"
                                 "{\"prompt\": \"Say \\\"hi\\\"\\nplease\", \"response\": \"hi \\u00e9t\xC3\xA9\\n!\", "
                                 "\"id\": 7}\n"
                                 "\n"
                                 "   \t\n"
                                 "{\"response\": \"Anything.\", \"prompt\": \"\"}"; /* no final newline */

static const want_ex chats[] = {
    {{{"### System:\n", 0}, {"Be brief.", 0}, {"\n", 0}, {USER, 0}, {"Hi", 0}, {"\n", 0}, {ASSISTANT, 0},
      {"Hello.", 1}, {EOT, 1}, {"\n", 0}, {USER, 0}, {"Bye", 0}, {"\n", 0}, {ASSISTANT, 0}, {"Goodbye!", 1},
      {EOT, 1}, {"\n", 0}}},
    {{{USER, 0}, {"1+1?", 0}, {"\n", 0}, {ASSISTANT, 0}, {"2", 1}, {EOT, 1}, {"\n", 0}}},
    {{{ASSISTANT, 0}, {"", 1}, {EOT, 1}, {"\n", 0}, {USER, 0}, {"ok", 0}, {"\n", 0}, {ASSISTANT, 0}, {"fine", 1},
      {EOT, 1}, {"\n", 0}}},
};
static const char *chats_jsonl =
    "\xEF\xBB\xBF{\"messages\": [{\"role\": \"system\", \"content\": \"Be brief.\"}, {\"role\": \"user\", \"content\": "
    "\"Hi\"}, {\"role\": \"assistant\", \"content\": \"Hello.\"}, {\"role\": \"user\", \"content\": \"Bye\"}, "
    "{\"content\": \"Goodbye!\", \"role\": \"assistant\"}]}\r\n"
    "{\"messages\": [{\"role\": \"user\", \"content\": \"1+1?\"}, {\"role\": \"assistant\", \"content\": \"2\"}]}\r\n"
    "{\"messages\": [{\"role\": \"assistant\", \"content\": \"\"}, {\"role\": \"user\", \"content\": \"ok\"}, "
    "{\"role\": \"assistant\", \"content\": \"fine\"}]}\r\n";

static void test_roundtrip(void)
{
    char err[ERRLEN];
    int T = 64;
    /* 3 examples, val_fraction 0.34: round(1.02) = 1 to val */
    const char *src = ct_test_path("pairs.jsonl"), *tr = ct_test_path("pairs_train.h5"), *va = ct_test_path("pairs_val.h5");
    write_file(src, pairs_jsonl);
    int rc = prepare(src, tr, va, 0.34, T, err);
    CHECK(rc == 0);
    if (rc) fprintf(stderr, "  %s\n", err);
    check_part(tr, pairs, 2, T);
    check_part(va, pairs + 2, 1, T);

    src = ct_test_path("chats.jsonl"), tr = ct_test_path("chats_train.h5"), va = ct_test_path("chats_val.h5");
    write_file(src, chats_jsonl);
    T = 128; /* the first chat is 98 tokens */
    rc = prepare(src, tr, va, 0.5, T, err); /* round(1.5) = 2 to val */
    CHECK(rc == 0);
    if (rc) fprintf(stderr, "  %s\n", err);
    check_part(tr, chats, 1, T);
    check_part(va, chats + 1, 2, T);
}

/* ---- packing: examples of chosen lengths against a small window; padding where one would
 * straddle, none where it fits, an example of exactly seq_len + 1 tokens, then the split. */

/* A prompt/response example of exactly len tokens: 28 template tokens + prompt + response. */
static int template_tokens(void) { return (int)(strlen(USER "\n" ASSISTANT) + 2); } /* + EOT + "\n" */
static void add_example(FILE *f, want_ex *w, char (*pbuf)[64], char (*rbuf)[64], int i, int len)
{
    int body = len - 28, plen = body / 2, rlen = body - plen;
    for (int k = 0; k < plen; k++) pbuf[i][k] = (char)('a' + (i + k) % 26);
    pbuf[i][plen] = 0;
    for (int k = 0; k < rlen; k++) rbuf[i][k] = (char)('A' + (i * 7 + k) % 26);
    rbuf[i][rlen] = 0;
    fprintf(f, "{\"prompt\": \"%s\", \"response\": \"%s\"}\n", pbuf[i], rbuf[i]);
    want_ex e = {{{USER, 0}, {pbuf[i], 0}, {"\n", 0}, {ASSISTANT, 0}, {rbuf[i], 1}, {EOT, 1}, {"\n", 0}}};
    w[i] = e;
}

static void test_packing(void)
{
    char err[ERRLEN];
    const int T = 64; /* windows of 65 tokens */
    enum { N = 10 };
    /* tokens per example (29 at least): 30 + 35 fill window 0 end to end; 30 fits in window 1
     * after the shared token; 40 would straddle (padded to 128); 65 = T + 1 exactly (padded to
     * 192, ends at 256); 29 starts just after it; 60 straddles; ... */
    const int lens[N] = {30, 35, 30, 40, 65, 29, 60, 33, 45, 50};
    static char pbuf[N][64], rbuf[N][64];
    want_ex w[N];
    const char *src = ct_test_path("pack.jsonl");
    FILE *f = fopen(src, "wb");
    for (int i = 0; i < N; i++) add_example(f, w, pbuf, rbuf, i, lens[i]);
    fclose(f);

    const double fracs[3] = {0.2, 0.01, 0.99};
    const int nvals[3] = {2, 1, N - 1};
    for (int k = 0; k < 3; k++) {
        char trb[64], vab[64];
        snprintf(trb, sizeof trb, "pack_train%d.h5", k);
        snprintf(vab, sizeof vab, "pack_val%d.h5", k);
        char tr[512], va[512];
        snprintf(tr, sizeof tr, "%s", ct_test_path(trb));
        snprintf(va, sizeof va, "%s", ct_test_path(vab));
        int rc = prepare(src, tr, va, fracs[k], T, err);
        CHECK(rc == 0);
        if (rc) {
            fprintf(stderr, "  %s\n", err);
            continue;
        }
        size_t pad = check_part(tr, w, N - nvals[k], T);
        check_part(va, w + N - nvals[k], nvals[k], T);
        if (k == 0 && strcmp(opts.packing, "none")) { /* the rule's outcome worked by hand, not only by the formula above */
            const uint64_t want_tr[8] = {0, 30, 65, 128, 192, 257, 320, 384}, want_va[2] = {0, 64};
            uint64_t docs[8];
            CHECK(h5_doc_offsets(tr, docs, 8) == 8 && memcmp(docs, want_tr, sizeof want_tr) == 0);
            CHECK(h5_doc_offsets(va, docs, 8) == 2 && memcmp(docs, want_va, sizeof want_va) == 0);
            CHECK(pad == 449 - 322); /* 449 tokens (7 windows + 1), 322 of them examples */
        }
    }

    /* one token more than a window holds: an error naming the line and both sizes */
    const char *big = ct_test_path("pack_big.jsonl");
    f = fopen(big, "wb");
    add_example(f, w, pbuf, rbuf, 0, 30);
    add_example(f, w, pbuf, rbuf, 1, 66);
    fclose(f);
    CHECK(prepare(big, ct_test_path("big_t.h5"), ct_test_path("big_v.h5"), 0.5, T, err) == -1);
    CHECK(strstr(err, big) && strstr(err, "line 2: example of 66 tokens does not fit data.seq_len + 1 = 65 tokens"));
    printf("  expected error: %s\n", err);
    CHECK(access(ct_test_path("big_t.h5"), F_OK) != 0 && access(ct_test_path("big_v.h5"), F_OK) != 0);
}

/* ---- the loader on a written file: targets -1 exactly where the target's mask is 0, and each
 * learned token is a target exactly once over the windows of an epoch. */
static void test_loader(void)
{
    char err[ERRLEN];
    const int T = 64;
    const char *p = ct_test_path("pack_train0.h5"); /* from test_packing */
    ct_dataset *ds = NULL;
    CHECK(ct_dataset_open(&ds, p, err, ERRLEN) == 0);
    if (!ds) return;
    size_t n = ct_dataset_len(ds);
    uint32_t *tok = malloc(n * sizeof *tok);
    uint8_t *mask = malloc(n);
    CHECK(ct_dataset_read(ds, 0, n, tok, mask, err, ERRLEN) == 0);
    ct_dataset_close(ds);
    size_t learned = 0;
    for (size_t i = 0; i < n; i++) learned += mask[i];

    ct_loader_opts o = {p, T, 1, 1, 0, 1, 5, 0, CT_TOK_BYTES_VOCAB};
    ct_loader *l = NULL;
    CHECK(ct_loader_init(&l, &o, err, ERRLEN) == 0);
    if (!l) {
        fprintf(stderr, "  %s\n", err);
        free(tok);
        free(mask);
        return;
    }
    CHECK(ct_loader_windows(l) == (n - 1) / T);
    int32_t x[64], y[64];
    size_t wrong = 0, counted = 0;
    for (uint64_t w = 0; w < ct_loader_windows(l); w++) {
        CHECK(ct_loader_next(l, x, y, NULL, err, ERRLEN) == 0);
        for (int t = 0; t < T; t++) {
            size_t at = (size_t)w * T + (size_t)t + 1; /* the target's position */
            int32_t want = mask[at] ? (int32_t)tok[at] : -1;
            wrong += y[t] != want || x[t] != (int32_t)tok[at - 1];
            counted += y[t] != -1;
        }
    }
    CHECK(wrong == 0);
    CHECK(counted == learned && learned > 0);
    ct_loader_free(l);
    free(tok);
    free(mask);
}

/* ---- errors: each names the file, the line and the field; nothing is written */
static int nbad;

static void expect_error(const char *jsonl, double frac, int T, const char *s1, const char *s2)
{
    char err[ERRLEN], name[64];
    snprintf(name, sizeof name, "bad%d.jsonl", nbad++);
    char src[512], tr[512], va[512];
    snprintf(src, sizeof src, "%s", ct_test_path(name));
    snprintf(tr, sizeof tr, "%s", ct_test_path("bad_train.h5"));
    snprintf(va, sizeof va, "%s", ct_test_path("bad_val.h5"));
    if (jsonl) write_file(src, jsonl);
    err[0] = 0;
    int rc = prepare(src, tr, va, frac, T, err);
    int ok = rc == -1 && strstr(err, src) && strstr(err, s1) && (!s2 || strstr(err, s2));
    CHECK(ok);
    if (ok) printf("  expected error: %s\n", err);
    else fprintf(stderr, "  rc %d, message \"%s\", wanted \"%s\" and \"%s\"\n", rc, err, s1, s2 ? s2 : "");
    CHECK(access(tr, F_OK) != 0 && access(va, F_OK) != 0);
    CHECK(access(ct_test_path("bad_train.h5.tmp"), F_OK) != 0);
}

#define GOOD "{\"prompt\": \"p\", \"response\": \"r\"}\n"

static void test_errors(void)
{
    expect_error(NULL, 0.5, 64, "cannot open", "No such file"); /* missing */
    expect_error("", 0.5, 64, "empty file", NULL);
    expect_error("\n  \n\t\n", 0.5, 64, "0 examples", "at least 2");
    expect_error(GOOD, 0.5, 64, "1 example;", "at least 2");
    /* malformed JSON: line and column (of the '}' where a value should be: column 28) */
    expect_error(GOOD "\n{\"prompt\": \"a\", \"response\": }\n", 0.5, 64, "line 3, column 29", "malformed JSON");
    expect_error(GOOD GOOD "{\"prompt\": \"a\", \"response\": \"b\"} x\n", 0.5, 64, "line 3, column 34",
                 "malformed JSON");
    expect_error(GOOD "{\"prompt\": \"a\n", 0.5, 64, "line 2, column", "malformed JSON");
    /* not an object */
    expect_error(GOOD "[\"prompt\", \"response\"]\n", 0.5, 64, "line 2: example is an array", "must be an object");
    expect_error(GOOD "\"hello\"\n", 0.5, 64, "line 2: example is a string", NULL);
    /* neither form, both forms */
    expect_error(GOOD "{\"text\": \"hi\"}\n", 0.5, 64, "line 2: prompt/response or messages: neither", NULL);
    expect_error(GOOD "{\"prompt\": \"a\", \"messages\": []}\n", 0.5, 64, "line 2: messages: given together with prompt",
                 NULL);
    /* wrong types, missing fields */
    expect_error(GOOD "{\"prompt\": 5, \"response\": \"x\"}\n", 0.5, 64, "line 2: prompt: is a number",
                 "must be a string");
    expect_error(GOOD "{\"prompt\": \"a\", \"response\": [\"x\"]}\n", 0.5, 64, "line 2: response: is an array", NULL);
    expect_error(GOOD "{\"prompt\": \"a\"}\n", 0.5, 64, "line 2: response: missing", NULL);
    expect_error(GOOD "{\"response\": \"a\"}\n", 0.5, 64, "line 2: prompt: missing", NULL);
    expect_error(GOOD "{\"messages\": {\"role\": \"user\"}}\n", 0.5, 64, "line 2: messages: is an object",
                 "must be an array");
    expect_error(GOOD "{\"messages\": [\"hi\"]}\n", 0.5, 64, "line 2: messages[0]: is a string", NULL);
    expect_error(GOOD "{\"messages\": [{\"role\": \"user\", \"content\": \"a\"}, {\"content\": \"b\"}]}\n", 0.5, 64,
                 "line 2: messages[1].role: missing", NULL);
    expect_error(GOOD "{\"messages\": [{\"role\": \"user\"}]}\n", 0.5, 64, "line 2: messages[0].content: missing",
                 NULL);
    expect_error(GOOD "{\"messages\": [{\"role\": \"user\", \"content\": null}]}\n", 0.5, 64,
                 "line 2: messages[0].content: is null", NULL);
    expect_error(GOOD "{\"messages\": [{\"role\": 1, \"content\": \"a\"}]}\n", 0.5, 64,
                 "line 2: messages[0].role: is a number", NULL);
    expect_error(GOOD "{\"messages\": [{\"role\": \"user\", \"content\": \"a\"}, {\"role\": \"bot\", \"content\": "
                      "\"b\"}]}\n",
                 0.5, 64, "line 2: messages[1].role: unknown role \"bot\"", "system, user or assistant");
    /* nothing to learn */
    expect_error(GOOD "{\"prompt\": \"a\", \"response\": \"\"}\n", 0.5, 64, "line 2: response: empty", NULL);
    expect_error(GOOD "{\"messages\": [{\"role\": \"user\", \"content\": \"a\"}]}\n", 0.5, 64, "line 2: messages: no assistant turn with text",
                 "assistant");
    expect_error(GOOD "{\"messages\": []}\n", 0.5, 64, "line 2: messages: no assistant turn with text", "assistant");
    /* a NUL: as an escape cJSON would silently cut at */
    expect_error(GOOD "{\"prompt\": \"a\", \"response\": \"b\\u0000c\"}\n", 0.5, 64, "line 2: response: holds", "\\u0000");
    expect_error(GOOD "{\"messages\": [{\"role\": \"user\", \"content\": \"a\"}, {\"role\": \"assistant\", \"content\": "
                      "\"b\\u0000\"}]}\n",
                 0.5, 64, "line 2: messages[1].content: holds", "\\u0000");
    /* a key given twice: cJSON would read the first response and drop the second without a word */
    expect_error(GOOD "{\"prompt\": \"a\", \"response\": \"b\", \"response\": \"c\"}\n", 0.5, 64,
                 "line 2: response: key given twice", NULL);
    expect_error(GOOD "{\"messages\": [{\"role\": \"user\", \"role\": \"assistant\", \"content\": \"a\"}]}\n", 0.5, 64,
                 "line 2: messages[0].role: key given twice", NULL);
    /* a late bad line still stops everything (nothing written): line 3 after a blank line 2 */
    expect_error(GOOD "\n{\"prompt\": \"a\", \"response\": \"much too long for the window\"}\n", 0.5, 40,
                 "line 3: example of 57 tokens does not fit data.seq_len + 1 = 41 tokens", NULL);
    /* arguments */
    expect_error(GOOD GOOD, 0.0, 64, "val_fraction 0", NULL);
    expect_error(GOOD GOOD, 1.0, 64, "val_fraction 1", NULL);
    expect_error(GOOD GOOD, 0.5, 0, "data.seq_len 0", NULL);

    char err[ERRLEN];
    const char *src = ct_test_path("same.jsonl");
    write_file(src, GOOD GOOD);
    CHECK(prepare(src, ct_test_path("same.h5"), ct_test_path("same.h5"), 0.5, 64, err) == -1);
    CHECK(strstr(err, "same") != NULL && access(ct_test_path("same.h5"), F_OK) != 0);
}

int main(void)
{
    ct_test_dir_create("ct_test_sft");
    char err[ERRLEN];
    ct_chat_template *plain = NULL;
    CHECK(ct_chat_template_load(&plain, "", "plain", ct_tokenizer_bytes(), err, ERRLEN) == 0);
    if (!plain) {
        fprintf(stderr, "  %s\n", err);
        return ct_test_finish("test_sft");
    }
    opts = (ct_sft_opts){ct_tokenizer_bytes(), plain, 0, "masked"};
    CHECK(template_tokens() == 28);
    test_roundtrip();
    test_packing();
    test_loader();
    test_errors();
    /* the other packings and train_on_prompt: the same examples, placed and masked as they say */
    const char *modes[2] = {"plain", "none"};
    for (int i = 0; i < 2; i++) {
        opts.packing = modes[i];
        test_roundtrip();
        test_packing();
    }
    opts.packing = "masked";
    opts.train_on_prompt = 1;
    test_roundtrip();
    opts.train_on_prompt = 0;
    opts.packing = "tight";
    expect_error(GOOD GOOD, 0.5, 64, "data.packing \"tight\": must be masked, plain or none", NULL);
    ct_chat_template_free(plain);
    ct_test_dir_remove();
    return ct_test_finish("test_sft");
}
