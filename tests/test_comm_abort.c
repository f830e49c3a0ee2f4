/* test_comm_abort.c — one failing rank takes the whole job down: rank 1 calls ct_comm_abort
 * while rank 0 waits in a barrier that can never complete. Run under `mpirun -np 2` by
 * tests/comm_abort.sh, which asserts a non-zero exit within seconds. Rank 0 printing
 * "barrier returned" would mean the abort did not reach it. With one rank (no launcher) the
 * abort is exit(code). */
#include "comm.h"

#include <stdio.h>
#include <time.h>

int main(int argc, char **argv)
{
    char err[512];
    ct_comm *c = NULL;
    if (ct_comm_init(&c, &argc, &argv, err, sizeof err) != 0) {
        fprintf(stderr, "test_comm_abort: %s\n", err);
        return 1;
    }
    int rank = ct_comm_rank(c);
    if (rank == 1 || ct_comm_size(c) == 1) {
        /* let rank 0 reach the barrier first, so the abort must interrupt a waiting peer */
        struct timespec t = {0, 200 * 1000 * 1000};
        nanosleep(&t, NULL);
        fprintf(stderr, "test_comm_abort: rank %d aborting with code 3\n", rank);
        ct_comm_abort(c, 3);
    }
    if (rank == 0) printf("test_comm_abort: rank 0 waiting in barrier\n");
    fflush(stdout);
    ct_comm_barrier(c);
    printf("test_comm_abort: rank %d: barrier returned (the abort did not stop this rank)\n", rank);
    ct_comm_free(c);
    return 0;
}
