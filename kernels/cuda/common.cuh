// common.cuh — private to the CUDA backend: error checks, the execution context, bf16 helpers
// and the small device utilities (block reductions) that several ops share.
#ifndef CT_KERNELS_CUDA_COMMON_CUH
#define CT_KERNELS_CUDA_COMMON_CUH

#include <cublasLt.h>
#include <cuda_bf16.h>
#include <cuda_runtime.h>
#include <stdio.h>
#include <stdlib.h>

extern "C" {
#include "kernels.h"
}

// ---- error checks -------------------------------------------------------------------------
// One macro generates every library's check: evaluate, compare with the library's success
// code, and on failure print file:line, the failing expression and the library's own error
// string, then abort. (A CUDA failure inside a backend is a broken invariant; docs/DESIGN.md "Conventions" says
// abort; under MPI the abort takes the job down.) A NCCL check is one more line like these.
#define CT_GPU_CHECK_GEN(lib, expr, ok, errstr)                                                       \
    do {                                                                                             \
        auto ct_status_ = (expr);                                                                    \
        if (ct_status_ != (ok)) {                                                                    \
            fprintf(stderr, "%s:%d: %s error %d (%s) in %s\n", __FILE__, __LINE__, lib, (int)ct_status_, \
                    errstr(ct_status_), #expr);                                                      \
            fflush(stderr);                                                                          \
            abort();                                                                                 \
        }                                                                                            \
    } while (0)
#define CT_CUDA_CHECK(expr) CT_GPU_CHECK_GEN("CUDA", expr, cudaSuccess, cudaGetErrorString)
#define CT_CUBLAS_CHECK(expr) CT_GPU_CHECK_GEN("cuBLAS", expr, CUBLAS_STATUS_SUCCESS, cublasLtGetStatusString)

// ---- the execution context ------------------------------------------------------------------
#define CT_CUBLASLT_WORKSPACE (32u << 20) // bytes; Hopper kernels want up to 32 MiB
#define CT_SUMSQ_BLOCKS 1024              // fixed grid: sumsq's reduction order never depends on the GPU

struct ct_kctx {
    int device;
    cudaStream_t stream;       // every op of this context runs here
    cublasLtHandle_t lt;
    void *lt_workspace;        // CT_CUBLASLT_WORKSPACE bytes, for cuBLASLt on `stream` only
    double *sumsq_partials;    // [CT_SUMSQ_BLOCKS + 1] device: per-block sums, then the total
    double *sumsq_host;        // pinned host double: sumsq's result lands here
    float *colsum_partials;    // [2 x CT_COLSUM_CHUNKS x CT_COLSUM_COLS] device: colsum.cu's stage one
    int debug_sync;            // CTRAIN_CUDA_SYNC=1: synchronise after every launch (debugging)
};

// After every kernel launch: the launch error now, and with CTRAIN_CUDA_SYNC=1 the kernel's
// own error too, reported at the launching line instead of at some later call.
#define CT_LAUNCH_CHECK(ctx)                                                 \
    do {                                                                     \
        CT_CUDA_CHECK(cudaGetLastError());                                   \
        if ((ctx)->debug_sync) CT_CUDA_CHECK(cudaStreamSynchronize((ctx)->stream)); \
    } while (0)

// ---- bf16 -----------------------------------------------------------------------------------
typedef __nv_bfloat16 bf16;

__device__ __forceinline__ float ct_ld(const bf16 *p) { return __bfloat162float(*p); }
__device__ __forceinline__ bf16 ct_bf(float x) { return __float2bfloat16_rn(x); } // round to nearest even

// Eight bf16 at once (one 16-byte access; p 16-byte aligned), as fp32: elementwise kernels move
// whole cache sectors per instruction instead of 2 bytes. Rounding as ct_bf, element by element.
__device__ __forceinline__ void ct_ld8(float *f, const bf16 *p)
{
    const uint4 u = *(const uint4 *)p;
    const __nv_bfloat162 *h = (const __nv_bfloat162 *)&u;
#pragma unroll
    for (int k = 0; k < 4; k++) {
        const float2 t = __bfloat1622float2(h[k]);
        f[2 * k] = t.x;
        f[2 * k + 1] = t.y;
    }
}
__device__ __forceinline__ void ct_st8(bf16 *p, const float *f)
{
    uint4 u;
    __nv_bfloat162 *h = (__nv_bfloat162 *)&u;
#pragma unroll
    for (int k = 0; k < 4; k++) h[k] = __floats2bfloat162_rn(f[2 * k], f[2 * k + 1]);
    *(uint4 *)p = u;
}
static inline int ct_aligned16(const void *p) { return ((uintptr_t)p & 15) == 0; }

// out[i] = bf16(f(a[i], b[i])) for i < n, f on fp32, grid-stride. VEC (out, a and b 16-byte
// aligned): eight elements per step through ct_ld8/ct_st8, then the tail one at a time; the same
// arithmetic either way. out may equal a or b (each element is read before it is written).
template <bool VEC, class F>
__device__ __forceinline__ void ct_map2(bf16 *out, const bf16 *a, const bf16 *b, size_t n, const F &f)
{
    const size_t stride = (size_t)gridDim.x * blockDim.x, t = blockIdx.x * (size_t)blockDim.x + threadIdx.x;
    size_t head = 0;
    if (VEC) {
        head = n / 8 * 8;
        for (size_t i = t * 8; i < head; i += stride * 8) {
            float x[8], y[8];
            ct_ld8(x, a + i);
            ct_ld8(y, b + i);
#pragma unroll
            for (int k = 0; k < 8; k++) x[k] = f(x[k], y[k]);
            ct_st8(out + i, x);
        }
    }
    for (size_t i = head + t; i < n; i += stride) out[i] = ct_bf(f(ct_ld(a + i), ct_ld(b + i)));
}

static inline unsigned ct_blocks(size_t n, unsigned threads)
{
    size_t b = (n + threads - 1) / threads;
    return (unsigned)(b < 65535u * 32u ? b : 65535u * 32u); // kernels use grid-stride loops beyond this
}

// The elementwise kernels' launch, on the context's stream and checked: vec (eight elements a
// thread, 16-byte accesses) when `aligned`, else scalar (one element a thread); n elements.
template <class... P, class... A>
static void ct_launch_map(ct_kctx *ctx, void (*vec)(P...), void (*scalar)(P...), int aligned, size_t n, A... args)
{
    if (aligned) vec<<<ct_blocks((n + 7) / 8, 256), 256, 0, ctx->stream>>>(args...);
    else scalar<<<ct_blocks(n, 256), 256, 0, ctx->stream>>>(args...);
    CT_LAUNCH_CHECK(ctx);
}

// ---- reductions -----------------------------------------------------------------------------
template <typename T> __device__ __forceinline__ T ct_warp_sum(T v)
{
    for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
    return v;
}
__device__ __forceinline__ float ct_warp_max(float v)
{
    for (int o = 16; o > 0; o >>= 1) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, o));
    return v;
}

// Sum over the block (blockDim.x a multiple of 32, at most 1024), the same value returned to
// every thread; fixed order, so deterministic. `sh` holds 32 T; reusable after return.
template <typename T> __device__ T ct_block_sum(T v, T *sh)
{
    int lane = threadIdx.x & 31, wid = threadIdx.x >> 5, nw = blockDim.x >> 5;
    v = ct_warp_sum(v);
    __syncthreads(); // sh may still be read by a previous call
    if (lane == 0) sh[wid] = v;
    __syncthreads();
    T s = lane < nw ? sh[lane] : (T)0;
    return ct_warp_sum(s);
}
__device__ __forceinline__ float ct_block_max(float v, float *sh)
{
    int lane = threadIdx.x & 31, wid = threadIdx.x >> 5, nw = blockDim.x >> 5;
    v = ct_warp_max(v);
    __syncthreads();
    if (lane == 0) sh[wid] = v;
    __syncthreads();
    float s = lane < nw ? sh[lane] : -INFINITY;
    return ct_warp_max(s);
}

#endif
