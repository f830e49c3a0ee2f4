// attention.cu — causal multi-head self-attention on CUDA, fused FlashAttention-2 style: the
// T x T score matrix never exists in memory. Forward streams key blocks past a block of
// queries with an online softmax; backward recomputes the probabilities block by block from
// the saved row logsumexps.
//
// qkv[B*T,3C]: row (b,t) holds q | k | v, head h in channels h*hs..(h+1)*hs-1 (hs = C/NH);
// out[B*T,C]. stats layout, attention_stats_len(B,T,NH) = 2*B*NH*T floats (BH = B*NH):
//   lse  fp32 [BH,T]  written by forward: the row logsumexp of the scaled scores in base 2,
//                     log2(sum_j 2^(s_ij)) with s_ij = log2(e) * q_i.k_j / sqrt(hs)
//   D    fp32 [BH,T]  written by backward: D_i = sum_c dO_ic * O_ic
// Backward only reads lse, so it may run more than once per forward.
//
// Products run on bf16 tensor cores (WMMA 16x16x16, fp32 accumulators); everything else is
// fp32. Head dims are padded to HSP in {16,32,64,128} with zeros in shared memory. Each warp
// owns 16 rows of a tile; WMMA's accumulator layout is opaque, so score tiles go through a
// per-warp fp32 shared buffer where lane pair (2r, 2r+1) handles row r, column pairs
// 4j+2*half, +1 — the same lanes keep that row's softmax state and output accumulators.
// P is rounded to bf16 only where it feeds a product (P.V forward, P^T.dO backward); the
// softmax row sums and dS = P (dP - D) use fp32 P, and dS is rounded to bf16 for its two
// products. exp2 with log2(e) folded into the scale, the same constant in both directions.
//
// Backward: kernel dq (one block per query block) computes D for its rows, then
// dQ = scale * dS K over the key blocks at or left of the diagonal; kernel dkv (one block per
// key block, launched after) accumulates dV = P^T dO and dK = scale * dS^T Q over the query
// blocks at or below it. P is recomputed in both, but every output element has one owner
// thread that reads, adds and writes it once: no atomics, deterministic.
//
// All tiles fit 48 KB of static shared memory (no per-device opt-in needed); blocks are
// scheduled longest first.
#include <math.h>
#include <mma.h>
#include <stdint.h>

#include "attention.cuh"

using namespace nvcuda;

typedef wmma::fragment<wmma::matrix_a, 16, 16, 16, bf16, wmma::row_major> frag_a;
typedef wmma::fragment<wmma::matrix_b, 16, 16, 16, bf16, wmma::row_major> frag_brow;
typedef wmma::fragment<wmma::matrix_b, 16, 16, 16, bf16, wmma::col_major> frag_bcol;
typedef wmma::fragment<wmma::accumulator, 16, 16, 16, float> frag_c;

#define LOG2E 1.4426950408889634f

// Copy rows [0, nrows) of a head's tile into shared memory (rows LD elements apart), row t of
// the source at src + t*stride. Rows >= nvalid and channels >= hs are zero-filled, so padded
// rows and channels add nothing to any product. vec: hs, the strides and the base are
// 8-element aligned, so 16-byte loads never straddle the head's edge.
template <int HSP, int LD, int NT>
__device__ __forceinline__ void load_tile(bf16 *dst, const bf16 *src, int nrows, int nvalid, size_t stride, int hs,
                                          int vec)
{
    constexpr int SEG = HSP / 8; // 16-byte segments per row
    for (int idx = threadIdx.x; idx < nrows * SEG; idx += NT) {
        const int r = idx / SEG, c = (idx % SEG) * 8;
        uint4 v = make_uint4(0u, 0u, 0u, 0u);
        if (r < nvalid) {
            const bf16 *s = src + (size_t)r * stride + c;
            if (vec) {
                if (c < hs) v = *(const uint4 *)s;
            } else {
                unsigned e[8];
#pragma unroll
                for (int k = 0; k < 8; k++) e[k] = c + k < hs ? (unsigned)__bfloat16_as_ushort(s[k]) : 0u;
                v.x = e[0] | e[1] << 16;
                v.y = e[2] | e[3] << 16;
                v.z = e[4] | e[5] << 16;
                v.w = e[6] | e[7] << 16;
            }
        }
        *(uint4 *)(dst + r * LD + c) = v;
    }
}

// K and V rows [k0, k0 + n) of a head into ks and vs; base is the head's q channels in row 0 of
// its sequence (k and v follow at +C, +2C, rows 3C apart).
template <int HSP, int LD, int NT>
__device__ __forceinline__ void load_kv(bf16 *ks, bf16 *vs, const bf16 *base, int k0, int n, int T, int C, int hs,
                                        int vec)
{
    const int C3 = 3 * C;
    load_tile<HSP, LD, NT>(ks, base + C + (size_t)k0 * C3, n, T - k0, C3, hs, vec);
    load_tile<HSP, LD, NT>(vs, base + 2 * C + (size_t)k0 * C3, n, T - k0, C3, hs, vec);
}

// A block of rows staged through shared memory into register fragments, each warp taking its
// own 16 rows. The barrier inside publishes the tile; the caller must make sure stage is free
// on entry and stays untouched until every warp has loaded.
template <int HSP, int LD, int NT>
__device__ __forceinline__ void load_frags(frag_a (&f)[HSP / 16], bf16 *stage, const bf16 *src, int nrows,
                                           int nvalid, size_t stride, int hs, int vec)
{
    load_tile<HSP, LD, NT>(stage, src, nrows, nvalid, stride, hs, vec);
    __syncthreads();
    const bf16 *w = stage + (threadIdx.x >> 5) * 16 * LD;
#pragma unroll
    for (int kk = 0; kk < HSP / 16; kk++) wmma::load_matrix_sync(f[kk], w + kk * 16, LD);
}

// k-step kk of an A operand: fragments already in registers, or loaded from shared memory
// (rows LD apart) when registers are too tight to hold them across the loop
template <int LD> __device__ __forceinline__ const frag_a &a_frag(const frag_a *a, int kk, frag_a &) { return a[kk]; }
template <int LD> __device__ __forceinline__ const frag_a &a_frag(const bf16 *a, int kk, frag_a &t)
{
    wmma::load_matrix_sync(t, a + kk * 16, LD);
    return t;
}

// F[16, N] = A B^T (fp32, unscaled): A 16 x HSP (see a_frag), B N rows of HSP channels at b,
// rows LD apart (row-major B is B^T col-major). Ends with F complete for the whole warp.
template <int HSP, int N, int LD, int FLD, class A>
__device__ __forceinline__ void scores_tile(float *F, A a, const bf16 *b)
{
#pragma unroll
    for (int j = 0; j < N / 16; j++) {
        frag_c s;
        wmma::fill_fragment(s, 0.0f);
#pragma unroll
        for (int kk = 0; kk < HSP / 16; kk++) {
            frag_a t;
            const frag_a &af = a_frag<LD>(a, kk, t);
            frag_bcol bf;
            wmma::load_matrix_sync(bf, b + j * 16 * LD + kk * 16, LD);
            wmma::mma_sync(s, af, bf, s);
        }
        wmma::store_matrix_sync(F + j * 16, s, FLD, wmma::mem_row_major);
    }
    __syncwarp();
}

// acc[n] += A B_n over KS k-steps: A 16 x 16*KS bf16 at a (rows ALD apart), B_n the 16 columns
// from b + 16n of a row-major tile with rows LD apart
template <int KS, int ALD, int LD, int NN>
__device__ __forceinline__ void mma_acc(frag_c (&acc)[NN], const bf16 *a, const bf16 *b)
{
#pragma unroll
    for (int kk = 0; kk < KS; kk++) {
        frag_a af;
        wmma::load_matrix_sync(af, a + kk * 16, ALD);
#pragma unroll
        for (int n = 0; n < NN; n++) {
            frag_brow bf;
            wmma::load_matrix_sync(bf, b + kk * 16 * LD + n * 16, LD);
            wmma::mma_sync(acc[n], af, bf, acc[n]);
        }
    }
}

// f(j, c, x) over this lane's pairs x = F[r][c], F[r][c+1] of an N-wide row, c = 4j + 2*half
// (the layout in the header comment)
template <int N, int FLD, class Fn>
__device__ __forceinline__ void row_pairs(const float *F, int r, int half, const Fn &f)
{
#pragma unroll
    for (int j = 0; j < N / 4; j++) {
        const int c = 4 * j + 2 * half;
        f(j, c, *(const float2 *)(F + r * FLD + c));
    }
}

// a per-row value, or one per column from a shared array
__device__ __forceinline__ float at_col(float v, int) { return v; }
__device__ __forceinline__ float at_col(const float *v, int c) { return v[c]; }

// P from the scores in F: emit(j, c, p_c, p_c+1) with p = 2^(s * sl2 - ref) where vis(col0 + c)
// holds (the key or query index of column c), else exactly 0 (the causal mask and padding).
// Functors by reference and vis lambdas capturing by value: the other ways cost up to 8 more
// registers (ptxas 13.0) for the same instructions.
template <int N, int FLD, class R, class Vis, class Emit>
__device__ __forceinline__ void probs(const float *F, int r, int half, int col0, float sl2, R ref, const Vis &vis,
                                      const Emit &emit)
{
    row_pairs<N, FLD>(F, r, half, [&](int j, int c, float2 x) {
        const int col = col0 + c;
        const float p0 = vis(col) ? exp2f(x.x * sl2 - at_col(ref, c)) : 0.0f;
        const float p1 = vis(col + 1) ? exp2f(x.y * sl2 - at_col(ref, c + 1)) : 0.0f;
        emit(j, c, p0, p1);
    });
}

// dS = P (dP - D) rounded to bf16 into H, from dP in F and this lane's fp32 P pairs
template <int N, int FLD, int HLD, class R>
__device__ __forceinline__ void ds_rows(bf16 *H, const float *F, const float (&p)[N / 2], int r, int half, R D)
{
    row_pairs<N, FLD>(F, r, half, [&](int j, int c, float2 x) {
        *(__nv_bfloat162 *)(H + r * HLD + c) =
            __floats2bfloat162_rn(p[2 * j] * (x.x - at_col(D, c)), p[2 * j + 1] * (x.y - at_col(D, c + 1)));
    });
    __syncwarp();
}

// The warp's 16 rows of F (CH columns) into g rows row0.. (rows < T, channels col0 + c < hs):
// g = bf16(F), or with ADD g = bf16(g + mul * F). Each element is read, added and written by
// one lane: no race, no atomics. Warp barriers on both sides: F complete before, free after.
template <int CH, int FLD, bool ADD>
__device__ __forceinline__ void write_rows(bf16 *g, const float *F, int row0, int T, size_t stride, int col0, int hs,
                                           float mul)
{
    const int lane = threadIdx.x & 31;
    __syncwarp();
    for (int rr = 0; rr < 16 && row0 + rr < T; rr++)
        for (int c = lane; c < CH; c += 32) {
            const int cc = col0 + c;
            if (cc < hs) {
                bf16 *e = g + (size_t)(row0 + rr) * stride + cc;
                *e = ct_bf(ADD ? ct_ld(e) + mul * F[rr * FLD + c] : F[rr * FLD + c]);
            }
        }
    __syncwarp();
}

// g[row0+rr, c] += mul * acc[rr, c] for the warp's 16 rows, the HSP/16 accumulator fragments
// passing through the warp's scratch F in CH-wide chunks
template <int HSP, int CH, int FLD>
__device__ __forceinline__ void store_add(bf16 *g, const frag_c (&acc)[HSP / 16], float *F, int row0, int T,
                                          int stride, int hs, float mul)
{
#pragma unroll
    for (int ch = 0; ch < HSP / CH; ch++) {
#pragma unroll
        for (int n = 0; n < CH / 16; n++)
            wmma::store_matrix_sync(F + n * 16, acc[ch * (CH / 16) + n], FLD, wmma::mem_row_major);
        write_rows<CH, FLD, true>(g, F, row0, T, stride, ch * CH, hs, mul);
    }
}

// ---- forward ----------------------------------------------------------------------------------
// One block per (64-query block, b*NH+h), 4 warps of 16 query rows. Q lives in registers as
// fragments; K and V tiles of BC keys stream through shared memory.
template <int HSP> struct fwd_cfg {
    static constexpr int NW = 4, NT = 32 * NW, BR = 16 * NW;
    static constexpr int BC = HSP == 128 ? 32 : 64; // keys per step (48 KB bound at HSP 128)
    static constexpr int LD = HSP + 8;              // bf16 row stride: 16-byte multiple, no ldmatrix bank conflicts
    static constexpr int FLD = 64 + 4;              // fp32 scratch: S (BC wide) and P.V chunks (CW wide)
    static constexpr int PLD = BC + 8;
    static constexpr int CW = HSP < 64 ? HSP : 64;  // P.V output columns per pass through the scratch
};

template <int HSP>
__global__ void __launch_bounds__(fwd_cfg<HSP>::NT, 2)
    attn_fwd_kernel(bf16 *out, float *lse, const bf16 *qkv, int T, int C, int NH, float sl2, int vec)
{
    typedef fwd_cfg<HSP> K;
    constexpr int NT = K::NT, BR = K::BR, BC = K::BC, LD = K::LD, FLD = K::FLD, PLD = K::PLD, CW = K::CW;
    __shared__ __align__(128) bf16 kv_s[2 * BC * LD]; // K rows 0..BC-1, V rows BC..2BC-1; Q staged here first
    __shared__ __align__(128) float f_s[K::NW][16 * FLD];
    __shared__ __align__(128) bf16 p_s[K::NW][16 * PLD];

    const int hs = C / NH, C3 = 3 * C;
    const int bh = blockIdx.y, b = bh / NH, h = bh % NH;
    const int q0 = (gridDim.x - 1 - blockIdx.x) * BR; // the longest (last) query blocks first
    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31, r = lane >> 1, half = lane & 1;
    const int i = q0 + warp * 16 + r; // this lane's query row
    const int lim = min(i, T - 1);    // last key it sees (padded rows see all keys: no NaN anywhere)
    const bf16 *base = qkv + (size_t)b * T * C3 + (size_t)h * hs;
    float *F = f_s[warp];
    bf16 *P = p_s[warp];

    frag_a qf[HSP / 16];
    load_frags<HSP, LD, NT>(qf, kv_s, base + (size_t)q0 * C3, BR, T - q0, C3, hs, vec);

    float o[HSP / 2]; // row r, columns 4j+2*half, +1 of every CW-wide chunk
#pragma unroll
    for (int x = 0; x < HSP / 2; x++) o[x] = 0.0f;
    float m = -INFINITY, l = 0.0f; // running max (base 2) and this lane's half of the row sum

    const int kend = min(q0 + BR, T);
    for (int k0 = 0; k0 < kend; k0 += BC) {
        __syncthreads(); // everyone is done with kv_s (Q staging or the previous K/V)
        load_kv<HSP, LD, NT>(kv_s, kv_s + BC * LD, base, k0, BC, T, C, hs, vec);
        __syncthreads();

        // S = Q K^T (unscaled) for this warp's 16 rows
        scores_tile<HSP, BC, LD, FLD>(F, qf, kv_s);

        // online softmax over this block: keys > lim get -inf, hence p = 0 exactly. Two passes
        // over F (max, then exponentials) rather than holding the row in registers.
        const auto vis = [=](int key) { return key <= lim; };
        float mx = -INFINITY;
        row_pairs<BC, FLD>(F, r, half, [&](int, int c, float2 x) {
            const int key = k0 + c;
            if (vis(key)) mx = fmaxf(mx, x.x);
            if (vis(key + 1)) mx = fmaxf(mx, x.y);
        });
        mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 1)) * sl2; // sl2 > 0: max commutes with it
        const float mn = fmaxf(m, mx);
        const float mref = mn == -INFINITY ? 0.0f : mn; // guard; key 0 is always visible, so mn is finite
        const float alpha = exp2f(m - mref);            // 0 on the first block (m = -inf)
        m = mn;
        float ls = 0.0f;
        probs<BC, FLD>(F, r, half, k0, sl2, mref, vis, [&](int, int c, float p0, float p1) {
            ls += p0 + p1;
            *(__nv_bfloat162 *)(P + r * PLD + c) = __floats2bfloat162_rn(p0, p1);
        });
        l = l * alpha + ls;
#pragma unroll
        for (int x = 0; x < HSP / 2; x++) o[x] *= alpha;
        __syncwarp(); // P complete, F reads done

        // O += P V, CW output columns at a time through F
#pragma unroll
        for (int ch = 0; ch < HSP / CW; ch++) {
            frag_c acc[CW / 16];
#pragma unroll
            for (int n = 0; n < CW / 16; n++) wmma::fill_fragment(acc[n], 0.0f);
            mma_acc<BC / 16, PLD, LD>(acc, P, kv_s + BC * LD + ch * CW);
#pragma unroll
            for (int n = 0; n < CW / 16; n++) wmma::store_matrix_sync(F + n * 16, acc[n], FLD, wmma::mem_row_major);
            __syncwarp();
            row_pairs<CW, FLD>(F, r, half, [&](int j, int, float2 x) {
                o[ch * (CW / 2) + 2 * j] += x.x;
                o[ch * (CW / 2) + 2 * j + 1] += x.y;
            });
            __syncwarp(); // F reads done before it is overwritten
        }
    }

    const float lt = l + __shfl_xor_sync(0xffffffffu, l, 1); // >= 1: the max term is 2^0
    const float inv = 1.0f / lt;
    if (half == 0 && i < T) lse[(size_t)bh * T + i] = m + log2f(lt);

    // normalised O through F, then written row by row (coalesced)
    bf16 *ob = out + (size_t)b * T * C + (size_t)h * hs;
#pragma unroll
    for (int ch = 0; ch < HSP / CW; ch++) {
#pragma unroll
        for (int j = 0; j < CW / 4; j++)
            *(float2 *)(F + r * FLD + 4 * j + 2 * half) =
                make_float2(o[ch * (CW / 2) + 2 * j] * inv, o[ch * (CW / 2) + 2 * j + 1] * inv);
        write_rows<CW, FLD, false>(ob, F, q0 + warp * 16, T, C, ch * CW, hs, 1.0f);
    }
}

// ---- backward: dQ (and D) ---------------------------------------------------------------------
// One block per (64-query block, b*NH+h), 4 warps of 16 query rows; Q and dO in registers as
// fragments, K and V tiles of BK keys through shared memory.
template <int HSP> struct dq_cfg {
    static constexpr int NW = 4, NT = 32 * NW, BQ = 16 * NW;
    static constexpr int BK = HSP == 128 ? 32 : 64;
    static constexpr int LD = HSP + 8, FLD = BK + 4, HLD = BK + 8;
    static constexpr int CH = HSP < BK ? HSP : BK; // output columns per pass through F
};

template <int HSP>
__global__ void __launch_bounds__(dq_cfg<HSP>::NT)
    attn_bwd_dq_kernel(bf16 *dqkv, float *Dst, const float *lse, const bf16 *dout, const bf16 *qkv, const bf16 *out,
                       int T, int C, int NH, float sl2, float scale, int vec)
{
    typedef dq_cfg<HSP> K;
    constexpr int NT = K::NT, BQ = K::BQ, BK = K::BK, LD = K::LD, FLD = K::FLD, HLD = K::HLD, CH = K::CH;
    __shared__ __align__(128) bf16 kv_s[2 * BK * LD]; // K rows 0..BK-1, V rows BK..2BK-1; Q, dO staged first
    __shared__ __align__(128) float f_s[K::NW][16 * FLD];
    __shared__ __align__(128) bf16 h_s[K::NW][16 * HLD];

    const int hs = C / NH, C3 = 3 * C;
    const int bh = blockIdx.y, b = bh / NH, h = bh % NH;
    const int q0 = (gridDim.x - 1 - blockIdx.x) * BQ;
    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31, r = lane >> 1, half = lane & 1;
    const int i = q0 + warp * 16 + r;
    const int lim = i < T ? i : -1; // padded rows see nothing: p = 0
    const bf16 *base = qkv + (size_t)b * T * C3 + (size_t)h * hs;
    const bf16 *dob = dout + (size_t)b * T * C + (size_t)h * hs;
    const bf16 *oob = out + (size_t)b * T * C + (size_t)h * hs;
    float *F = f_s[warp];
    bf16 *H = h_s[warp];

    // D_i = dO_i . O_i for this warp's rows, one row per pass, lanes over channels
    float Di = 0.0f;
    for (int rr = 0; rr < 16; rr++) {
        const int row = q0 + warp * 16 + rr;
        float d = 0.0f;
        if (row < T)
            for (int c = lane; c < hs; c += 32)
                d += ct_ld(dob + (size_t)row * C + c) * ct_ld(oob + (size_t)row * C + c);
        d = ct_warp_sum(d);
        if (row < T && lane == 0) Dst[(size_t)bh * T + row] = d;
        if (rr == r) Di = d;
    }
    const float Li = i < T ? lse[(size_t)bh * T + i] : 0.0f;

    frag_a qf[HSP / 16], dof[HSP / 16];
    load_frags<HSP, LD, NT>(qf, kv_s, base + (size_t)q0 * C3, BQ, T - q0, C3, hs, vec);
    __syncthreads(); // every warp has its Q before dO overwrites the staging area
    load_frags<HSP, LD, NT>(dof, kv_s, dob + (size_t)q0 * C, BQ, T - q0, C, hs, vec);

    frag_c dq[HSP / 16];
#pragma unroll
    for (int n = 0; n < HSP / 16; n++) wmma::fill_fragment(dq[n], 0.0f);

    const int kend = min(q0 + BQ, T);
    for (int k0 = 0; k0 < kend; k0 += BK) {
        __syncthreads();
        load_kv<HSP, LD, NT>(kv_s, kv_s + BK * LD, base, k0, BK, T, C, hs, vec);
        __syncthreads();

        // S = Q K^T -> P (fp32, kept in registers)
        scores_tile<HSP, BK, LD, FLD>(F, qf, kv_s);
        float p[BK / 2];
        probs<BK, FLD>(F, r, half, k0, sl2, Li, [=](int key) { return key <= lim; },
                       [&](int j, int, float p0, float p1) {
                           p[2 * j] = p0;
                           p[2 * j + 1] = p1;
                       });
        __syncwarp(); // F reads done

        // dP = dO V^T -> dS = P (dP - D) in bf16
        scores_tile<HSP, BK, LD, FLD>(F, dof, kv_s + BK * LD);
        ds_rows<BK, FLD, HLD>(H, F, p, r, half, Di);

        // dQ += dS K (scale applied at the end)
        mma_acc<BK / 16, HLD, LD>(dq, H, kv_s);
    }

    // dq += scale * dQ
    bf16 *dqb = dqkv + (size_t)b * T * C3 + (size_t)h * hs;
    store_add<HSP, CH, FLD>(dqb, dq, F, q0 + warp * 16, T, C3, hs, scale);
}

// ---- backward: dK, dV ---------------------------------------------------------------------------
// One block per (BKV-key block, b*NH+h), warps of 16 keys; K and V tiles stay in shared
// memory, Q and dO tiles of BQ queries stream through it from the diagonal to T. Works on
// transposed tiles (keys are rows): S^T = K Q^T, dP^T = V dO^T.
template <int HSP> struct dkv_cfg {
    static constexpr int NW = HSP == 128 ? 2 : 4, NT = 32 * NW, BKV = 16 * NW;
    static constexpr int BQ = HSP == 128 ? 16 : 32; // 16 at HSP 128: fewer live registers, no spills
    static constexpr int LD = HSP + 8, FLD = BQ + 4, HLD = BQ + 8;
    static constexpr int CH = HSP < BQ ? HSP : BQ;
};

template <int HSP>
__global__ void __launch_bounds__(dkv_cfg<HSP>::NT)
    attn_bwd_dkv_kernel(bf16 *dqkv, const float *Dst, const float *lse, const bf16 *dout, const bf16 *qkv, int T,
                        int C, int NH, float sl2, float scale, int vec)
{
    typedef dkv_cfg<HSP> K;
    constexpr int NT = K::NT, BKV = K::BKV, BQ = K::BQ, LD = K::LD, FLD = K::FLD, HLD = K::HLD, CH = K::CH;
    __shared__ __align__(128) bf16 k_s[BKV * LD];
    __shared__ __align__(128) bf16 v_s[BKV * LD];
    __shared__ __align__(128) bf16 q_s[BQ * LD];
    __shared__ __align__(128) bf16 do_s[BQ * LD];
    __shared__ __align__(128) float f_s[K::NW][16 * FLD];
    __shared__ __align__(128) bf16 h_s[K::NW][16 * HLD];
    __shared__ float lse_s[BQ], d_s[BQ];

    const int hs = C / NH, C3 = 3 * C;
    const int bh = blockIdx.y, b = bh / NH, h = bh % NH;
    const int k0 = blockIdx.x * BKV; // key block 0 loops over all queries: it goes first
    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31, r = lane >> 1, half = lane & 1;
    const int key = k0 + warp * 16 + r; // this lane's key row
    const bf16 *base = qkv + (size_t)b * T * C3 + (size_t)h * hs;
    const bf16 *dob = dout + (size_t)b * T * C + (size_t)h * hs;
    const float *lseb = lse + (size_t)bh * T, *Db = Dst + (size_t)bh * T;
    float *F = f_s[warp];
    bf16 *H = h_s[warp];
    const bf16 *kw = k_s + warp * 16 * LD, *vw = v_s + warp * 16 * LD;

    load_kv<HSP, LD, NT>(k_s, v_s, base, k0, BKV, T, C, hs, vec);

    frag_c dk[HSP / 16], dv[HSP / 16];
#pragma unroll
    for (int n = 0; n < HSP / 16; n++) {
        wmma::fill_fragment(dk[n], 0.0f);
        wmma::fill_fragment(dv[n], 0.0f);
    }

    for (int q0 = k0; q0 < T; q0 += BQ) { // queries before k0 see none of these keys
        __syncthreads(); // previous step done with q_s, do_s, lse_s, d_s
        load_tile<HSP, LD, NT>(q_s, base + (size_t)q0 * C3, BQ, T - q0, C3, hs, vec);
        load_tile<HSP, LD, NT>(do_s, dob + (size_t)q0 * C, BQ, T - q0, C, hs, vec);
        for (int t = threadIdx.x; t < BQ; t += NT) {
            lse_s[t] = q0 + t < T ? lseb[q0 + t] : 0.0f;
            d_s[t] = q0 + t < T ? Db[q0 + t] : 0.0f;
        }
        __syncthreads(); // (first pass: K and V are in too)

        // S^T = K Q^T for this warp's 16 keys -> P^T, kept fp32 in registers and bf16 in H. K
        // is read from shared memory: as fragments it would cost registers the loop lacks.
        scores_tile<HSP, BQ, LD, FLD>(F, kw, q_s);
        float p[BQ / 2];
        probs<BQ, FLD>(F, r, half, q0, sl2, lse_s, [=](int q) { return key <= q && q < T; },
                       [&](int j, int c, float p0, float p1) {
                           p[2 * j] = p0;
                           p[2 * j + 1] = p1;
                           *(__nv_bfloat162 *)(H + r * HLD + c) = __floats2bfloat162_rn(p0, p1);
                       });
        __syncwarp(); // H complete, F reads done

        // dV += P^T dO
        mma_acc<BQ / 16, HLD, LD>(dv, H, do_s);

        // dP^T = V dO^T -> dS^T = P^T (dP^T - D) in bf16; the warp barrier closing the product
        // also keeps the dV product's H reads before dS overwrites H
        scores_tile<HSP, BQ, LD, FLD>(F, vw, do_s);
        ds_rows<BQ, FLD, HLD>(H, F, p, r, half, d_s);

        // dK += dS^T Q (scale applied at the end)
        mma_acc<BQ / 16, HLD, LD>(dk, H, q_s);
    }

    // dv += dV, dk += scale * dK
    bf16 *dkb = dqkv + (size_t)b * T * C3 + C + (size_t)h * hs;
    store_add<HSP, CH, FLD>(dkb, dk, F, k0 + warp * 16, T, C3, hs, scale);
    store_add<HSP, CH, FLD>(dkb + C, dv, F, k0 + warp * 16, T, C3, hs, 1.0f);
}

// ---- host -------------------------------------------------------------------------------------
size_t ct_cuda_attention_stats_len(int B, int T, int NH)
{
    if (B <= 0 || T <= 0 || NH <= 0) return 0;
    return 2 * (size_t)B * NH * T;
}

// head dim padded to the next supported tile width
static int padded_hs(int hs)
{
    if (hs > 128) {
        fprintf(stderr, "attention: head size %d > 128 is not supported by the CUDA backend\n", hs);
        fflush(stderr);
        abort();
    }
    return hs <= 16 ? 16 : hs <= 32 ? 32 : hs <= 64 ? 64 : 128;
}

static int aligned16(const void *p) { return ((uintptr_t)p & 15) == 0; }

template <int HSP>
static void fwd_launch(ct_kctx *ctx, bf16 *out, float *lse, const bf16 *qkv, int B, int T, int C, int NH, float sl2,
                       int vec)
{
    typedef fwd_cfg<HSP> K;
    const dim3 grid((unsigned)((T + K::BR - 1) / K::BR), (unsigned)(B * NH));
    attn_fwd_kernel<HSP><<<grid, K::NT, 0, ctx->stream>>>(out, lse, qkv, T, C, NH, sl2, vec);
    CT_LAUNCH_CHECK(ctx);
}

template <int HSP>
static void bwd_launch(ct_kctx *ctx, bf16 *dqkv, float *D, const float *lse, const bf16 *dout, const bf16 *qkv,
                       const bf16 *out, int B, int T, int C, int NH, float sl2, float scale, int vec)
{
    typedef dq_cfg<HSP> KQ;
    typedef dkv_cfg<HSP> KKV;
    // dq first: it writes D, which dkv reads (same stream)
    const dim3 gq((unsigned)((T + KQ::BQ - 1) / KQ::BQ), (unsigned)(B * NH));
    attn_bwd_dq_kernel<HSP><<<gq, KQ::NT, 0, ctx->stream>>>(dqkv, D, lse, dout, qkv, out, T, C, NH, sl2, scale, vec);
    CT_LAUNCH_CHECK(ctx);
    const dim3 gkv((unsigned)((T + KKV::BKV - 1) / KKV::BKV), (unsigned)(B * NH));
    attn_bwd_dkv_kernel<HSP><<<gkv, KKV::NT, 0, ctx->stream>>>(dqkv, D, lse, dout, qkv, T, C, NH, sl2, scale, vec);
    CT_LAUNCH_CHECK(ctx);
}

void ct_cuda_attention_fwd(ct_kctx *ctx, void *out, float *stats, const void *qkv, int B, int T, int C, int NH)
{
    if (B <= 0 || T <= 0 || C <= 0 || NH <= 0) return;
    const int hs = C / NH, hsp = padded_hs(hs);
    const float scale = 1.0f / sqrtf((float)hs), sl2 = LOG2E * scale; // as in backward, bit for bit
    const int vec = hs % 8 == 0 && C % 8 == 0 && aligned16(qkv);
    bf16 *o = (bf16 *)out;
    const bf16 *x = (const bf16 *)qkv;
    switch (hsp) {
    case 16: fwd_launch<16>(ctx, o, stats, x, B, T, C, NH, sl2, vec); break;
    case 32: fwd_launch<32>(ctx, o, stats, x, B, T, C, NH, sl2, vec); break;
    case 64: fwd_launch<64>(ctx, o, stats, x, B, T, C, NH, sl2, vec); break;
    default: fwd_launch<128>(ctx, o, stats, x, B, T, C, NH, sl2, vec); break;
    }
}

void ct_cuda_attention_bwd(ct_kctx *ctx, void *dqkv, float *stats, const void *dout, const void *qkv,
                           const void *out, int B, int T, int C, int NH)
{
    if (B <= 0 || T <= 0 || C <= 0 || NH <= 0) return;
    const int hs = C / NH, hsp = padded_hs(hs);
    const float scale = 1.0f / sqrtf((float)hs), sl2 = LOG2E * scale;
    const int vec = hs % 8 == 0 && C % 8 == 0 && aligned16(qkv) && aligned16(dout);
    const float *lse = stats;
    float *D = stats + (size_t)B * NH * T;
    bf16 *g = (bf16 *)dqkv;
    const bf16 *d = (const bf16 *)dout, *x = (const bf16 *)qkv, *o = (const bf16 *)out;
    switch (hsp) {
    case 16: bwd_launch<16>(ctx, g, D, lse, d, x, o, B, T, C, NH, sl2, scale, vec); break;
    case 32: bwd_launch<32>(ctx, g, D, lse, d, x, o, B, T, C, NH, sl2, scale, vec); break;
    case 64: bwd_launch<64>(ctx, g, D, lse, d, x, o, B, T, C, NH, sl2, scale, vec); break;
    default: bwd_launch<128>(ctx, g, D, lse, d, x, o, B, T, C, NH, sl2, scale, vec); break;
    }
}
