/* comm.h — who am I (rank, world size, local rank, node) and collectives on flat buffers.
 *
 * Transports fill a vtable behind the opaque ct_comm (comm_impl.h): MPI (host memory), and the
 * size-1 transport for runs without a launcher. A device side (device memory: NCCL across
 * ranks, plain copies with one rank) can be attached beside either; the buffer collectives at
 * the end of this header use it.
 * Collectives return 0, or -1 on bad arguments (a root out of range, a NULL buffer with n > 0),
 * refused before anything is sent, so a call that is bad on every rank fails on every rank
 * instead of hanging. A transport error aborts the whole job
 * (MPI_ERRORS_ARE_FATAL, or file:line and MPI_Abort), so no rank waits on a dead peer.
 * n == 0 returns 0 at once. Counts past INT_MAX are sent in chunks.
 * Every rank must call every collective in the same order with the same sizes. */
#ifndef CT_COMM_H
#define CT_COMM_H

#include <stddef.h>
#include <stdint.h>

typedef struct ct_comm ct_comm;

/* Finds the launcher: under mpirun (Open MPI, PMIx), srun (Slurm; a batch script without srun
 * does not count) or a PMI launcher, initialises MPI (MPI_THREAD_FUNNELED) and learns rank,
 * world, local rank and node from it; otherwise returns the size-1 communicator. Errors, since
 * each would silently run N independent copies of the job: a launcher of several ranks in a
 * build without MPI, and a launcher of several ranks whose MPI sees a world of 1 (MPI and
 * launcher do not talk, e.g. srun without --mpi=pmix). Returns -1 with err filled (the
 * message starts "comm: "); *out stays NULL. */
int ct_comm_init(ct_comm **out, int *argc, char ***argv, char *err, size_t errlen);
/* A communicator of one rank: every collective is the identity. NULL when out of memory. */
ct_comm *ct_comm_init_single(void);
/* Finalizes MPI when this communicator initialised it. */
void ct_comm_free(ct_comm *c);

int ct_comm_rank(const ct_comm *c);
int ct_comm_size(const ct_comm *c);
int ct_comm_local_rank(const ct_comm *c); /* rank among the ranks of this node */
int ct_comm_local_size(const ct_comm *c); /* ranks on this node */
int ct_comm_node(const ct_comm *c);       /* index of this node, 0-based */
const char *ct_comm_transport(const ct_comm *c); /* "mpi", "single" */

/* In place: buf[n] becomes the elementwise sum over ranks. */
int ct_comm_allreduce_sum(ct_comm *c, float *buf, size_t n);
int ct_comm_allreduce_sum_f64(ct_comm *c, double *buf, size_t n);
/* In place, modulo 2^64 (checksums combined across ranks). */
int ct_comm_allreduce_sum_u64(ct_comm *c, uint64_t *buf, size_t n);
/* send[n * size] summed over ranks; rank r receives elements [r*n, (r+1)*n) in recv[n].
 * send and recv must not overlap (with one rank they may be the same buffer: nothing moves). */
int ct_comm_reduce_scatter_sum(ct_comm *c, const float *send, float *recv, size_t n);
/* In place on buf[n * size]: every rank contributes its chunk [rank*n, (rank+1)*n) and
 * receives everyone's. */
int ct_comm_allgather(ct_comm *c, float *buf, size_t n);
/* send[n] summed over ranks into recv[n] on root; recv is not touched elsewhere. send and recv
 * must not overlap (with one rank, as above, they may be the same buffer). */
int ct_comm_reduce_sum(ct_comm *c, const float *send, float *recv, size_t n, int root);
/* Every rank receives root's bytes. */
int ct_comm_broadcast(ct_comm *c, void *buf, size_t bytes, int root);
int ct_comm_barrier(ct_comm *c);
/* 1 on every rank when ok is non-zero on every rank, else 0 on every rank: lets ranks fail
 * together, with a message, instead of one rank leaving the others waiting. */
int ct_comm_all_ok(ct_comm *c, int ok);

/* Ends the whole job now (MPI_Abort on MPI_COMM_WORLD: every rank, however busy or blocked);
 * with one rank, exit(code). Flushes stdout and stderr first. */
_Noreturn void ct_comm_abort(ct_comm *c, int code);

/* Payload bytes this rank has passed to collectives since init (the sum of each call's
 * buffer size: n floats for allreduce, n*size floats for reduce-scatter's send buffer and for
 * allgather's buffer, the bytes of a broadcast; nothing for barrier and all_ok), for
 * measuring communication volume. */
uint64_t ct_comm_bytes(const ct_comm *c);

/* ---- Buffer collectives: gradients and parameters where the compute backend keeps them.
 * With a device attached they run on device memory, asynchronously (over NCCL with several
 * ranks; with one rank a reduction is a device-to-device copy, or nothing): each call is
 * ordered after the work enqueued on `stream` (the compute backend's native stream, a
 * cudaStream_t) so far and runs on the communicator's own stream, so the caller's stream goes
 * on computing meanwhile; ct_comm_buf_wait(c, stream) orders the later work of `stream` after
 * every buffer collective issued before it. Without a device they are the host collectives
 * above (dtype must be CT_COMM_F32; stream is ignored; done on return). Bytes count alike. */
typedef enum { CT_COMM_F32, CT_COMM_BF16 } ct_comm_dtype;

/* Attaches CUDA device `device`. Collective. With one rank it starts no NCCL and sends
 * nothing: the collectives become device-to-device copies on a stream of the communicator's
 * own, so a build without NCCL trains on one GPU. With several ranks: one NCCL communicator over
 * the same ranks, its unique id made on rank 0 and broadcast over the host transport. Attached
 * already: returns 0. Returns -1 with err filled ("comm: ...") when this build has no CUDA
 * backend, has no NCCL and the communicator has several ranks (every rank fails alike, before
 * anything is sent), or the GPU or NCCL cannot start; a rank that fails there may leave the
 * others inside NCCL's start, so the caller ends the job (ct_comm_abort). */
int ct_comm_attach_device(ct_comm *c, int device, char *err, size_t errlen);
int ct_comm_has_device(const ct_comm *c);
/* How the buffer collectives move device memory: "nccl", "copy" (one rank) or "none" (no
 * device attached: the host collectives). */
const char *ct_comm_device_transport(const ct_comm *c);

int ct_comm_buf_reduce_scatter(ct_comm *c, const void *send, void *recv, size_t n, ct_comm_dtype dt, void *stream);
int ct_comm_buf_allgather(ct_comm *c, void *buf, size_t n, ct_comm_dtype dt, void *stream);
int ct_comm_buf_allreduce(ct_comm *c, void *buf, size_t n, ct_comm_dtype dt, void *stream);
int ct_comm_buf_reduce(ct_comm *c, const void *send, void *recv, size_t n, ct_comm_dtype dt, int root, void *stream);
/* Root's send (n elements) arrives in every rank's recv, root's own included (send == recv on
 * the root is allowed); send is read on the root only. */
int ct_comm_buf_broadcast(ct_comm *c, const void *send, void *recv, size_t n, ct_comm_dtype dt, int root,
                          void *stream);
/* Brackets several buffer collectives that NCCL may run together (its group calls); no-ops
 * on the host. */
void ct_comm_buf_group_begin(ct_comm *c);
void ct_comm_buf_group_end(ct_comm *c);
int ct_comm_buf_wait(ct_comm *c, void *stream);

#endif
