/* comm_nccl.c — the device side of a communicator: NCCL collectives on CUDA device memory.
 * Compiled only when CTRAIN_HAVE_NCCL.
 *
 * One NCCL communicator spans the same ranks as the host transport; rank 0 makes its unique id
 * and the host transport broadcasts it (MPI, or nothing at all with one rank). Collectives run
 * on a stream of their own: each call first makes that stream wait for an event recorded on
 * the caller's compute stream, so it sees every kernel enqueued before it while the compute
 * stream goes on (gradient reduction overlapped with backward); ct_comm_nccl_wait makes the
 * compute stream wait for the communication stream in turn. NCCL and CUDA failures print
 * file:line and end the whole job: a rank must not go on after a failed collective. */
#include "comm_impl.h"

#include <cuda_runtime.h>
#include <nccl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

typedef struct nccl_state {
    ncclComm_t comm;
    int device;
    cudaStream_t stream; /* where the collectives run */
    cudaEvent_t ready;   /* recorded on the caller's stream: the work a collective must follow */
    cudaEvent_t done;    /* recorded on `stream`: what the caller's stream must wait for */
    int in_group;        /* inside ct_comm_buf_group_begin/end */
} nccl_state;

static _Noreturn void nccl_fail(ct_comm *c, const char *what, const char *msg, const char *file, int line)
{
    fprintf(stderr, "%s:%d: rank %d: %s failed: %s\n", file, line, c->rank, what, msg);
    ct_comm_abort(c, 1);
}

#define NCCL_CHECK(c, call)                                                                     \
    do {                                                                                        \
        ncclResult_t nccl_rc_ = (call);                                                         \
        if (nccl_rc_ != ncclSuccess) nccl_fail(c, #call, ncclGetErrorString(nccl_rc_), __FILE__, __LINE__); \
    } while (0)
#define CUDA_CHECK(c, call)                                                                     \
    do {                                                                                        \
        cudaError_t cuda_rc_ = (call);                                                          \
        if (cuda_rc_ != cudaSuccess) nccl_fail(c, #call, cudaGetErrorString(cuda_rc_), __FILE__, __LINE__); \
    } while (0)

static ncclDataType_t nccl_type(ct_comm_dtype dt) { return dt == CT_COMM_BF16 ? ncclBfloat16 : ncclFloat32; }

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
    s->device = device;
    cudaError_t ce = cudaSetDevice(device);
    if (ce == cudaSuccess) ce = cudaStreamCreateWithFlags(&s->stream, cudaStreamNonBlocking);
    if (ce == cudaSuccess) ce = cudaEventCreateWithFlags(&s->ready, cudaEventDisableTiming);
    if (ce == cudaSuccess) ce = cudaEventCreateWithFlags(&s->done, cudaEventDisableTiming);
    if (ce != cudaSuccess) {
        ct_comm_set_err(err, errlen, "comm: GPU %d: %s", device, cudaGetErrorString(ce));
        goto fail;
    }
    ncclResult_t nr = ncclCommInitRank(&s->comm, c->size, hello.id, c->rank);
    if (nr != ncclSuccess) {
        s->comm = NULL;
        ct_comm_set_err(err, errlen, "comm: NCCL could not start on GPU %d (rank %d of %d): %s", device, c->rank, c->size,
                ncclGetErrorString(nr));
        goto fail;
    }
    c->dev = s;
    return 0;
fail:
    if (s->done) cudaEventDestroy(s->done);
    if (s->ready) cudaEventDestroy(s->ready);
    if (s->stream) cudaStreamDestroy(s->stream);
    free(s);
    return -1;
}

void ct_comm_nccl_free(ct_comm *c)
{
    nccl_state *s = c->dev;
    if (!s) return;
    cudaSetDevice(s->device);
    cudaStreamSynchronize(s->stream);
    ncclCommDestroy(s->comm);
    cudaEventDestroy(s->done);
    cudaEventDestroy(s->ready);
    cudaStreamDestroy(s->stream);
    free(s);
    c->dev = NULL;
}

/* The collective about to be issued follows everything enqueued on the caller's stream. */
static nccl_state *after(ct_comm *c, void *stream)
{
    nccl_state *s = c->dev;
    CUDA_CHECK(c, cudaEventRecord(s->ready, (cudaStream_t)stream));
    CUDA_CHECK(c, cudaStreamWaitEvent(s->stream, s->ready, 0));
    return s;
}

int ct_comm_nccl_reduce_scatter(ct_comm *c, const void *send, void *recv, size_t n, ct_comm_dtype dt, void *stream)
{
    nccl_state *s = after(c, stream);
    NCCL_CHECK(c, ncclReduceScatter(send, recv, n, nccl_type(dt), ncclSum, s->comm, s->stream));
    return 0;
}

/* In place: rank r's chunk sits at buf + r * n, where NCCL's in-place all-gather wants it. */
int ct_comm_nccl_allgather(ct_comm *c, void *buf, size_t n, ct_comm_dtype dt, void *stream)
{
    nccl_state *s = after(c, stream);
    const size_t es = dt == CT_COMM_BF16 ? 2 : 4;
    NCCL_CHECK(c, ncclAllGather((const char *)buf + (size_t)c->rank * n * es, buf, n, nccl_type(dt), s->comm,
                                s->stream));
    return 0;
}

int ct_comm_nccl_allreduce(ct_comm *c, void *buf, size_t n, ct_comm_dtype dt, void *stream)
{
    nccl_state *s = after(c, stream);
    NCCL_CHECK(c, ncclAllReduce(buf, buf, n, nccl_type(dt), ncclSum, s->comm, s->stream));
    return 0;
}

int ct_comm_nccl_reduce(ct_comm *c, const void *send, void *recv, size_t n, ct_comm_dtype dt, int root, void *stream)
{
    nccl_state *s = after(c, stream);
    NCCL_CHECK(c, ncclReduce(send, recv, n, nccl_type(dt), ncclSum, root, s->comm, s->stream));
    return 0;
}

void ct_comm_nccl_group(ct_comm *c, int begin)
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

int ct_comm_nccl_wait(ct_comm *c, void *stream)
{
    nccl_state *s = c->dev;
    if (s->in_group) {
        fprintf(stderr, "comm: internal error: ct_comm_buf_wait inside a group\n");
        ct_comm_abort(c, 1);
    }
    CUDA_CHECK(c, cudaEventRecord(s->done, s->stream));
    CUDA_CHECK(c, cudaStreamWaitEvent((cudaStream_t)stream, s->done, 0));
    return 0;
}
