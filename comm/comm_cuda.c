/* comm_cuda.c — the CUDA runtime side of comm/ (built with CTRAIN_HAVE_CUDA, no NCCL needed):
 * the stream and events every device side orders its work with (comm_cuda.h), and the device
 * side of a communicator of one rank.
 *
 * With one rank every sum over ranks is the rank's own buffer: a reduce-scatter or a reduce is a
 * device-to-device copy from send to recv (nothing when they are the same buffer), and an
 * all-reduce or an all-gather in place changes nothing. So a single-GPU job starts no NCCL
 * communicator and makes no unique id: attaching sends nothing at all, and a build without
 * NCCL trains on one GPU. The copies keep the NCCL side's stream contract (comm_impl.h): they run
 * on the device side's stream, after the caller's work so far, and ct_comm_buf_wait orders the
 * caller's stream after them. */
#include "comm_cuda.h"

#include <stdio.h>
#include <stdlib.h>

_Noreturn void ct_comm_dev_fail(ct_comm *c, const char *what, const char *msg, const char *file, int line)
{
    fprintf(stderr, "%s:%d: rank %d: %s failed: %s\n", file, line, c->rank, what, msg);
    ct_comm_abort(c, 1);
}

int ct_comm_cuda_open(ct_comm_cuda *s, int device, char *err, size_t errlen)
{
    *s = (ct_comm_cuda){.device = device};
    cudaError_t ce = cudaSetDevice(device);
    if (ce == cudaSuccess) ce = cudaStreamCreateWithFlags(&s->stream, cudaStreamNonBlocking);
    if (ce == cudaSuccess) ce = cudaEventCreateWithFlags(&s->ready, cudaEventDisableTiming);
    if (ce == cudaSuccess) ce = cudaEventCreateWithFlags(&s->done, cudaEventDisableTiming);
    if (ce == cudaSuccess) return 0;
    ct_comm_set_err(err, errlen, "comm: GPU %d: %s", device, cudaGetErrorString(ce));
    if (s->done) cudaEventDestroy(s->done);
    if (s->ready) cudaEventDestroy(s->ready);
    if (s->stream) cudaStreamDestroy(s->stream);
    *s = (ct_comm_cuda){.device = device};
    return -1;
}

void ct_comm_cuda_close(ct_comm_cuda *s)
{
    cudaSetDevice(s->device);
    cudaStreamSynchronize(s->stream);
    cudaEventDestroy(s->done);
    cudaEventDestroy(s->ready);
    cudaStreamDestroy(s->stream);
}

void ct_comm_cuda_after(ct_comm *c, ct_comm_cuda *s, void *stream)
{
    CT_CUDA_CHECK(c, cudaEventRecord(s->ready, (cudaStream_t)stream));
    CT_CUDA_CHECK(c, cudaStreamWaitEvent(s->stream, s->ready, 0));
}

void ct_comm_cuda_wait(ct_comm *c, ct_comm_cuda *s, void *stream)
{
    CT_CUDA_CHECK(c, cudaEventRecord(s->done, s->stream));
    CT_CUDA_CHECK(c, cudaStreamWaitEvent((cudaStream_t)stream, s->done, 0));
}

/* ---- the size-1 device side: copies */

static size_t elem_size(ct_comm_dtype dt) { return dt == CT_COMM_BF16 ? 2 : 4; }

/* recv[n] = send[n], after the caller's work so far; nothing when they are one buffer. */
static int copy_to(ct_comm *c, const void *send, void *recv, size_t n, ct_comm_dtype dt, void *stream)
{
    if (send == recv) return 0;
    ct_comm_cuda *s = c->dev;
    ct_comm_cuda_after(c, s, stream);
    CT_CUDA_CHECK(c, cudaMemcpyAsync(recv, send, n * elem_size(dt), cudaMemcpyDeviceToDevice, s->stream));
    return 0;
}

/* The one rank's slice is the whole send buffer. */
static int copy_reduce_scatter(ct_comm *c, const void *send, void *recv, size_t n, ct_comm_dtype dt, void *stream)
{
    return copy_to(c, send, recv, n, dt, stream);
}

/* root is 0, the only rank (comm.c checked it). */
static int copy_reduce(ct_comm *c, const void *send, void *recv, size_t n, ct_comm_dtype dt, int root, void *stream)
{
    return copy_to(c, send, recv, n, dt, stream);
}

static int copy_broadcast(ct_comm *c, const void *send, void *recv, size_t n, ct_comm_dtype dt, int root,
                          void *stream)
{
    return send == recv ? 0 : copy_to(c, send, recv, n, dt, stream);
}

/* In place with one rank: the buffer already holds the result. */
static int copy_in_place(ct_comm *c, void *buf, size_t n, ct_comm_dtype dt, void *stream) { return 0; }

static void copy_group(ct_comm *c, int begin) {}

static int copy_wait(ct_comm *c, void *stream)
{
    ct_comm_cuda_wait(c, c->dev, stream);
    return 0;
}

static void copy_free(ct_comm *c)
{
    ct_comm_cuda_close(c->dev);
    free(c->dev);
}

static const ct_comm_dev_ops copy_ops = {
    .name = "copy",
    .reduce_scatter = copy_reduce_scatter,
    .allgather = copy_in_place,
    .allreduce = copy_in_place,
    .reduce = copy_reduce,
    .broadcast = copy_broadcast,
    .group = copy_group,
    .wait = copy_wait,
    .free = copy_free,
};

int ct_comm_copy_attach(ct_comm *c, int device, char *err, size_t errlen)
{
    if (c->size != 1) {
        ct_comm_set_err(err, errlen, "comm: internal error: the copy device side serves one rank, not %d", c->size);
        return -1;
    }
    ct_comm_cuda *s = malloc(sizeof *s);
    if (!s) {
        ct_comm_set_err(err, errlen, "comm: out of memory");
        return -1;
    }
    if (ct_comm_cuda_open(s, device, err, errlen)) {
        free(s);
        return -1;
    }
    c->dev = s;
    c->dev_ops = &copy_ops;
    return 0;
}
