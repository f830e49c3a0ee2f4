/* comm_nccl.c — the device side of a communicator of several ranks: NCCL collectives on CUDA
 * device memory. Compiled only when CTRAIN_HAVE_NCCL (a communicator of one rank needs no NCCL:
 * comm_cuda.c).
 *
 * One NCCL communicator spans the same ranks as the host transport; rank 0 makes its unique id
 * and the host transport broadcasts it. Collectives run on the device side's own stream, after
 * the caller's work so far (comm_cuda.h), so gradient reduction overlaps with backward. NCCL
 * and CUDA failures print file:line and end the whole job: a rank must not go on after a
 * failed collective. */
#include "comm_cuda.h"

#include <nccl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

typedef struct nccl_state {
    ct_comm_cuda cu; /* device, stream and events */
    ncclComm_t comm;
    int in_group;    /* inside ct_comm_buf_group_begin/end */
} nccl_state;

#define NCCL_CHECK(c, call)                                                                     \
    do {                                                                                        \
        ncclResult_t nccl_rc_ = (call);                                                         \
        if (nccl_rc_ != ncclSuccess) ct_comm_dev_fail(c, #call, ncclGetErrorString(nccl_rc_), __FILE__, __LINE__); \
    } while (0)

static ncclDataType_t nccl_type(ct_comm_dtype dt) { return dt == CT_COMM_BF16 ? ncclBfloat16 : ncclFloat32; }

/* The collective about to be issued follows everything enqueued on the caller's stream. */
static nccl_state *after(ct_comm *c, void *stream)
{
    nccl_state *s = c->dev;
    ct_comm_cuda_after(c, &s->cu, stream);
    return s;
}

static int nccl_reduce_scatter(ct_comm *c, const void *send, void *recv, size_t n, ct_comm_dtype dt, void *stream)
{
    nccl_state *s = after(c, stream);
    NCCL_CHECK(c, ncclReduceScatter(send, recv, n, nccl_type(dt), ncclSum, s->comm, s->cu.stream));
    return 0;
}

/* In place: rank r's chunk sits at buf + r * n, where NCCL's in-place all-gather wants it. */
static int nccl_allgather(ct_comm *c, void *buf, size_t n, ct_comm_dtype dt, void *stream)
{
    nccl_state *s = after(c, stream);
    const size_t es = dt == CT_COMM_BF16 ? 2 : 4;
    NCCL_CHECK(c, ncclAllGather((const char *)buf + (size_t)c->rank * n * es, buf, n, nccl_type(dt), s->comm,
                                s->cu.stream));
    return 0;
}

static int nccl_allreduce(ct_comm *c, void *buf, size_t n, ct_comm_dtype dt, void *stream)
{
    nccl_state *s = after(c, stream);
    NCCL_CHECK(c, ncclAllReduce(buf, buf, n, nccl_type(dt), ncclSum, s->comm, s->cu.stream));
    return 0;
}

static int nccl_reduce(ct_comm *c, const void *send, void *recv, size_t n, ct_comm_dtype dt, int root, void *stream)
{
    nccl_state *s = after(c, stream);
    NCCL_CHECK(c, ncclReduce(send, recv, n, nccl_type(dt), ncclSum, root, s->comm, s->cu.stream));
    return 0;
}

static int nccl_broadcast(ct_comm *c, const void *send, void *recv, size_t n, ct_comm_dtype dt, int root,
                          void *stream)
{
    nccl_state *s = after(c, stream);
    NCCL_CHECK(c, ncclBroadcast(send, recv, n, nccl_type(dt), root, s->comm, s->cu.stream));
    return 0;
}

static void nccl_group(ct_comm *c, int begin)
{
    nccl_state *s = c->dev;
    if (begin) {
        NCCL_CHECK(c, ncclGroupStart());
        s->in_group = 1;
    } else {
        s->in_group = 0;
        NCCL_CHECK(c, ncclGroupEnd());
    }
}

static int nccl_wait(ct_comm *c, void *stream)
{
    nccl_state *s = c->dev;
    if (s->in_group) {
        fprintf(stderr, "comm: internal error: ct_comm_buf_wait inside a group\n");
        ct_comm_abort(c, 1);
    }
    ct_comm_cuda_wait(c, &s->cu, stream);
    return 0;
}

static void nccl_free(ct_comm *c)
{
    nccl_state *s = c->dev;
    /* NCCL goes first, with nothing of it left in flight on the stream */
    cudaSetDevice(s->cu.device);
    cudaStreamSynchronize(s->cu.stream);
    ncclCommDestroy(s->comm);
    ct_comm_cuda_close(&s->cu);
    free(s);
}

static const ct_comm_dev_ops nccl_ops = {
    .name = "nccl",
    .reduce_scatter = nccl_reduce_scatter,
    .allgather = nccl_allgather,
    .allreduce = nccl_allreduce,
    .reduce = nccl_reduce,
    .broadcast = nccl_broadcast,
    .group = nccl_group,
    .wait = nccl_wait,
    .free = nccl_free,
};

int ct_comm_nccl_attach(ct_comm *c, int device, char *err, size_t errlen)
{
    /* The id travels with a status, so a rank 0 that cannot make one fails every rank alike. */
    struct {
        int ok;
        ncclUniqueId id;
    } hello;
    memset(&hello, 0, sizeof hello);
    if (c->rank == 0) hello.ok = ncclGetUniqueId(&hello.id) == ncclSuccess;
    if (ct_comm_broadcast(c, &hello, sizeof hello, 0)) {
        ct_comm_set_err(err, errlen, "comm: broadcasting the NCCL id failed");
        return -1;
    }
    if (!hello.ok) {
        ct_comm_set_err(err, errlen, "comm: rank 0 could not create an NCCL id (ncclGetUniqueId failed; NCCL_DEBUG=WARN says why)");
        return -1;
    }
    nccl_state *s = calloc(1, sizeof *s);
    if (!s) {
        ct_comm_set_err(err, errlen, "comm: out of memory");
        return -1;
    }
    if (ct_comm_cuda_open(&s->cu, device, err, errlen)) {
        free(s);
        return -1;
    }
    ncclResult_t nr = ncclCommInitRank(&s->comm, c->size, hello.id, c->rank);
    if (nr != ncclSuccess) {
        ct_comm_set_err(err, errlen, "comm: NCCL could not start on GPU %d (rank %d of %d): %s", device, c->rank, c->size,
                ncclGetErrorString(nr));
        ct_comm_cuda_close(&s->cu);
        free(s);
        return -1;
    }
    c->dev = s;
    c->dev_ops = &nccl_ops;
    return 0;
}
