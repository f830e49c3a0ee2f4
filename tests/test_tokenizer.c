/* test_tokenizer.c — tokenizer.json (data/tokenizer*.c) on small hand-written files: a BPE that
 * merges as expected, added tokens, the post-processor and decoders; then bad input: missing,
 * malformed and truncated files, merges naming tokens outside the vocabulary, unsupported
 * components (errors name the file and the component), invalid UTF-8, ids outside the vocabulary;
 * several threads encoding with one tokenizer; and a fuzz-style loop (random bytes to the encoder,
 * random mutations of a tokenizer.json to the loader) that must never crash. Built twice: plain
 * and under ASan/UBSan. */
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "check.h"
#include "data.h"

/* A SentencePiece-style BPE: Metaspace, byte fallback for two bytes, <unk>, <s> template, the
 * Llama decoder chain. */
static const char SP_JSON[] =
    "{\"version\":\"1.0\",\"truncation\":null,\"padding\":null,"
    "\"added_tokens\":[{\"id\":0,\"content\":\"<unk>\",\"single_word\":false,\"lstrip\":false,\"rstrip\":false,"
    "\"normalized\":false,\"special\":true},{\"id\":1,\"content\":\"<s>\",\"single_word\":false,\"lstrip\":false,"
    "\"rstrip\":false,\"normalized\":false,\"special\":true}],"
    "\"normalizer\":null,"
    "\"pre_tokenizer\":{\"type\":\"Metaspace\",\"replacement\":\"\\u2581\",\"prepend_scheme\":\"first\",\"split\":false},"
    "\"post_processor\":{\"type\":\"TemplateProcessing\",\"single\":[{\"SpecialToken\":{\"id\":\"<s>\",\"type_id\":0}},"
    "{\"Sequence\":{\"id\":\"A\",\"type_id\":0}}],\"pair\":[],\"special_tokens\":{\"<s>\":{\"id\":\"<s>\",\"ids\":[1],"
    "\"tokens\":[\"<s>\"]}}},"
    "\"decoder\":{\"type\":\"Sequence\",\"decoders\":[{\"type\":\"Replace\",\"pattern\":{\"String\":\"\\u2581\"},"
    "\"content\":\" \"},{\"type\":\"ByteFallback\"},{\"type\":\"Fuse\"},{\"type\":\"Strip\",\"content\":\" \","
    "\"start\":1,\"stop\":0}]},"
    "\"model\":{\"type\":\"BPE\",\"dropout\":null,\"unk_token\":\"<unk>\",\"continuing_subword_prefix\":null,"
    "\"end_of_word_suffix\":null,\"fuse_unk\":true,\"byte_fallback\":true,\"ignore_merges\":false,"
    "\"vocab\":{\"<unk>\":0,\"<s>\":1,\"\\u2581\":2,\"a\":3,\"b\":4,\"ab\":5,\"\\u2581ab\":6,\"<0xC3>\":7,\"<0xA9>\":8},"
    "\"merges\":[\"a b\",\"\\u2581 ab\"]}}";

/* Byte-level with a Split and NFC, for the fuzz loop's mutations. */
static const char BL_JSON[] =
    "{\"added_tokens\":[{\"id\":6,\"content\":\"<|x|>\",\"single_word\":false,\"lstrip\":true,\"rstrip\":false,"
    "\"normalized\":false,\"special\":true}],"
    "\"normalizer\":{\"type\":\"Sequence\",\"normalizers\":[{\"type\":\"NFC\"},{\"type\":\"Replace\",\"pattern\":"
    "{\"Regex\":\"\\\\d+\"},\"content\":\"0\"}]},"
    "\"pre_tokenizer\":{\"type\":\"Sequence\",\"pretokenizers\":[{\"type\":\"Split\",\"pattern\":{\"Regex\":"
    "\"\\\\s+|\\\\p{L}+\"},\"behavior\":\"Isolated\",\"invert\":false},{\"type\":\"Digits\",\"individual_digits\":true},"
    "{\"type\":\"ByteLevel\",\"add_prefix_space\":false,\"trim_offsets\":true,\"use_regex\":false}]},"
    "\"post_processor\":{\"type\":\"ByteLevel\",\"add_prefix_space\":false,\"trim_offsets\":false,\"use_regex\":false},\"decoder\":{\"type\":\"ByteLevel\",\"add_prefix_space\":false,\"trim_offsets\":false,\"use_regex\":false},"
    "\"model\":{\"type\":\"BPE\",\"ignore_merges\":true,\"vocab\":{\"a\":0,\"b\":1,\"ab\":2,\"\\u0120\":3,"
    "\"\\u0120a\":4,\"0\":5},\"merges\":[\"a b\",\"\\u0120 a\"]}}";

static const char *write_file(const char *name, const char *text, size_t n)
{
    const char *p = ct_test_path(name);
    FILE *f = fopen(p, "wb");
    if (!f || fwrite(text, 1, n, f) != n) {
        perror(p);
        exit(2);
    }
    fclose(f);
    return p;
}

static long enc(const ct_tokenizer *t, const char *s, int special, int32_t **ids, size_t *cap, char *err)
{
    return ct_tokenizer_encode(t, s, strlen(s), special, ids, cap, err, 512);
}

static int ids_eq(const int32_t *a, long n, const int32_t *b, long m)
{
    return n == m && (n == 0 || !memcmp(a, b, (size_t)n * sizeof *a));
}

static void test_good(void)
{
    char err[512] = "";
    ct_tokenizer *t = NULL;
    CHECK(ct_tokenizer_load(&t, write_file("sp.json", SP_JSON, sizeof SP_JSON - 1), err, sizeof err) == 0);
    if (!t) {
        fprintf(stderr, "load: %s\n", err);
        return;
    }
    CHECK(ct_tokenizer_vocab_size(t) == 9);
    CHECK(ct_tokenizer_id(t, "<s>") == 1 && ct_tokenizer_id(t, "ab") == 5 && ct_tokenizer_id(t, "zz") == -1);
    int32_t *ids = NULL;
    size_t cap = 0;
    /* "ab ab" -> ▁ab▁ab: ▁ab, ▁ab; é: byte fallback; z and q: fused unk */
    long n = enc(t, "ab ab\xC3\xA9zq", 1, &ids, &cap, err);
    int32_t want[] = {1, 6, 6, 7, 8, 0};
    CHECK(ids_eq(ids, n, want, 6));
    n = enc(t, "ab ab\xC3\xA9zq", 0, &ids, &cap, err);
    CHECK(ids_eq(ids, n, want + 1, 5));
    char *s = ct_tokenizer_decode(t, want, 6, 1, err, sizeof err);
    CHECK(s && !strcmp(s, "ab ab\xC3\xA9")); /* <unk> is special */
    free(s);
    s = ct_tokenizer_decode(t, want, 6, 0, err, sizeof err);
    CHECK(s && !strcmp(s, "<s> ab ab\xC3\xA9<unk>")); /* Fuse, then Strip the whole */
    free(s);
    /* the special token inside text, and an empty text */
    n = enc(t, "ab<s>ab", 0, &ids, &cap, err);
    int32_t want2[] = {6, 1, 5}; /* no ▁ after <s>: prepend_scheme first */
    CHECK(ids_eq(ids, n, want2, 3));
    CHECK(enc(t, "", 1, &ids, &cap, err) == 1 && ids[0] == 1);
    /* invalid UTF-8: refused with the offset */
    CHECK(ct_tokenizer_encode(t, "ab\xC3(", 4, 0, &ids, &cap, err, sizeof err) == -1);
    CHECK(strstr(err, "invalid UTF-8 at byte 2") != NULL);
    /* ids outside the vocabulary */
    int32_t bad[] = {3, 9};
    CHECK(ct_tokenizer_decode(t, bad, 2, 0, err, sizeof err) == NULL && strstr(err, "id 9") != NULL);
    bad[1] = -1;
    CHECK(ct_tokenizer_decode(t, bad, 2, 0, err, sizeof err) == NULL && strstr(err, "id -1") != NULL);
    /* the digest names the file's bytes */
    ct_tokenizer *t2 = NULL;
    CHECK(ct_tokenizer_load(&t2, ct_test_path("sp.json"), err, sizeof err) == 0);
    if (t2) CHECK(ct_tokenizer_digest(t2) == ct_tokenizer_digest(t));
    ct_tokenizer_free(t2);
    free(ids);
    ct_tokenizer_free(t);
}

/* A folder with tokenizer_config.json: LlamaTokenizerFast's add_eos_token rebuilds the template. */
static void test_folder(void)
{
    char err[512] = "", dir[600];
    snprintf(dir, sizeof dir, "%s/folder", ct_test_dir);
    mkdir(dir, 0755);
    write_file("folder/tokenizer.json", SP_JSON, sizeof SP_JSON - 1);
    const char cfg[] = "{\"tokenizer_class\":\"LlamaTokenizerFast\",\"add_bos_token\":false,\"add_eos_token\":true,"
                       "\"eos_token\":{\"content\":\"<unk>\"}}";
    write_file("folder/tokenizer_config.json", cfg, sizeof cfg - 1);
    ct_tokenizer *t = NULL, *f = NULL;
    CHECK(ct_tokenizer_load(&t, dir, err, sizeof err) == 0);
    CHECK(ct_tokenizer_load(&f, ct_test_path("folder/tokenizer.json"), err, sizeof err) == 0);
    if (t && f) {
        int32_t *ids = NULL;
        size_t cap = 0;
        long n = enc(t, "ab", 1, &ids, &cap, err);
        CHECK(n == 2 && ids[0] == 6 && ids[1] == 0);
        CHECK(ct_tokenizer_digest(t) != ct_tokenizer_digest(f));
        free(ids);
    }
    ct_tokenizer_free(t), ct_tokenizer_free(f);
    const char bad[] = "{\"tokenizer_class\":\"LlamaTokenizer\",\"add_bos_token\":true,\"bos_token\":\"<nope>\"}";
    write_file("folder/tokenizer_config.json", bad, sizeof bad - 1);
    CHECK(ct_tokenizer_load(&t, dir, err, sizeof err) == -1 && strstr(err, "tokenizer_config.json: bos_token"));
    /* a key given twice (cJSON reads the first), a NUL in a token's name */
    const char dup[] = "{\"tokenizer_class\":\"LlamaTokenizerFast\",\"add_bos_token\":false,\"add_bos_token\":true}";
    write_file("folder/tokenizer_config.json", dup, sizeof dup - 1);
    CHECK(ct_tokenizer_load(&t, dir, err, sizeof err) == -1 &&
          strstr(err, "tokenizer_config.json: add_bos_token: key given twice"));
    const char nul[] = "{\"eos_token\":\"<unk>\\u0000\"}";
    write_file("folder/tokenizer_config.json", nul, sizeof nul - 1);
    CHECK(ct_tokenizer_load(&t, dir, err, sizeof err) == -1 && strstr(err, "tokenizer_config.json: eos_token: holds \\u0000"));
    unlink(ct_test_path("folder/tokenizer_config.json"));
    unlink(ct_test_path("folder/tokenizer.json"));
    rmdir(dir);
}

/* SP_JSON with `from` replaced by `to` must fail to load with an error holding each of want. */
static void expect_error(const char *from, const char *to, const char *want1, const char *want2)
{
    const char *at = strstr(SP_JSON, from);
    if (!at) {
        fprintf(stderr, "expect_error: \"%s\" not in SP_JSON\n", from);
        CHECK(0);
        return;
    }
    size_t n = sizeof SP_JSON - 1 - strlen(from) + strlen(to);
    char *j = malloc(n + 1);
    size_t pre = (size_t)(at - SP_JSON);
    memcpy(j, SP_JSON, pre);
    strcpy(j + pre, to);
    strcat(j, at + strlen(from));
    const char *path = write_file("bad.json", j, n);
    char err[512] = "";
    ct_tokenizer *t = NULL;
    int rc = ct_tokenizer_load(&t, path, err, sizeof err);
    if (rc != -1 || !strstr(err, "bad.json") || !strstr(err, want1) || (want2 && !strstr(err, want2))) {
        fprintf(stderr, "expect_error(%s -> %s): rc %d, err \"%s\"\n", from, to, rc, err);
        CHECK(0);
    }
    ct_tokenizer_free(t);
    free(j);
}

static void test_bad(void)
{
    char err[512] = "";
    ct_tokenizer *t = NULL;
    CHECK(ct_tokenizer_load(&t, ct_test_path("missing.json"), err, sizeof err) == -1 && strstr(err, "missing.json"));
    /* truncated at every tenth byte */
    for (size_t cut = 0; cut < sizeof SP_JSON - 1; cut += 10) {
        const char *p = write_file("cut.json", SP_JSON, cut);
        int rc = ct_tokenizer_load(&t, p, err, sizeof err);
        CHECK(rc == -1 && strstr(err, "cut.json"));
        if (!rc) ct_tokenizer_free(t);
    }
    expect_error("\"a b\"", "\"a c\"", "merges[0]", "right token not in the vocabulary");
    expect_error("\"\\u2581 ab\"", "\"\\u2581ab\"", "merges[1]", "is not \"a b\"");
    expect_error("\"type\":\"BPE\"", "\"type\":\"WordPiece\"", "model", "WordPiece");
    expect_error("\"normalizer\":null", "\"normalizer\":{\"type\":\"Lowercase\"}", "normalizer", "Lowercase");
    expect_error("\"type\":\"Metaspace\"", "\"type\":\"Whitespace\"", "pre_tokenizer", "Whitespace");
    expect_error("\"type\":\"Fuse\"", "\"type\":\"CTC\"", "decoder", "CTC");
    expect_error("\"type\":\"TemplateProcessing\"", "\"type\":\"BertProcessing\"", "post_processor", "BertProcessing");
    expect_error("\"continuing_subword_prefix\":null", "\"continuing_subword_prefix\":\"##\"", "continuing_subword_prefix", NULL);
    expect_error("\"dropout\":null", "\"dropout\":0.1", "dropout", NULL);
    expect_error("\"truncation\":null", "\"truncation\":{\"max_length\":5}", "truncation", NULL);
    expect_error("\"unk_token\":\"<unk>\"", "\"unk_token\":\"<nope>\"", "unk_token", NULL);
    expect_error("\"ids\":[1]", "\"ids\":[99]", "TemplateProcessing", NULL);
    expect_error("\"prepend_scheme\":\"first\"", "\"prepend_scheme\":\"sometimes\"", "prepend_scheme", NULL);
    expect_error("\"String\":\"\\u2581\"", "\"Regex\":\"(\"", "decoder Replace", "pattern");
    expect_error("\"ab\":5", "\"ab\":-5", "vocab", NULL);
    /* what cJSON lets through: a key given twice (it reads the first: no normalizer here), a NUL
     * that cuts a token short ("a\u0000b" would be "a") */
    expect_error("\"normalizer\":null", "\"normalizer\":null,\"normalizer\":{\"type\":\"NFC\"}", "bad.json: normalizer: key given twice",
                 NULL);
    expect_error("\"a\":3", "\"a\":3,\"a\":3", "bad.json: model.vocab.a: key given twice", NULL);
    expect_error("\"ab\":5", "\"a\\u0000b\":5", "bad.json: model.vocab.a: the key holds \\u0000", NULL);
    expect_error("\"content\":\"<s>\"", "\"content\":\"<s>\\u0000\"", "bad.json: added_tokens[1].content: holds \\u0000",
                 NULL);
}

/* ---- several threads, one tokenizer */
typedef struct {
    const ct_tokenizer *t;
    const char *text;
    int32_t *ids;
    long n;
} job;

static void *encode_job(void *arg)
{
    job *j = arg;
    char err[256];
    size_t cap = 0;
    for (int r = 0; r < 50; r++) j->n = ct_tokenizer_encode(j->t, j->text, strlen(j->text), 1, &j->ids, &cap, err, sizeof err);
    return NULL;
}

static void test_threads(void)
{
    char err[512];
    ct_tokenizer *t = NULL;
    CHECK(ct_tokenizer_load(&t, write_file("bl.json", BL_JSON, sizeof BL_JSON - 1), err, sizeof err) == 0);
    if (!t) {
        fprintf(stderr, "load: %s\n", err);
        return;
    }
    const char *text = "ab ab 123 <|x|> abab\tab  aba\xC3\xA9";
    job jobs[4];
    pthread_t th[4];
    for (int i = 0; i < 4; i++) {
        jobs[i] = (job){t, text, NULL, 0};
        pthread_create(&th[i], NULL, encode_job, &jobs[i]);
    }
    for (int i = 0; i < 4; i++) pthread_join(th[i], NULL);
    int32_t want[] = {2, 3, 2, 3, 5, 6, 3, 2, 2, 2, 3, 3, 2, 0}; /* tokenizers 0.23 */
    CHECK(ids_eq(jobs[0].ids, jobs[0].n, want, 14));
    for (int i = 1; i < 4; i++) CHECK(ids_eq(jobs[i].ids, jobs[i].n, jobs[0].ids, jobs[0].n));
    for (int i = 0; i < 4; i++) free(jobs[i].ids);
    ct_tokenizer_free(t);
}

/* ---- fuzz: never crash, and a failure always says why */
static void fuzz_encode(const ct_tokenizer *t, uint64_t *rng, int rounds)
{
    static const char *pieces[] = {"a", "b", "ab", " ", "  ", "\t", "\r\n", "1", "2024", "<|x|>", "<s>", "<unk>",
                                   "\xC3\xA9", "e\xCC\x81", "\xE2\x96\x81", "\xF0\x9F\x91\xA9\xE2\x80\x8D\xF0\x9F\x91\xA7",
                                   "\xFF", "\xC3", "\xED\xA0\x80", "\x00"};
    int npieces = (int)(sizeof pieces / sizeof *pieces);
    char text[512];
    int32_t *ids = NULL;
    size_t cap = 0;
    char err[512];
    for (int r = 0; r < rounds; r++) {
        size_t n = 0;
        int k = (int)(ct_test_rand_u64(rng) % 24);
        for (int i = 0; i < k; i++) {
            if (ct_test_rand_u64(rng) % 4 == 0) text[n++] = (char)(ct_test_rand_u64(rng) & 0xFF);
            else {
                const char *p = pieces[ct_test_rand_u64(rng) % (uint64_t)npieces];
                size_t pl = p[0] ? strlen(p) : 1;
                memcpy(text + n, p, pl);
                n += pl;
            }
        }
        err[0] = 0;
        long m = ct_tokenizer_encode(t, text, n, (int)(r & 1), &ids, &cap, err, sizeof err);
        CHECK(m >= 0 || err[0]);
        if (m > 0) {
            char *s = ct_tokenizer_decode(t, ids, (size_t)m, (int)(r & 2), err, sizeof err);
            CHECK(s != NULL);
            free(s);
        }
        int32_t rid[8];
        for (int i = 0; i < 8; i++) rid[i] = (int32_t)(ct_test_rand_u64(rng) % 12) - 1;
        char *s = ct_tokenizer_decode(t, rid, 8, 0, err, sizeof err);
        free(s);
    }
    free(ids);
}

static void test_fuzz(void)
{
    uint64_t rng = 42;
    char err[512];
    const char *srcs[2] = {SP_JSON, BL_JSON};
    size_t lens[2] = {sizeof SP_JSON - 1, sizeof BL_JSON - 1};
    for (int s = 0; s < 2; s++) {
        ct_tokenizer *t = NULL;
        CHECK(ct_tokenizer_load(&t, write_file("f.json", srcs[s], lens[s]), err, sizeof err) == 0);
        if (t) fuzz_encode(t, &rng, 3000);
        ct_tokenizer_free(t);
    }
    /* mutated files: flip, delete or insert bytes (JSON punctuation and digits are likelier) */
    static const char alphabet[] = "{}[]\":,0123456789-. abtrue\\u2581nullfalse";
    char *buf = malloc(lens[0] + lens[1] + 64);
    int loaded = 0, rounds = getenv("CT_FUZZ_ROUNDS") ? atoi(getenv("CT_FUZZ_ROUNDS")) : 1500;
    for (int r = 0; r < rounds; r++) {
        int s = r & 1;
        size_t n = lens[s];
        memcpy(buf, srcs[s], n);
        int muts = 1 + (int)(ct_test_rand_u64(&rng) % 4);
        for (int m = 0; m < muts && n > 1; m++) {
            size_t at = ct_test_rand_u64(&rng) % n;
            char c = ct_test_rand_u64(&rng) % 3 ? alphabet[ct_test_rand_u64(&rng) % (sizeof alphabet - 1)]
                                               : (char)(ct_test_rand_u64(&rng) & 0xFF);
            switch (ct_test_rand_u64(&rng) % 3) {
            case 0: buf[at] = c; break;
            case 1: memmove(buf + at, buf + at + 1, n - at - 1), n--; break;
            default: memmove(buf + at + 1, buf + at, n - at), buf[at] = c, n++; break;
            }
        }
        ct_tokenizer *t = NULL;
        err[0] = 0;
        int rc = ct_tokenizer_load(&t, write_file("m.json", buf, n), err, sizeof err);
        CHECK(rc == 0 || (err[0] && strstr(err, "m.json")));
        if (!rc) {
            loaded++;
            fuzz_encode(t, &rng, 20);
            ct_tokenizer_free(t);
        }
    }
    printf("fuzz: %d of %d mutated files loaded (CT_FUZZ_ROUNDS sets the count)\n", loaded, rounds);
    free(buf);
}

int main(void)
{
    ct_test_dir_create("ct_test_tokenizer");
    test_good();
    test_folder();
    test_bad();
    test_threads();
    test_fuzz();
    ct_test_dir_remove();
    return ct_test_finish("test_tokenizer");
}
