/* test_watch.c — the pieces of watching a run:
 *   - crc32c against published vectors (the check value of "123456789", RFC 3720's iSCSI
 *     vectors) and TFRecord's masked form and framing against bytes TensorBoard's own
 *     RecordWriter wrote; damaged and cut records are refused;
 *   - Event encoding against bytes protobuf serialised (tensorboard.compat.proto.event_pb2);
 *   - a run directory's event files on resume: steps after the resumed one dropped (rewritten),
 *     files with nothing left removed, a damaged tail cut, other programs' files untouched, the
 *     new file sorting after the old ones and starting with file_version and a SessionLog START;
 *   - the peak table MFU uses, MFU itself, and this process's peak memory. */
#include <errno.h>
#include <signal.h>
#include <sys/resource.h>
#include <sys/stat.h>

#include "check.h"
#include "tfevents.h"
#include "watch.h"

static uint8_t *slurp(const char *path, size_t *n)
{
    FILE *f = fopen(path, "rb");
    if (!f) return NULL;
    fseek(f, 0, SEEK_END);
    long len = ftell(f);
    fseek(f, 0, SEEK_SET);
    uint8_t *b = malloc(len ? (size_t)len : 1);
    *n = b ? fread(b, 1, (size_t)len, f) : 0;
    fclose(f);
    return b;
}

static void test_crc(void)
{
    CHECK(ct_crc32c("123456789", 9) == 0xE3069283u); /* the CRC catalogue's check value */
    uint8_t v[32];
    memset(v, 0, sizeof v);
    CHECK(ct_crc32c(v, 32) == 0x8A9136AAu); /* RFC 3720, B.4: 32 bytes of zeros */
    memset(v, 0xFF, sizeof v);
    CHECK(ct_crc32c(v, 32) == 0x62A8AB43u); /* 32 bytes of ones */
    for (int i = 0; i < 32; i++) v[i] = (uint8_t)i;
    CHECK(ct_crc32c(v, 32) == 0x46DD794Eu); /* incrementing */
    for (int i = 0; i < 32; i++) v[i] = (uint8_t)(31 - i);
    CHECK(ct_crc32c(v, 32) == 0x113FDB5Cu); /* decrementing */
    CHECK(ct_crc32c("", 0) == 0);

    /* TensorBoard's RecordWriter on b"hello" */
    static const uint8_t want[] = {0x05, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0xea, 0xb2, 0x04,
                                   0x3e, 0x68, 0x65, 0x6c, 0x6c, 0x6f, 0xbb, 0x1f, 0x1c, 0x19};
    uint8_t rec[64];
    CHECK(ct_tfrecord_frame(rec, "hello", 5) == sizeof want && !memcmp(rec, want, sizeof want));
    size_t pos = 0, n;
    const uint8_t *data;
    CHECK(ct_tfrecord_next(rec, sizeof want, &pos, &data, &n) == 1 && n == 5 && !memcmp(data, "hello", 5) &&
          pos == sizeof want);
    CHECK(ct_tfrecord_next(rec, sizeof want, &pos, &data, &n) == 0);
    for (size_t cut = 1; cut < sizeof want; cut++) { /* every cut is refused, never read past */
        pos = 0;
        CHECK(ct_tfrecord_next(rec, cut, &pos, &data, &n) == -1 && pos == 0);
    }
    for (size_t i = 0; i < sizeof want; i++) { /* every flipped byte is refused */
        memcpy(rec, want, sizeof want);
        rec[i] ^= 0x10;
        pos = 0;
        CHECK(ct_tfrecord_next(rec, sizeof want, &pos, &data, &n) == -1);
    }
    /* a length that would run past the buffer, with a valid length checksum */
    memset(rec, 0, sizeof rec);
    rec[0] = 0xff, rec[7] = 0x7f;
    uint32_t c = ct_crc32c_masked(rec, 8);
    memcpy(rec + 8, &c, 4);
    pos = 0;
    CHECK(ct_tfrecord_next(rec, sizeof rec, &pos, &data, &n) == -1);
}

static void test_event(void)
{
    /* event_pb2.Event(wall_time=1.5, step=3, summary=Summary(value=[Value(tag="a", simple_value=0.25),
     * Value(tag="train/loss", simple_value=-2.0)])).SerializeToString() */
    static const uint8_t want[] = {0x09, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0xf8, 0x3f, 0x10, 0x03, 0x2a, 0x1d, 0x0a,
                                   0x08, 0x0a, 0x01, 0x61, 0x15, 0x00, 0x00, 0x80, 0x3e, 0x0a, 0x11, 0x0a, 0x0a, 0x74,
                                   0x72, 0x61, 0x69, 0x6e, 0x2f, 0x6c, 0x6f, 0x73, 0x73, 0x15, 0x00, 0x00, 0x00, 0xc0};
    uint8_t ev[256];
    ct_tb_scalar v[] = {{"a", 0.25}, {"skipped", NAN}, {"train/loss", -2.0}, {"also skipped", INFINITY}};
    size_t n = ct_tfevent_scalars(ev, sizeof ev, 1.5, 3, v, 4);
    CHECK(n == sizeof want && !memcmp(ev, want, sizeof want));
    CHECK(ct_tfevent_scalars(ev, sizeof want - 1, 1.5, 3, v, 4) == 0); /* too small a buffer */
    int64_t step = -1;
    CHECK(ct_tfevent_step(ev, n, &step) == 0 && step == 3);
    /* a large step's varint; a truncated protobuf is refused */
    n = ct_tfevent_scalars(ev, sizeof ev, 2.0, 123456789012LL, v, 1);
    CHECK(ct_tfevent_step(ev, n, &step) == 0 && step == 123456789012LL);
    CHECK(ct_tfevent_step(ev, n - 1, &step) == -1);
    CHECK(ct_tfevent_step(ev, 10, &step) == -1); /* inside the step's varint */
}

/* the steps of every record of path, as "s s s", "" when the file is absent; -1 in out when damaged */
static void steps_of(const char *path, char *out, size_t cap)
{
    size_t len = 0, pos = 0, n;
    uint8_t *b = slurp(path, &len);
    out[0] = 0;
    if (!b) return;
    const uint8_t *data;
    int r;
    while ((r = ct_tfrecord_next(b, len, &pos, &data, &n)) == 1) {
        int64_t s = -1;
        ct_tfevent_step(data, n, &s);
        snprintf(out + strlen(out), cap - strlen(out), "%s%lld", out[0] ? " " : "", (long long)s);
    }
    if (r < 0) snprintf(out + strlen(out), cap - strlen(out), " damaged");
    free(b);
}

/* the event file names of dir, sorted, joined by '|' */
static int cmp_str(const void *a, const void *b) { return strcmp(*(char *const *)a, *(char *const *)b); }
static int event_files(const char *dir, char names[][256], int max)
{
    DIR *d = opendir(dir);
    int n = 0;
    struct dirent *e;
    char *p[16];
    while (d && (e = readdir(d)) && n < max)
        if (strstr(e->d_name, "tfevents")) snprintf(names[n], 256, "%s", e->d_name), p[n] = names[n], n++;
    if (d) closedir(d);
    qsort(p, (size_t)n, sizeof *p, cmp_str);
    char tmp[16][256];
    for (int i = 0; i < n; i++) snprintf(tmp[i], 256, "%s", p[i]);
    for (int i = 0; i < n; i++) snprintf(names[i], 256, "%s", tmp[i]);
    return n;
}

static void test_run_dir(void)
{
    ct_test_dir_create("ct_watch");
    char err[1024] = "", got[4096], path[600], names[16][256];
    ct_tfevents *w;
    /* a first start: steps 1..10 */
    CHECK(ct_tfevents_open(&w, ct_test_dir, 0, err, sizeof err) == 0);
    for (int s = 1; s <= 10; s++) CHECK(ct_tfevents_write(w, s, &(ct_tb_scalar){"train/loss", 10.0 - s}, 1) == 0);
    char first[600];
    snprintf(first, sizeof first, "%s", ct_tfevents_path(w));
    CHECK(ct_tfevents_close(w, err, sizeof err) == 0);
    steps_of(first, got, sizeof got);
    CHECK(!strcmp(got, "0 1 2 3 4 5 6 7 8 9 10"));
    /* the file's name and first record: file_version "brain.Event:2" */
    const char *base = strrchr(first, '/') + 1;
    CHECK(!strncmp(base, "events.out.tfevents.", 20) && strlen(base) > 31 && base[30] == '.' &&
          !strcmp(base + strlen(base) - 7, ".ctrain"));
    size_t len, pos = 0, n;
    const uint8_t *data;
    uint8_t *b = slurp(first, &len);
    CHECK(b && ct_tfrecord_next(b, len, &pos, &data, &n) == 1 && n == 24 && data[0] == 0x09 &&
          !memcmp(data + 9, "\x1a\x0d" "brain.Event:2", 15));
    free(b);
    /* another program's event file is left alone */
    ct_test_write_file(ct_test_path("events.out.tfevents.1.other.host"), "foreign", 7);

    /* resumed at step 6: the first file keeps 1..6; the new one sorts after it and starts with
     * file_version and START at 7 */
    CHECK(ct_tfevents_open(&w, ct_test_dir, 6, err, sizeof err) == 0);
    CHECK(ct_tfevents_write(w, 7, &(ct_tb_scalar){"train/loss", 1}, 1) == 0);
    char second[600];
    snprintf(second, sizeof second, "%s", ct_tfevents_path(w));
    CHECK(strcmp(strrchr(second, '/'), strrchr(first, '/')) > 0);
    CHECK(ct_tfevents_sync(w) == 0 && ct_tfevents_close(w, err, sizeof err) == 0);
    steps_of(first, got, sizeof got);
    CHECK(!strcmp(got, "0 1 2 3 4 5 6"));
    steps_of(second, got, sizeof got);
    CHECK(!strcmp(got, "0 7 7"));
    b = slurp(second, &len);
    pos = 0;
    CHECK(b && ct_tfrecord_next(b, len, &pos, &data, &n) == 1 && ct_tfrecord_next(b, len, &pos, &data, &n) == 1 &&
          n == 15 && !memcmp(data + 9, "\x10\x07\x3a\x02\x08\x01", 6)); /* step 7, session_log {status: START} */
    free(b);

    /* a damaged record in the first file: what follows it goes too */
    b = slurp(first, &len);
    struct stat sb;
    CHECK(b && stat(first, &sb) == 0);
    b[len - 20] ^= 1; /* inside the last record (step 6) */
    ct_test_write_file(first, (const char *)b, len);
    free(b);
    /* resumed at 7 again: the first file keeps 0..5, the second is as it was (nothing to drop) */
    struct stat before;
    CHECK(stat(second, &before) == 0);
    CHECK(ct_tfevents_open(&w, ct_test_dir, 7, err, sizeof err) == 0);
    char third[600];
    snprintf(third, sizeof third, "%s", ct_tfevents_path(w));
    CHECK(ct_tfevents_close(w, err, sizeof err) == 0);
    steps_of(first, got, sizeof got);
    CHECK(!strcmp(got, "0 1 2 3 4 5"));
    struct stat after;
    CHECK(stat(second, &after) == 0 && after.st_ino == before.st_ino && after.st_mtime == before.st_mtime);
    steps_of(third, got, sizeof got);
    CHECK(!strcmp(got, "0 8"));

    /* a fresh start (resume_step 0): every earlier file of ctrain's goes; the foreign one stays */
    CHECK(ct_tfevents_open(&w, ct_test_dir, 0, err, sizeof err) == 0);
    CHECK(ct_tfevents_close(w, err, sizeof err) == 0);
    int nf = event_files(ct_test_dir, names, 16);
    CHECK(nf == 2 && !strcmp(names[0], "events.out.tfevents.1.other.host"));
    snprintf(path, sizeof path, "%s/%s", ct_test_dir, names[1]);
    steps_of(path, got, sizeof got);
    CHECK(!strcmp(got, "0"));

    /* a run directory that cannot be listed, or written: errors naming it */
    err[0] = 0;
    CHECK(ct_tfevents_open(&w, ct_test_path("missing"), 0, err, sizeof err) == -1 && strstr(err, "missing") &&
          strstr(err, "cannot list"));
    if (geteuid() != 0) { /* root writes anywhere */
        chmod(ct_test_dir, 0500);
        CHECK(ct_tfevents_open(&w, ct_test_dir, 0, err, sizeof err) == -1 && strstr(err, ct_test_dir));
        chmod(ct_test_dir, 0700);
    }
    /* a file-size limit: a failed write is -1 with errno, and a rewrite that cannot be written
     * leaves the file as it was, naming it */
    signal(SIGXFSZ, SIG_IGN);
    struct rlimit old;
    getrlimit(RLIMIT_FSIZE, &old);
    CHECK(ct_tfevents_open(&w, ct_test_dir, 0, err, sizeof err) == 0);
    for (int s = 1; s <= 20; s++) CHECK(ct_tfevents_write(w, s, &(ct_tb_scalar){"train/loss", s}, 1) == 0);
    snprintf(path, sizeof path, "%s", ct_tfevents_path(w));
    struct rlimit small = {.rlim_cur = 600, .rlim_max = old.rlim_max};
    CHECK(setrlimit(RLIMIT_FSIZE, &small) == 0);
    int failed = 0;
    for (int s = 21; s <= 40 && !failed; s++) failed = ct_tfevents_write(w, s, &(ct_tb_scalar){"train/loss", s}, 1);
    CHECK(failed == -1 && errno == EFBIG);
    ct_tfevents_close(w, NULL, 0);
    char was[4096];
    steps_of(path, was, sizeof was);
    small.rlim_cur = 100;
    CHECK(setrlimit(RLIMIT_FSIZE, &small) == 0);
    err[0] = 0;
    CHECK(ct_tfevents_open(&w, ct_test_dir, 10, err, sizeof err) == -1 && strstr(err, path) &&
          strstr(err, "File too large"));
    CHECK(setrlimit(RLIMIT_FSIZE, &old) == 0);
    steps_of(path, got, sizeof got);
    CHECK(!strcmp(got, was) && strlen(was) > 20);
    CHECK(access(ct_test_path(".events-rewrite.tmp"), F_OK) != 0);
    ct_test_dir_remove();
}

static void test_peaks(void)
{
    const char *src;
    CHECK(ct_watch_peak_tflops("NVIDIA H100 80GB HBM3", &src) == 989.4 && strstr(src, "H100 SXM"));
    CHECK(ct_watch_peak_tflops("NVIDIA H100 PCIe", NULL) == 756.5);
    CHECK(ct_watch_peak_tflops("NVIDIA H100 NVL", NULL) == 835.5);
    CHECK(ct_watch_peak_tflops("NVIDIA H200", NULL) == 989.4);
    CHECK(ct_watch_peak_tflops("NVIDIA H200 NVL", NULL) == 835.5);
    CHECK(ct_watch_peak_tflops("NVIDIA A100-SXM4-80GB", NULL) == 312.0);
    CHECK(ct_watch_peak_tflops("NVIDIA A100 80GB PCIe", NULL) == 312.0);
    CHECK(ct_watch_peak_tflops("NVIDIA A10", NULL) == 125.0);
    CHECK(ct_watch_peak_tflops("NVIDIA L40S", NULL) == 362.05);
    CHECK(ct_watch_peak_tflops("NVIDIA L40", NULL) == 181.05);
    CHECK(ct_watch_peak_tflops("NVIDIA L4", NULL) == 121.0);
    /* not a whole word, or not in the table: unknown, never a near miss */
    CHECK(ct_watch_peak_tflops("NVIDIA A10G", &src) == 0 && src == NULL);
    CHECK(ct_watch_peak_tflops("NVIDIA GH200 480GB", NULL) == 0);
    CHECK(ct_watch_peak_tflops("Tesla V100-SXM2-16GB", NULL) == 0);
    CHECK(ct_watch_peak_tflops("", NULL) == 0);

    /* log.peak_tflops wins; the CPU backend has no peak of its own */
    ct_config cfg;
    memset(&cfg, 0, sizeof cfg);
    char what[512];
    CHECK(ct_watch_peak(&cfg, ct_backend_cpu(), 0, what, sizeof what) == 0 && strstr(what, "log.peak_tflops"));
    cfg.log.peak_tflops = 2.5;
    CHECK(ct_watch_peak(&cfg, ct_backend_cpu(), 0, what, sizeof what) == 2.5 && strstr(what, "2.5 TFLOP/s"));

    CHECK(fabs(ct_watch_mfu(3e12, 2.0, 1.5) - 1.0) < 1e-12);
    CHECK(fabs(ct_watch_mfu(1e12, 0.5, 4.0) - 0.5) < 1e-12);
    CHECK(isnan(ct_watch_mfu(1e12, 1.0, 0)) && isnan(ct_watch_mfu(0, 1.0, 1)) && isnan(ct_watch_mfu(1e12, 0, 1)));

    /* peak memory: at least what this process touched */
    double m0 = ct_watch_memory_gib(ct_backend_cpu(), 0);
    size_t big = (size_t)256 << 20;
    char *p = malloc(big);
    CHECK(p != NULL);
    if (p) memset(p, 1, big);
    double m1 = ct_watch_memory_gib(ct_backend_cpu(), 0);
    CHECK(m0 > 0 && m1 >= m0 + 0.24 && m1 < 64);
    free(p);
    CHECK(ct_watch_memory_gib(ct_backend_cpu(), 0) >= m1); /* a peak, not the current size */
}

int main(void)
{
    test_crc();
    test_event();
    test_run_dir();
    test_peaks();
    return ct_test_finish("test_watch");
}
