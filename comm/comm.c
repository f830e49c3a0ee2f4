/* comm.c — the communicator handle: finds the launcher, picks a transport, checks arguments
 * and counts payload bytes, then dispatches every collective through the transport vtable. */
#include "comm_impl.h"

#include <limits.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* The launcher that started this process, as read from its environment. */
typedef struct launcher {
    const char *name; /* NULL when none was found */
    int size;         /* world size it announced, 0 when it does not say */
    int rank;         /* this process's rank, -1 when it does not say */
} launcher;

/* An integer environment variable; -1 when unset or not a non-negative integer. */
static int env_int(const char *name)
{
    const char *s = getenv(name);
    if (!s || !*s) return -1;
    char *end;
    long v = strtol(s, &end, 10);
    if (*end || v < 0 || v > INT_MAX) return -1;
    return (int)v;
}

static int env_set(const char *name) { return getenv(name) != NULL; }

/* Open MPI's mpirun, PMIx (prterun, srun --mpi=pmix), srun itself, or a PMI-1/2 launcher
 * (MPICH's hydra, srun --mpi=pmi2). An sbatch script run without srun also carries
 * SLURM_PROCID=0 and SLURM_NTASKS=N, but only srun sets SLURM_STEP_ID: without it (and
 * without PMI variables) this process is the batch shell's single copy, not one of N ranks. */
static launcher find_launcher(void)
{
    launcher l = {NULL, 0, -1};
    if (env_set("OMPI_COMM_WORLD_SIZE")) {
        l.name = "Open MPI (mpirun)";
        l.size = env_int("OMPI_COMM_WORLD_SIZE");
        l.rank = env_int("OMPI_COMM_WORLD_RANK");
    } else if (env_set("PMIX_RANK")) {
        l.name = "PMIx";
        l.rank = env_int("PMIX_RANK");
        if (env_set("SLURM_STEP_NUM_TASKS")) l.size = env_int("SLURM_STEP_NUM_TASKS");
    } else if (env_set("SLURM_PROCID") && env_set("SLURM_STEP_ID")) {
        l.name = "Slurm (srun)";
        l.rank = env_int("SLURM_PROCID");
        l.size = env_set("SLURM_STEP_NUM_TASKS") ? env_int("SLURM_STEP_NUM_TASKS") : env_int("SLURM_NTASKS");
    } else if (env_set("PMI_SIZE") || env_set("PMI_RANK")) {
        l.name = "PMI";
        l.size = env_int("PMI_SIZE");
        l.rank = env_int("PMI_RANK");
    }
    if (l.size < 0) l.size = 0;
    return l;
}

void ct_comm_set_err(char *err, size_t errlen, const char *fmt, ...)
{
    if (!err || !errlen) return;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(err, errlen, fmt, ap);
    va_end(ap);
}

ct_comm *ct_comm_init_single(void)
{
    ct_comm *c = calloc(1, sizeof *c);
    if (!c) return NULL;
    c->ops = &ct_comm_single_ops;
    c->size = 1;
    c->local_size = 1;
    c->max_count = CT_COMM_CHUNK;
    return c;
}

int ct_comm_init(ct_comm **out, int *argc, char ***argv, char *err, size_t errlen)
{
    *out = NULL;
    launcher l = find_launcher();
    if (!l.name) {
        ct_comm *c = ct_comm_init_single();
        if (!c) { ct_comm_set_err(err, errlen, "comm: out of memory"); return -1; }
        *out = c;
        return 0;
    }
#if CTRAIN_HAVE_MPI
    ct_comm *c = ct_comm_init_single();
    if (!c) { ct_comm_set_err(err, errlen, "comm: out of memory"); return -1; }
    if (ct_comm_mpi_init(c, argc, argv, l.size, err, errlen) != 0) {
        free(c);
        return -1;
    }
    *out = c;
    return 0;
#else
    /* A launcher of one rank is harmless; of several, each copy would train alone. A rank
     * above 0 proves several even when the launcher did not announce the size. */
    if (l.size > 1 || l.rank > 0) {
        ct_comm_set_err(err, errlen,
                "comm: started by %s as rank %d of %d, but this ctrain was built without MPI "
                "(CTRAIN_MPI=OFF or no MPI found), so every rank would train alone: install an MPI "
                "(e.g. libopenmpi-dev) and rebuild with -DCTRAIN_MPI=ON, or run a single process",
                l.name, l.rank, l.size);
        return -1;
    }
    ct_comm *c = ct_comm_init_single();
    if (!c) { ct_comm_set_err(err, errlen, "comm: out of memory"); return -1; }
    *out = c;
    return 0;
#endif
}

void ct_comm_free(ct_comm *c)
{
    if (!c) return;
    if (c->dev_ops) c->dev_ops->free(c);
    c->dev_ops = NULL;
    c->dev = NULL;
    c->ops->free(c);
    free(c);
}

int ct_comm_rank(const ct_comm *c) { return c->rank; }
int ct_comm_size(const ct_comm *c) { return c->size; }
int ct_comm_local_rank(const ct_comm *c) { return c->local_rank; }
int ct_comm_local_size(const ct_comm *c) { return c->local_size; }
int ct_comm_node(const ct_comm *c) { return c->node; }
const char *ct_comm_transport(const ct_comm *c) { return c->ops->name; }
uint64_t ct_comm_bytes(const ct_comm *c) { return c->bytes; }

void ct_comm_set_max_count(ct_comm *c, size_t max_count)
{
    c->max_count = (max_count == 0 || max_count > INT_MAX) ? (size_t)CT_COMM_CHUNK : max_count;
}

/* Argument checks happen here, identically on every rank, so a bad call fails with -1 on all
 * ranks instead of reaching MPI on some and aborting the job. n == 0 returns at once without
 * communicating: every rank passes the same n, so every rank skips alike. */
int ct_comm_allreduce_sum(ct_comm *c, float *buf, size_t n)
{
    if (n == 0) return 0;
    if (!buf) return -1;
    c->bytes += (uint64_t)n * sizeof(float);
    return c->ops->allreduce_sum(c, buf, n);
}

int ct_comm_allreduce_sum_f64(ct_comm *c, double *buf, size_t n)
{
    if (n == 0) return 0;
    if (!buf) return -1;
    c->bytes += (uint64_t)n * sizeof(double);
    return c->ops->allreduce_sum_f64(c, buf, n);
}

int ct_comm_allreduce_sum_u64(ct_comm *c, uint64_t *buf, size_t n)
{
    if (n == 0) return 0;
    if (!buf) return -1;
    c->bytes += (uint64_t)n * sizeof(uint64_t);
    return c->ops->allreduce_sum_u64(c, buf, n);
}

int ct_comm_reduce_scatter_sum(ct_comm *c, const float *send, float *recv, size_t n)
{
    if (n == 0) return 0;
    if (!send || !recv) return -1;
    c->bytes += (uint64_t)n * (uint64_t)c->size * sizeof(float);
    if (c->size == 1 && send == recv) return 0; /* one rank, in place: the sum is there already */
    return c->ops->reduce_scatter_sum(c, send, recv, n);
}

int ct_comm_reduce_sum(ct_comm *c, const float *send, float *recv, size_t n, int root)
{
    if (root < 0 || root >= c->size) return -1;
    if (n == 0) return 0;
    if (!send || (c->rank == root && !recv)) return -1;
    c->bytes += (uint64_t)n * sizeof(float);
    if (c->size == 1 && send == recv) return 0;
    return c->ops->reduce_sum(c, send, recv, n, root);
}

int ct_comm_allgather(ct_comm *c, float *buf, size_t n)
{
    if (n == 0) return 0;
    if (!buf) return -1;
    c->bytes += (uint64_t)n * (uint64_t)c->size * sizeof(float);
    return c->ops->allgather(c, buf, n);
}

int ct_comm_broadcast(ct_comm *c, void *buf, size_t bytes, int root)
{
    if (root < 0 || root >= c->size) return -1;
    if (bytes == 0) return 0;
    if (!buf) return -1;
    c->bytes += (uint64_t)bytes;
    return c->ops->broadcast(c, buf, bytes, root);
}

int ct_comm_barrier(ct_comm *c) { return c->ops->barrier(c); }

int ct_comm_all_ok(ct_comm *c, int ok) { return c->ops->all_ok(c, ok != 0); }

_Noreturn void ct_comm_abort(ct_comm *c, int code)
{
    /* Messages printed just before the abort are the ones that explain it. */
    fflush(stdout);
    fflush(stderr);
    if (c) c->ops->abort(c, code);
    exit(code);
}

/* ---- buffer collectives: the device side when one is attached, else the host collectives */

int ct_comm_attach_device(ct_comm *c, int device, char *err, size_t errlen)
{
    if (c->dev_ops) return 0;
#if CTRAIN_HAVE_CUDA
    /* One rank: every reduction is a copy on the GPU, so no NCCL, no id, nothing sent. */
    if (c->size == 1) return ct_comm_copy_attach(c, device, err, errlen);
#endif
#if CTRAIN_HAVE_NCCL
    return ct_comm_nccl_attach(c, device, err, errlen);
#elif CTRAIN_HAVE_CUDA
    /* Decided from the size alone, before anything is sent: every rank fails alike. */
    ct_comm_set_err(err, errlen, "comm: NCCL is missing: this ctrain was built without it and trains on one GPU per "
            "job, but this job has %d ranks; install NCCL and rebuild (-DCTRAIN_NCCL=ON, see README, \"On GPUs\") "
            "to use %d GPUs, or run one rank", c->size, c->size);
    return -1;
#else
    ct_comm_set_err(err, errlen, "comm: this ctrain was built without the CUDA backend, so it cannot reduce on GPU %d",
            device);
    return -1;
#endif
}

int ct_comm_has_device(const ct_comm *c) { return c->dev_ops != NULL; }

const char *ct_comm_device_transport(const ct_comm *c) { return c->dev_ops ? c->dev_ops->name : "none"; }

static size_t dtype_size(ct_comm_dtype dt) { return dt == CT_COMM_BF16 ? 2 : 4; }

/* Host buffers are fp32 only; a device buffer call is checked the same way on every rank. */
static int buf_args_ok(const ct_comm *c, ct_comm_dtype dt)
{
    return c->dev_ops != NULL || dt == CT_COMM_F32;
}

int ct_comm_buf_reduce_scatter(ct_comm *c, const void *send, void *recv, size_t n, ct_comm_dtype dt, void *stream)
{
    if (n == 0) return 0;
    if (!send || !recv || !buf_args_ok(c, dt)) return -1;
    if (!c->dev_ops) return ct_comm_reduce_scatter_sum(c, send, recv, n);
    c->bytes += (uint64_t)n * (uint64_t)c->size * dtype_size(dt);
    return c->dev_ops->reduce_scatter(c, send, recv, n, dt, stream);
}

int ct_comm_buf_allgather(ct_comm *c, void *buf, size_t n, ct_comm_dtype dt, void *stream)
{
    if (n == 0) return 0;
    if (!buf || !buf_args_ok(c, dt)) return -1;
    if (!c->dev_ops) return ct_comm_allgather(c, buf, n);
    c->bytes += (uint64_t)n * (uint64_t)c->size * dtype_size(dt);
    return c->dev_ops->allgather(c, buf, n, dt, stream);
}

int ct_comm_buf_allreduce(ct_comm *c, void *buf, size_t n, ct_comm_dtype dt, void *stream)
{
    if (n == 0) return 0;
    if (!buf || !buf_args_ok(c, dt)) return -1;
    if (!c->dev_ops) return ct_comm_allreduce_sum(c, buf, n);
    c->bytes += (uint64_t)n * dtype_size(dt);
    return c->dev_ops->allreduce(c, buf, n, dt, stream);
}

int ct_comm_buf_reduce(ct_comm *c, const void *send, void *recv, size_t n, ct_comm_dtype dt, int root, void *stream)
{
    if (!c->dev_ops) return buf_args_ok(c, dt) ? ct_comm_reduce_sum(c, send, recv, n, root) : -1;
    if (root < 0 || root >= c->size) return -1;
    if (n == 0) return 0;
    if (!send || !recv) return -1;
    c->bytes += (uint64_t)n * dtype_size(dt);
    return c->dev_ops->reduce(c, send, recv, n, dt, root, stream);
}

int ct_comm_buf_broadcast(ct_comm *c, const void *send, void *recv, size_t n, ct_comm_dtype dt, int root,
                          void *stream)
{
    if (root < 0 || root >= c->size || !buf_args_ok(c, dt)) return -1;
    if (n == 0) return 0;
    if (!recv || (c->rank == root && !send)) return -1;
    if (c->dev_ops) {
        c->bytes += (uint64_t)n * dtype_size(dt);
        return c->dev_ops->broadcast(c, send, recv, n, dt, root, stream);
    }
    if (c->rank == root && send != recv) memcpy(recv, send, n * sizeof(float));
    return ct_comm_broadcast(c, recv, n * sizeof(float), root);
}

void ct_comm_buf_group_begin(ct_comm *c)
{
    if (c->dev_ops) c->dev_ops->group(c, 1);
}

void ct_comm_buf_group_end(ct_comm *c)
{
    if (c->dev_ops) c->dev_ops->group(c, 0);
}

int ct_comm_buf_wait(ct_comm *c, void *stream)
{
    return c->dev_ops ? c->dev_ops->wait(c, stream) : 0;
}
