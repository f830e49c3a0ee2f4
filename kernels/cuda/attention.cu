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

// g[row0+rr, c] += mul * acc[rr, c] for the warp's 16 rows (rows < T, channels < hs), the
// HSP/16 accumulator fragments passing through the warp's scratch F in CH-wide chunks. Each
// element is read, added and written by one lane: no race, no atomics.
template <int HSP, int CH, int FLD>
__device__ __forceinline__ void store_add(bf16 *g, const frag_c (&acc)[HSP / 16], float *F, int row0, int T,
                                          int stride, int hs, float mul)
{
    const int lane = threadIdx.x & 31;
#pragma unroll
    for (int ch = 0; ch < HSP / CH; ch++) {
#pragma unroll
        for (int n = 0; n < CH / 16; n++)
            wmma::store_matrix_sync(F + n * 16, acc[ch * (CH / 16) + n], FLD, wmma::mem_row_major);
        __syncwarp();
        for (int rr = 0; rr < 16 && row0 + rr < T; rr++)
            for (int c = lane; c < CH; c += 32) {
                const int cc = ch * CH + c;
                if (cc < hs) {
                    bf16 *e = g + (size_t)(row0 + rr) * stride + cc;
                    *e = ct_bf(ct_ld(e) + mul * F[rr * FLD + c]);
                }
            }
        __syncwarp(); // F reads done before the next chunk overwrites it
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
    load_tile<HSP, LD, NT>(kv_s, base + (size_t)q0 * C3, BR, T - q0, C3, hs, vec);
    __syncthreads();
#pragma unroll
    for (int kk = 0; kk < HSP / 16; kk++) wmma::load_matrix_sync(qf[kk], kv_s + warp * 16 * LD + kk * 16, LD);

    float o[HSP / 2]; // row r, columns 4j+2*half, +1 of every CW-wide chunk
#pragma unroll
    for (int x = 0; x < HSP / 2; x++) o[x] = 0.0f;
    float m = -INFINITY, l = 0.0f; // running max (base 2) and this lane's half of the row sum

    const int kend = min(q0 + BR, T);
    for (int k0 = 0; k0 < kend; k0 += BC) {
        __syncthreads(); // everyone is done with kv_s (Q staging or the previous K/V)
        load_tile<HSP, LD, NT>(kv_s, base + C + (size_t)k0 * C3, BC, T - k0, C3, hs, vec);
        load_tile<HSP, LD, NT>(kv_s + BC * LD, base + 2 * C + (size_t)k0 * C3, BC, T - k0, C3, hs, vec);
        __syncthreads();

        // S = Q K^T (unscaled) for this warp's 16 rows: K row-major [key][ch] is K^T col-major
#pragma unroll
        for (int j = 0; j < BC / 16; j++) {
            frag_c s;
            wmma::fill_fragment(s, 0.0f);
#pragma unroll
            for (int kk = 0; kk < HSP / 16; kk++) {
                frag_bcol kf;
                wmma::load_matrix_sync(kf, kv_s + j * 16 * LD + kk * 16, LD);
                wmma::mma_sync(s, qf[kk], kf, s);
            }
            wmma::store_matrix_sync(F + j * 16, s, FLD, wmma::mem_row_major);
        }
        __syncwarp();

        // online softmax over this block: keys > lim get -inf, hence p = 0 exactly. Two passes
        // over F (max, then exponentials) rather than holding the row in registers.
        float mx = -INFINITY;
#pragma unroll
        for (int j = 0; j < BC / 4; j++) {
            const int c = 4 * j + 2 * half, key = k0 + c;
            const float2 x = *(const float2 *)(F + r * FLD + c);
            if (key <= lim) mx = fmaxf(mx, x.x);
            if (key + 1 <= lim) mx = fmaxf(mx, x.y);
        }
        mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 1)) * sl2; // sl2 > 0: max commutes with it
        const float mn = fmaxf(m, mx);
        const float mref = mn == -INFINITY ? 0.0f : mn; // guard; key 0 is always visible, so mn is finite
        const float alpha = exp2f(m - mref);            // 0 on the first block (m = -inf)
        m = mn;
        float ls = 0.0f;
#pragma unroll
        for (int j = 0; j < BC / 4; j++) {
            const int c = 4 * j + 2 * half, key = k0 + c;
            const float2 x = *(const float2 *)(F + r * FLD + c);
            const float p0 = key <= lim ? exp2f(x.x * sl2 - mref) : 0.0f;
            const float p1 = key + 1 <= lim ? exp2f(x.y * sl2 - mref) : 0.0f;
            ls += p0 + p1;
            *(__nv_bfloat162 *)(P + r * PLD + c) = __floats2bfloat162_rn(p0, p1);
        }
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
#pragma unroll
            for (int kk = 0; kk < BC / 16; kk++) {
                frag_a pf;
                wmma::load_matrix_sync(pf, P + kk * 16, PLD);
#pragma unroll
                for (int n = 0; n < CW / 16; n++) {
                    frag_brow vf;
                    wmma::load_matrix_sync(vf, kv_s + (BC + kk * 16) * LD + ch * CW + n * 16, LD);
                    wmma::mma_sync(acc[n], pf, vf, acc[n]);
                }
            }
#pragma unroll
            for (int n = 0; n < CW / 16; n++) wmma::store_matrix_sync(F + n * 16, acc[n], FLD, wmma::mem_row_major);
            __syncwarp();
#pragma unroll
            for (int j = 0; j < CW / 4; j++) {
                const float2 x = *(const float2 *)(F + r * FLD + 4 * j + 2 * half);
                o[ch * (CW / 2) + 2 * j] += x.x;
                o[ch * (CW / 2) + 2 * j + 1] += x.y;
            }
            __syncwarp(); // F reads done before it is overwritten
        }
    }

    const float lt = l + __shfl_xor_sync(0xffffffffu, l, 1); // >= 1: the max term is 2^0
    const float inv = 1.0f / lt;
    if (half == 0 && i < T) lse[(size_t)bh * T + i] = m + log2f(lt);

    // normalised O through F, then written row by row (coalesced), channels < hs only
    bf16 *ob = out + (size_t)b * T * C + (size_t)h * hs;
#pragma unroll
    for (int ch = 0; ch < HSP / CW; ch++) {
#pragma unroll
        for (int j = 0; j < CW / 4; j++)
            *(float2 *)(F + r * FLD + 4 * j + 2 * half) =
                make_float2(o[ch * (CW / 2) + 2 * j] * inv, o[ch * (CW / 2) + 2 * j + 1] * inv);
        __syncwarp();
        for (int rr = 0; rr < 16; rr++) {
            const int row = q0 + warp * 16 + rr;
            if (row >= T) break;
            for (int c = lane; c < CW; c += 32) {
                const int cc = ch * CW + c;
                if (cc < hs) ob[(size_t)row * C + cc] = ct_bf(F[rr * FLD + c]);
            }
        }
        __syncwarp();
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
    load_tile<HSP, LD, NT>(kv_s, base + (size_t)q0 * C3, BQ, T - q0, C3, hs, vec);
    __syncthreads();
#pragma unroll
    for (int kk = 0; kk < HSP / 16; kk++) wmma::load_matrix_sync(qf[kk], kv_s + warp * 16 * LD + kk * 16, LD);
    __syncthreads();
    load_tile<HSP, LD, NT>(kv_s, dob + (size_t)q0 * C, BQ, T - q0, C, hs, vec);
    __syncthreads();
#pragma unroll
    for (int kk = 0; kk < HSP / 16; kk++) wmma::load_matrix_sync(dof[kk], kv_s + warp * 16 * LD + kk * 16, LD);

    frag_c dq[HSP / 16];
#pragma unroll
    for (int n = 0; n < HSP / 16; n++) wmma::fill_fragment(dq[n], 0.0f);

    const int kend = min(q0 + BQ, T);
    for (int k0 = 0; k0 < kend; k0 += BK) {
        __syncthreads();
        load_tile<HSP, LD, NT>(kv_s, base + C + (size_t)k0 * C3, BK, T - k0, C3, hs, vec);
        load_tile<HSP, LD, NT>(kv_s + BK * LD, base + 2 * C + (size_t)k0 * C3, BK, T - k0, C3, hs, vec);
        __syncthreads();

        // S = Q K^T -> P (fp32, kept in registers)
#pragma unroll
        for (int j = 0; j < BK / 16; j++) {
            frag_c s;
            wmma::fill_fragment(s, 0.0f);
#pragma unroll
            for (int kk = 0; kk < HSP / 16; kk++) {
                frag_bcol kf;
                wmma::load_matrix_sync(kf, kv_s + j * 16 * LD + kk * 16, LD);
                wmma::mma_sync(s, qf[kk], kf, s);
            }
            wmma::store_matrix_sync(F + j * 16, s, FLD, wmma::mem_row_major);
        }
        __syncwarp();
        float p[BK / 2];
#pragma unroll
        for (int j = 0; j < BK / 4; j++) {
            const int c = 4 * j + 2 * half, key = k0 + c;
            const float2 x = *(const float2 *)(F + r * FLD + c);
            p[2 * j] = key <= lim ? exp2f(x.x * sl2 - Li) : 0.0f;
            p[2 * j + 1] = key + 1 <= lim ? exp2f(x.y * sl2 - Li) : 0.0f;
        }
        __syncwarp(); // F reads done

        // dP = dO V^T -> dS = P (dP - D) in bf16
#pragma unroll
        for (int j = 0; j < BK / 16; j++) {
            frag_c s;
            wmma::fill_fragment(s, 0.0f);
#pragma unroll
            for (int kk = 0; kk < HSP / 16; kk++) {
                frag_bcol vf;
                wmma::load_matrix_sync(vf, kv_s + (BK + j * 16) * LD + kk * 16, LD);
                wmma::mma_sync(s, dof[kk], vf, s);
            }
            wmma::store_matrix_sync(F + j * 16, s, FLD, wmma::mem_row_major);
        }
        __syncwarp();
#pragma unroll
        for (int j = 0; j < BK / 4; j++) {
            const int c = 4 * j + 2 * half;
            const float2 x = *(const float2 *)(F + r * FLD + c);
            *(__nv_bfloat162 *)(H + r * HLD + c) =
                __floats2bfloat162_rn(p[2 * j] * (x.x - Di), p[2 * j + 1] * (x.y - Di));
        }
        __syncwarp();

        // dQ += dS K (scale applied at the end)
#pragma unroll
        for (int kk = 0; kk < BK / 16; kk++) {
            frag_a a;
            wmma::load_matrix_sync(a, H + kk * 16, HLD);
#pragma unroll
            for (int n = 0; n < HSP / 16; n++) {
                frag_brow kb;
                wmma::load_matrix_sync(kb, kv_s + kk * 16 * LD + n * 16, LD);
                wmma::mma_sync(dq[n], a, kb, dq[n]);
            }
        }
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

    load_tile<HSP, LD, NT>(k_s, base + C + (size_t)k0 * C3, BKV, T - k0, C3, hs, vec);
    load_tile<HSP, LD, NT>(v_s, base + 2 * C + (size_t)k0 * C3, BKV, T - k0, C3, hs, vec);

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

        // S^T = K Q^T for this warp's 16 keys -> P^T, kept fp32 in registers and bf16 in H
#pragma unroll
        for (int j = 0; j < BQ / 16; j++) {
            frag_c s;
            wmma::fill_fragment(s, 0.0f);
#pragma unroll
            for (int kk = 0; kk < HSP / 16; kk++) {
                frag_a ka;
                frag_bcol qb;
                wmma::load_matrix_sync(ka, kw + kk * 16, LD);
                wmma::load_matrix_sync(qb, q_s + j * 16 * LD + kk * 16, LD);
                wmma::mma_sync(s, ka, qb, s);
            }
            wmma::store_matrix_sync(F + j * 16, s, FLD, wmma::mem_row_major);
        }
        __syncwarp();
        float p[BQ / 2];
#pragma unroll
        for (int j = 0; j < BQ / 4; j++) {
            const int c = 4 * j + 2 * half, q = q0 + c; // query columns c, c+1
            const float2 x = *(const float2 *)(F + r * FLD + c);
            p[2 * j] = key <= q && q < T ? exp2f(x.x * sl2 - lse_s[c]) : 0.0f;
            p[2 * j + 1] = key <= q + 1 && q + 1 < T ? exp2f(x.y * sl2 - lse_s[c + 1]) : 0.0f;
            *(__nv_bfloat162 *)(H + r * HLD + c) = __floats2bfloat162_rn(p[2 * j], p[2 * j + 1]);
        }
        __syncwarp(); // H complete, F reads done

        // dV += P^T dO
#pragma unroll
        for (int kk = 0; kk < BQ / 16; kk++) {
            frag_a a;
            wmma::load_matrix_sync(a, H + kk * 16, HLD);
#pragma unroll
            for (int n = 0; n < HSP / 16; n++) {
                frag_brow db;
                wmma::load_matrix_sync(db, do_s + kk * 16 * LD + n * 16, LD);
                wmma::mma_sync(dv[n], a, db, dv[n]);
            }
        }

        // dP^T = V dO^T -> dS^T = P^T (dP^T - D) in bf16
#pragma unroll
        for (int j = 0; j < BQ / 16; j++) {
            frag_c s;
            wmma::fill_fragment(s, 0.0f);
#pragma unroll
            for (int kk = 0; kk < HSP / 16; kk++) {
                frag_a va;
                frag_bcol db;
                wmma::load_matrix_sync(va, vw + kk * 16, LD);
                wmma::load_matrix_sync(db, do_s + j * 16 * LD + kk * 16, LD);
                wmma::mma_sync(s, va, db, s);
            }
            wmma::store_matrix_sync(F + j * 16, s, FLD, wmma::mem_row_major);
        }
        __syncwarp(); // F written; H reads of the dV product done
#pragma unroll
        for (int j = 0; j < BQ / 4; j++) {
            const int c = 4 * j + 2 * half;
            const float2 x = *(const float2 *)(F + r * FLD + c);
            *(__nv_bfloat162 *)(H + r * HLD + c) =
                __floats2bfloat162_rn(p[2 * j] * (x.x - d_s[c]), p[2 * j + 1] * (x.y - d_s[c + 1]));
        }
        __syncwarp();

        // dK += dS^T Q (scale applied at the end)
#pragma unroll
        for (int kk = 0; kk < BQ / 16; kk++) {
            frag_a a;
            wmma::load_matrix_sync(a, H + kk * 16, HLD);
#pragma unroll
            for (int n = 0; n < HSP / 16; n++) {
                frag_brow qb;
                wmma::load_matrix_sync(qb, q_s + kk * 16 * LD + n * 16, LD);
                wmma::mma_sync(dk[n], a, qb, dk[n]);
            }
        }
    }

    // dv += dV, dk += scale * dK: each element read, added and written by one lane
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
