/* backend.c — the CPU backend's table: host memory, fp32 storage. */
#include <stdlib.h>
#include <string.h>

#include "cpu.h"

/* The CPU backend needs no per-context state; a static byte gives callers a non-NULL handle. */
static char cpu_ctx_token;

static int cpu_device_count(void) { return 1; }
static ct_kctx *cpu_kctx_init(int device) { return (ct_kctx *)&cpu_ctx_token; }
static void cpu_kctx_free(ct_kctx *ctx) {}
static void *cpu_stream(ct_kctx *ctx) { return NULL; }

/* 64-byte aligned, zero-filled: SIMD loads and BLAS prefer aligned rows. */
static void *cpu_alloc(size_t bytes)
{
    size_t rounded = (bytes + 63) / 64 * 64;
    void *p = aligned_alloc(64, rounded ? rounded : 64);
    if (p) memset(p, 0, rounded ? rounded : 64);
    return p;
}

static void cpu_free(void *p) { free(p); }
static void cpu_zero(ct_kctx *ctx, void *p, size_t bytes) { memset(p, 0, bytes); }
static void cpu_copy(ct_kctx *ctx, void *dst, const void *src, size_t bytes) { memmove(dst, src, bytes); }
static void cpu_to_storage(ct_kctx *ctx, void *dst, const float *src, size_t n) { memmove(dst, src, n * 4); }
static void cpu_to_f32(ct_kctx *ctx, float *dst, const void *src, size_t n) { memmove(dst, src, n * 4); }
static void cpu_sync(ct_kctx *ctx) {}

static const ct_backend cpu_backend = {
    .name = "cpu",
    .abi = CT_KERNELS_ABI,
    .elem_size = sizeof(float),
    .device_count = cpu_device_count,
    .kctx_init = cpu_kctx_init,
    .kctx_free = cpu_kctx_free,
    .stream = cpu_stream,
    .alloc = cpu_alloc,
    .free = cpu_free,
    .zero = cpu_zero,
    .copy = cpu_copy,
    .upload = cpu_copy,
    .download = cpu_copy,
    .to_storage = cpu_to_storage,
    .to_f32 = cpu_to_f32,
    .sync = cpu_sync,
    .encoder_fwd = ct_cpu_encoder_fwd,
    .encoder_bwd = ct_cpu_encoder_bwd,
    .layernorm_fwd = ct_cpu_layernorm_fwd,
    .layernorm_bwd = ct_cpu_layernorm_bwd,
    .matmul_fwd = ct_cpu_matmul_fwd,
    .matmul_bwd = ct_cpu_matmul_bwd,
    .attention_stats_len = ct_cpu_attention_stats_len,
    .attention_fwd = ct_cpu_attention_fwd,
    .attention_bwd = ct_cpu_attention_bwd,
    .attention_decode = ct_cpu_attention_decode,
    .copy_rows = ct_cpu_copy_rows,
    .rmsnorm_fwd = ct_cpu_rmsnorm_fwd,
    .rmsnorm_bwd = ct_cpu_rmsnorm_bwd,
    .rope_fwd = ct_cpu_rope_fwd,
    .rope_bwd = ct_cpu_rope_bwd,
    .swiglu_fwd = ct_cpu_swiglu_fwd,
    .swiglu_bwd = ct_cpu_swiglu_bwd,
    .gelu_fwd = ct_cpu_gelu_fwd,
    .gelu_bwd = ct_cpu_gelu_bwd,
    .residual_fwd = ct_cpu_residual_fwd,
    .residual_bwd = ct_cpu_residual_bwd,
    .xent = ct_cpu_xent,
    .adamw = ct_cpu_adamw,
    .sumsq = ct_cpu_sumsq,
    .lora_fwd = ct_cpu_lora_fwd,
    .lora_scratch_len = ct_cpu_lora_scratch_len,
    .lora_bwd = ct_cpu_lora_bwd,
};

const ct_backend *ct_backend_cpu(void) { return &cpu_backend; }
