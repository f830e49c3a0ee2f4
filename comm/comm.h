/* comm.h — who am I (rank, world size, local rank) and collectives on flat fp32 buffers.
 *
 * Transports fill a vtable behind the opaque ct_comm (comm_impl.h). This build has the
 * size-1 transport, for runs without mpirun; MPI and NCCL transports plug in beside it. */
#ifndef CT_COMM_H
#define CT_COMM_H

#include <stddef.h>

typedef struct ct_comm ct_comm;

/* A communicator of one rank: every collective is the identity. Returns NULL when out of memory. */
ct_comm *ct_comm_init_single(void);
void ct_comm_free(ct_comm *c);

int ct_comm_rank(const ct_comm *c);
int ct_comm_size(const ct_comm *c);
int ct_comm_local_rank(const ct_comm *c);
const char *ct_comm_transport(const ct_comm *c);

/* In place: buf[n] becomes the elementwise sum over ranks. Returns 0, or -1 on a transport error. */
int ct_comm_allreduce_sum(ct_comm *c, float *buf, size_t n);
/* Every rank gets root's buf[n]. */
int ct_comm_broadcast(ct_comm *c, float *buf, size_t n, int root);
/* Waits for every rank. */
int ct_comm_barrier(ct_comm *c);

#endif
