/* kernels.h — the compute backend table: every op's forward and backward.
 *
 * A backend (cpu, cuda) fills one ct_backend. Tensors are plain pointers into memory
 * the backend owns (host memory on cpu, device memory on cuda):
 *   - `void *` tensors hold the backend's storage dtype, elem_size bytes an element
 *     (fp32 on cpu, bf16 on cuda): parameters, gradients, activations;
 *   - `float *` tensors are fp32 on every backend: statistics, losses, master weights
 *     and AdamW moments;
 *   - token and target indices are int32 in backend memory; a target < 0 is ignored;
 *   - positions pos[B*T] are int32 in backend memory: pos[b*T+t] is token (b,t)'s position in
 *     its document, and the document begins at t - pos[b*T+t]. The ops that train (encoder,
 *     attention) take positions that follow the document rule:
 *         pos[b*T] = 0, and for t > 0 pos[b*T+t] = pos[b*T+t-1] + 1 (the same document) or 0
 *         (a new document begins at t),
 *     so several documents can be packed into one row without seeing each other. pos NULL
 *     means pos[b*T+t] = t: one document per row, the plain causal case.
 * Matrices are row-major; a weight w[M,K] maps K inputs to M outputs (nn.Linear layout).
 *
 * Every backward ADDS into its gradient outputs (parameter and activation gradients
 * alike): callers zero them first. This is what lets micro-batches accumulate and lets a
 * tensor feed several consumers (residual stream, LoRA's second path).
 *
 * The slots after attention_bwd that only the Llama family or sampling use (attention_decode,
 * copy_rows, rmsnorm_*, rope_*, swiglu_*) may be NULL on a backend that lacks them: a model
 * names the missing op when a run needs it (docs/DESIGN.md "Backends").
 *
 * Ops never allocate. They run on the stream of the ct_kctx they are given and return
 * before completion on asynchronous backends; results read on the host need sync().
 * This header knows nothing of MPI, files, configs or models. */
#ifndef CT_KERNELS_H
#define CT_KERNELS_H

#include <stddef.h>
#include <stdint.h>

#define CT_KERNELS_ABI 5 /* bumped when a slot's meaning changes (5: positions in encoder and attention) */

/* Per-backend execution context: CUDA stream and library handles; empty on cpu. */
typedef struct ct_kctx ct_kctx;

/* One AdamW update (decoupled weight decay, as torch.optim.AdamW). */
typedef struct {
    float lr, beta1, beta2, eps;
    float weight_decay; /* multiplies lr * param; 0 for vectors */
    float grad_scale;   /* every gradient is multiplied by this first (clipping, averaging) */
    int step;           /* 1-based, for bias correction */
} ct_adamw_params;

/* Rows at which matmul_bwd's product may be split without changing a bit on the cpu (below). */
#define CT_MATMUL_SPLIT 256

typedef struct ct_backend {
    const char *name;
    int abi;
    size_t elem_size; /* bytes per element of `void *` tensors */

    /* context and memory */
    /* Devices this backend can drive (0 when none is usable; 1 on cpu). A rank takes device
     * local_rank % device_count. */
    int (*device_count)(void);
    ct_kctx *(*kctx_init)(int device); /* NULL on failure */
    void (*kctx_free)(ct_kctx *ctx);
    /* The native stream ops run on (a cudaStream_t on cuda; NULL on cpu), for a communication
     * library to order its work after the ops'. */
    void *(*stream)(ct_kctx *ctx);
    void *(*alloc)(size_t bytes);      /* zero-filled; NULL on failure */
    void (*free)(void *p);
    void (*zero)(ct_kctx *ctx, void *p, size_t bytes);
    void (*copy)(ct_kctx *ctx, void *dst, const void *src, size_t bytes); /* within the backend */
    void (*upload)(ct_kctx *ctx, void *dst, const void *host, size_t bytes);   /* raw bytes */
    void (*download)(ct_kctx *ctx, void *host, const void *src, size_t bytes); /* raw bytes, synchronous */
    void (*to_storage)(ct_kctx *ctx, void *dst, const float *src, size_t n);   /* fp32 -> storage dtype, same memory space */
    void (*to_f32)(ct_kctx *ctx, float *dst, const void *src, size_t n);       /* storage dtype -> fp32 */
    void (*sync)(ct_kctx *ctx);

    /* out[b,t,:] = wte[tokens[b,t],:] + wpe[p,:], p = pos[b*T+t] (pos NULL: p = t); out[B*T,C].
     * Here pos may be any positions within wpe's rows (decoding passes pos0 + t); wpe may be NULL
     * (no learned positions: out is the embedding alone, pos unused) */
    void (*encoder_fwd)(ct_kctx *ctx, void *out, const int32_t *tokens, const int32_t *pos, const void *wte,
                        const void *wpe, int B, int T, int C);
    /* dwte[V,C] += scatter of dout by token; dwpe[p,:] += the sum of dout[b,t,:] over the (b,t)
     * with pos[b*T+t] = p (pos NULL: p = t; otherwise pos follows the document rule, so only
     * rows p < T are touched). Either gradient may be NULL (frozen embedding: that gradient is
     * skipped); with both NULL the op does nothing. */
    void (*encoder_bwd)(ct_kctx *ctx, void *dwte, void *dwpe, const void *dout, const int32_t *tokens,
                        const int32_t *pos, int B, int T, int C);

    /* out = (inp - mean) * rstd * w + b over the last axis; mean, rstd [N] saved for backward */
    void (*layernorm_fwd)(ct_kctx *ctx, void *out, float *mean, float *rstd, const void *inp,
                          const void *w, const void *b, int N, int C, float eps);
    /* dinp[N,C] += input gradient; dw[C], db[C] += parameter gradients. dw and db may each be
     * NULL (frozen model, as under LoRA: with both NULL only dinp is computed). */
    void (*layernorm_bwd)(ct_kctx *ctx, void *dinp, void *dw, void *db, const void *dout, const void *inp,
                          const void *w, const float *mean, const float *rstd, int N, int C);

    /* out[N,M] = inp[N,K] . w[M,K]^T + bias[M]   (bias may be NULL) */
    void (*matmul_fwd)(ct_kctx *ctx, void *out, const void *inp, const void *w, const void *bias,
                       int N, int K, int M);
    /* dinp[N,K] += dout.w; dw[M,K] += dout^T.inp; dbias[M] += colsum(dout).
     * dw and dbias may be NULL (frozen weight: only the input gradient is computed);
     * dinp may be NULL (first layer of a branch that needs no input gradient); with dw NULL,
     * dinp may be inp itself (overwritten: zero it first).
     * Split points: on the cpu, dw sums the N rows in blocks of CT_MATMUL_SPLIT from row 0 in
     * order, and every output row of matmul_fwd and dinp depends on its own row alone (N > 2), so
     * calls over the rows split at multiples of CT_MATMUL_SPLIT give the bits of one call (the
     * LM head's chunked loss relies on it). Other backends promise no such thing. */
    void (*matmul_bwd)(ct_kctx *ctx, void *dinp, void *dw, void *dbias, const void *dout, const void *inp,
                       const void *w, int N, int K, int M);

    /* Causal self-attention with grouped-query heads. Row (b,t) of q (row stride ldq elements)
     * holds NH heads of D channels; rows of k and v (row stride ldkv) hold NKV heads; query head
     * h reads kv head h / (NH / NKV) (NH a multiple of NKV). Scores are scaled by 1/sqrt(D). In
     * row b, key s is visible to query t iff
     *     t - pos[b*T+t] <= s <= t   and   (window == 0 or s > t - window):
     * a query sees the keys of its own document up to itself (pos NULL: every earlier key, plain
     * causal attention; pos follows the document rule above). out[B*T, NH*D] (row stride NH*D).
     * GPT-2 passes q = qkv, k = qkv + C, v = qkv + 2C, ldq = ldkv = 3C. Work on key blocks no
     * query of a block sees is skipped, so short packed documents cost less than one long one.
     * stats[attention_stats_len(B,T,NH)] is whatever the backend keeps for backward (softmax
     * rows on cpu); backward may overwrite it. */
    size_t (*attention_stats_len)(int B, int T, int NH);
    void (*attention_fwd)(ct_kctx *ctx, void *out, float *stats, const void *q, const void *k, const void *v,
                          const int32_t *pos, int B, int T, int NH, int NKV, int D, int ldq, int ldkv, int window);
    /* dq (stride ldq), dk and dv (stride ldkv) += the gradients; they may be views of one buffer
     * (GPT-2's dqkv) but never overlap. pos: the forward's. */
    void (*attention_bwd)(ct_kctx *ctx, void *dq, void *dk, void *dv, float *stats, const void *dout,
                          const void *q, const void *k, const void *v, const void *out, const int32_t *pos, int B,
                          int T, int NH, int NKV, int D, int ldq, int ldkv, int window);
    /* Inference over a KV cache (sampling): Tq new queries per sequence, at positions
     * pos0 .. pos0+Tq-1, attend to keys 0 .. their position in kc and vc [B, maxT, NKV*D] (the
     * new keys already written there), with attention_fwd's mask and head rule. q has row stride
     * ldq; out[B*Tq, NH*D]. No statistics are kept: no backward follows. */
    void (*attention_decode)(ct_kctx *ctx, void *out, const void *q, const void *kc, const void *vc, int B, int Tq,
                             int pos0, int maxT, int NH, int NKV, int D, int ldq, int window);
    /* dst[r*ldd + c] = src[r*lds + c] for r < rows, c < cols (storage dtype): KV cache appends */
    void (*copy_rows)(ct_kctx *ctx, void *dst, int ldd, const void *src, int lds, int rows, int cols);

    /* RMSNorm (Llama): out = inp * rstd * w, rstd = 1/sqrt(mean(inp^2) + eps) computed in fp32
     * over the last axis; rstd[N] saved for backward. */
    void (*rmsnorm_fwd)(ct_kctx *ctx, void *out, float *rstd, const void *inp, const void *w, int N, int C,
                        float eps);
    /* dinp[N,C] += input gradient; dw[C] += weight gradient (dw may be NULL: frozen) */
    void (*rmsnorm_bwd)(ct_kctx *ctx, void *dinp, void *dw, const void *dout, const void *inp, const void *w,
                        const float *rstd, int N, int C);

    /* Rotary position embedding in place, in the rotate_half layout Hugging Face weights use
     * (channel j pairs with j + D/2). Row n of x starts at x + n*ld and holds nh heads of D
     * channels; for i < D/2, with a = pos[n] * inv_freq[i] in fp32:
     *   x[i] <- x[i] cos a - x[i + D/2] sin a,   x[i + D/2] <- x[i + D/2] cos a + x[i] sin a.
     * pos[N] (int32) and inv_freq[D/2] (fp32) live in backend memory. */
    void (*rope_fwd)(ct_kctx *ctx, void *x, const int32_t *pos, const float *inv_freq, int N, int nh, int D, int ld);
    /* Its transpose, in place (rotation by -a): turns the gradient at rope_fwd's output into the
     * gradient at its input. Not an accumulating op: it rewrites dx. */
    void (*rope_bwd)(ct_kctx *ctx, void *dx, const int32_t *pos, const float *inv_freq, int N, int nh, int D, int ld);

    /* SwiGLU (Llama's MLP): out = silu(gate) * up, silu(x) = x / (1 + exp(-x)) */
    void (*swiglu_fwd)(ct_kctx *ctx, void *out, const void *gate, const void *up, size_t n);
    /* dgate += dout * up * silu'(gate); dup += dout * silu(gate) */
    void (*swiglu_bwd)(ct_kctx *ctx, void *dgate, void *dup, const void *dout, const void *gate, const void *up,
                       size_t n);

    /* GELU, tanh approximation (GPT-2's gelu_new) */
    void (*gelu_fwd)(ct_kctx *ctx, void *out, const void *inp, size_t n);
    void (*gelu_bwd)(ct_kctx *ctx, void *dinp, const void *inp, const void *dout, size_t n);

    /* out = a + b */
    void (*residual_fwd)(ct_kctx *ctx, void *out, const void *a, const void *b, size_t n);
    void (*residual_bwd)(ct_kctx *ctx, void *da, void *db, const void *dout, size_t n);

    /* The classifier's loss and its gradient in one pass (softmax + cross-entropy, fused):
     * losses[i] = logsumexp(logits[i,:V]) - logits[i,targets[i]], 0 where targets[i] < 0 or
     * targets is NULL; logits (N rows of ld >= V elements; columns [V, ld) are padding, ignored)
     * are overwritten by the gradient of dloss * sum_i losses[i], (softmax - onehot) * dloss,
     * 0 on ignored rows and in the padding. dloss is the weight of one token's loss
     * (1 / tokens counted in the step; 0 when no backward follows). The [N,V] buffer is read
     * once and written once: no probabilities and no separate backward pass over it. The one
     * op that writes its gradient instead of adding: the logits feed nothing else. */
    void (*xent)(ct_kctx *ctx, float *losses, void *logits, const int32_t *targets, float dloss, int N, int V,
                 int ld);

    /* AdamW on n elements: master, m, v fp32; grad in storage dtype; param (storage dtype)
     * receives the updated master (param may equal master when elem_size is 4). */
    void (*adamw)(ct_kctx *ctx, float *master, void *param, float *m, float *v, const void *grad, size_t n,
                  const ct_adamw_params *p);
    /* sum of squares of g[n], accumulated in double; synchronous */
    double (*sumsq)(ct_kctx *ctx, const void *g, size_t n);

    /* LoRA adapter beside a linear layer (PEFT's): out[N,M] += scale * (drop(x) . A^T) . B^T with
     * x[N,K], A[r,K], B[M,r]. h[N,r] receives drop(x) . A^T for backward. drop() keeps each element
     * of x with probability 1-p and scales it by 1/(1-p); 0 <= p < 1, p = 0: no dropout. Whether
     * element i (row-major index in x) is kept is a pure function of (seed, i), the same on every
     * backend, so backward regenerates the same mask:
     *   z = seed ^ (i * 0x9E3779B97F4A7C15);  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9;
     *   z = (z ^ (z >> 27)) * 0x94D049BB133111EB;  z ^= z >> 31;   (splitmix64's finalizer)
     *   kept  <=>  (uint32_t)(z >> 32) >= (uint32_t)(p * 2^32, computed in double, truncated).
     * scratch holds lora_scratch_len(N, K, r) elements of the storage dtype, as backward's does
     * (one buffer can serve both); forward uses it only when p > 0 (drop(x) on the cpu), so it
     * may be NULL when p = 0. Its contents on entry do not matter and are garbage after. */
    void (*lora_fwd)(ct_kctx *ctx, void *out, void *h, const void *x, const void *A, const void *B,
                     void *scratch, int N, int K, int M, int r, float scale, float p, uint64_t seed);
    /* dx[N,K] += scale * drop'((dout . B) . A); dA[r,K] += scale * (dout . B)^T . drop(x);
     * dB[M,r] += scale * dout^T . h, where drop' applies drop()'s mask and 1/(1-p) to a gradient.
     * dx may be NULL (the adapter's input needs no gradient from this path); dA and dB may be
     * NULL too (skipped). scratch holds lora_scratch_len(N, K, r) elements of the storage dtype
     * (on the cpu: dh[N,r], then drop(x)[N,K] when p > 0); its contents on entry do not matter. */
    size_t (*lora_scratch_len)(int N, int K, int r);
    void (*lora_bwd)(ct_kctx *ctx, void *dx, void *dA, void *dB, const void *dout, const void *x, const void *h,
                     const void *A, const void *B, void *scratch, int N, int K, int M, int r, float scale, float p,
                     uint64_t seed);
} ct_backend;

/* The CPU reference backend: fp32, BLAS for matmuls, OpenMP across cores. */
const ct_backend *ct_backend_cpu(void);

/* The CUDA backend, or NULL when this build has none. */
const ct_backend *ct_backend_cuda(void);

#endif
