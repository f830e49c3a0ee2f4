/* comm.c — the communicator handle and the size-1 transport. */
#include "comm.h"

#include <stdlib.h>

struct ct_comm {
    const char *transport;
    int rank, size, local_rank;
};

ct_comm *ct_comm_init_single(void)
{
    ct_comm *c = calloc(1, sizeof *c);
    if (!c) return NULL;
    c->transport = "single";
    c->size = 1;
    return c;
}

void ct_comm_free(ct_comm *c) { free(c); }

int ct_comm_rank(const ct_comm *c) { return c->rank; }
int ct_comm_size(const ct_comm *c) { return c->size; }
int ct_comm_local_rank(const ct_comm *c) { return c->local_rank; }
const char *ct_comm_transport(const ct_comm *c) { return c->transport; }

/* With one rank the sum over ranks and the broadcast are the buffer itself. */
int ct_comm_allreduce_sum(ct_comm *c, float *buf, size_t n) { return 0; }
int ct_comm_broadcast(ct_comm *c, float *buf, size_t n, int root) { return root == 0 ? 0 : -1; }
int ct_comm_barrier(ct_comm *c) { return 0; }
