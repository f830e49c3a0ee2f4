// backend.cu — the CUDA backend's table: device memory, bf16 storage, one stream per context.
//
// ct_cuda_backend_table() returns the table only when every slot every model needs is filled
// (missing_slot below lists them) and a CUDA device is present; otherwise NULL, so ctrain falls
// back to the CPU backend and never calls a driver that is not there. The optional slots
// (kernels.h: the Llama family's and sampling's) may be NULL: a model that needs one names it.
#include <stdlib.h>
#include <string.h>

#include "adamw.cuh"
#include "attention.cuh"
#include "colsum.cuh"
#include "common.cuh"
#include "convert.cuh"
#include "encoder.cuh"
#include "gelu.cuh"
#include "layernorm.cuh"
#include "lora.cuh"
#include "matmul.cuh"
#include "residual.cuh"
#include "rmsnorm.cuh"
#include "rope.cuh"
#include "sumsq.cuh"
#include "swiglu.cuh"
#include "xent.cuh"

// ---- context ----------------------------------------------------------------------------------
// kctx_init reports failures (NULL) instead of aborting: a missing or busy device is a
// condition the caller can explain to the user.
#define CT_CUDA_TRY(expr)                                                                                 \
    do {                                                                                                  \
        cudaError_t e_ = (expr);                                                                          \
        if (e_ != cudaSuccess) {                                                                          \
            fprintf(stderr, "%s:%d: CUDA error %d (%s) in %s\n", __FILE__, __LINE__, (int)e_,             \
                    cudaGetErrorString(e_), #expr);                                                       \
            goto fail;                                                                                    \
        }                                                                                                 \
    } while (0)

static void cuda_kctx_free(ct_kctx *ctx)
{
    if (!ctx) return;
    cudaSetDevice(ctx->device);
    if (ctx->stream) cudaStreamSynchronize(ctx->stream);
    if (ctx->lt) cublasLtDestroy(ctx->lt);
    cudaFree(ctx->lt_workspace);
    cudaFree(ctx->sumsq_partials);
    cudaFree(ctx->colsum_partials);
    cudaFreeHost(ctx->sumsq_host);
    if (ctx->stream) cudaStreamDestroy(ctx->stream);
    free(ctx);
}

static int cuda_device_count(void)
{
    int n = 0;
    if (cudaGetDeviceCount(&n) != cudaSuccess) {
        cudaGetLastError(); // no driver or no device: none usable
        return 0;
    }
    return n;
}

static void *cuda_stream(ct_kctx *ctx) { return (void *)ctx->stream; }

static ct_kctx *cuda_kctx_init(int device)
{
    ct_kctx *ctx = (ct_kctx *)calloc(1, sizeof *ctx);
    if (!ctx) return NULL;
    ctx->device = device;
    const char *dbg = getenv("CTRAIN_CUDA_SYNC");
    ctx->debug_sync = dbg && dbg[0] == '1';
    CT_CUDA_TRY(cudaSetDevice(device));
    CT_CUDA_TRY(cudaStreamCreateWithFlags(&ctx->stream, cudaStreamNonBlocking));
    {
        cublasStatus_t s = cublasLtCreate(&ctx->lt);
        if (s != CUBLAS_STATUS_SUCCESS) {
            fprintf(stderr, "%s:%d: cublasLtCreate: %s\n", __FILE__, __LINE__, cublasLtGetStatusString(s));
            ctx->lt = NULL;
            goto fail;
        }
    }
    CT_CUDA_TRY(cudaMalloc(&ctx->lt_workspace, CT_CUBLASLT_WORKSPACE));
    CT_CUDA_TRY(cudaMalloc(&ctx->sumsq_partials, (CT_SUMSQ_BLOCKS + 1) * sizeof(double)));
    CT_CUDA_TRY(cudaMallocHost(&ctx->sumsq_host, sizeof(double)));
    CT_CUDA_TRY(cudaMalloc(&ctx->colsum_partials, 2 * sizeof(float) * CT_COLSUM_CHUNKS * CT_COLSUM_COLS));
    return ctx;
fail:
    cuda_kctx_free(ctx);
    return NULL;
}

// ---- memory -----------------------------------------------------------------------------------
// alloc/free have no context: they act on the current device (kctx_init set it).
static void *cuda_alloc(size_t bytes)
{
    void *p = NULL;
    if (cudaMalloc(&p, bytes ? bytes : 1) != cudaSuccess) {
        cudaGetLastError(); // clear the sticky-free allocation error
        return NULL;
    }
    // cudaMemset runs on the legacy stream, which the contexts' non-blocking streams do not
    // wait for: finish the fill before any op can write the buffer (allocation is set-up time)
    if (cudaMemset(p, 0, bytes ? bytes : 1) != cudaSuccess || cudaDeviceSynchronize() != cudaSuccess) {
        cudaGetLastError();
        cudaFree(p);
        return NULL;
    }
    return p;
}

static void cuda_free(void *p)
{
    if (p) CT_CUDA_CHECK(cudaFree(p));
}

static void cuda_zero(ct_kctx *ctx, void *p, size_t bytes)
{
    if (bytes) CT_CUDA_CHECK(cudaMemsetAsync(p, 0, bytes, ctx->stream));
}

static void cuda_copy(ct_kctx *ctx, void *dst, const void *src, size_t bytes)
{
    if (bytes) CT_CUDA_CHECK(cudaMemcpyAsync(dst, src, bytes, cudaMemcpyDeviceToDevice, ctx->stream));
}

// From pageable host memory the copy has been staged when the call returns, so the caller
// may reuse `host` at once; from pinned memory it is truly asynchronous.
static void cuda_upload(ct_kctx *ctx, void *dst, const void *host, size_t bytes)
{
    if (bytes) CT_CUDA_CHECK(cudaMemcpyAsync(dst, host, bytes, cudaMemcpyHostToDevice, ctx->stream));
}

static void cuda_download(ct_kctx *ctx, void *host, const void *src, size_t bytes)
{
    if (bytes) CT_CUDA_CHECK(cudaMemcpyAsync(host, src, bytes, cudaMemcpyDeviceToHost, ctx->stream));
    CT_CUDA_CHECK(cudaStreamSynchronize(ctx->stream));
}

// KV-cache appends: one strided 2-D copy on the stream (bf16 rows of cols elements)
static void cuda_copy_rows(ct_kctx *ctx, void *dst, int ldd, const void *src, int lds, int rows, int cols)
{
    if (rows <= 0 || cols <= 0) return;
    if (ldd < cols || lds < cols) {
        fprintf(stderr, "ctrain: cuda copy_rows: unsupported shape rows=%d cols=%d ldd=%d lds=%d: strides < cols\n", rows,
                cols, ldd, lds);
        fflush(stderr);
        abort();
    }
    CT_CUDA_CHECK(cudaMemcpy2DAsync(dst, (size_t)ldd * sizeof(bf16), src, (size_t)lds * sizeof(bf16),
                                    (size_t)cols * sizeof(bf16), (size_t)rows, cudaMemcpyDeviceToDevice, ctx->stream));
}

static void cuda_sync(ct_kctx *ctx) { CT_CUDA_CHECK(cudaStreamSynchronize(ctx->stream)); }

// ---- the table --------------------------------------------------------------------------------
static ct_backend make_table(void)
{
    ct_backend t;
    memset(&t, 0, sizeof t);
    t.name = "cuda";
    t.abi = CT_KERNELS_ABI;
    t.elem_size = 2; // bf16
    t.device_count = cuda_device_count;
    t.kctx_init = cuda_kctx_init;
    t.kctx_free = cuda_kctx_free;
    t.stream = cuda_stream;
    t.alloc = cuda_alloc;
    t.free = cuda_free;
    t.zero = cuda_zero;
    t.copy = cuda_copy;
    t.upload = cuda_upload;
    t.download = cuda_download;
    t.to_storage = ct_cuda_to_storage;
    t.to_f32 = ct_cuda_to_f32;
    t.sync = cuda_sync;
    t.encoder_fwd = ct_cuda_encoder_fwd;
    t.encoder_bwd = ct_cuda_encoder_bwd;
    t.layernorm_fwd = ct_cuda_layernorm_fwd;
    t.layernorm_bwd = ct_cuda_layernorm_bwd;
    t.matmul_fwd = ct_cuda_matmul_fwd;
    t.matmul_bwd = ct_cuda_matmul_bwd;
    t.attention_stats_len = ct_cuda_attention_stats_len;
    t.attention_fwd = ct_cuda_attention_fwd;
    t.attention_bwd = ct_cuda_attention_bwd;
    t.attention_decode = ct_cuda_attention_decode;
    t.copy_rows = cuda_copy_rows;
    t.rmsnorm_fwd = ct_cuda_rmsnorm_fwd;
    t.rmsnorm_bwd = ct_cuda_rmsnorm_bwd;
    t.rope_fwd = ct_cuda_rope_fwd;
    t.rope_bwd = ct_cuda_rope_bwd;
    t.swiglu_fwd = ct_cuda_swiglu_fwd;
    t.swiglu_bwd = ct_cuda_swiglu_bwd;
    t.gelu_fwd = ct_cuda_gelu_fwd;
    t.gelu_bwd = ct_cuda_gelu_bwd;
    t.residual_fwd = ct_cuda_residual_fwd;
    t.residual_bwd = ct_cuda_residual_bwd;
    t.xent = ct_cuda_xent;
    t.adamw = ct_cuda_adamw;
    t.sumsq = ct_cuda_sumsq;
    t.lora_fwd = ct_cuda_lora_fwd;
    t.lora_scratch_len = ct_cuda_lora_scratch_len;
    t.lora_bwd = ct_cuda_lora_bwd;
    return t;
}

static const ct_backend cuda_backend = make_table();

// The slots every model needs, by name: one left NULL keeps the whole backend off. Returns the
// first missing one's name, or NULL when all are filled.
static const char *missing_slot(const ct_backend *t)
{
#define CT_SLOT(s) if (!t->s) return #s;
    CT_SLOT(device_count) CT_SLOT(kctx_init) CT_SLOT(kctx_free) CT_SLOT(stream) CT_SLOT(alloc) CT_SLOT(free) CT_SLOT(zero) CT_SLOT(copy)
    CT_SLOT(upload) CT_SLOT(download) CT_SLOT(to_storage) CT_SLOT(to_f32) CT_SLOT(sync)
    CT_SLOT(encoder_fwd) CT_SLOT(encoder_bwd) CT_SLOT(layernorm_fwd) CT_SLOT(layernorm_bwd)
    CT_SLOT(matmul_fwd) CT_SLOT(matmul_bwd) CT_SLOT(attention_stats_len) CT_SLOT(attention_fwd)
    CT_SLOT(attention_bwd) CT_SLOT(gelu_fwd) CT_SLOT(gelu_bwd) CT_SLOT(residual_fwd) CT_SLOT(residual_bwd)
    CT_SLOT(xent) CT_SLOT(adamw) CT_SLOT(sumsq) CT_SLOT(lora_fwd)
    CT_SLOT(lora_scratch_len) CT_SLOT(lora_bwd)
#undef CT_SLOT
    return NULL;
}
// If kernels.h grows a slot, ct_backend grows: this fails to compile until the list above
// (and make_table) are revisited (optional slots stay off the list). 40 function pointers
// after name, abi and elem_size.
static_assert(sizeof(ct_backend) == 3 * sizeof(void *) + 40 * sizeof(void *),
              "ct_backend changed: update make_table and missing_slot in kernels/cuda/backend.cu");

extern "C" const ct_backend *ct_cuda_backend_table(void)
{
    const char *miss = missing_slot(&cuda_backend);
    if (miss) {
        if (getenv("CTRAIN_CUDA_SYNC")) fprintf(stderr, "ctrain: cuda backend off: slot %s not written\n", miss);
        return NULL;
    }
    if (cuda_device_count() <= 0) return NULL; // not an error: the CPU backend runs
    return &cuda_backend;
}
