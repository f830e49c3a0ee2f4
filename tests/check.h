/* check.h — tiny test harness shared by the C tests: checks that report file:line,
 * seeded random inputs, and relative-error comparison. Header-only (static inline). */
#ifndef CT_TESTS_CHECK_H
#define CT_TESTS_CHECK_H

#include <dirent.h>
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static int ct_test_failures;

#define CHECK(cond)                                                                     \
    do {                                                                                \
        if (!(cond)) {                                                                  \
            fprintf(stderr, "%s:%d: CHECK failed: %s\n", __FILE__, __LINE__, #cond);    \
            ct_test_failures++;                                                         \
        }                                                                               \
    } while (0)

/* Compare got[n] (float) against want[n] (double): an element passes when
 * |got - want| <= atol + rtol * |want|. Reports the worst element; returns 1 on pass. */
#define CHECK_CLOSE(what, got, want, n, rtol, atol) \
    ct_check_close(__FILE__, __LINE__, what, got, want, n, rtol, atol)

static inline int ct_check_close(const char *file, int line, const char *what, const float *got,
                                 const double *want, size_t n, double rtol, double atol)
{
    size_t worst = 0;
    double worst_excess = -1.0;
    for (size_t i = 0; i < n; i++) {
        double err = fabs((double)got[i] - want[i]);
        double excess = err - (atol + rtol * fabs(want[i]));
        if (isnan(got[i]) || excess > worst_excess) { worst_excess = isnan(got[i]) ? INFINITY : excess; worst = i; }
    }
    if (n && worst_excess > 0) {
        fprintf(stderr, "%s:%d: %s: element %zu of %zu: got %.9g, want %.9g (rtol %g, atol %g)\n", file, line,
                what, worst, n, (double)got[worst], want[worst], rtol, atol);
        ct_test_failures++;
        return 0;
    }
    return 1;
}

/* fp32 -> bf16 -> fp32, round to nearest even (what to_storage and bf16 files do); inf and NaN
 * pass unchanged. */
static inline float ct_test_bf16(float x)
{
    uint32_t u;
    memcpy(&u, &x, 4);
    if ((u & 0x7f800000u) == 0x7f800000u) return x;
    u += 0x7fffu + ((u >> 16) & 1u);
    u &= 0xffff0000u;
    memcpy(&x, &u, 4);
    return x;
}

/* splitmix64: a seeded generator so every test input is reproducible. */
static inline uint64_t ct_test_rand_u64(uint64_t *state)
{
    uint64_t z = (*state += 0x9E3779B97F4A7C15ull);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
}

/* uniform in [lo, hi) */
static inline void ct_test_fill(float *x, size_t n, uint64_t *state, float lo, float hi)
{
    for (size_t i = 0; i < n; i++)
        x[i] = lo + (hi - lo) * (float)((ct_test_rand_u64(state) >> 11) * 0x1.0p-53);
}

static inline float *ct_test_alloc(size_t n)
{
    float *p = calloc(n ? n : 1, sizeof(float));
    if (!p) { fprintf(stderr, "out of memory\n"); exit(2); }
    return p;
}

static inline double *ct_test_alloc_d(size_t n)
{
    double *p = calloc(n ? n : 1, sizeof(double));
    if (!p) { fprintf(stderr, "out of memory\n"); exit(2); }
    return p;
}

/* ---- kernel tests: double copies, float copies, and what an adding backward leaves */
static inline double *ct_test_to_d(const float *x, size_t n)
{
    double *d = ct_test_alloc_d(n);
    for (size_t i = 0; i < n; i++) d[i] = x[i];
    return d;
}

static inline float *ct_test_copy(const float *x, size_t n)
{
    float *c = ct_test_alloc(n);
    memcpy(c, x, n * sizeof(float));
    return c;
}

/* Positions of B rows of T tokens packed with documents of lengths drawn from [1, maxlen]
 * (kernels.h's document rule: 0 where one begins, always at t = 0; one more than the token
 * before otherwise). malloc'd. */
static inline int32_t *ct_test_doc_positions(int B, int T, int maxlen, uint64_t seed)
{
    int32_t *pos = malloc(sizeof(int32_t) * ((size_t)B * T + 1));
    if (!pos) { fprintf(stderr, "out of memory\n"); exit(2); }
    for (int b = 0; b < B; b++)
        for (int t = 0, left = 0; t < T; t++, left--) {
            int32_t *p = pos + (size_t)b * T + t;
            if (t > 0 && left > 0) {
                *p = p[-1] + 1;
            } else {
                *p = 0;
                left = 1 + (int)(ct_test_rand_u64(&seed) % (uint64_t)maxlen);
            }
        }
    return pos;
}

/* want[i] = prefill[i] + grad[i]: what an adding backward must leave in a pre-filled buffer */
static inline double *ct_test_plus_prefill(const double *grad, const float *prefill, size_t n)
{
    double *w = ct_test_alloc_d(n);
    for (size_t i = 0; i < n; i++) w[i] = grad[i] + prefill[i];
    return w;
}

/* ---- a temporary directory for a test's files (flat: files only) */
/* ---- ranges announced during a backward (ct_grad_ready_fn, host-memory gradients): each
 * element must be announced exactly once, and its gradient must already be final then. */
typedef struct {
    const float *grads;  /* the gradient buffer backward fills */
    size_t n;            /* its length */
    float *snap;         /* [n] each element as it was when announced */
    unsigned char *seen; /* [n] */
    int ranges, bad;
} ct_test_ready;

static inline void ct_test_ready_init(ct_test_ready *r, const float *grads, size_t n)
{
    r->grads = grads;
    r->n = n;
    r->snap = calloc(n ? n : 1, sizeof(float));
    r->seen = calloc(n ? n : 1, 1);
    r->ranges = r->bad = 0;
    if (!r->snap || !r->seen) { fprintf(stderr, "out of memory\n"); exit(2); }
}

static inline void ct_test_ready_cb(void *user, size_t lo, size_t hi)
{
    ct_test_ready *r = user;
    r->ranges++;
    if (lo >= hi || hi > r->n) { r->bad++; return; }
    for (size_t i = lo; i < hi; i++) {
        r->bad += r->seen[i]; /* announced twice */
        r->seen[i] = 1;
        r->snap[i] = r->grads[i];
    }
}

/* After the backward: every element announced once, none changed after its announcement. */
#define CHECK_READY(what, r) ct_test_ready_check(__FILE__, __LINE__, what, r)
static inline void ct_test_ready_check(const char *file, int line, const char *what, ct_test_ready *r)
{
    size_t unseen = 0, changed = 0;
    for (size_t i = 0; i < r->n; i++) {
        unseen += !r->seen[i];
        changed += r->seen[i] && memcmp(&r->snap[i], &r->grads[i], sizeof(float)) != 0;
    }
    if (r->bad || unseen || changed || !r->ranges) {
        fprintf(stderr, "%s:%d: %s: %d ranges, %d bad or repeated, %zu elements never announced, %zu changed after\n",
                file, line, what, r->ranges, r->bad, unseen, changed);
        ct_test_failures++;
    }
    free(r->snap);
    free(r->seen);
}

static char ct_test_dir[256];

/* Creates $TMPDIR/<prefix>_XXXXXX (TMPDIR defaults to /tmp); exits on failure. */
static inline void ct_test_dir_create(const char *prefix)
{
    snprintf(ct_test_dir, sizeof ct_test_dir, "%s/%s_XXXXXX", getenv("TMPDIR") ? getenv("TMPDIR") : "/tmp", prefix);
    if (!mkdtemp(ct_test_dir)) {
        perror("mkdtemp");
        exit(2);
    }
}

/* A path inside the directory; a ring of buffers so a few can be live at once. */
static inline const char *ct_test_path(const char *name)
{
    static char ring[8][512];
    static int next;
    char *p = ring[next++ % 8];
    snprintf(p, 512, "%s/%s", ct_test_dir, name);
    return p;
}

static inline void ct_test_dir_remove(void)
{
    DIR *d = opendir(ct_test_dir);
    if (!d) return;
    struct dirent *e;
    while ((e = readdir(d)))
        if (strcmp(e->d_name, ".") && strcmp(e->d_name, "..")) unlink(ct_test_path(e->d_name));
    closedir(d);
    rmdir(ct_test_dir);
}

/* Writes len bytes to path (exits on failure: the test cannot go on). */
static inline void ct_test_write_file(const char *path, const char *text, size_t len)
{
    FILE *f = fopen(path, "wb");
    if (!f || fwrite(text, 1, len, f) != len) {
        fprintf(stderr, "cannot write %s\n", path);
        exit(2);
    }
    fclose(f);
}

/* Exit status for main: 0 only when every CHECK passed. */
static inline int ct_test_finish(const char *name)
{
    if (ct_test_failures) {
        fprintf(stderr, "%s: %d check(s) failed\n", name, ct_test_failures);
        return 1;
    }
    printf("%s: all checks passed\n", name);
    return 0;
}

#endif
