// gemm.cu — row-major GEMM on cuBLASLt. cuBLASLt is column-major: a row-major X[r,c] with
// leading dimension ld is the column-major X^T, so C = op(A) op(B) is computed as the
// column-major C^T = op(B)^T op(A)^T: A and B swap places, M and N swap, transposes stay.
#include "gemm.cuh"

// largest power of two (<= 256) dividing the address, every row start (ld) and every batch
// offset, in bytes: conservative, so odd shapes get a kernel that tolerates them
static uint32_t align_of(const void *p, long long ld_bytes, long long stride_bytes, int batch)
{
    unsigned long long a = (unsigned long long)(uintptr_t)p | 256ull | (unsigned long long)ld_bytes;
    if (batch > 1) a |= (unsigned long long)stride_bytes;
    return (uint32_t)(a & (~a + 1));
}

static void set_layout(cublasLtMatrixLayout_t *l, cudaDataType_t t, long long rows, long long cols, long long ld,
                       int batch, long long stride)
{
    CT_CUBLAS_CHECK(cublasLtMatrixLayoutCreate(l, t, (uint64_t)rows, (uint64_t)cols, ld));
    if (batch > 1) {
        int32_t bc = batch;
        int64_t st = stride;
        CT_CUBLAS_CHECK(cublasLtMatrixLayoutSetAttribute(*l, CUBLASLT_MATRIX_LAYOUT_BATCH_COUNT, &bc, sizeof bc));
        CT_CUBLAS_CHECK(
            cublasLtMatrixLayoutSetAttribute(*l, CUBLASLT_MATRIX_LAYOUT_STRIDED_BATCH_OFFSET, &st, sizeof st));
    }
}

void ct_gemm(ct_kctx *ctx, const ct_gemm_args *g)
{
    if (g->M <= 0 || g->N <= 0 || g->batch <= 0) return;
    if (g->K <= 0) {
        // nothing to multiply: C = beta * C; only beta 0 and 1 are used by the backend
        if (g->beta == 0.0f && !g->bias) {
            size_t esz = g->ctype == CUDA_R_32F ? 4 : 2;
            for (int b = 0; b < g->batch; b++)
                CT_CUDA_CHECK(cudaMemset2DAsync((char *)g->C + (size_t)b * g->strideC * esz, (size_t)g->ldc * esz, 0,
                                                (size_t)g->N * esz, (size_t)g->M, ctx->stream));
            return;
        }
        if (g->beta == 1.0f && !g->bias) return;
        fprintf(stderr, "%s:%d: ct_gemm: K = 0 with a bias or beta %g is not supported\n", __FILE__, __LINE__,
                (double)g->beta);
        abort();
    }
    const size_t esz_c = g->ctype == CUDA_R_32F ? 4 : 2;
    cublasOperation_t ta = g->transB ? CUBLAS_OP_T : CUBLAS_OP_N; // column-major A' = row-major B
    cublasOperation_t tb = g->transA ? CUBLAS_OP_T : CUBLAS_OP_N; // column-major B' = row-major A
    const int m = g->N, n = g->M, k = g->K;

    cublasLtMatmulDesc_t desc;
    CT_CUBLAS_CHECK(cublasLtMatmulDescCreate(&desc, CUBLAS_COMPUTE_32F, CUDA_R_32F));
    CT_CUBLAS_CHECK(cublasLtMatmulDescSetAttribute(desc, CUBLASLT_MATMUL_DESC_TRANSA, &ta, sizeof ta));
    CT_CUBLAS_CHECK(cublasLtMatmulDescSetAttribute(desc, CUBLASLT_MATMUL_DESC_TRANSB, &tb, sizeof tb));
    if (g->bias) {
        if (g->ctype != CUDA_R_16BF || g->batch != 1) {
            fprintf(stderr, "%s:%d: ct_gemm: bias needs a bf16 output and batch 1\n", __FILE__, __LINE__);
            abort();
        }
        cublasLtEpilogue_t epi = CUBLASLT_EPILOGUE_BIAS;
        cudaDataType_t bt = CUDA_R_16BF;
        CT_CUBLAS_CHECK(cublasLtMatmulDescSetAttribute(desc, CUBLASLT_MATMUL_DESC_EPILOGUE, &epi, sizeof epi));
        CT_CUBLAS_CHECK(cublasLtMatmulDescSetAttribute(desc, CUBLASLT_MATMUL_DESC_BIAS_POINTER, &g->bias,
                                                       sizeof g->bias));
        CT_CUBLAS_CHECK(cublasLtMatmulDescSetAttribute(desc, CUBLASLT_MATMUL_DESC_BIAS_DATA_TYPE, &bt, sizeof bt));
    }

    cublasLtMatrixLayout_t la, lb, lc;
    // A' (row-major B): op(A') is m x k
    if (ta == CUBLAS_OP_N) set_layout(&la, CUDA_R_16BF, m, k, g->ldb, g->batch, g->strideB);
    else set_layout(&la, CUDA_R_16BF, k, m, g->ldb, g->batch, g->strideB);
    // B' (row-major A): op(B') is k x n
    if (tb == CUBLAS_OP_N) set_layout(&lb, CUDA_R_16BF, k, n, g->lda, g->batch, g->strideA);
    else set_layout(&lb, CUDA_R_16BF, n, k, g->lda, g->batch, g->strideA);
    set_layout(&lc, g->ctype, m, n, g->ldc, g->batch, g->strideC);

    cublasLtMatmulPreference_t pref;
    CT_CUBLAS_CHECK(cublasLtMatmulPreferenceCreate(&pref));
    uint64_t ws = CT_CUBLASLT_WORKSPACE;
    CT_CUBLAS_CHECK(cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES, &ws, sizeof ws));
    uint32_t al_a = align_of(g->B, g->ldb * 2, g->strideB * 2, g->batch);
    uint32_t al_b = align_of(g->A, g->lda * 2, g->strideA * 2, g->batch);
    uint32_t al_c = align_of(g->C, g->ldc * (long long)esz_c, g->strideC * (long long)esz_c, g->batch);
    CT_CUBLAS_CHECK(cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_A_BYTES, &al_a, sizeof al_a));
    CT_CUBLAS_CHECK(cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_B_BYTES, &al_b, sizeof al_b));
    CT_CUBLAS_CHECK(cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_C_BYTES, &al_c, sizeof al_c));
    CT_CUBLAS_CHECK(cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_D_BYTES, &al_c, sizeof al_c));

    cublasLtMatmulHeuristicResult_t heur;
    int found = 0;
    CT_CUBLAS_CHECK(cublasLtMatmulAlgoGetHeuristic(ctx->lt, desc, la, lb, lc, lc, pref, 1, &heur, &found));
    if (found == 0) {
        fprintf(stderr,
                "%s:%d: ct_gemm: cuBLASLt has no algorithm for M=%d N=%d K=%d transA=%d transB=%d batch=%d "
                "bias=%d ctype=%d align A/B/C=%u/%u/%u\n",
                __FILE__, __LINE__, g->M, g->N, g->K, g->transA, g->transB, g->batch, g->bias != NULL,
                (int)g->ctype, al_b, al_a, al_c);
        abort();
    }
    CT_CUBLAS_CHECK(cublasLtMatmul(ctx->lt, desc, &g->alpha, g->B, la, g->A, lb, &g->beta, g->C, lc, g->C, lc,
                                   &heur.algo, ctx->lt_workspace, CT_CUBLASLT_WORKSPACE, ctx->stream));
    if (ctx->debug_sync) CT_CUDA_CHECK(cudaStreamSynchronize(ctx->stream));

    CT_CUBLAS_CHECK(cublasLtMatmulPreferenceDestroy(pref));
    CT_CUBLAS_CHECK(cublasLtMatrixLayoutDestroy(la));
    CT_CUBLAS_CHECK(cublasLtMatrixLayoutDestroy(lb));
    CT_CUBLAS_CHECK(cublasLtMatrixLayoutDestroy(lc));
    CT_CUBLAS_CHECK(cublasLtMatmulDescDestroy(desc));
}
