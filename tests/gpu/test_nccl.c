/* test_nccl.c — the buffer collectives of comm.h on device memory, world size 1 (tests/gpu,
 * ctest -L gpu): twice, once on the device side a one-rank job gets (ct_comm_attach_device:
 * copies, no NCCL started, no unique id sent), once on NCCL itself, attached by hand
 * (comm_impl.h's ct_comm_nccl_attach, in builds with NCCL), so its plumbing is tested on one GPU.
 *
 * With one rank every collective's result is known exactly (reduce-scatter and reduce copy,
 * all-gather and all-reduce leave the buffer as it was), so what is tested is the plumbing
 * ctrain's optimizer relies on: fp32 and bf16 device buffers, small and large (3,000,001
 * elements), in-place and out-of-place calls, a group of reduces into slices of one buffer (the
 * overlapped gradient reduction), byte accounting (comm.c: n*size*dtype bytes for
 * reduce-scatter and all-gather, n*dtype for all-reduce and reduce), refused arguments, and
 * stream order. Each collective's input is written by an op on the compute stream just before
 * the call, behind a few hundred microseconds of copies, so a collective that did not wait for
 * the compute stream would read the previous contents, which always differ; results are read
 * on the compute stream after ct_comm_buf_wait, from buffers poisoned beforehand.
 * (CTRAIN_CUDA_SYNC is unset here: synchronising after every launch would hide an ordering bug.)
 *
 * Exit: 0 all passed, 1 a check failed, 77 (ctest: skipped) when this build or machine has no
 * CUDA device. */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "check.h"
#include "comm.h"
#include "comm_impl.h" /* ct_comm_nccl_attach; CTRAIN_HAVE_NCCL comes from gpu.cmake */
#include "kernels.h"

static const ct_backend *gpu;
static ct_kctx *gk;
static void *stream; /* the compute stream: gpu->stream(gk) */
static ct_comm *comm;
static uint64_t want_bytes; /* what ct_comm_bytes should say */

/* a slow stretch of work on the compute stream: what follows it starts late */
enum { BUSY_BYTES = 128 << 20, BUSY_COPIES = 4 };
static void *busy_a, *busy_b;

static void *dalloc(size_t bytes)
{
    void *p = gpu->alloc(bytes);
    if (!p) {
        fprintf(stderr, "device allocation of %zu bytes failed\n", bytes);
        exit(1);
    }
    return p;
}

static size_t dsize(ct_comm_dtype dt) { return dt == CT_COMM_BF16 ? 2 : 4; }

/* Pattern k: small integers, exact in bf16 and fp32; k and k+1 differ at every element. */
static float pattern(size_t i, int k) { return (float)((int)((i * 7 + (size_t)k * 13) % 251) - 125); }

/* fp32 staging for writes and reads, device and host, sized for the largest buffer. Allocated
 * once: cudaFree (and cudaMalloc, at times) synchronises the device, which would complete the
 * writes before the collective is issued and leave nothing to test. */
static float *stage, *host;

/* Writes pattern k into dev[n] (dtype dt) on the compute stream, after the slow stretch. The
 * upload from pageable memory waits for the stream first; the rest is left in flight. */
static void write_pattern(void *dev, size_t n, ct_comm_dtype dt, int k)
{
    for (size_t i = 0; i < n; i++) host[i] = pattern(i, k);
    gpu->upload(gk, stage, host, n * sizeof(float));
    for (int c = 0; c < BUSY_COPIES; c++) gpu->copy(gk, c % 2 ? busy_a : busy_b, c % 2 ? busy_b : busy_a, BUSY_BYTES);
    if (dt == CT_COMM_BF16) gpu->to_storage(gk, dev, stage, n);
    else gpu->copy(gk, dev, stage, n * sizeof(float));
}

/* Every byte 0xff: NaN in fp32 and bf16, unlike any pattern. Synchronous, so called before
 * write_pattern, never between it and the collective. */
static void poison(void *dev, size_t n, ct_comm_dtype dt)
{
    memset(host, 0xff, n * dsize(dt));
    gpu->upload(gk, dev, host, n * dsize(dt));
    gpu->sync(gk);
}

/* After ct_comm_buf_wait: dev[n] read on the compute stream must be pattern k, exactly. */
static void expect_pattern(const char *what, const void *dev, size_t n, ct_comm_dtype dt, int k)
{
    CHECK(ct_comm_buf_wait(comm, stream) == 0);
    float *h = host;
    if (dt == CT_COMM_BF16) {
        gpu->to_f32(gk, stage, dev, n);
        gpu->download(gk, h, stage, n * sizeof(float));
    } else {
        gpu->download(gk, h, dev, n * sizeof(float));
    }
    size_t bad = 0, first = 0;
    for (size_t i = 0; i < n; i++)
        if (h[i] != pattern(i, k) && !bad++) first = i;
    if (bad) {
        fprintf(stderr, "%s (%s, n=%zu): %zu elements wrong, first at %zu: got %g, want %g\n", what,
                dt == CT_COMM_BF16 ? "bf16" : "fp32", n, bad, first, (double)h[first], (double)pattern(first, k));
        ct_test_failures++;
    }
}

#define CHECK_BYTES(what) check_bytes(__FILE__, __LINE__, what)
static void check_bytes(const char *file, int line, const char *what)
{
    if (ct_comm_bytes(comm) != want_bytes) {
        fprintf(stderr, "%s:%d: %s: ct_comm_bytes %llu, want %llu\n", file, line, what,
                (unsigned long long)ct_comm_bytes(comm), (unsigned long long)want_bytes);
        ct_test_failures++;
    }
}

static void test_collectives(size_t n, ct_comm_dtype dt)
{
    const size_t es = dsize(dt);
    const int world = ct_comm_size(comm);
    void *a = dalloc(n * es * (size_t)world), *b = dalloc(n * es * (size_t)world);
    int k = 0;

    /* reduce-scatter, out of place: recv = send */
    poison(b, n, dt);
    write_pattern(a, n, dt, ++k);
    CHECK(ct_comm_buf_reduce_scatter(comm, a, b, n, dt, stream) == 0);
    want_bytes += (uint64_t)n * (uint64_t)world * es;
    expect_pattern("reduce_scatter recv", b, n, dt, k);
    expect_pattern("reduce_scatter send (untouched)", a, n, dt, k);
    CHECK_BYTES("reduce_scatter");

    /* all-gather and all-reduce, in place: unchanged */
    write_pattern(a, n, dt, ++k);
    CHECK(ct_comm_buf_allgather(comm, a, n, dt, stream) == 0);
    want_bytes += (uint64_t)n * (uint64_t)world * es;
    expect_pattern("allgather", a, n, dt, k);
    CHECK_BYTES("allgather");
    write_pattern(a, n, dt, ++k);
    CHECK(ct_comm_buf_allreduce(comm, a, n, dt, stream) == 0);
    want_bytes += (uint64_t)n * es;
    expect_pattern("allreduce", a, n, dt, k);
    CHECK_BYTES("allreduce");

    /* reduce onto root 0, into another buffer */
    poison(b, n, dt);
    write_pattern(a, n, dt, ++k);
    CHECK(ct_comm_buf_reduce(comm, a, b, n, dt, 0, stream) == 0);
    want_bytes += (uint64_t)n * es;
    expect_pattern("reduce recv", b, n, dt, k);
    CHECK_BYTES("reduce");

    /* reduce-scatter and reduce in place (recv == send: rank 0's chunk, where NCCL wants it):
     * unchanged */
    write_pattern(a, n, dt, ++k);
    CHECK(ct_comm_buf_reduce_scatter(comm, a, a, n, dt, stream) == 0);
    CHECK(ct_comm_buf_reduce(comm, a, a, n, dt, 0, stream) == 0);
    want_bytes += (uint64_t)n * ((uint64_t)world + 1) * es;
    expect_pattern("reduce_scatter and reduce in place", a, n, dt, k);
    CHECK_BYTES("in place");

    /* a group of reduces into slices of one buffer, as the optimizer's overlapped reduction
     * does; cut unevenly, one piece a single element */
    poison(b, n, dt);
    write_pattern(a, n, dt, ++k);
    const size_t cut[4] = {0, n / 3, n / 3 + 1, n};
    ct_comm_buf_group_begin(comm);
    for (int p = 0; p < 3; p++) {
        size_t lo = cut[p], len = cut[p + 1] - cut[p];
        CHECK(ct_comm_buf_reduce(comm, (char *)a + lo * es, (char *)b + lo * es, len, dt, 0, stream) == 0);
        want_bytes += (uint64_t)len * es;
    }
    ct_comm_buf_group_end(comm);
    expect_pattern("grouped reduces", b, n, dt, k);
    CHECK_BYTES("grouped reduces");

    /* the same buffer through several collectives in a row, read once at the end */
    poison(b, n, dt);
    write_pattern(a, n, dt, ++k);
    CHECK(ct_comm_buf_reduce_scatter(comm, a, b, n, dt, stream) == 0);
    CHECK(ct_comm_buf_allreduce(comm, b, n, dt, stream) == 0);
    CHECK(ct_comm_buf_allgather(comm, b, n, dt, stream) == 0);
    want_bytes += (uint64_t)n * es * (2 * (uint64_t)world + 1);
    expect_pattern("reduce_scatter, allreduce, allgather in a row", b, n, dt, k);
    CHECK_BYTES("in a row");

    /* refused before anything is sent: -1, nothing counted */
    CHECK(ct_comm_buf_reduce_scatter(comm, NULL, b, n, dt, stream) == -1);
    CHECK(ct_comm_buf_reduce_scatter(comm, a, NULL, n, dt, stream) == -1);
    CHECK(ct_comm_buf_allgather(comm, NULL, n, dt, stream) == -1);
    CHECK(ct_comm_buf_allreduce(comm, NULL, n, dt, stream) == -1);
    CHECK(ct_comm_buf_reduce(comm, NULL, b, n, dt, 0, stream) == -1);
    CHECK(ct_comm_buf_reduce(comm, a, NULL, n, dt, 0, stream) == -1);
    CHECK(ct_comm_buf_reduce(comm, a, b, n, dt, world, stream) == -1);
    CHECK(ct_comm_buf_reduce(comm, a, b, n, dt, -1, stream) == -1);
    /* n == 0: done at once, whatever the buffers */
    CHECK(ct_comm_buf_reduce_scatter(comm, NULL, NULL, 0, dt, stream) == 0);
    CHECK(ct_comm_buf_allgather(comm, NULL, 0, dt, stream) == 0);
    CHECK(ct_comm_buf_allreduce(comm, NULL, 0, dt, stream) == 0);
    CHECK(ct_comm_buf_reduce(comm, NULL, NULL, 0, dt, 0, stream) == 0);
    CHECK_BYTES("refused and empty calls");
    /* and the buffers are as the last collective left them */
    expect_pattern("after refused calls", b, n, dt, k);

    gpu->sync(gk);
    gpu->free(a);
    gpu->free(b);
}

static const size_t sizes[] = {17, 3000001}; /* elements; the last is the largest */

/* Every size and dtype on the attached comm; attaching again does nothing. */
static void run_all(const char *transport)
{
    static const ct_comm_dtype dtypes[] = {CT_COMM_F32, CT_COMM_BF16};
    char err[512] = "";
    CHECK(ct_comm_attach_device(comm, 0, err, sizeof err) == 0); /* attached already: nothing to do */
    CHECK(strcmp(ct_comm_device_transport(comm), transport) == 0);
    want_bytes = ct_comm_bytes(comm);
    CHECK(ct_comm_buf_wait(comm, stream) == 0); /* nothing issued yet */
    for (int s = 0; s < 2; s++)
        for (int d = 0; d < 2; d++) {
            printf("  %s: %s, %zu elements\n", transport, dtypes[d] == CT_COMM_BF16 ? "bf16" : "fp32", sizes[s]);
            fflush(stdout);
            test_collectives(sizes[s], dtypes[d]);
        }
}

int main(void)
{
    /* synchronising after every launch would complete each write before its collective */
    unsetenv("CTRAIN_CUDA_SYNC");
    gpu = ct_backend_cuda();
    if (!gpu) {
        printf("SKIPPED: no CUDA device (or no CUDA backend in this build)\n");
        return 77;
    }
    gk = gpu->kctx_init(0);
    if (!gk) {
        fprintf(stderr, "test_nccl: a CUDA device is present but kctx_init(0) failed\n");
        return 1;
    }
    stream = gpu->stream(gk);
    CHECK(stream != NULL);
    busy_a = dalloc(BUSY_BYTES);
    busy_b = dalloc(BUSY_BYTES);
    stage = dalloc(sizes[1] * sizeof(float));
    host = ct_test_alloc(sizes[1]);

    /* what a one-rank job gets: the copy device side */
    comm = ct_comm_init_single();
    if (!comm) return 2;
    CHECK(ct_comm_size(comm) == 1 && ct_comm_rank(comm) == 0);
    CHECK(ct_comm_has_device(comm) == 0);
    CHECK(strcmp(ct_comm_device_transport(comm), "none") == 0);
    /* without a device the buffer collectives are the host ones: fp32 only */
    float vals[5] = {1, 2, 3, 4, 5};
    CHECK(ct_comm_buf_allreduce(comm, vals, 5, CT_COMM_BF16, NULL) == -1);
    CHECK(ct_comm_buf_allreduce(comm, vals, 5, CT_COMM_F32, NULL) == 0 && vals[4] == 5);

    char err[512] = "";
    want_bytes = ct_comm_bytes(comm);
    if (ct_comm_attach_device(comm, 0, err, sizeof err) != 0) {
        fprintf(stderr, "test_nccl: ct_comm_attach_device(0) failed: %s\n", err);
        return 1;
    }
    CHECK(ct_comm_has_device(comm) == 1);
    /* no NCCL communicator: the copy side, and nothing sent (NCCL's start broadcasts its id) */
    CHECK(strcmp(ct_comm_device_transport(comm), "copy") == 0);
    CHECK_BYTES("attaching one rank");
    run_all("copy");
    ct_comm_free(comm);

#if CTRAIN_HAVE_NCCL
    /* NCCL on one rank, as several ranks would use it */
    comm = ct_comm_init_single();
    if (!comm) return 2;
    if (ct_comm_nccl_attach(comm, 0, err, sizeof err) != 0) {
        fprintf(stderr, "test_nccl: ct_comm_nccl_attach(0) failed: %s\n", err);
        return 1;
    }
    CHECK(strcmp(ct_comm_device_transport(comm), "nccl") == 0);
    run_all("nccl");
    ct_comm_free(comm); /* tears NCCL down */
#else
    printf("  (no NCCL in this build: its collectives are not tested)\n");
#endif
    gpu->free(busy_a);
    gpu->free(busy_b);
    gpu->free(stage);
    free(host);
    gpu->kctx_free(gk);
    return ct_test_finish("test_nccl");
}
