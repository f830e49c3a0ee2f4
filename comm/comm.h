/* comm.h — who am I (rank, world size, local rank, node) and collectives on flat buffers.
 *
 * Transports fill a vtable behind the opaque ct_comm (comm_impl.h): MPI (host memory), and the
 * size-1 transport for runs without a launcher. NCCL (device memory) plugs in beside them.
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
 * send and recv must not overlap. */
int ct_comm_reduce_scatter_sum(ct_comm *c, const float *send, float *recv, size_t n);
/* In place on buf[n * size]: every rank contributes its chunk [rank*n, (rank+1)*n) and
 * receives everyone's. */
int ct_comm_allgather(ct_comm *c, float *buf, size_t n);
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

#endif
