/* optim.c — ZeRO-1 AdamW: reduce-scatter, clip, update this rank's slice, all-gather.
 *
 * Gradients and parameters are reduced and gathered where the backend keeps them: over NCCL
 * in the storage dtype (bf16) on several GPUs (a device-to-device copy on one), over the host transport in fp32 on the CPU. With
 * overlap on, the step's last backward hands over each finished range of gradients as it
 * completes (ct_optim_grad_ready) and its reduction starts at once: under ZeRO-1 the range is
 * cut at the rank slices and each piece reduced onto the rank that owns it, which moves the
 * same bytes as one reduce-scatter. */
#include "optim.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>

struct ct_optim {
    ct_model *model;
    ct_comm *comm;
    const ct_backend *be;
    ct_kctx *ctx;
    int zero_stage;
    int overlap;         /* reduce ranges as backward finishes them */
    ct_comm_dtype dtype; /* of gradients and parameters */
    size_t begin, len;   /* this rank's slice of the flat buffer */
    size_t reduced;      /* elements handed over by ct_optim_grad_ready since the last step */
    float *m, *v;        /* [len] AdamW moments */
    float *master;       /* [len] fp32 weights: the parameters themselves when they are fp32 */
    void *gslice;        /* [len] reduced gradients, storage dtype (stage 1; stage 0 reduces in place) */
    int t;               /* steps taken */
    size_t state_bytes;
};

int ct_optim_init(ct_optim **out, ct_model *m, ct_comm *comm, int zero_stage, int overlap, char *err, size_t errlen)
{
    *out = NULL;
    if (ct_model_alloc_grads(m, err, errlen)) return -1;
    ct_trainable tr = ct_model_trainable(m);
    size_t n = tr.numel, world = (size_t)ct_comm_size(comm);
    if (n % world) {
        snprintf(err, errlen, "internal: flat buffer of %zu elements is not padded to the world size %zu", n, world);
        return -1;
    }
    ct_optim *o = calloc(1, sizeof *o);
    if (!o) goto oom;
    o->model = m;
    o->comm = comm;
    o->be = ct_model_backend(m);
    o->ctx = ct_model_kctx(m);
    o->zero_stage = zero_stage;
    o->overlap = overlap && world > 1;
    o->dtype = o->be->elem_size == 2 ? CT_COMM_BF16 : CT_COMM_F32;
    if (zero_stage == 1) {
        o->len = n / world;
        o->begin = o->len * (size_t)ct_comm_rank(comm);
    } else {
        o->begin = 0;
        o->len = n;
    }
    size_t bytes = o->len * sizeof(float);
    o->m = o->be->alloc(bytes);
    o->v = o->be->alloc(bytes);
    if (!o->m || !o->v) goto oom;
    o->state_bytes = 2 * bytes;
    if (zero_stage == 1) {
        if (!(o->gslice = o->be->alloc(o->len * o->be->elem_size))) goto oom;
    }
    if (o->be->elem_size == sizeof(float)) {
        o->master = (float *)tr.params + o->begin;
    } else {
        if (!(o->master = o->be->alloc(bytes))) goto oom;
        o->be->to_f32(o->ctx, o->master, (char *)tr.params + o->begin * o->be->elem_size, o->len);
        o->state_bytes += bytes;
    }
    *out = o;
    return 0;
oom:
    snprintf(err, errlen, "out of memory for the optimizer state (%zu parameters on this rank)", o ? o->len : n);
    ct_optim_free(o);
    return -1;
}

void ct_optim_free(ct_optim *o)
{
    if (!o) return;
    o->be->free(o->m);
    o->be->free(o->v);
    o->be->free(o->gslice);
    if (o->be->elem_size != sizeof(float)) o->be->free(o->master);
    free(o);
}

int ct_optim_steps_taken(const ct_optim *o) { return o->t; }
void ct_optim_set_steps_taken(ct_optim *o, int t) { o->t = t; }
float *ct_optim_master(ct_optim *o) { return o->master; }
float *ct_optim_exp_avg(ct_optim *o) { return o->m; }
float *ct_optim_exp_avg_sq(ct_optim *o) { return o->v; }

void ct_optim_slice(const ct_optim *o, size_t *begin, size_t *len)
{
    *begin = o->begin;
    *len = o->len;
}

int ct_optim_sync_params(ct_optim *o)
{
    const ct_backend *be = o->be;
    char *params = ct_model_trainable(o->model).params;
    if (be->elem_size != sizeof(float))
        be->to_storage(o->ctx, params + o->begin * be->elem_size, o->master, o->len);
    if (o->zero_stage != 1) return 0;
    void *stream = be->stream(o->ctx);
    if (ct_comm_buf_allgather(o->comm, params, o->len, o->dtype, stream)) return -1;
    return ct_comm_buf_wait(o->comm, stream);
}

int ct_optim_overlaps(const ct_optim *o) { return o->overlap; }

void ct_optim_grad_ready(void *optim, size_t lo, size_t hi)
{
    ct_optim *o = optim;
    const size_t es = o->be->elem_size;
    char *grads = ct_model_trainable(o->model).grads;
    void *stream = o->be->stream(o->ctx);
    int rc = 0;
    if (o->zero_stage == 1) {
        /* each piece of [lo, hi) onto the rank whose slice holds it */
        ct_comm_buf_group_begin(o->comm);
        for (size_t a = lo; a < hi;) {
            const size_t r = a / o->len, end = (r + 1) * o->len < hi ? (r + 1) * o->len : hi;
            rc |= ct_comm_buf_reduce(o->comm, grads + a * es, (char *)o->gslice + (a - r * o->len) * es, end - a,
                                     o->dtype, (int)r, stream);
            a = end;
        }
        ct_comm_buf_group_end(o->comm);
    } else {
        rc = ct_comm_buf_allreduce(o->comm, grads + lo * es, hi - lo, o->dtype, stream);
    }
    if (rc) {
        fprintf(stderr, "ctrain: internal error: gradient reduction of [%zu, %zu) refused\n", lo, hi);
        ct_comm_abort(o->comm, 1);
    }
    o->reduced += hi - lo;
}
size_t ct_optim_state_bytes(const ct_optim *o) { return o->state_bytes; }

int ct_optim_params_finite(ct_optim *o)
{
    const size_t es = o->be->elem_size;
    double sumsq = o->be->sumsq(o->ctx, (char *)ct_model_trainable(o->model).params + o->begin * es, o->len);
    if (o->zero_stage == 1 && ct_comm_allreduce_sum_f64(o->comm, &sumsq, 1)) return -1;
    return isfinite(sumsq) ? 1 : 0;
}

int ct_optim_step(ct_optim *o, const ct_optim_hparams *h, float *grad_norm)
{
    const ct_backend *be = o->be;
    size_t es = be->elem_size;
    ct_trainable tr = ct_model_trainable(o->model);
    char *params = tr.params;
    void *stream = be->stream(o->ctx);
    void *g = o->zero_stage == 1 ? o->gslice : tr.grads; /* the reduced gradients of this slice */
    if (o->reduced == 0) { /* nothing went during backward: reduce it all now */
        if (o->zero_stage == 1 ? ct_comm_buf_reduce_scatter(o->comm, tr.grads, o->gslice, o->len, o->dtype, stream)
                               : ct_comm_buf_allreduce(o->comm, tr.grads, o->len, o->dtype, stream))
            return -1;
    } else if (o->reduced != tr.numel) {
        fprintf(stderr, "ctrain: internal error: backward handed over %zu of %zu gradients\n", o->reduced, tr.numel);
        ct_comm_abort(o->comm, 1);
    }
    o->reduced = 0;
    if (ct_comm_buf_wait(o->comm, stream)) return -1;
    double sumsq = be->sumsq(o->ctx, g, o->len);
    if (o->zero_stage == 1 && ct_comm_allreduce_sum_f64(o->comm, &sumsq, 1)) return -1;
    float norm = (float)sqrt(sumsq);
    *grad_norm = norm;
    /* a NaN or Inf anywhere in the gradient makes the reduced sum non-finite on every rank: all
     * ranks leave the step unapplied together, with no collective of their own */
    if (!isfinite(norm) || h->hold) return 1;
    /* as torch.nn.utils.clip_grad_norm_ */
    float scale = (h->grad_clip > 0 && norm > h->grad_clip) ? h->grad_clip / (norm + 1e-6f) : 1.0f;

    o->t++;
    /* AdamW on each tensor's part of the slice: weight decay only where the tensor has it. */
    for (int i = 0; i < tr.ntensors; i++) {
        const ct_param *p = &tr.tensors[i];
        size_t lo = p->offset > o->begin ? p->offset : o->begin;
        size_t hi = p->offset + p->numel < o->begin + o->len ? p->offset + p->numel : o->begin + o->len;
        if (lo >= hi) continue;
        size_t k = lo - o->begin;
        ct_adamw_params ap = {.lr = h->lr, .beta1 = h->beta1, .beta2 = h->beta2, .eps = h->eps,
                              .weight_decay = p->decay ? h->weight_decay : 0.0f, .grad_scale = scale, .step = o->t};
        be->adamw(o->ctx, o->master + k, params + lo * es, o->m + k, o->v + k, (char *)g + k * es, hi - lo, &ap);
    }
    if (o->zero_stage == 1) {
        if (ct_comm_buf_allgather(o->comm, params, o->len, o->dtype, stream)) return -1;
        if (ct_comm_buf_wait(o->comm, stream)) return -1;
    }
    return 0;
}
