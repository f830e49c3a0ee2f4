/* tfevents.c — TensorBoard event files by hand: crc32c, TFRecord framing, Event protobufs of
 * scalars, and the rewrite that keeps a run directory's files free of steps a resume redoes
 * (tfevents.h). */
#include "tfevents.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "fail.h"

/* crc32c's table: entry i is i's remainder, reflected polynomial 0x82F63B78 */
static const uint32_t crc_table[256] = {
    0x00000000, 0xf26b8303, 0xe13b70f7, 0x1350f3f4, 0xc79a971f, 0x35f1141c, 0x26a1e7e8, 0xd4ca64eb,
    0x8ad958cf, 0x78b2dbcc, 0x6be22838, 0x9989ab3b, 0x4d43cfd0, 0xbf284cd3, 0xac78bf27, 0x5e133c24,
    0x105ec76f, 0xe235446c, 0xf165b798, 0x030e349b, 0xd7c45070, 0x25afd373, 0x36ff2087, 0xc494a384,
    0x9a879fa0, 0x68ec1ca3, 0x7bbcef57, 0x89d76c54, 0x5d1d08bf, 0xaf768bbc, 0xbc267848, 0x4e4dfb4b,
    0x20bd8ede, 0xd2d60ddd, 0xc186fe29, 0x33ed7d2a, 0xe72719c1, 0x154c9ac2, 0x061c6936, 0xf477ea35,
    0xaa64d611, 0x580f5512, 0x4b5fa6e6, 0xb93425e5, 0x6dfe410e, 0x9f95c20d, 0x8cc531f9, 0x7eaeb2fa,
    0x30e349b1, 0xc288cab2, 0xd1d83946, 0x23b3ba45, 0xf779deae, 0x05125dad, 0x1642ae59, 0xe4292d5a,
    0xba3a117e, 0x4851927d, 0x5b016189, 0xa96ae28a, 0x7da08661, 0x8fcb0562, 0x9c9bf696, 0x6ef07595,
    0x417b1dbc, 0xb3109ebf, 0xa0406d4b, 0x522bee48, 0x86e18aa3, 0x748a09a0, 0x67dafa54, 0x95b17957,
    0xcba24573, 0x39c9c670, 0x2a993584, 0xd8f2b687, 0x0c38d26c, 0xfe53516f, 0xed03a29b, 0x1f682198,
    0x5125dad3, 0xa34e59d0, 0xb01eaa24, 0x42752927, 0x96bf4dcc, 0x64d4cecf, 0x77843d3b, 0x85efbe38,
    0xdbfc821c, 0x2997011f, 0x3ac7f2eb, 0xc8ac71e8, 0x1c661503, 0xee0d9600, 0xfd5d65f4, 0x0f36e6f7,
    0x61c69362, 0x93ad1061, 0x80fde395, 0x72966096, 0xa65c047d, 0x5437877e, 0x4767748a, 0xb50cf789,
    0xeb1fcbad, 0x197448ae, 0x0a24bb5a, 0xf84f3859, 0x2c855cb2, 0xdeeedfb1, 0xcdbe2c45, 0x3fd5af46,
    0x7198540d, 0x83f3d70e, 0x90a324fa, 0x62c8a7f9, 0xb602c312, 0x44694011, 0x5739b3e5, 0xa55230e6,
    0xfb410cc2, 0x092a8fc1, 0x1a7a7c35, 0xe811ff36, 0x3cdb9bdd, 0xceb018de, 0xdde0eb2a, 0x2f8b6829,
    0x82f63b78, 0x709db87b, 0x63cd4b8f, 0x91a6c88c, 0x456cac67, 0xb7072f64, 0xa457dc90, 0x563c5f93,
    0x082f63b7, 0xfa44e0b4, 0xe9141340, 0x1b7f9043, 0xcfb5f4a8, 0x3dde77ab, 0x2e8e845f, 0xdce5075c,
    0x92a8fc17, 0x60c37f14, 0x73938ce0, 0x81f80fe3, 0x55326b08, 0xa759e80b, 0xb4091bff, 0x466298fc,
    0x1871a4d8, 0xea1a27db, 0xf94ad42f, 0x0b21572c, 0xdfeb33c7, 0x2d80b0c4, 0x3ed04330, 0xccbbc033,
    0xa24bb5a6, 0x502036a5, 0x4370c551, 0xb11b4652, 0x65d122b9, 0x97baa1ba, 0x84ea524e, 0x7681d14d,
    0x2892ed69, 0xdaf96e6a, 0xc9a99d9e, 0x3bc21e9d, 0xef087a76, 0x1d63f975, 0x0e330a81, 0xfc588982,
    0xb21572c9, 0x407ef1ca, 0x532e023e, 0xa145813d, 0x758fe5d6, 0x87e466d5, 0x94b49521, 0x66df1622,
    0x38cc2a06, 0xcaa7a905, 0xd9f75af1, 0x2b9cd9f2, 0xff56bd19, 0x0d3d3e1a, 0x1e6dcdee, 0xec064eed,
    0xc38d26c4, 0x31e6a5c7, 0x22b65633, 0xd0ddd530, 0x0417b1db, 0xf67c32d8, 0xe52cc12c, 0x1747422f,
    0x49547e0b, 0xbb3ffd08, 0xa86f0efc, 0x5a048dff, 0x8ecee914, 0x7ca56a17, 0x6ff599e3, 0x9d9e1ae0,
    0xd3d3e1ab, 0x21b862a8, 0x32e8915c, 0xc083125f, 0x144976b4, 0xe622f5b7, 0xf5720643, 0x07198540,
    0x590ab964, 0xab613a67, 0xb831c993, 0x4a5a4a90, 0x9e902e7b, 0x6cfbad78, 0x7fab5e8c, 0x8dc0dd8f,
    0xe330a81a, 0x115b2b19, 0x020bd8ed, 0xf0605bee, 0x24aa3f05, 0xd6c1bc06, 0xc5914ff2, 0x37faccf1,
    0x69e9f0d5, 0x9b8273d6, 0x88d28022, 0x7ab90321, 0xae7367ca, 0x5c18e4c9, 0x4f48173d, 0xbd23943e,
    0xf36e6f75, 0x0105ec76, 0x12551f82, 0xe03e9c81, 0x34f4f86a, 0xc69f7b69, 0xd5cf889d, 0x27a40b9e,
    0x79b737ba, 0x8bdcb4b9, 0x988c474d, 0x6ae7c44e, 0xbe2da0a5, 0x4c4623a6, 0x5f16d052, 0xad7d5351,
};

uint32_t ct_crc32c(const void *data, size_t n)
{
    const uint8_t *p = data;
    uint32_t c = 0xFFFFFFFFu;
    for (size_t i = 0; i < n; i++) c = crc_table[(c ^ p[i]) & 0xFF] ^ (c >> 8);
    return c ^ 0xFFFFFFFFu;
}

uint32_t ct_crc32c_masked(const void *data, size_t n)
{
    uint32_t c = ct_crc32c(data, n);
    return ((c >> 15) | (c << 17)) + 0xa282ead8u;
}

static void put_le(uint8_t *out, uint64_t v, int bytes)
{
    for (int i = 0; i < bytes; i++) out[i] = (uint8_t)(v >> (8 * i));
}

static uint64_t get_le(const uint8_t *in, int bytes)
{
    uint64_t v = 0;
    for (int i = 0; i < bytes; i++) v |= (uint64_t)in[i] << (8 * i);
    return v;
}

size_t ct_tfrecord_frame(uint8_t *out, const void *data, size_t n)
{
    put_le(out, n, 8);
    put_le(out + 8, ct_crc32c_masked(out, 8), 4);
    memcpy(out + 12, data, n);
    put_le(out + 12 + n, ct_crc32c_masked(data, n), 4);
    return n + 16;
}

int ct_tfrecord_next(const uint8_t *buf, size_t len, size_t *pos, const uint8_t **data, size_t *n)
{
    size_t at = *pos;
    if (at >= len) return 0;
    if (len - at < 12 || get_le(buf + at + 8, 4) != ct_crc32c_masked(buf + at, 8)) return -1;
    uint64_t m = get_le(buf + at, 8);
    if (m > len - at - 12 || len - at - 12 - m < 4) return -1;
    const uint8_t *d = buf + at + 12;
    if (get_le(d + m, 4) != ct_crc32c_masked(d, (size_t)m)) return -1;
    *data = d, *n = (size_t)m, *pos = at + 16 + (size_t)m;
    return 1;
}

/* ---------------------------------------------------------------- protobuf, the few kinds used */

static size_t varint_len(uint64_t v)
{
    size_t k = 1;
    while (v >= 0x80) v >>= 7, k++;
    return k;
}

static uint8_t *put_varint(uint8_t *p, uint64_t v)
{
    while (v >= 0x80) *p++ = (uint8_t)(v | 0x80), v >>= 7;
    *p++ = (uint8_t)v;
    return p;
}

/* reads a varint at *p (below end); -1 when it runs past end or past 10 bytes */
static int get_varint(const uint8_t **p, const uint8_t *end, uint64_t *v)
{
    *v = 0;
    for (int shift = 0; shift < 70 && *p < end; shift += 7) {
        uint8_t b = *(*p)++;
        *v |= (uint64_t)(b & 0x7F) << shift;
        if (!(b & 0x80)) return 0;
    }
    return -1;
}

int ct_tfevent_step(const uint8_t *data, size_t n, int64_t *step)
{
    const uint8_t *p = data, *end = data + n;
    *step = 0;
    while (p < end) {
        uint64_t key, v;
        if (get_varint(&p, end, &key)) return -1;
        switch (key & 7) {
        case 0: /* varint */
            if (get_varint(&p, end, &v)) return -1;
            if (key >> 3 == 2) *step = (int64_t)v;
            break;
        case 1: /* fixed64 */
            if (end - p < 8) return -1;
            p += 8;
            break;
        case 2: /* length-delimited */
            if (get_varint(&p, end, &v) || v > (uint64_t)(end - p)) return -1;
            p += v;
            break;
        case 5: /* fixed32 */
            if (end - p < 4) return -1;
            p += 4;
            break;
        default:
            return -1;
        }
    }
    return 0;
}

/* the Event's head: wall_time (1, fixed64) and, when not 0, step (2, varint) */
static uint8_t *put_head(uint8_t *p, double wall_time, int64_t step)
{
    uint64_t bits;
    memcpy(&bits, &wall_time, sizeof bits);
    *p++ = 1 << 3 | 1;
    put_le(p, bits, 8);
    p += 8;
    if (step) {
        *p++ = 2 << 3 | 0;
        p = put_varint(p, (uint64_t)step);
    }
    return p;
}

static size_t head_len(int64_t step) { return 9 + (step ? 1 + varint_len((uint64_t)step) : 0); }

size_t ct_tfevent_scalars(uint8_t *out, size_t cap, double wall_time, int64_t step, const ct_tb_scalar *v, int nv)
{
    size_t summary = 0;
    for (int i = 0; i < nv; i++) {
        if (!isfinite(v[i].value)) continue;
        size_t t = strlen(v[i].tag), value = 1 + varint_len(t) + t + 5;
        summary += 1 + varint_len(value) + value;
    }
    size_t total = head_len(step) + 1 + varint_len(summary) + summary;
    if (total > cap) return 0;
    uint8_t *p = put_head(out, wall_time, step);
    *p++ = 5 << 3 | 2; /* summary */
    p = put_varint(p, summary);
    for (int i = 0; i < nv; i++) {
        if (!isfinite(v[i].value)) continue;
        size_t t = strlen(v[i].tag), value = 1 + varint_len(t) + t + 5;
        float f = (float)v[i].value;
        uint32_t bits;
        memcpy(&bits, &f, sizeof bits);
        *p++ = 1 << 3 | 2; /* Summary.value */
        p = put_varint(p, value);
        *p++ = 1 << 3 | 2; /* Value.tag */
        p = put_varint(p, t);
        memcpy(p, v[i].tag, t);
        p += t;
        *p++ = 2 << 3 | 5; /* Value.simple_value */
        put_le(p, bits, 4);
        p += 4;
    }
    return (size_t)(p - out);
}

/* The first event of a file: file_version "brain.Event:2". */
static size_t file_version_event(uint8_t *out, double wall_time)
{
    static const char version[] = "brain.Event:2";
    uint8_t *p = put_head(out, wall_time, 0);
    *p++ = 3 << 3 | 2;
    p = put_varint(p, sizeof version - 1);
    memcpy(p, version, sizeof version - 1);
    return (size_t)(p + sizeof version - 1 - out);
}

/* SessionLog {status: START} at step: TensorBoard drops what it holds of steps >= step. */
static size_t session_start_event(uint8_t *out, double wall_time, int64_t step)
{
    uint8_t *p = put_head(out, wall_time, step);
    *p++ = 7 << 3 | 2; /* session_log */
    *p++ = 2;
    *p++ = 1 << 3 | 0;
    *p++ = 1; /* START */
    return (size_t)(p - out);
}

static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (double)ts.tv_sec + ts.tv_nsec * 1e-9;
}

/* ---------------------------------------------------------------- the files of a run directory */

#define PREFIX "events.out.tfevents."
#define SUFFIX ".ctrain"

struct ct_tfevents {
    FILE *f;
    char path[PATH_MAX];
};

/* One of ctrain's event files: "events.out.tfevents.<seconds>.<...>.ctrain"; its seconds. */
static int ours(const char *name, long long *seconds)
{
    size_t n = strlen(name), p = strlen(PREFIX), s = strlen(SUFFIX);
    if (n <= p + s || strncmp(name, PREFIX, p) || strcmp(name + n - s, SUFFIX)) return 0;
    *seconds = atoll(name + p);
    return 1;
}

/* Keeps the records of path whose step is at most keep_step (and none after a damaged one):
 * the file is left alone when that is all of it, removed when only steps 0 (file_version) are
 * left, else rewritten through tmp. 0, or -1 with err. */
static int filter_file(const char *path, const char *tmp, int64_t keep_step, char *err, size_t errlen)
{
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) return ct_fail(err, errlen, "%s: cannot open: %s", path, strerror(errno));
    struct stat sb;
    if (fstat(fd, &sb) != 0) {
        close(fd);
        return ct_fail(err, errlen, "%s: cannot stat: %s", path, strerror(errno));
    }
    size_t len = (size_t)sb.st_size;
    const uint8_t *buf = len ? mmap(NULL, len, PROT_READ, MAP_PRIVATE, fd, 0) : NULL;
    close(fd);
    if (buf == MAP_FAILED) return ct_fail(err, errlen, "%s: cannot read: %s", path, strerror(errno));
    /* pass 1: what goes, and what is left */
    size_t pos = 0, n;
    const uint8_t *data;
    int r, dropped = 0, left = 0;
    int64_t step;
    while ((r = ct_tfrecord_next(buf, len, &pos, &data, &n)) == 1) {
        if (ct_tfevent_step(data, n, &step) || step > keep_step) dropped = 1;
        else if (step > 0) left = 1;
    }
    if (r < 0) dropped = 1;
    int rc = 0;
    if (!left) {
        if (unlink(path) != 0) rc = ct_fail(err, errlen, "%s: cannot remove: %s", path, strerror(errno));
    } else if (dropped) {
        FILE *f = fopen(tmp, "w");
        int e = f ? 0 : errno;
        pos = 0;
        size_t at = 0;
        while (!e && ct_tfrecord_next(buf, len, &pos, &data, &n) == 1) {
            if (ct_tfevent_step(data, n, &step) == 0 && step <= keep_step && fwrite(buf + at, 1, pos - at, f) != pos - at)
                e = errno ? errno : EIO;
            at = pos;
        }
        if (!e && (fflush(f) != 0 || fsync(fileno(f)) != 0)) e = errno ? errno : EIO;
        if (f && fclose(f) != 0 && !e) e = errno ? errno : EIO;
        if (!e && rename(tmp, path) != 0) e = errno;
        if (e) {
            rc = ct_fail(err, errlen, "%s: cannot rewrite without the steps after %lld (through %s): %s", path,
                         (long long)keep_step, tmp, strerror(e));
            unlink(tmp);
        }
    }
    if (len) munmap((void *)buf, len);
    return rc;
}

/* The earlier files of dir cut to keep_step; *latest: the largest seconds among their names. */
static int filter_dir(const char *dir, int64_t keep_step, long long *latest, char *err, size_t errlen)
{
    DIR *d = opendir(dir);
    if (!d) return ct_fail(err, errlen, "%s: cannot list: %s", dir, strerror(errno));
    char path[PATH_MAX], tmp[PATH_MAX];
    /* not "tfevents" in its name: TensorBoard never reads a half-written rewrite */
    snprintf(tmp, sizeof tmp, "%s/.events-rewrite.tmp", dir);
    struct dirent *e;
    long long seconds;
    int rc = 0;
    *latest = 0;
    while (!rc && (e = readdir(d))) {
        if (!ours(e->d_name, &seconds)) continue;
        snprintf(path, sizeof path, "%s/%s", dir, e->d_name);
        rc = filter_file(path, tmp, keep_step, err, errlen);
        if (seconds > *latest) *latest = seconds;
    }
    closedir(d);
    return rc;
}

static int write_record(FILE *f, const uint8_t *data, size_t n)
{
    uint8_t rec[4096 + 16];
    if (n > 4096) {
        errno = EOVERFLOW;
        return -1;
    }
    size_t m = ct_tfrecord_frame(rec, data, n);
    errno = 0;
    if (fwrite(rec, 1, m, f) != m || fflush(f) != 0 || ferror(f)) {
        if (!errno) errno = EIO;
        return -1;
    }
    return 0;
}

int ct_tfevents_open(ct_tfevents **out, const char *dir, int64_t resume_step, char *err, size_t errlen)
{
    *out = NULL;
    long long latest;
    if (filter_dir(dir, resume_step, &latest, err, errlen)) return -1;
    ct_tfevents *w = calloc(1, sizeof *w);
    if (!w) return ct_fail(err, errlen, "%s: out of memory", dir);
    char host[256] = "localhost";
    gethostname(host, sizeof host - 1);
    for (char *c = host; *c; c++)
        if (!((*c >= 'a' && *c <= 'z') || (*c >= 'A' && *c <= 'Z') || (*c >= '0' && *c <= '9') || *c == '-' ||
              *c == '.'))
            *c = '_';
    double now = now_s();
    long long seconds = (long long)now > latest ? (long long)now : latest + 1; /* sorts after the earlier ones */
    snprintf(w->path, sizeof w->path, "%s/" PREFIX "%010lld.%s.%ld.0" SUFFIX, dir, seconds, host, (long)getpid());
    uint8_t ev[256];
    if (!(w->f = fopen(w->path, "w"))) {
        ct_fail(err, errlen, "%s: cannot create: %s", w->path, strerror(errno));
        free(w);
        return -1;
    }
    int bad = write_record(w->f, ev, file_version_event(ev, now)) ||
              (resume_step > 0 && write_record(w->f, ev, session_start_event(ev, now, resume_step + 1)));
    if (bad) {
        ct_fail(err, errlen, "%s: write failed: %s", w->path, strerror(errno));
        fclose(w->f);
        unlink(w->path);
        free(w);
        return -1;
    }
    *out = w;
    return 0;
}

int ct_tfevents_write(ct_tfevents *w, int64_t step, const ct_tb_scalar *v, int nv)
{
    uint8_t ev[4096];
    size_t n = ct_tfevent_scalars(ev, sizeof ev, now_s(), step, v, nv);
    if (!n) {
        errno = EOVERFLOW;
        return -1;
    }
    return write_record(w->f, ev, n);
}

int ct_tfevents_sync(ct_tfevents *w)
{
    errno = 0;
    if (fflush(w->f) != 0 || fsync(fileno(w->f)) != 0) {
        if (!errno) errno = EIO;
        return -1;
    }
    return 0;
}

const char *ct_tfevents_path(const ct_tfevents *w) { return w->path; }

int ct_tfevents_close(ct_tfevents *w, char *err, size_t errlen)
{
    if (!w) return 0;
    int rc = ct_tfevents_sync(w) ? -1 : 0, e = errno;
    if (fclose(w->f) != 0 && !rc) rc = -1, e = errno;
    if (rc) ct_fail(err, errlen, "%s: write failed: %s", w->path, strerror(e ? e : EIO));
    free(w);
    return rc;
}
