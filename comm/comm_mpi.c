/* comm_mpi.c — the MPI transport (host memory). Compiled only when CTRAIN_HAVE_MPI.
 *
 * Collectives run on a duplicate of MPI_COMM_WORLD, so ctrain's traffic can never match a
 * message of another library sharing the process (parallel HDF5 uses its own communicator).
 * The duplicate inherits MPI_ERRORS_ARE_FATAL from MPI_COMM_WORLD: a failing call aborts the
 * whole job inside MPI. MPI_CHECK still reports file:line and aborts, for the case where
 * someone installs MPI_ERRORS_RETURN: no rank may go on alone after a failed collective.
 * Buffers past c->max_count elements (CT_COMM_CHUNK) go in chunks: MPI counts are int, and MPI's
 * own temporaries grow with the message. */
#include "comm_impl.h"

#include <mpi.h>
#include <stdio.h>
#include <stdlib.h>

typedef struct mpi_state {
    MPI_Comm world;  /* duplicate of MPI_COMM_WORLD */
    int initialised; /* this transport called MPI_Init_thread, so free calls MPI_Finalize */
} mpi_state;

static void mpi_fail(int rc, const char *call, const char *file, int line)
{
    char msg[MPI_MAX_ERROR_STRING] = "unknown error";
    int len = 0, rank = -1;
    MPI_Error_string(rc, msg, &len);
    MPI_Comm_rank(MPI_COMM_WORLD, &rank);
    fprintf(stderr, "%s:%d: rank %d: %s failed: %s\n", file, line, rank, call, msg);
    fflush(stderr);
    MPI_Abort(MPI_COMM_WORLD, 1);
    exit(1); /* MPI_Abort does not return; this keeps the compiler sure of it */
}

#define MPI_CHECK(call)                                                  \
    do {                                                                 \
        int mpi_rc_ = (call);                                            \
        if (mpi_rc_ != MPI_SUCCESS) mpi_fail(mpi_rc_, #call, __FILE__, __LINE__); \
    } while (0)

static MPI_Comm world_of(const ct_comm *c) { return ((const mpi_state *)c->impl)->world; }

static size_t min_size(size_t a, size_t b) { return a < b ? a : b; }

/* In-place sum in chunks of at most max_count elements of elem bytes each. */
static int allreduce_chunked(ct_comm *c, void *buf, size_t n, MPI_Datatype type, size_t elem)
{
    char *p = buf;
    for (size_t off = 0; off < n; off += c->max_count) {
        size_t k = min_size(n - off, c->max_count);
        MPI_CHECK(MPI_Allreduce(MPI_IN_PLACE, p + off * elem, (int)k, type, MPI_SUM, world_of(c)));
    }
    return 0;
}

static int mpi_allreduce_sum(ct_comm *c, float *buf, size_t n)
{
    return allreduce_chunked(c, buf, n, MPI_FLOAT, sizeof *buf);
}

static int mpi_allreduce_sum_f64(ct_comm *c, double *buf, size_t n)
{
    return allreduce_chunked(c, buf, n, MPI_DOUBLE, sizeof *buf);
}

static int mpi_allreduce_sum_u64(ct_comm *c, uint64_t *buf, size_t n)
{
    return allreduce_chunked(c, buf, n, MPI_UINT64_T, sizeof *buf);
}

static int mpi_reduce_scatter_sum(ct_comm *c, const float *send, float *recv, size_t n)
{
    MPI_Comm w = world_of(c);
    if (n * (size_t)c->size <= c->max_count) {
        MPI_CHECK(MPI_Reduce_scatter_block(send, recv, (int)n, MPI_FLOAT, MPI_SUM, w));
        return 0;
    }
    /* A whole buffer past one call's count: each rank's slice is reduced onto that rank alone,
     * in chunks, so MPI's temporaries stay chunk-sized. */
    for (int r = 0; r < c->size; r++)
        for (size_t off = 0; off < n; off += c->max_count) {
            size_t k = min_size(n - off, c->max_count);
            MPI_CHECK(MPI_Reduce(send + (size_t)r * n + off, r == c->rank ? recv + off : NULL, (int)k,
                                 MPI_FLOAT, MPI_SUM, r, w));
        }
    return 0;
}

static int mpi_reduce_sum(ct_comm *c, const float *send, float *recv, size_t n, int root)
{
    for (size_t off = 0; off < n; off += c->max_count) {
        size_t k = min_size(n - off, c->max_count);
        MPI_CHECK(MPI_Reduce(send + off, c->rank == root ? recv + off : NULL, (int)k, MPI_FLOAT, MPI_SUM, root,
                             world_of(c)));
    }
    return 0;
}

static int mpi_allgather(ct_comm *c, float *buf, size_t n)
{
    MPI_Comm w = world_of(c);
    if (n * (size_t)c->size <= c->max_count) {
        MPI_CHECK(MPI_Allgather(MPI_IN_PLACE, 0, MPI_DATATYPE_NULL, buf, (int)n, MPI_FLOAT, w));
        return 0;
    }
    /* Chunks past one call's count: every rank broadcasts its own chunk, piece by piece. */
    for (int r = 0; r < c->size; r++)
        for (size_t off = 0; off < n; off += c->max_count) {
            size_t k = min_size(n - off, c->max_count);
            MPI_CHECK(MPI_Bcast(buf + (size_t)r * n + off, (int)k, MPI_FLOAT, r, w));
        }
    return 0;
}

static int mpi_broadcast(ct_comm *c, void *buf, size_t bytes, int root)
{
    char *p = buf;
    for (size_t off = 0; off < bytes; off += c->max_count) {
        size_t k = min_size(bytes - off, c->max_count);
        MPI_CHECK(MPI_Bcast(p + off, (int)k, MPI_BYTE, root, world_of(c)));
    }
    return 0;
}

static int mpi_barrier(ct_comm *c)
{
    MPI_CHECK(MPI_Barrier(world_of(c)));
    return 0;
}

static int mpi_all_ok(ct_comm *c, int ok)
{
    int v = ok;
    MPI_CHECK(MPI_Allreduce(MPI_IN_PLACE, &v, 1, MPI_INT, MPI_MIN, world_of(c)));
    return v;
}

/* On MPI_COMM_WORLD, not the duplicate: the whole job goes, whatever communicators exist. */
static void mpi_abort(ct_comm *c, int code)
{
    MPI_Abort(MPI_COMM_WORLD, code);
}

static void mpi_free(ct_comm *c)
{
    mpi_state *s = c->impl;
    if (!s) return;
    int finalized = 0;
    MPI_Finalized(&finalized);
    if (!finalized) {
        if (s->world != MPI_COMM_NULL) MPI_Comm_free(&s->world);
        if (s->initialised) MPI_Finalize();
    }
    free(s);
    c->impl = NULL;
}

static const ct_comm_ops mpi_ops = {
    .name = "mpi",
    .allreduce_sum = mpi_allreduce_sum,
    .allreduce_sum_f64 = mpi_allreduce_sum_f64,
    .allreduce_sum_u64 = mpi_allreduce_sum_u64,
    .reduce_scatter_sum = mpi_reduce_scatter_sum,
    .reduce_sum = mpi_reduce_sum,
    .allgather = mpi_allgather,
    .broadcast = mpi_broadcast,
    .barrier = mpi_barrier,
    .all_ok = mpi_all_ok,
    .abort = mpi_abort,
    .free = mpi_free,
};

/* Local rank and size from the ranks sharing this node's memory; the node index is the rank
 * of this node's local rank 0 among all local ranks 0, so node 0 holds world rank 0. */
static void find_node(ct_comm *c, MPI_Comm w)
{
    MPI_Comm local, leaders;
    MPI_CHECK(MPI_Comm_split_type(w, MPI_COMM_TYPE_SHARED, c->rank, MPI_INFO_NULL, &local));
    MPI_CHECK(MPI_Comm_rank(local, &c->local_rank));
    MPI_CHECK(MPI_Comm_size(local, &c->local_size));
    MPI_CHECK(MPI_Comm_split(w, c->local_rank == 0 ? 0 : MPI_UNDEFINED, c->rank, &leaders));
    int node = 0;
    if (leaders != MPI_COMM_NULL) {
        MPI_CHECK(MPI_Comm_rank(leaders, &node));
        MPI_CHECK(MPI_Comm_free(&leaders));
    }
    MPI_CHECK(MPI_Bcast(&node, 1, MPI_INT, 0, local));
    MPI_CHECK(MPI_Comm_free(&local));
    c->node = node;
}

int ct_comm_mpi_init(ct_comm *c, int *argc, char ***argv, int expect_size, char *err, size_t errlen)
{
    int initialized = 0, finalized = 0;
    MPI_Finalized(&finalized);
    if (finalized) {
        ct_comm_set_err(err, errlen, "comm: MPI was already finalised in this process; it cannot start again");
        return -1;
    }
    mpi_state *s = calloc(1, sizeof *s);
    if (!s) {
        ct_comm_set_err(err, errlen, "comm: out of memory");
        return -1;
    }
    s->world = MPI_COMM_NULL;
    MPI_Initialized(&initialized);
    if (!initialized) {
        /* Only the main thread calls MPI; OpenMP threads compute between collectives. */
        int provided = 0, rc = MPI_Init_thread(argc, argv, MPI_THREAD_FUNNELED, &provided);
        if (rc != MPI_SUCCESS) {
            ct_comm_set_err(err, errlen, "comm: MPI_Init_thread failed (error %d) under a launcher", rc);
            free(s);
            return -1;
        }
        s->initialised = 1;
    }
    c->impl = s;
    c->ops = &mpi_ops;
    MPI_CHECK(MPI_Comm_dup(MPI_COMM_WORLD, &s->world));
    MPI_CHECK(MPI_Comm_rank(s->world, &c->rank));
    MPI_CHECK(MPI_Comm_size(s->world, &c->size));
    if (expect_size > 1 && c->size == 1) {
        ct_comm_set_err(err, errlen,
                "comm: the launcher started %d ranks, but MPI sees a world of 1: MPI could not reach "
                "the launcher, so each rank would train alone. Under srun pass --mpi=pmix (see "
                "`srun --mpi=list`); otherwise launch with the mpirun of the MPI ctrain was built with",
                expect_size);
        mpi_free(c);
        c->ops = &ct_comm_single_ops;
        return -1;
    }
    find_node(c, s->world);
    return 0;
}
