/* comm_cuda.h — private to comm/ (built with CTRAIN_HAVE_CUDA): what both device sides share,
 * the NCCL one (comm_nccl.c) and the size-1 copy (comm_cuda.c). Needs the CUDA runtime only,
 * never kernels/.
 *
 * A device side issues its work on a stream of its own: each collective first makes that stream
 * wait for an event recorded on the caller's compute stream, so it sees every kernel enqueued
 * before it while the compute stream goes on; ct_comm_cuda_wait makes the compute stream wait
 * for the communication stream in turn. CUDA failures print file:line and end the whole job: a
 * rank must not go on after a failed collective. */
#ifndef CT_COMM_CUDA_H
#define CT_COMM_CUDA_H

#include "comm_impl.h"

#include <cuda_runtime.h>

typedef struct ct_comm_cuda {
    int device;
    cudaStream_t stream; /* where the collectives run */
    cudaEvent_t ready;   /* recorded on the caller's stream: the work a collective must follow */
    cudaEvent_t done;    /* recorded on `stream`: what the caller's stream must wait for */
} ct_comm_cuda;

/* Prints "file:line: rank r: what failed: msg" and ends the job (ct_comm_abort). */
_Noreturn void ct_comm_dev_fail(ct_comm *c, const char *what, const char *msg, const char *file, int line);

#define CT_CUDA_CHECK(c, call)                                                                  \
    do {                                                                                        \
        cudaError_t cuda_rc_ = (call);                                                          \
        if (cuda_rc_ != cudaSuccess) ct_comm_dev_fail(c, #call, cudaGetErrorString(cuda_rc_), __FILE__, __LINE__); \
    } while (0)

/* Selects `device` and makes the stream and events; -1 with err filled ("comm: GPU d: ...")
 * and nothing left behind. */
int ct_comm_cuda_open(ct_comm_cuda *s, int device, char *err, size_t errlen);
/* Waits for what the stream still has to do, then releases stream and events. */
void ct_comm_cuda_close(ct_comm_cuda *s);
/* The work about to be issued on s->stream follows everything enqueued on `stream` so far. */
void ct_comm_cuda_after(ct_comm *c, ct_comm_cuda *s, void *stream);
/* The later work of `stream` follows everything issued on s->stream so far. */
void ct_comm_cuda_wait(ct_comm *c, ct_comm_cuda *s, void *stream);

#endif
