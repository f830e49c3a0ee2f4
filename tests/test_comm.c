/* test_comm.c — every collective on inputs with exactly predictable results, on whatever
 * transport the environment gives: run plainly (single) and under `mpirun -np 2..4` (mpi).
 * Rank r contributes r*1000 + i, so every sum has a closed form and every value stays an
 * integer below 2^24: float comparisons are exact. Each case runs twice, the second time with
 * the per-call count capped (ct_comm_set_max_count) so the chunked paths that large buffers
 * take are checked too. Also checks local rank, local size and node against host names, and
 * the device side as far as a machine without a GPU can: the size-1 buffer collectives (what
 * the size-1 device side does on the GPU: copies, or nothing in place), and attaching a device
 * where this build must refuse before anything is sent (no CUDA backend; no NCCL and several
 * ranks). CTRAIN_HAVE_CUDA and CTRAIN_HAVE_NCCL come from comm.cmake. */
#include "check.h"
#include "comm.h"
#include "comm_impl.h"

#include <string.h>
#include <unistd.h>

static int rank, size;

/* sum over r of (r*1000 + x) */
static double sum_over_ranks(double x) { return 1000.0 * size * (size - 1) / 2 + (double)size * x; }

static void check_allreduce(ct_comm *c, size_t n)
{
    float *buf = ct_test_alloc(n);
    double *want = ct_test_alloc_d(n);
    for (size_t i = 0; i < n; i++) {
        buf[i] = (float)(rank * 1000 + (int)i);
        want[i] = sum_over_ranks((double)i);
    }
    CHECK(ct_comm_allreduce_sum(c, buf, n) == 0);
    CHECK_CLOSE("allreduce_sum", buf, want, n, 0, 0);
    free(buf);
    free(want);
}

/* f64 with a fractional part and magnitudes past float's 24 bits, still exact in double. */
static void check_allreduce_f64(ct_comm *c, size_t n)
{
    double *buf = ct_test_alloc_d(n);
    for (size_t i = 0; i < n; i++) buf[i] = rank * 1e9 + (double)i + 0.25;
    CHECK(ct_comm_allreduce_sum_f64(c, buf, n) == 0);
    size_t bad = 0;
    for (size_t i = 0; i < n; i++) {
        double want = 1e9 * size * (size - 1) / 2 + size * ((double)i + 0.25);
        if (buf[i] != want) bad++;
    }
    CHECK(bad == 0);
    free(buf);
}

static void check_reduce_scatter(ct_comm *c, size_t n)
{
    size_t total = n * (size_t)size;
    float *send = ct_test_alloc(total), *recv = ct_test_alloc(n);
    double *want = ct_test_alloc_d(n);
    for (size_t j = 0; j < total; j++) send[j] = (float)(rank * 1000 + (int)j);
    for (size_t i = 0; i < n; i++) {
        recv[i] = -1;
        want[i] = sum_over_ranks((double)((size_t)rank * n + i));
    }
    CHECK(ct_comm_reduce_scatter_sum(c, send, recv, n) == 0);
    CHECK_CLOSE("reduce_scatter_sum", recv, want, n, 0, 0);
    /* the send buffer is const: untouched */
    size_t changed = 0;
    for (size_t j = 0; j < total; j++) changed += send[j] != (float)(rank * 1000 + (int)j);
    CHECK(changed == 0);
    free(send);
    free(recv);
    free(want);
}

/* Onto every root in turn: the root gets the sum, the others' recv stays untouched. */
static void check_reduce(ct_comm *c, size_t n)
{
    float *send = ct_test_alloc(n), *recv = ct_test_alloc(n);
    double *want = ct_test_alloc_d(n);
    for (size_t i = 0; i < n; i++) {
        send[i] = (float)(rank * 1000 + (int)i);
        want[i] = sum_over_ranks((double)i);
    }
    for (int root = 0; root < size; root++) {
        for (size_t i = 0; i < n; i++) recv[i] = -1;
        CHECK(ct_comm_reduce_sum(c, send, recv, n, root) == 0);
        if (rank == root) {
            CHECK_CLOSE("reduce_sum at the root", recv, want, n, 0, 0);
        } else {
            size_t touched = 0;
            for (size_t i = 0; i < n; i++) touched += recv[i] != -1;
            CHECK(touched == 0);
        }
    }
    free(send);
    free(recv);
    free(want);
}

/* The buffer collectives without a device are the host ones: fp32 only, done on return. */
static void check_buffers(ct_comm *c, size_t n)
{
    size_t total = n * (size_t)size;
    float *a = ct_test_alloc(total), *b = ct_test_alloc(total), *recv = ct_test_alloc(n), *want_f = ct_test_alloc(n);
    for (size_t j = 0; j < total; j++) a[j] = b[j] = (float)(rank * 1000 + (int)j);
    CHECK(!ct_comm_has_device(c));
    CHECK(ct_comm_buf_reduce_scatter(c, a, recv, n, CT_COMM_F32, NULL) == 0);
    CHECK(ct_comm_reduce_scatter_sum(c, b, want_f, n) == 0);
    CHECK(!memcmp(recv, want_f, n * sizeof(float)));
    CHECK(ct_comm_buf_allreduce(c, a, n, CT_COMM_F32, NULL) == 0);
    CHECK(ct_comm_allreduce_sum(c, b, n) == 0);
    CHECK(!memcmp(a, b, n * sizeof(float)));
    ct_comm_buf_group_begin(c); /* no-ops on the host */
    CHECK(ct_comm_buf_reduce(c, a, recv, n, CT_COMM_F32, size - 1, NULL) == 0);
    ct_comm_buf_group_end(c);
    CHECK(ct_comm_reduce_sum(c, b, want_f, n, size - 1) == 0);
    if (rank == size - 1) CHECK(!memcmp(recv, want_f, n * sizeof(float)));
    CHECK(ct_comm_buf_allgather(c, a, n, CT_COMM_F32, NULL) == 0);
    CHECK(ct_comm_allgather(c, b, n) == 0);
    CHECK(!memcmp(a, b, total * sizeof(float)));
    /* broadcast: the root's send arrives in every recv, the root's own included */
    for (int root = 0; root < size; root++) {
        for (size_t j = 0; j < n; j++) a[j] = (float)(rank * 1000 + (int)j), recv[j] = -1.0f;
        CHECK(ct_comm_buf_broadcast(c, rank == root ? a : NULL, recv, n, CT_COMM_F32, root, NULL) == 0);
        size_t wrong = 0;
        for (size_t j = 0; j < n; j++) wrong += recv[j] != (float)(root * 1000 + (int)j);
        CHECK(wrong == 0);
    }
    CHECK(ct_comm_buf_broadcast(c, a, a, n, CT_COMM_F32, 0, NULL) == 0); /* in place on the root */
    CHECK(ct_comm_buf_wait(c, NULL) == 0);
    /* bf16 lives only in device memory: refused alike on every rank, nothing sent */
    uint64_t before = ct_comm_bytes(c);
    CHECK(ct_comm_buf_allreduce(c, a, n, CT_COMM_BF16, NULL) == -1);
    CHECK(ct_comm_buf_reduce_scatter(c, a, recv, n, CT_COMM_BF16, NULL) == -1);
    CHECK(ct_comm_buf_allgather(c, a, n, CT_COMM_BF16, NULL) == -1);
    CHECK(ct_comm_buf_reduce(c, a, recv, n, CT_COMM_BF16, 0, NULL) == -1);
    CHECK(ct_comm_buf_reduce(c, a, recv, n, CT_COMM_F32, size, NULL) == -1); /* root out of range */
    CHECK(ct_comm_buf_broadcast(c, a, recv, n, CT_COMM_F32, size, NULL) == -1);
    CHECK(ct_comm_buf_broadcast(c, a, recv, n, CT_COMM_BF16, 0, NULL) == -1);
    CHECK(ct_comm_bytes(c) == before);
    free(a);
    free(b);
    free(recv);
    free(want_f);
}

/* Without a device the buffer collectives say so; attaching one is refused, identically on
 * every rank and before anything is sent, wherever this build cannot reduce on GPUs: no CUDA
 * backend at all, or no NCCL and more than one rank. (With NCCL and several ranks, attaching
 * would start NCCL: for the GPU tests.) */
static void check_device_refused(ct_comm *c)
{
    CHECK(!ct_comm_has_device(c));
    CHECK(strcmp(ct_comm_device_transport(c), "none") == 0);
    if (CTRAIN_HAVE_CUDA && (CTRAIN_HAVE_NCCL || size == 1)) return;
    char err[512] = "", want[64];
    uint64_t before = ct_comm_bytes(c);
    CHECK(ct_comm_attach_device(c, 0, err, sizeof err) == -1);
    CHECK(ct_comm_bytes(c) == before);
    CHECK(!ct_comm_has_device(c));
    CHECK(strcmp(ct_comm_device_transport(c), "none") == 0);
    CHECK(strncmp(err, "comm: ", 6) == 0);
    if (CTRAIN_HAVE_CUDA) {
        snprintf(want, sizeof want, "this job has %d ranks", size);
        CHECK(strstr(err, "NCCL is missing") && strstr(err, want));
        snprintf(want, sizeof want, "to use %d GPUs", size);
        CHECK(strstr(err, want) != NULL);
    } else {
        CHECK(strstr(err, "without the CUDA backend") != NULL);
    }
    /* the host collectives go on as before */
    float x = 1;
    CHECK(ct_comm_buf_allreduce(c, &x, 1, CT_COMM_F32, NULL) == 0 && x == (float)size);
    if (rank == 0) printf("test_comm: attaching a device refused as it must: %s\n", err);
}

/* A communicator of one rank: reduce-scatter and reduce copy send into recv, and leave the
 * buffer as it was when send == recv; all-reduce and all-gather leave it as it was. Bytes count
 * as with several ranks. On the host here; the size-1 device side does the same on the GPU. */
static void check_single_buffers(ct_comm *one)
{
    enum { N = 37 };
    float a[N], b[N], orig[N];
    for (int i = 0; i < N; i++) orig[i] = a[i] = (float)(i * 3 - 50);
    uint64_t before = ct_comm_bytes(one);
    for (int i = 0; i < N; i++) b[i] = -1;
    CHECK(ct_comm_buf_reduce_scatter(one, a, b, N, CT_COMM_F32, NULL) == 0);
    CHECK(!memcmp(b, orig, sizeof b) && !memcmp(a, orig, sizeof a));
    for (int i = 0; i < N; i++) b[i] = -1;
    CHECK(ct_comm_buf_reduce(one, a, b, N, CT_COMM_F32, 0, NULL) == 0);
    CHECK(!memcmp(b, orig, sizeof b) && !memcmp(a, orig, sizeof a));
    CHECK(ct_comm_buf_reduce_scatter(one, a, a, N, CT_COMM_F32, NULL) == 0);
    CHECK(!memcmp(a, orig, sizeof a));
    CHECK(ct_comm_buf_reduce(one, a, a, N, CT_COMM_F32, 0, NULL) == 0);
    CHECK(!memcmp(a, orig, sizeof a));
    ct_comm_buf_group_begin(one);
    CHECK(ct_comm_buf_allreduce(one, a, N, CT_COMM_F32, NULL) == 0);
    CHECK(ct_comm_buf_allgather(one, a, N, CT_COMM_F32, NULL) == 0);
    ct_comm_buf_group_end(one);
    CHECK(ct_comm_buf_wait(one, NULL) == 0);
    CHECK(!memcmp(a, orig, sizeof a));
    CHECK(ct_comm_buf_reduce(one, a, b, N, CT_COMM_F32, 1, NULL) == -1); /* the only root is 0 */
    CHECK(ct_comm_bytes(one) - before == 6 * N * sizeof(float));
}

/* Attaching a GPU to a communicator of one rank starts no NCCL and sends nothing (no unique id
 * is broadcast): it either fails here, where there is no GPU, with the GPU named, or gives the
 * copy device side. */
static void check_single_attach(ct_comm *one)
{
    if (!CTRAIN_HAVE_CUDA) return; /* refused: check_device_refused */
    char err[512] = "";
    uint64_t before = ct_comm_bytes(one);
    if (ct_comm_attach_device(one, 0, err, sizeof err) == 0) {
        CHECK(ct_comm_has_device(one));
        CHECK(strcmp(ct_comm_device_transport(one), "copy") == 0);
        CHECK(ct_comm_attach_device(one, 0, err, sizeof err) == 0); /* attached already */
        printf("test_comm: a GPU is here: one rank attached it with the copy device side\n");
    } else {
        CHECK(strncmp(err, "comm: GPU 0: ", 13) == 0);
        CHECK(!ct_comm_has_device(one));
        CHECK(strcmp(ct_comm_device_transport(one), "none") == 0);
        printf("test_comm: no GPU for the size-1 device side here (%s)\n", err);
    }
    CHECK(ct_comm_bytes(one) == before);
}

static void check_allgather(ct_comm *c, size_t n)
{
    size_t total = n * (size_t)size;
    float *buf = ct_test_alloc(total);
    double *want = ct_test_alloc_d(total);
    for (size_t j = 0; j < total; j++) buf[j] = -1; /* others' chunks: must be overwritten */
    for (int r = 0; r < size; r++)
        for (size_t i = 0; i < n; i++) want[(size_t)r * n + i] = r * 1000 + (double)i;
    for (size_t i = 0; i < n; i++) buf[(size_t)rank * n + i] = (float)(rank * 1000 + (int)i);
    CHECK(ct_comm_allgather(c, buf, n) == 0);
    CHECK_CLOSE("allgather", buf, want, total, 0, 0);
    free(buf);
    free(want);
}

/* From the last rank (a non-zero root whenever size > 1); the length is no multiple of 4 or
 * of the capped count, so a partial last chunk is covered. */
static void check_broadcast(ct_comm *c, size_t bytes)
{
    int root = size - 1;
    unsigned char *buf = malloc(bytes);
    if (!buf) exit(2);
    for (size_t i = 0; i < bytes; i++)
        buf[i] = rank == root ? (unsigned char)(i * 7 + 3) : 0xEE;
    CHECK(ct_comm_broadcast(c, buf, bytes, root) == 0);
    size_t bad = 0;
    for (size_t i = 0; i < bytes; i++) bad += buf[i] != (unsigned char)(i * 7 + 3);
    CHECK(bad == 0);
    free(buf);
}

static void check_all_ok(ct_comm *c)
{
    CHECK(ct_comm_all_ok(c, 1) == 1);
    CHECK(ct_comm_all_ok(c, 7) == 1); /* any non-zero is ok */
    /* one rank (the last) says no: everyone hears no */
    CHECK(ct_comm_all_ok(c, rank != size - 1) == 0);
    CHECK(ct_comm_all_ok(c, 0) == 0);
}

/* Bytes counted: the buffer each call is given (n*size floats for reduce-scatter's send and
 * allgather's buffer), nothing for barrier and all_ok, nothing for a call that fails its
 * argument check. */
static void check_bytes(ct_comm *c)
{
    float *f = ct_test_alloc(3 * (size_t)size), *recv = ct_test_alloc(1);
    double d[5] = {0};
    char b[13] = {0};
    uint64_t before = ct_comm_bytes(c);
    CHECK(ct_comm_allreduce_sum(c, f, 3) == 0);
    CHECK(ct_comm_allreduce_sum_f64(c, d, 5) == 0);
    CHECK(ct_comm_reduce_scatter_sum(c, f, recv, 1) == 0);
    CHECK(ct_comm_allgather(c, f, 2) == 0);
    CHECK(ct_comm_reduce_sum(c, f, recv, 1, 0) == 0);
    CHECK(ct_comm_broadcast(c, b, 13, 0) == 0);
    CHECK(ct_comm_barrier(c) == 0);
    CHECK(ct_comm_all_ok(c, 1) == 1);
    CHECK(ct_comm_broadcast(c, b, 13, size) == -1); /* root out of range: refused, not counted */
    CHECK(ct_comm_broadcast(c, b, 13, -1) == -1);
    uint64_t got = ct_comm_bytes(c) - before;
    uint64_t want = 3 * 4 + 5 * 8 + 1 * (uint64_t)size * 4 + 2 * (uint64_t)size * 4 + 1 * 4 + 13;
    CHECK(got == want);
    if (got != want)
        fprintf(stderr, "rank %d: bytes counted %llu, want %llu\n", rank, (unsigned long long)got,
                (unsigned long long)want);
    free(f);
    free(recv);
}

/* Ranks with the same host name share a node: node indices agree with host names, local
 * ranks on a node are 0..local_size-1 with no gaps, and node 0 holds rank 0. */
static void check_topology(ct_comm *c)
{
    int local_rank = ct_comm_local_rank(c), local_size = ct_comm_local_size(c), node = ct_comm_node(c);
    CHECK(0 <= local_rank && local_rank < local_size && local_size <= size);
    CHECK(0 <= node && node < size);
    enum { HOST = 256 };
    char *hosts = calloc((size_t)size, HOST);
    float *info = ct_test_alloc(2 * (size_t)size);
    if (!hosts) exit(2);
    if (gethostname(hosts + (size_t)rank * HOST, HOST - 1) != 0) strcpy(hosts + (size_t)rank * HOST, "?");
    for (int r = 0; r < size; r++) CHECK(ct_comm_broadcast(c, hosts + (size_t)r * HOST, HOST, r) == 0);
    info[2 * rank] = (float)node;
    info[2 * rank + 1] = (float)local_rank;
    CHECK(ct_comm_allgather(c, info, 2) == 0);
    int same_host = 0, seen_local = 0;
    for (int r = 0; r < size; r++) {
        int same = strcmp(hosts + (size_t)r * HOST, hosts + (size_t)rank * HOST) == 0;
        CHECK(same == ((int)info[2 * r] == node));
        if (same) {
            same_host++;
            int lr = (int)info[2 * r + 1];
            CHECK(0 <= lr && lr < local_size);
            if (0 <= lr && lr < local_size && lr < 31) seen_local |= 1 << lr;
        }
    }
    CHECK(same_host == local_size);
    if (local_size < 31) CHECK(seen_local == (1 << local_size) - 1);
    CHECK((int)info[0] == 0); /* rank 0's node */
    /* Open MPI announces the same facts in the environment; srun too. */
    const char *ls = getenv("OMPI_COMM_WORLD_LOCAL_SIZE"), *lr = getenv("OMPI_COMM_WORLD_LOCAL_RANK");
    if (ls) CHECK(atoi(ls) == local_size);
    if (lr) CHECK(atoi(lr) == local_rank);
    const char *sl = getenv("SLURM_LOCALID");
    if (sl && getenv("SLURM_STEP_ID")) CHECK(atoi(sl) == local_rank);
    if (rank == 0)
        printf("test_comm: transport %s, size %d, rank 0 on node %d (%s) with local size %d\n",
               ct_comm_transport(c), size, node, hosts, local_size);
    free(hosts);
    free(info);
}

static void run_all(ct_comm *c)
{
    static const size_t ns[] = {1, 2, 7, 23, 1000};
    for (size_t k = 0; k < sizeof ns / sizeof ns[0]; k++) {
        check_allreduce(c, ns[k]);
        check_allreduce_f64(c, ns[k]);
        check_reduce_scatter(c, ns[k]);
        check_reduce(c, ns[k]);
        check_allgather(c, ns[k]);
        check_buffers(c, ns[k]);
        check_broadcast(c, ns[k] * 4 + 1);
    }
    /* n == 0: nothing moves, every rank returns 0 */
    CHECK(ct_comm_allreduce_sum(c, NULL, 0) == 0);
    CHECK(ct_comm_reduce_scatter_sum(c, NULL, NULL, 0) == 0);
    CHECK(ct_comm_allgather(c, NULL, 0) == 0);
    CHECK(ct_comm_broadcast(c, NULL, 0, 0) == 0);
    check_all_ok(c);
    CHECK(ct_comm_barrier(c) == 0);
}

int main(int argc, char **argv)
{
    char err[512];
    ct_comm *c = NULL;
    if (ct_comm_init(&c, &argc, &argv, err, sizeof err) != 0) {
        fprintf(stderr, "test_comm: %s\n", err);
        return 1;
    }
    rank = ct_comm_rank(c);
    size = ct_comm_size(c);
    CHECK(0 <= rank && rank < size);
    if (size > 1) CHECK(strcmp(ct_comm_transport(c), "mpi") == 0);
    if (!getenv("OMPI_COMM_WORLD_SIZE") && !getenv("PMIX_RANK") && !getenv("PMI_SIZE") &&
        !getenv("SLURM_STEP_ID"))
        CHECK(strcmp(ct_comm_transport(c), "single") == 0);
    if (getenv("OMPI_COMM_WORLD_SIZE")) CHECK(atoi(getenv("OMPI_COMM_WORLD_SIZE")) == size);

    check_topology(c);
    run_all(c);
    ct_comm_set_max_count(c, 5); /* every case above n = 5 now goes in chunks */
    run_all(c);
    ct_comm_set_max_count(c, 0);
    check_bytes(c);
    check_device_refused(c);
    if (size == 1) check_single_buffers(c); /* plainly, and the MPI transport under mpiexec -n 1 */

    /* The size-1 communicator stands alone, whatever the launcher. */
    ct_comm *one = ct_comm_init_single();
    CHECK(one && ct_comm_size(one) == 1 && ct_comm_rank(one) == 0 && ct_comm_local_size(one) == 1);
    if (one) {
        float s[3] = {1, 2, 3}, r[3] = {0, 0, 0};
        CHECK(ct_comm_reduce_scatter_sum(one, s, r, 3) == 0 && r[0] == 1 && r[1] == 2 && r[2] == 3);
        CHECK(ct_comm_broadcast(one, s, sizeof s, 1) == -1);
        CHECK(ct_comm_all_ok(one, 0) == 0);
        CHECK(strcmp(ct_comm_transport(one), "single") == 0);
        check_single_buffers(one);
        if (rank == 0) check_single_attach(one); /* one GPU context per node is plenty */
        ct_comm_free(one);
    }

    /* Every rank agrees on the verdict, so a failure on one rank fails the whole run. */
    int all_passed = ct_comm_all_ok(c, ct_test_failures == 0);
    if (!all_passed && ct_test_failures == 0) {
        fprintf(stderr, "rank %d: another rank failed\n", rank);
        ct_test_failures++;
    }
    ct_comm_free(c);
    if (rank != 0 && ct_test_failures == 0) return 0; /* one "passed" line per run */
    return ct_test_finish("test_comm");
}
