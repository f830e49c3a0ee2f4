/* comm_impl.h — private to comm/: the transport vtable behind the opaque ct_comm, and the
 * constructors comm.c picks between. Not for other modules (tests may include it to reach
 * ct_comm_set_max_count). */
#ifndef CT_COMM_IMPL_H
#define CT_COMM_IMPL_H

#include "comm.h"

#include <stddef.h>
#include <stdint.h>

/* One transport. comm.c validates arguments and counts bytes before calling a slot, so slots
 * see only legal calls (root in range, n > 0 where a buffer is touched). Every slot is
 * required; a transport with nothing to do fills in a trivial one. Collective slots return
 * 0, or -1 on a transport error. */
typedef struct ct_comm_ops {
    const char *name; /* what ct_comm_transport returns */
    int (*allreduce_sum)(ct_comm *c, float *buf, size_t n);
    int (*allreduce_sum_f64)(ct_comm *c, double *buf, size_t n);
    int (*allreduce_sum_u64)(ct_comm *c, uint64_t *buf, size_t n);
    int (*reduce_scatter_sum)(ct_comm *c, const float *send, float *recv, size_t n);
    int (*reduce_sum)(ct_comm *c, const float *send, float *recv, size_t n, int root);
    int (*allgather)(ct_comm *c, float *buf, size_t n);
    int (*broadcast)(ct_comm *c, void *buf, size_t bytes, int root);
    int (*barrier)(ct_comm *c);
    int (*all_ok)(ct_comm *c, int ok);
    /* Must not return (a function pointer cannot carry _Noreturn; comm.c exits if it does). */
    void (*abort)(ct_comm *c, int code);
    /* Releases the transport's state (impl), not the ct_comm itself. */
    void (*free)(ct_comm *c);
} ct_comm_ops;

struct ct_comm {
    const ct_comm_ops *ops;
    int rank, size;
    int local_rank, local_size; /* among the ranks sharing this node's memory */
    int node;                   /* index of this node among the job's nodes, 0-based */
    uint64_t bytes;             /* payload bytes passed to collectives, see ct_comm_bytes */
    const struct ct_comm_dev_ops *dev_ops; /* the device side, once attached (else NULL) */
    void *dev;                  /* its own state */
    size_t max_count;           /* largest element count one transport call may carry */
    void *impl;                 /* the transport's own state */
};

extern const ct_comm_ops ct_comm_single_ops;

/* Fills err (when non-NULL) with a printf-style message; the transports' errors start "comm: ". */
void ct_comm_set_err(char *err, size_t errlen, const char *fmt, ...);

/* The MPI transport: initialises MPI unless already initialised, learns rank, size, local
 * rank and node from MPI_COMM_WORLD. expect_size is the world size the launcher announced
 * (0 when it did not say): an MPI world of 1 under a launcher of N > 1 means MPI could not
 * reach the launcher, and N silent copies of one job would follow, so that is an error.
 * Returns -1 with err filled (and MPI finalised again if this call initialised it). */
#if CTRAIN_HAVE_MPI
int ct_comm_mpi_init(ct_comm *c, int *argc, char ***argv, int expect_size, char *err, size_t errlen);
#endif

/* The device side of a communicator: collectives on device memory, attached by
 * ct_comm_attach_device. comm.c validates arguments and counts bytes first, as for the host
 * transports. Every call is ordered after the work enqueued on `stream` so far and runs on the
 * device side's own stream; wait orders `stream` after everything issued. Failures print
 * file:line and end the job (ct_comm_abort). Every slot is required. */
typedef struct ct_comm_dev_ops {
    const char *name; /* what ct_comm_device_transport returns */
    int (*reduce_scatter)(ct_comm *c, const void *send, void *recv, size_t n, ct_comm_dtype dt, void *stream);
    int (*allgather)(ct_comm *c, void *buf, size_t n, ct_comm_dtype dt, void *stream);
    int (*allreduce)(ct_comm *c, void *buf, size_t n, ct_comm_dtype dt, void *stream);
    int (*reduce)(ct_comm *c, const void *send, void *recv, size_t n, ct_comm_dtype dt, int root, void *stream);
    int (*broadcast)(ct_comm *c, const void *send, void *recv, size_t n, ct_comm_dtype dt, int root, void *stream);
    void (*group)(ct_comm *c, int begin); /* ct_comm_buf_group_begin (1) and _end (0) */
    int (*wait)(ct_comm *c, void *stream);
    /* Releases the device side's state (dev); comm.c clears dev and dev_ops. */
    void (*free)(ct_comm *c);
} ct_comm_dev_ops;

/* Each attach fills c->dev and c->dev_ops, or returns -1 with err filled and c untouched.
 * The copy (comm_cuda.c, built with CTRAIN_HAVE_CUDA): a communicator of one rank, where every
 * reduction is a device-to-device copy or nothing; it starts no NCCL and sends nothing. NCCL
 * (comm_nccl.c, built with CTRAIN_HAVE_NCCL): any size, its unique id made on rank 0 and
 * broadcast over the host transport. */
#if CTRAIN_HAVE_CUDA
int ct_comm_copy_attach(ct_comm *c, int device, char *err, size_t errlen);
#endif
#if CTRAIN_HAVE_NCCL
int ct_comm_nccl_attach(ct_comm *c, int device, char *err, size_t errlen);
#endif

/* The most elements (bytes, for a broadcast) one host transport call carries, 4 Mi (16 MiB of
 * fp32): MPI's collectives allocate temporaries as large as their message (a reduce-scatter or
 * an all-gather up to the whole buffer), so larger buffers go in chunks, which bounds that
 * memory (and keeps counts within int). */
#define CT_COMM_CHUNK ((size_t)1 << 22)

/* For tests: caps the element (or byte, for broadcast) count of a single transport call so
 * the chunked paths can be exercised on small buffers. 0 restores the default (CT_COMM_CHUNK).
 * Call it on every rank alike. */
void ct_comm_set_max_count(ct_comm *c, size_t max_count);

#endif
