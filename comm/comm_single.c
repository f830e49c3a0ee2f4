/* comm_single.c — the size-1 transport: with one rank every sum over ranks is the buffer
 * itself, every gather is already complete, and a broadcast from rank 0 changes nothing. */
#include "comm_impl.h"

#include <stdlib.h>
#include <string.h>

static int single_allreduce_sum(ct_comm *c, float *buf, size_t n) { return 0; }
static int single_allreduce_sum_f64(ct_comm *c, double *buf, size_t n) { return 0; }
static int single_allreduce_sum_u64(ct_comm *c, uint64_t *buf, size_t n) { return 0; }

/* The one rank's slice is the whole send buffer. */
static int single_reduce_scatter_sum(ct_comm *c, const float *send, float *recv, size_t n)
{
    memcpy(recv, send, n * sizeof *recv);
    return 0;
}

static int single_reduce_sum(ct_comm *c, const float *send, float *recv, size_t n, int root)
{
    if (recv != send) memmove(recv, send, n * sizeof *recv);
    return 0;
}

static int single_allgather(ct_comm *c, float *buf, size_t n) { return 0; }
static int single_broadcast(ct_comm *c, void *buf, size_t bytes, int root) { return 0; }
static int single_barrier(ct_comm *c) { return 0; }
static int single_all_ok(ct_comm *c, int ok) { return ok; }

static void single_abort(ct_comm *c, int code) { exit(code); }
static void single_free(ct_comm *c) {}

const ct_comm_ops ct_comm_single_ops = {
    .name = "single",
    .allreduce_sum = single_allreduce_sum,
    .allreduce_sum_f64 = single_allreduce_sum_f64,
    .allreduce_sum_u64 = single_allreduce_sum_u64,
    .reduce_scatter_sum = single_reduce_scatter_sum,
    .reduce_sum = single_reduce_sum,
    .allgather = single_allgather,
    .broadcast = single_broadcast,
    .barrier = single_barrier,
    .all_ok = single_all_ok,
    .abort = single_abort,
    .free = single_free,
};
