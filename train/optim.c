/* optim.c — AdamW under ZeRO stages 0 to 3: reduce (or reduce-scatter), clip, update this
 * rank's slice, gather.
 *
 * Gradients and parameters are reduced and gathered where the backend keeps them: over NCCL
 * in the storage dtype (bf16) on several GPUs (a device-to-device copy on one), over the host
 * transport in fp32 on the CPU. With overlap on, the step's last backward hands over each
 * finished range of gradients as it completes (ct_optim_grad_ready) and its reduction starts at
 * once: under ZeRO-1 the range is cut at the rank slices and each piece reduced onto the rank
 * that owns it, which moves the same bytes as one reduce-scatter.
 *
 * Stages 2 and 3 shard by units (model.h "Units"): the optimizer installs itself as the model's
 * sharder. Stage 2 keeps no gradient buffer for the whole model: a unit's gradients get a pooled
 * buffer when its backward starts, and when the unit is ready every micro-batch reduces it onto
 * the owners' slices (the owner first adds what its slice holds from earlier micro-batches into
 * its own contribution, so the reduction itself accumulates), and the buffer returns to the pool.
 * Stage 3 also keeps only this rank's slice of the weights: a unit is gathered (one broadcast per
 * owning rank, grouped) into a pooled buffer before it is used and returned after. On a GPU the
 * next unit's gather is issued while the current one computes, and a gradient buffer whose
 * reduction may still be reading it is reused only after the compute stream waited for it. */
#include "optim.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

typedef struct {
    void *p;
    size_t bytes;
    int used;
    int pending; /* a reduction on the communicator's stream may still read it */
} pooled;

struct ct_optim {
    ct_model *model;
    ct_comm *comm;
    const ct_backend *be;
    ct_kctx *ctx;
    int zero_stage;
    int overlap;         /* reduce ranges as backward finishes them */
    ct_comm_dtype dtype; /* of gradients and parameters */
    size_t begin, len;   /* this rank's slice of the trainable buffer */
    size_t reduced;      /* elements handed over by ct_optim_grad_ready since the last step (or pass) */
    float *m, *v;        /* [len] AdamW moments */
    float *master;       /* [len] fp32 weights: the parameters themselves when they are fp32 */
    int own_master;      /* master is an allocation of its own */
    void *gslice;        /* [len] reduced gradients, storage dtype (stages 1-3; stage 0 reduces in place) */
    int t;               /* steps taken */
    size_t state_bytes;

    /* stages 2 and 3 (the model's sharder) */
    int shard_grads;     /* gradients live per unit (stage >= 2, whole model trained) */
    int shard_weights;   /* the model's weights live as this rank's slice (stage 3) */
    int device;          /* buffers are a GPU's: gathers run ahead, reuse waits for reductions */
    size_t wbegin, wlen; /* this rank's slice of the model's weights (the trainable slice without LoRA) */
    void *wslice;        /* [wlen] storage dtype (stage 3); the master itself when fp32 and not LoRA */
    int own_wslice;      /* wslice is an allocation of its own (else the master's or the model's) */
    int passes;          /* backwards reduced into gslice since the last step */
    pooled *pool;
    int npool;
    void **wmap, **gmap; /* [units] the pooled buffer holding a unit's weights / gradients, or NULL */
};

/* ---------------------------------------------------------------- the unit pool */

static void *pool_get(ct_optim *o, size_t bytes, int block)
{
    pooled *hit = NULL;
    int same = 0;
    for (int i = 0; i < o->npool; i++) {
        pooled *e = &o->pool[i];
        same += e->bytes == bytes;
        if (e->used || e->bytes != bytes) continue;
        if (!hit || (hit->pending && !e->pending)) hit = e;
    }
    /* On a GPU a block's buffer a reduction still reads is not waited for while the pool may
     * grow to the block buffers one overlapped block needs at once (stage 2: its gradients and the
     * last block's in flight; stage 3: the same and two blocks' weights, one gathered ahead); the
     * plan counts as many. The embeddings' and head's buffers wait instead. */
    if (block && hit && hit->pending && same < (o->shard_weights ? 4 : 2)) hit = NULL;
    if (hit && hit->pending) {
        /* every free buffer of this size may still be read by a reduction: wait for them all */
        if (ct_comm_buf_wait(o->comm, o->be->stream(o->ctx))) ct_comm_abort(o->comm, 1);
        for (int i = 0; i < o->npool; i++) o->pool[i].pending = 0;
    }
    if (!hit) {
        pooled *grown = realloc(o->pool, (size_t)(o->npool + 1) * sizeof *grown);
        void *p = grown ? o->be->alloc(bytes) : NULL;
        if (grown) o->pool = grown;
        if (!p) {
            fprintf(stderr, "ctrain: error: out of memory for a unit buffer of %.1f MiB (ZeRO-%d)\n",
                    (double)bytes / 1048576.0, o->zero_stage);
            ct_comm_abort(o->comm, 1);
        }
        hit = &o->pool[o->npool++];
        *hit = (pooled){.p = p, .bytes = bytes};
    }
    hit->used = 1;
    return hit->p;
}

static void pool_put(ct_optim *o, void *p, int pending)
{
    for (int i = 0; i < o->npool; i++)
        if (o->pool[i].p == p) {
            o->pool[i].used = 0;
            o->pool[i].pending = pending;
            return;
        }
}

/* ---------------------------------------------------------------- the sharder */

static size_t unit_bytes(const ct_optim *o, int u)
{
    size_t lo, hi;
    ct_model_unit_range(o->model, u, &lo, &hi);
    return (hi - lo) * o->be->elem_size;
}

/* Points the model's unit u at where its weights and gradients are now. */
static void remap(ct_optim *o, int u)
{
    size_t lo, hi;
    ct_model_unit_range(o->model, u, &lo, &hi);
    const size_t es = o->be->elem_size;
    char *params = ct_model_params(o->model), *grads = ct_model_grads(o->model);
    void *w = o->shard_weights ? o->wmap[u] : params + lo * es;
    void *g = o->shard_grads ? o->gmap[u] : grads ? grads + lo * es : NULL;
    ct_model_map_unit(o->model, u, w, g);
}

/* Issues the gather of unit u's weights into a pooled buffer: each owner's piece, broadcast. */
static void gather(ct_optim *o, int u)
{
    size_t lo, hi;
    ct_model_unit_range(o->model, u, &lo, &hi);
    const size_t es = o->be->elem_size;
    char *buf = pool_get(o, (hi - lo) * es, u < ct_model_num_units(o->model) - 2);
    void *stream = o->be->stream(o->ctx);
    int rank = ct_comm_rank(o->comm), rc = 0;
    ct_comm_buf_group_begin(o->comm);
    for (size_t a = lo; a < hi;) {
        const size_t r = a / o->wlen, end = (r + 1) * o->wlen < hi ? (r + 1) * o->wlen : hi;
        const void *send = (int)r == rank ? (char *)o->wslice + (a - o->wbegin) * es : NULL;
        rc |= ct_comm_buf_broadcast(o->comm, send, buf + (a - lo) * es, end - a, o->dtype, (int)r, stream);
        a = end;
    }
    ct_comm_buf_group_end(o->comm);
    if (rc) {
        fprintf(stderr, "ctrain: internal error: the gather of unit %d was refused\n", u);
        ct_comm_abort(o->comm, 1);
    }
    o->wmap[u] = buf;
}

static void unit_fetch(void *user, int u, int what)
{
    ct_optim *o = user;
    const int L = ct_model_num_units(o->model) - 2;
    if ((what & CT_UNIT_WEIGHTS) && o->shard_weights) {
        if (!o->wmap[u]) gather(o, u);
        if (o->device) {
            /* the compute stream waits for this unit's gather; the next one's then runs meanwhile */
            if (ct_comm_buf_wait(o->comm, o->be->stream(o->ctx))) ct_comm_abort(o->comm, 1);
            int next = (what & CT_UNIT_GRADS) ? (u < L ? u - 1 : -1) : (u == L ? 0 : u + 1 < L ? u + 1 : -1);
            if (next >= 0 && !o->wmap[next]) gather(o, next);
        }
    }
    if ((what & CT_UNIT_GRADS) && o->shard_grads && !o->gmap[u]) {
        o->gmap[u] = pool_get(o, unit_bytes(o, u), u < L);
        o->be->zero(o->ctx, o->gmap[u], unit_bytes(o, u));
    }
    remap(o, u);
}

static void unit_release(void *user, int u)
{
    ct_optim *o = user;
    if (o->shard_weights && o->wmap[u]) {
        pool_put(o, o->wmap[u], 0);
        o->wmap[u] = NULL;
        remap(o, u);
    }
}

/* Stage 2 and 3: unit u's gradients, [lo, hi), onto the owners' slices, accumulating over the
 * step's micro-batches; the buffer then goes back to the pool. */
static int reduce_unit(ct_optim *o, size_t lo, size_t hi)
{
    const int u = ct_model_unit_of(o->model, lo);
    size_t ulo, uhi;
    ct_model_unit_range(o->model, u, &ulo, &uhi);
    if (lo != ulo || hi != uhi || !o->gmap[u]) {
        fprintf(stderr, "ctrain: internal error: ready range [%zu, %zu) is not unit %d's gradients\n", lo, hi, u);
        ct_comm_abort(o->comm, 1);
    }
    const size_t es = o->be->elem_size;
    char *src = o->gmap[u];
    void *stream = o->be->stream(o->ctx);
    int rank = ct_comm_rank(o->comm), rc = 0;
    if (o->passes > 0 && o->begin < hi && lo < o->begin + o->len) {
        /* this rank's own piece carries the earlier micro-batches' sum into the reduction */
        size_t a = lo > o->begin ? lo : o->begin, b = hi < o->begin + o->len ? hi : o->begin + o->len;
        char *mine = src + (a - lo) * es, *acc = (char *)o->gslice + (a - o->begin) * es;
        o->be->residual_fwd(o->ctx, mine, mine, acc, b - a);
    }
    ct_comm_buf_group_begin(o->comm);
    for (size_t a = lo; a < hi;) {
        const size_t r = a / o->len, end = (r + 1) * o->len < hi ? (r + 1) * o->len : hi;
        void *dst = (int)r == rank ? (char *)o->gslice + (a - o->begin) * es : src + (a - lo) * es;
        rc |= ct_comm_buf_reduce(o->comm, src + (a - lo) * es, dst, end - a, o->dtype, (int)r, stream);
        a = end;
    }
    ct_comm_buf_group_end(o->comm);
    pool_put(o, src, o->device);
    o->gmap[u] = NULL;
    remap(o, u);
    return rc;
}

/* ---------------------------------------------------------------- set-up */

static int shard_init(ct_optim *o, int lora, char *err, size_t errlen)
{
    ct_model *m = o->model;
    const int units = ct_model_num_units(m);
    const size_t es = o->be->elem_size, world = (size_t)ct_comm_size(o->comm);
    o->shard_grads = o->zero_stage >= 2 && !lora;
    o->shard_weights = o->zero_stage == 3;
    o->device = ct_comm_has_device(o->comm);
    o->wmap = calloc((size_t)units, sizeof *o->wmap);
    o->gmap = calloc((size_t)units, sizeof *o->gmap);
    if (!o->wmap || !o->gmap) return -1;
    if (o->shard_weights) {
        if (lora) ct_model_base_fingerprint(m); /* of the whole base, before it is sharded (it is cached) */
        o->wlen = ct_model_numel(m) / world;
        o->wbegin = o->wlen * (size_t)ct_comm_rank(o->comm);
        size_t wlo, wn;
        void *window = ct_model_window(m, &wlo, &wn);
        if (window) {
            o->wslice = window; /* the model never held more */
        } else if (!lora && es == sizeof(float)) {
            o->wslice = o->master; /* made by the caller from the flat buffer, which now goes */
        } else {
            o->own_wslice = 1;
            if (!(o->wslice = o->be->alloc(o->wlen * es))) return -1;
            o->be->copy(o->ctx, o->wslice, (char *)ct_model_params(m) + o->wbegin * es, o->wlen * es);
            o->state_bytes += lora ? 0 : o->wlen * es;
        }
        ct_model_drop_params(m);
    }
    ct_model_units hooks = {.user = o, .fetch = unit_fetch, .release = unit_release};
    ct_model_set_units(m, &hooks);
    if (o->shard_grads) ct_model_drop_grads(m);
    for (int u = 0; u < units; u++) remap(o, u);
    (void)err, (void)errlen;
    return 0;
}

int ct_optim_init(ct_optim **out, ct_model *m, ct_comm *comm, int zero_stage, int overlap, char *err, size_t errlen)
{
    *out = NULL;
    const int lora = ct_model_has_lora(m);
    const int sharded_grads = zero_stage >= 2 && !lora;
    if (!sharded_grads && ct_model_alloc_grads(m, err, errlen)) return -1;
    ct_trainable tr = ct_model_trainable(m);
    size_t n = tr.numel, world = (size_t)ct_comm_size(comm);
    if (n % world || ct_model_numel(m) % world) {
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
    if (zero_stage >= 1) {
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
    if (zero_stage >= 1) {
        if (!(o->gslice = o->be->alloc(o->len * o->be->elem_size))) goto oom;
    }
    /* a model made with only this rank's slice of the weights (ct_model_init_slice, ZeRO-3) */
    size_t wlo, wn;
    char *window = ct_model_window(m, &wlo, &wn);
    if (window && (zero_stage != 3 || lora || wlo != o->begin || wn != o->len)) {
        snprintf(err, errlen, "internal: a model holding the slice [%zu, +%zu) of its weights needs ZeRO-3 over the "
                 "same slices", wlo, wn);
        ct_optim_free(o);
        return -1;
    }
    char *mine = window ? window : (char *)tr.params + o->begin * o->be->elem_size;
    o->own_master = o->be->elem_size != sizeof(float) || (zero_stage == 3 && !lora && !window);
    if (!o->own_master) {
        o->master = (float *)mine;
    } else {
        if (!(o->master = o->be->alloc(bytes))) goto oom;
        o->be->to_f32(o->ctx, o->master, mine, o->len);
        o->state_bytes += bytes;
    }
    if (zero_stage >= 2 && shard_init(o, lora, err, errlen)) goto oom;
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
    if (o->wmap) ct_model_set_units(o->model, NULL);
    for (int i = 0; i < o->npool; i++) o->be->free(o->pool[i].p);
    free(o->pool);
    free(o->wmap);
    free(o->gmap);
    if (o->own_wslice) o->be->free(o->wslice);
    o->be->free(o->m);
    o->be->free(o->v);
    o->be->free(o->gslice);
    if (o->own_master) o->be->free(o->master);
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

/* This rank's trainable weights in storage dtype, element begin first. */
static char *own_weights(ct_optim *o)
{
    char *params = ct_model_trainable(o->model).params;
    return params ? params + o->begin * o->be->elem_size : o->wslice;
}

void *ct_optim_weights_at(ct_optim *o, size_t i)
{
    return own_weights(o) + (i - o->begin) * o->be->elem_size;
}

void ct_optim_set_weights(ct_optim *o, const float *all)
{
    const ct_backend *be = o->be;
    char *params = ct_model_trainable(o->model).params;
    if (params) be->to_storage(o->ctx, params, all, ct_model_trainable(o->model).numel);
    else be->to_storage(o->ctx, o->wslice, all + o->begin, o->len);
}

void ct_optim_set_slice_weights(ct_optim *o, const float *mine)
{
    o->be->to_storage(o->ctx, own_weights(o), mine, o->len);
}

int ct_optim_gather_model(ct_optim *o)
{
    if (!o->shard_weights) return 0;
    ct_model *m = o->model;
    const size_t es = o->be->elem_size;
    const int rank = ct_comm_rank(o->comm), world = ct_comm_size(o->comm);
    void *stream = o->be->stream(o->ctx);
    /* no step follows: the moments and the unit buffers go first, to make room */
    for (int i = 0; i < o->npool; i++) o->be->free(o->pool[i].p);
    o->npool = 0;
    o->be->free(o->m);
    o->be->free(o->v);
    o->m = o->v = NULL;
    ct_model_set_units(m, NULL);
    free(o->wmap);
    free(o->gmap);
    o->wmap = o->gmap = NULL;
    o->shard_weights = o->shard_grads = 0;
    /* rank 0 alone receives the whole; the others pass their slices through gslice */
    if (rank == 0 && ct_model_restore_params(m)) return -1;
    char *params = ct_model_params(m);
    int rc = 0;
    ct_comm_buf_group_begin(o->comm);
    for (int r = 0; r < world; r++) {
        void *recv = rank == 0 ? params + (size_t)r * o->wlen * es : r == rank ? o->wslice : o->gslice;
        rc |= ct_comm_buf_broadcast(o->comm, r == rank ? o->wslice : NULL, recv, o->wlen, o->dtype, r, stream);
    }
    ct_comm_buf_group_end(o->comm);
    if (rc || ct_comm_buf_wait(o->comm, stream)) return -1;
    o->be->sync(o->ctx);
    return 0;
}

int ct_optim_overlaps(const ct_optim *o) { return o->overlap; }

ct_grad_ready_fn ct_optim_ready(const ct_optim *o, int last)
{
    return o->shard_grads || (last && o->overlap) ? ct_optim_grad_ready : NULL;
}

void ct_optim_grad_ready(void *optim, size_t lo, size_t hi)
{
    ct_optim *o = optim;
    const size_t es = o->be->elem_size;
    char *grads = ct_model_trainable(o->model).grads;
    void *stream = o->be->stream(o->ctx);
    int rc = 0;
    if (o->shard_grads) {
        rc = reduce_unit(o, lo, hi);
    } else if (o->zero_stage >= 1) {
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
    if (o->shard_grads && o->reduced == ct_model_trainable(o->model).numel) {
        o->passes++; /* a whole backward is in the slices */
        o->reduced = 0;
    }
}

size_t ct_optim_state_bytes(const ct_optim *o) { return o->state_bytes; }

int ct_optim_params_finite(ct_optim *o)
{
    double sumsq = o->be->sumsq(o->ctx, own_weights(o), o->len);
    if (o->zero_stage >= 1 && ct_comm_allreduce_sum_f64(o->comm, &sumsq, 1)) return -1;
    return isfinite(sumsq) ? 1 : 0;
}

int ct_optim_step(ct_optim *o, const ct_optim_hparams *h, float *grad_norm)
{
    const ct_backend *be = o->be;
    size_t es = be->elem_size;
    ct_trainable tr = ct_model_trainable(o->model);
    void *stream = be->stream(o->ctx);
    void *g = o->zero_stage >= 1 ? o->gslice : tr.grads; /* the reduced gradients of this slice */
    if (o->shard_grads) {
        if (o->passes == 0 || o->reduced != 0) {
            fprintf(stderr, "ctrain: internal error: a step after %d whole backwards and %zu more gradients\n",
                    o->passes, o->reduced);
            ct_comm_abort(o->comm, 1);
        }
        o->passes = 0;
    } else if (o->reduced == 0) { /* nothing went during backward: reduce it all now */
        if (o->zero_stage >= 1 ? ct_comm_buf_reduce_scatter(o->comm, tr.grads, o->gslice, o->len, o->dtype, stream)
                               : ct_comm_buf_allreduce(o->comm, tr.grads, o->len, o->dtype, stream))
            return -1;
    } else if (o->reduced != tr.numel) {
        fprintf(stderr, "ctrain: internal error: backward handed over %zu of %zu gradients\n", o->reduced, tr.numel);
        ct_comm_abort(o->comm, 1);
    }
    o->reduced = 0;
    if (ct_comm_buf_wait(o->comm, stream)) return -1;
    double sumsq = be->sumsq(o->ctx, g, o->len);
    if (o->zero_stage >= 1 && ct_comm_allreduce_sum_f64(o->comm, &sumsq, 1)) return -1;
    float norm = (float)sqrt(sumsq);
    *grad_norm = norm;
    /* a NaN or Inf anywhere in the gradient makes the reduced sum non-finite on every rank: all
     * ranks leave the step unapplied together, with no collective of their own */
    if (!isfinite(norm) || h->hold) return 1;
    /* as torch.nn.utils.clip_grad_norm_ */
    float scale = (h->grad_clip > 0 && norm > h->grad_clip) ? h->grad_clip / (norm + 1e-6f) : 1.0f;

    o->t++;
    char *weights = own_weights(o);
    /* AdamW on each tensor's part of the slice: weight decay only where the tensor has it. */
    for (int i = 0; i < tr.ntensors; i++) {
        const ct_param *p = &tr.tensors[i];
        size_t lo = p->offset > o->begin ? p->offset : o->begin;
        size_t hi = p->offset + p->numel < o->begin + o->len ? p->offset + p->numel : o->begin + o->len;
        if (lo >= hi) continue;
        size_t k = lo - o->begin;
        ct_adamw_params ap = {.lr = h->lr, .beta1 = h->beta1, .beta2 = h->beta2, .eps = h->eps,
                              .weight_decay = p->decay ? h->weight_decay : 0.0f, .grad_scale = scale, .step = o->t};
        be->adamw(o->ctx, o->master + k, weights + k * es, o->m + k, o->v + k, (char *)g + k * es, hi - lo, &ap);
    }
    if (o->zero_stage >= 1 && tr.params) { /* stage 3 keeps its slice: units are gathered on use */
        if (ct_comm_buf_allgather(o->comm, tr.params, o->len, o->dtype, stream)) return -1;
        if (ct_comm_buf_wait(o->comm, stream)) return -1;
    }
    return 0;
}
