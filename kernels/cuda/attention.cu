// attention.cu — causal self-attention on CUDA with grouped-query heads and an optional sliding
// window, fused FlashAttention-2 style: the T x T score matrix never exists in memory. Forward
// streams key blocks past a block of queries with an online softmax; backward recomputes the
// probabilities block by block from the saved row logsumexps. Also attention_decode, the
// KV-cache inference op (a plain kernel, at the end of the file).
//
// Layout (kernels.h): row (b,t) of q (stride ldq) holds NH heads of hs channels, rows of k and v
// (stride ldkv) NKV heads; query head h reads kv head h / G, G = NH / NKV. out, dout [B*T, NH*hs].
// In row b, key s is visible to query t iff start(t) <= s <= t and t - s < wlim (wlim = window, or
// INT_MAX for no window), start(t) = t - pos[b*T+t] the first token of t's document (0 when pos is
// NULL). stats layout, attention_stats_len(B,T,NH) = 2*B*NH*T floats (BH = B*NH):
//   lse  fp32 [BH,T]  written by forward: the row logsumexp of the scaled scores in base 2,
//                     log2(sum_j 2^(s_ij)) with s_ij = log2(e) * q_i.k_j / sqrt(hs)
//   D    fp32 [BH,T]  written by backward: D_i = sum_c dO_ic * O_ic
// Backward only reads lse, so it may run more than once per forward.
//
// Products run on bf16 tensor cores (WMMA 16x16x16, fp32 accumulators); everything else is
// fp32. Head dims are padded to HSP in {16,32,64,128} with zeros in shared memory (any hs <=
// 128 works; 16-byte loads where hs, ldq, ldkv are multiples of 8 and q, k, v (and dout) are
// 16-byte aligned, element loads otherwise). Each warp owns 16 rows of a tile; WMMA's
// accumulator layout is opaque, so score tiles go through a per-warp fp32 shared buffer where
// lane pair (2r, 2r+1) handles row r, column pairs 4j+2*half, +1 — the same lanes keep that
// row's softmax state and output accumulators. P is rounded to bf16 only where it feeds a
// product (P.V forward, P^T.dO backward); the softmax row sums and dS = P (dP - D) use fp32 P,
// and dS is rounded to bf16 for its two products. exp2 with log2(e) folded into the scale, the
// same constant in both directions.
//
// Sliding window and packed documents: a query block visits only the key tiles from band_start
// (the tile holding the first key its first query sees: the window's, or its document's first
// key) to its diagonal, a key block only the query tiles up to the last query its last key is
// visible to (the window's reach, cut where the next document begins). Document starts never
// decrease along a row (kernels.h's document rule), which makes both bounds hold for the whole
// block. Tiles no query sees are skipped, not masked: rows of short documents cost about their
// length, not T. The mask inside the visited tiles is exact.
//
// Backward: kernel dq (one block per (query head, query block)) computes D for its rows, then
// dQ = scale * dS K over the key blocks in its band; kernel dkv (one block per (kv head, key
// block), launched after) accumulates dV = P^T dO and dK = scale * dS^T Q over the G query heads
// of its group in ascending order, and for each over the query blocks in the band. P is
// recomputed in both, but every output element has one owner thread that reads, adds and
// writes it once: no atomics, deterministic, for any G.
//
// Grids: blockIdx.x is the head (B*NH or B*NKV of them, up to 2^31-1), blockIdx.y the row
// block (at most 65535: T <= 65535 * 32), scheduled longest first across all heads. All tiles
// fit 48 KB of static shared memory (no per-device opt-in needed).
#include <limits.h>
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

// K and V rows [k0, k0 + n) of a kv head into ks and vs; kb and vb point at the head's
// channels in row 0 of its sequence, rows ldkv elements apart.
template <int HSP, int LD, int NT>
__device__ __forceinline__ void load_kv(bf16 *ks, bf16 *vs, const bf16 *kb, const bf16 *vb, int k0, int n, int T,
                                        int ldkv, int hs, int vec)
{
    load_tile<HSP, LD, NT>(ks, kb + (size_t)k0 * ldkv, n, T - k0, ldkv, hs, vec);
    load_tile<HSP, LD, NT>(vs, vb + (size_t)k0 * ldkv, n, T - k0, ldkv, hs, vec);
}

// Head `head` (hs channels) of row 0 of sequence b in a [B*T, ld] tensor.
template <class P> __device__ __forceinline__ P *head_rows(P *base, int b, int T, int ld, int head, int hs)
{
    return base + (size_t)b * T * ld + (size_t)head * hs;
}

// The first tile (of `tile` rows, tiles aligned to multiples of it) holding a key that query
// q0 < T or a later one sees: the window's first key, or q0's document start (prow: the row's
// positions, or NULL) when later. Both never decrease along the queries.
__device__ __forceinline__ int band_start(int q0, int wlim, const int32_t *prow, int tile)
{
    const int lo = max(0, q0 - wlim + 1);
    return (prow ? max(lo, q0 - prow[q0]) : lo) / tile * tile;
}

// The first key query t < T of the row sees by document (0 without positions)
__device__ __forceinline__ int doc_start(const int32_t *prow, int t) { return prow ? t - prow[t] : 0; }

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

// The shape every attention kernel takes (checked by attn_check, filled by shape_of)
struct attn_shape {
    const int32_t *pos; // [B*T] document positions, or NULL (one document a row)
    int T, NH, G;  // sequence length, query heads, query heads per kv head
    int hs;        // head size, <= HSP
    int ldq, ldkv; // row strides of q (and dq) and of k, v (and dk, dv), elements
    int wlim;      // key s visible to query t iff s <= t and t - s < wlim
    int vec;       // 16-byte tile loads allowed
};

// ---- forward ----------------------------------------------------------------------------------
// One block per (query head b*NH+h, 64-query block), 4 warps of 16 query rows. Q lives in
// registers as fragments; K and V tiles of BC keys stream through shared memory.
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
    attn_fwd_kernel(bf16 *out, float *lse, const bf16 *q, const bf16 *k, const bf16 *v, attn_shape s, float sl2)
{
    typedef fwd_cfg<HSP> K;
    constexpr int NT = K::NT, BR = K::BR, BC = K::BC, LD = K::LD, FLD = K::FLD, PLD = K::PLD, CW = K::CW;
    __shared__ __align__(128) bf16 kv_s[2 * BC * LD]; // K rows 0..BC-1, V rows BC..2BC-1; Q staged here first
    __shared__ __align__(128) float f_s[K::NW][16 * FLD];
    __shared__ __align__(128) bf16 p_s[K::NW][16 * PLD];

    const int T = s.T, hs = s.hs, wlim = s.wlim, ldo = s.NH * s.hs;
    const int bh = blockIdx.x, b = bh / s.NH, h = bh % s.NH;
    const int q0 = (gridDim.y - 1 - blockIdx.y) * BR; // the longest (last) query blocks first
    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31, r = lane >> 1, half = lane & 1;
    const int i = q0 + warp * 16 + r; // this lane's query row
    const int lim = min(i, T - 1);    // padded rows act as row T-1: every row sees a key, no NaN anywhere
    const int32_t *prow = s.pos ? s.pos + (size_t)b * T : NULL;
    const int dst = doc_start(prow, lim); // this row's first key by document
    const bf16 *qb = head_rows(q, b, T, s.ldq, h, hs);
    const bf16 *kb = head_rows(k, b, T, s.ldkv, h / s.G, hs), *vb = head_rows(v, b, T, s.ldkv, h / s.G, hs);
    float *F = f_s[warp];
    bf16 *P = p_s[warp];

    frag_a qf[HSP / 16];
    load_frags<HSP, LD, NT>(qf, kv_s, qb + (size_t)q0 * s.ldq, BR, T - q0, s.ldq, hs, s.vec);

    float o[HSP / 2]; // row r, columns 4j+2*half, +1 of every CW-wide chunk
#pragma unroll
    for (int x = 0; x < HSP / 2; x++) o[x] = 0.0f;
    float m = -INFINITY, l = 0.0f; // running max (base 2) and this lane's half of the row sum

    const auto vis = [=](int key) { return key <= lim && lim - key < wlim && key >= dst; };
    const int kend = min(q0 + BR, T);
    for (int k0 = band_start(q0, wlim, prow, BC); k0 < kend; k0 += BC) {
        __syncthreads(); // everyone is done with kv_s (Q staging or the previous K/V)
        load_kv<HSP, LD, NT>(kv_s, kv_s + BC * LD, kb, vb, k0, BC, T, s.ldkv, hs, s.vec);
        __syncthreads();

        // S = Q K^T (unscaled) for this warp's 16 rows
        scores_tile<HSP, BC, LD, FLD>(F, qf, kv_s);

        // online softmax over this block: invisible keys get p = 0 exactly. Two passes over F
        // (max, then exponentials) rather than holding the row in registers. A row may see no
        // key of this block (window): mx = -inf, alpha = 0 while m is -inf, p = 0, no NaN.
        float mx = -INFINITY;
        row_pairs<BC, FLD>(F, r, half, [&](int, int c, float2 x) {
            const int key = k0 + c;
            if (vis(key)) mx = fmaxf(mx, x.x);
            if (vis(key + 1)) mx = fmaxf(mx, x.y);
        });
        mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 1)) * sl2; // sl2 > 0: max commutes with it
        const float mn = fmaxf(m, mx);
        const float mref = mn == -INFINITY ? 0.0f : mn; // no key seen yet: any finite reference
        const float alpha = exp2f(m - mref);            // 0 while m = -inf
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

    // every row saw key lim (visible to itself), so m is finite and lt >= 1 (the max term is 2^0)
    const float lt = l + __shfl_xor_sync(0xffffffffu, l, 1);
    const float inv = 1.0f / lt;
    if (half == 0 && i < T) lse[(size_t)bh * T + i] = m + log2f(lt);

    // normalised O through F, then written row by row (coalesced)
    bf16 *ob = head_rows(out, b, T, ldo, h, hs);
#pragma unroll
    for (int ch = 0; ch < HSP / CW; ch++) {
#pragma unroll
        for (int j = 0; j < CW / 4; j++)
            *(float2 *)(F + r * FLD + 4 * j + 2 * half) =
                make_float2(o[ch * (CW / 2) + 2 * j] * inv, o[ch * (CW / 2) + 2 * j + 1] * inv);
        write_rows<CW, FLD, false>(ob, F, q0 + warp * 16, T, ldo, ch * CW, hs, 1.0f);
    }
}

// ---- backward: dQ (and D) ---------------------------------------------------------------------
// One block per (query head b*NH+h, 64-query block), 4 warps of 16 query rows; Q and dO in
// registers as fragments, K and V tiles of BK keys through shared memory.
template <int HSP> struct dq_cfg {
    static constexpr int NW = 4, NT = 32 * NW, BQ = 16 * NW;
    static constexpr int BK = HSP == 128 ? 32 : 64;
    static constexpr int LD = HSP + 8, FLD = BK + 4, HLD = BK + 8;
    static constexpr int CH = HSP < BK ? HSP : BK; // output columns per pass through F
};

template <int HSP>
__global__ void __launch_bounds__(dq_cfg<HSP>::NT)
    attn_bwd_dq_kernel(bf16 *dq, float *Dst, const float *lse, const bf16 *dout, const bf16 *q, const bf16 *k,
                       const bf16 *v, const bf16 *out, attn_shape s, float sl2, float scale)
{
    typedef dq_cfg<HSP> K;
    constexpr int NT = K::NT, BQ = K::BQ, BK = K::BK, LD = K::LD, FLD = K::FLD, HLD = K::HLD, CH = K::CH;
    __shared__ __align__(128) bf16 kv_s[2 * BK * LD]; // K rows 0..BK-1, V rows BK..2BK-1; Q, dO staged first
    __shared__ __align__(128) float f_s[K::NW][16 * FLD];
    __shared__ __align__(128) bf16 h_s[K::NW][16 * HLD];

    const int T = s.T, hs = s.hs, wlim = s.wlim, ldo = s.NH * s.hs;
    const int bh = blockIdx.x, b = bh / s.NH, h = bh % s.NH;
    const int q0 = (gridDim.y - 1 - blockIdx.y) * BQ;
    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31, r = lane >> 1, half = lane & 1;
    const int i = q0 + warp * 16 + r;
    const int lim = i < T ? i : -1; // padded rows see nothing: p = 0
    const int32_t *prow = s.pos ? s.pos + (size_t)b * T : NULL;
    const int dst = i < T ? doc_start(prow, i) : 0; // this row's first key by document
    const bf16 *qb = head_rows(q, b, T, s.ldq, h, hs);
    const bf16 *kb = head_rows(k, b, T, s.ldkv, h / s.G, hs), *vb = head_rows(v, b, T, s.ldkv, h / s.G, hs);
    const bf16 *dob = head_rows(dout, b, T, ldo, h, hs), *oob = head_rows(out, b, T, ldo, h, hs);
    float *F = f_s[warp];
    bf16 *H = h_s[warp];

    // D_i = dO_i . O_i for this warp's rows, one row per pass, lanes over channels
    float Di = 0.0f;
    for (int rr = 0; rr < 16; rr++) {
        const int row = q0 + warp * 16 + rr;
        float d = 0.0f;
        if (row < T)
            for (int c = lane; c < hs; c += 32)
                d += ct_ld(dob + (size_t)row * ldo + c) * ct_ld(oob + (size_t)row * ldo + c);
        d = ct_warp_sum(d);
        if (row < T && lane == 0) Dst[(size_t)bh * T + row] = d;
        if (rr == r) Di = d;
    }
    const float Li = i < T ? lse[(size_t)bh * T + i] : 0.0f;

    frag_a qf[HSP / 16], dof[HSP / 16];
    load_frags<HSP, LD, NT>(qf, kv_s, qb + (size_t)q0 * s.ldq, BQ, T - q0, s.ldq, hs, s.vec);
    __syncthreads(); // every warp has its Q before dO overwrites the staging area
    load_frags<HSP, LD, NT>(dof, kv_s, dob + (size_t)q0 * ldo, BQ, T - q0, ldo, hs, s.vec);

    frag_c dqa[HSP / 16];
#pragma unroll
    for (int n = 0; n < HSP / 16; n++) wmma::fill_fragment(dqa[n], 0.0f);

    const int kend = min(q0 + BQ, T);
    for (int k0 = band_start(q0, wlim, prow, BK); k0 < kend; k0 += BK) {
        __syncthreads();
        load_kv<HSP, LD, NT>(kv_s, kv_s + BK * LD, kb, vb, k0, BK, T, s.ldkv, hs, s.vec);
        __syncthreads();

        // S = Q K^T -> P (fp32, kept in registers)
        scores_tile<HSP, BK, LD, FLD>(F, qf, kv_s);
        float p[BK / 2];
        probs<BK, FLD>(F, r, half, k0, sl2, Li, [=](int key) { return key <= lim && lim - key < wlim && key >= dst; },
                       [&](int j, int, float p0, float p1) {
                           p[2 * j] = p0;
                           p[2 * j + 1] = p1;
                       });
        __syncwarp(); // F reads done

        // dP = dO V^T -> dS = P (dP - D) in bf16
        scores_tile<HSP, BK, LD, FLD>(F, dof, kv_s + BK * LD);
        ds_rows<BK, FLD, HLD>(H, F, p, r, half, Di);

        // dQ += dS K (scale applied at the end)
        mma_acc<BK / 16, HLD, LD>(dqa, H, kv_s);
    }

    // dq += scale * dQ
    store_add<HSP, CH, FLD>(head_rows(dq, b, T, s.ldq, h, hs), dqa, F, q0 + warp * 16, T, s.ldq, hs, scale);
}

// ---- backward: dK, dV ---------------------------------------------------------------------------
// One block per (kv head b*NKV+g, BKV-key block), warps of 16 keys; K and V tiles stay in shared
// memory, Q and dO tiles of BQ queries stream through it, for each query head of the group in
// turn, from the diagonal to the last query the block's keys are visible to. Works on
// transposed tiles (keys are rows): S^T = K Q^T, dP^T = V dO^T.
template <int HSP> struct dkv_cfg {
    static constexpr int NW = HSP == 128 ? 2 : 4, NT = 32 * NW, BKV = 16 * NW;
    static constexpr int BQ = HSP == 128 ? 16 : 32; // 16 at HSP 128: fewer live registers, no spills
    static constexpr int LD = HSP + 8, FLD = BQ + 4, HLD = BQ + 8;
    static constexpr int CH = HSP < BQ ? HSP : BQ;
};

template <int HSP>
__global__ void __launch_bounds__(dkv_cfg<HSP>::NT)
    attn_bwd_dkv_kernel(bf16 *dk, bf16 *dv, const float *Dst, const float *lse, const bf16 *dout, const bf16 *q,
                        const bf16 *k, const bf16 *v, attn_shape s, float sl2, float scale)
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
    __shared__ int qend_s;

    const int T = s.T, hs = s.hs, wlim = s.wlim, ldo = s.NH * s.hs, NKV = s.NH / s.G;
    const int bg = blockIdx.x, b = bg / NKV, g = bg % NKV;
    const int k0 = blockIdx.y * BKV; // key block 0 loops over the most queries: it goes first
    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31, r = lane >> 1, half = lane & 1;
    const int key = k0 + warp * 16 + r; // this lane's key row
    const bf16 *kb = head_rows(k, b, T, s.ldkv, g, hs), *vb = head_rows(v, b, T, s.ldkv, g, hs);
    float *F = f_s[warp];
    bf16 *H = h_s[warp];
    const bf16 *kw = k_s + warp * 16 * LD, *vw = v_s + warp * 16 * LD;

    // This lane's key is seen by the queries [key, qlim): up to its window's reach and its
    // document's end (the next document start: a scan over the queries it is visible to).
    // qlim never decreases with the key, so the block's last key's is where the block's queries
    // end; queries before k0 see none of its keys. (Before the accumulators are live: the scan
    // then costs no registers the loop below needs.)
    int qlim = wlim >= T - key ? T : key + wlim;
    if (s.pos) {
        const int32_t *prow = s.pos + (size_t)b * T;
#pragma unroll 1
        for (int t = key + 1; t < qlim; t++)
            if (prow[t] == 0) qlim = t;
    }
    if (key == min(k0 + BKV, T) - 1 && half == 0) qend_s = qlim;

    load_kv<HSP, LD, NT>(k_s, v_s, kb, vb, k0, BKV, T, s.ldkv, hs, s.vec);

    frag_c dka[HSP / 16], dva[HSP / 16];
#pragma unroll
    for (int n = 0; n < HSP / 16; n++) {
        wmma::fill_fragment(dka[n], 0.0f);
        wmma::fill_fragment(dva[n], 0.0f);
    }

    __syncthreads(); // qend_s is written
    const int qend = qend_s;
    const auto vis = [=](int qq) { return key <= qq && qq < qlim; };
    for (int hh = 0; hh < s.G; hh++) { // the group's query heads in a fixed order: deterministic
        const int h = g * s.G + hh, bh = b * s.NH + h;
        const bf16 *qb = head_rows(q, b, T, s.ldq, h, hs), *dob = head_rows(dout, b, T, ldo, h, hs);
        const float *lseb = lse + (size_t)bh * T, *Db = Dst + (size_t)bh * T;
        for (int q0 = k0; q0 < qend; q0 += BQ) {
            __syncthreads(); // previous step done with q_s, do_s, lse_s, d_s
            load_tile<HSP, LD, NT>(q_s, qb + (size_t)q0 * s.ldq, BQ, T - q0, s.ldq, hs, s.vec);
            load_tile<HSP, LD, NT>(do_s, dob + (size_t)q0 * ldo, BQ, T - q0, ldo, hs, s.vec);
            for (int t = threadIdx.x; t < BQ; t += NT) {
                lse_s[t] = q0 + t < T ? lseb[q0 + t] : 0.0f;
                d_s[t] = q0 + t < T ? Db[q0 + t] : 0.0f;
            }
            __syncthreads(); // (first pass: K and V are in too)

            // S^T = K Q^T for this warp's 16 keys -> P^T, kept fp32 in registers and bf16 in H. K
            // is read from shared memory: as fragments it would cost registers the loop lacks.
            scores_tile<HSP, BQ, LD, FLD>(F, kw, q_s);
            float p[BQ / 2];
            probs<BQ, FLD>(F, r, half, q0, sl2, lse_s, vis, [&](int j, int c, float p0, float p1) {
                p[2 * j] = p0;
                p[2 * j + 1] = p1;
                *(__nv_bfloat162 *)(H + r * HLD + c) = __floats2bfloat162_rn(p0, p1);
            });
            __syncwarp(); // H complete, F reads done

            // dV += P^T dO
            mma_acc<BQ / 16, HLD, LD>(dva, H, do_s);

            // dP^T = V dO^T -> dS^T = P^T (dP^T - D) in bf16; the warp barrier closing the product
            // also keeps the dV product's H reads before dS overwrites H
            scores_tile<HSP, BQ, LD, FLD>(F, vw, do_s);
            ds_rows<BQ, FLD, HLD>(H, F, p, r, half, d_s);

            // dK += dS^T Q (scale applied at the end)
            mma_acc<BQ / 16, HLD, LD>(dka, H, q_s);
        }
    }

    // dv += dV, dk += scale * dK
    store_add<HSP, CH, FLD>(head_rows(dk, b, T, s.ldkv, g, hs), dka, F, k0 + warp * 16, T, s.ldkv, hs, scale);
    store_add<HSP, CH, FLD>(head_rows(dv, b, T, s.ldkv, g, hs), dva, F, k0 + warp * 16, T, s.ldkv, hs, 1.0f);
}

// ---- decode (KV-cache inference) --------------------------------------------------------------
// One block per (query row b*Tq+tq, head h), DEC_NW warps; warp w takes keys start+w, start+w+
// DEC_NW, ... of the band [start, p] (p = pos0 + tq), lanes over channels (CPL a lane). Each warp
// keeps its own online softmax in fp32 (scores reduced over the warp, identical on every lane);
// the warps' states are merged through shared memory at the end. Keys past p are never read.
#define DEC_NW 4

template <int CPL>
__global__ void __launch_bounds__(32 * DEC_NW)
    attn_decode_kernel(bf16 *out, const bf16 *q, const bf16 *kc, const bf16 *vc, int Tq, int pos0, int maxT, int NH,
                       int G, int hs, int ldq, int wlim, float sl2)
{
    __shared__ float m_s[DEC_NW], l_s[DEC_NW], o_s[DEC_NW][32 * CPL];
    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
    const int row = blockIdx.x / NH, h = blockIdx.x % NH; // row = b*Tq + tq
    const int b = row / Tq, p = pos0 + row % Tq;
    const int ldkv = NH / G * hs;
    const bf16 *qr = q + (size_t)row * ldq + (size_t)h * hs;
    const size_t kvoff = (size_t)b * maxT * ldkv + (size_t)(h / G) * hs;

    float qv[CPL], o[CPL];
#pragma unroll
    for (int j = 0; j < CPL; j++) {
        const int c = lane + 32 * j;
        qv[j] = c < hs ? ct_ld(qr + c) : 0.0f;
        o[j] = 0.0f;
    }
    float m = -INFINITY, l = 0.0f; // running max (base 2) and sum, the same on every lane
    for (int t = max(0, p - wlim + 1) + warp; t <= p; t += DEC_NW) {
        const bf16 *kr = kc + kvoff + (size_t)t * ldkv, *vr = vc + kvoff + (size_t)t * ldkv;
        float d = 0.0f;
#pragma unroll
        for (int j = 0; j < CPL; j++)
            if (lane + 32 * j < hs) d += qv[j] * ct_ld(kr + lane + 32 * j);
        const float x = ct_warp_sum(d) * sl2;
        const float mn = fmaxf(m, x), alpha = exp2f(m - mn), e = exp2f(x - mn); // alpha = 0 on the first key
        l = l * alpha + e;
#pragma unroll
        for (int j = 0; j < CPL; j++)
            if (lane + 32 * j < hs) o[j] = o[j] * alpha + e * ct_ld(vr + lane + 32 * j);
        m = mn;
    }
    if (lane == 0) {
        m_s[warp] = m;
        l_s[warp] = l;
    }
#pragma unroll
    for (int j = 0; j < CPL; j++) o_s[warp][lane + 32 * j] = o[j];
    __syncthreads();

    // merge: warp 0 saw key `start`, so M is finite; a warp that saw no key has m = -inf, l = o = 0
    float M = -INFINITY, L = 0.0f;
    for (int w = 0; w < DEC_NW; w++) M = fmaxf(M, m_s[w]);
    for (int w = 0; w < DEC_NW; w++) L += l_s[w] * exp2f(m_s[w] - M);
    bf16 *orow = out + (size_t)row * NH * hs + (size_t)h * hs;
    for (int c = threadIdx.x; c < hs; c += 32 * DEC_NW) {
        float acc = 0.0f;
        for (int w = 0; w < DEC_NW; w++) acc += o_s[w][c] * exp2f(m_s[w] - M);
        orow[c] = ct_bf(acc / L);
    }
}

// ---- host -------------------------------------------------------------------------------------
#define ATTN_MAX_ROW_BLOCKS 65535 // gridDim.y
#define ATTN_MIN_ROW_BLOCK 32     // the smallest row block of the three kernels (dkv at HSP 128)

size_t ct_cuda_attention_stats_len(int B, int T, int NH)
{
    if (B <= 0 || T <= 0 || NH <= 0) return 0;
    return 2 * (size_t)B * NH * T;
}

// Aborts with the op's name and shape when the kernels cannot run it (a wrong answer would be
// worse). Tq < 0: the training kernels (T bounded by the grid); else decode's cache bounds.
static void attn_check(const char *op, int B, int T, int NH, int NKV, int D, int ldq, long long ldkv, int window,
                       int Tq, int pos0, int maxT)
{
    const char *why = NULL;
    if (NH <= 0 || NKV <= 0 || NH % NKV) why = "NH must be a positive multiple of NKV";
    else if (D < 1 || D > 128) why = "head size D must be 1..128 on the CUDA backend";
    else if ((long long)NH * D > ldq) why = "ldq < NH*D";
    else if ((long long)NKV * D > ldkv) why = "ldkv < NKV*D";
    else if (window < 0) why = "window < 0";
    else if (Tq < 0 && (long long)B * NH > INT_MAX) why = "B*NH > 2^31-1 (grid x)";
    else if (Tq < 0 && ((long long)T + ATTN_MIN_ROW_BLOCK - 1) / ATTN_MIN_ROW_BLOCK > ATTN_MAX_ROW_BLOCKS)
        why = "T > 65535*32 (grid y)";
    else if (Tq >= 0 && (pos0 < 0 || maxT <= 0 || (long long)pos0 + Tq > maxT)) why = "pos0 + Tq > maxT";
    else if (Tq >= 0 && (long long)B * Tq * NH > INT_MAX) why = "B*Tq*NH > 2^31-1 (grid x)";
    if (!why) return;
    fprintf(stderr, "ctrain: cuda %s: unsupported shape B=%d T=%d NH=%d NKV=%d D=%d ldq=%d ldkv=%lld window=%d", op, B,
            T, NH, NKV, D, ldq, ldkv, window);
    if (Tq >= 0) fprintf(stderr, " Tq=%d pos0=%d maxT=%d", Tq, pos0, maxT);
    fprintf(stderr, ": %s\n", why);
    fflush(stderr);
    abort();
}

// head size padded to the next tile width (attn_check bounds it by 128)
static int padded_hs(int hs) { return hs <= 16 ? 16 : hs <= 32 ? 32 : hs <= 64 ? 64 : 128; }

// After attn_check. 16-byte tile loads need every row start and head offset 8-element aligned.
static attn_shape shape_of(const int32_t *pos, int T, int NH, int NKV, int D, int ldq, int ldkv, int window,
                           const void *q, const void *k, const void *v, const void *dout)
{
    attn_shape s;
    s.pos = pos;
    s.T = T;
    s.NH = NH;
    s.G = NH / NKV;
    s.hs = D;
    s.ldq = ldq;
    s.ldkv = ldkv;
    s.wlim = window ? window : INT_MAX;
    s.vec = D % 8 == 0 && ldq % 8 == 0 && ldkv % 8 == 0 && ct_aligned16(q) && ct_aligned16(k) && ct_aligned16(v) &&
            (!dout || ct_aligned16(dout));
    return s;
}

static unsigned row_blocks(int T, int rows) { return (unsigned)((T + rows - 1) / rows); }

template <int HSP>
static void fwd_launch(ct_kctx *ctx, bf16 *out, float *lse, const bf16 *q, const bf16 *k, const bf16 *v, int B,
                       const attn_shape &s, float sl2)
{
    typedef fwd_cfg<HSP> K;
    const dim3 grid((unsigned)(B * s.NH), row_blocks(s.T, K::BR));
    attn_fwd_kernel<HSP><<<grid, K::NT, 0, ctx->stream>>>(out, lse, q, k, v, s, sl2);
    CT_LAUNCH_CHECK(ctx);
}

template <int HSP>
static void bwd_launch(ct_kctx *ctx, bf16 *dq, bf16 *dk, bf16 *dv, float *D, const float *lse, const bf16 *dout,
                       const bf16 *q, const bf16 *k, const bf16 *v, const bf16 *out, int B, const attn_shape &s,
                       float sl2, float scale)
{
    typedef dq_cfg<HSP> KQ;
    typedef dkv_cfg<HSP> KKV;
    // dq first: it writes D, which dkv reads (same stream)
    const dim3 gq((unsigned)(B * s.NH), row_blocks(s.T, KQ::BQ));
    attn_bwd_dq_kernel<HSP><<<gq, KQ::NT, 0, ctx->stream>>>(dq, D, lse, dout, q, k, v, out, s, sl2, scale);
    CT_LAUNCH_CHECK(ctx);
    const dim3 gkv((unsigned)(B * (s.NH / s.G)), row_blocks(s.T, KKV::BKV));
    attn_bwd_dkv_kernel<HSP><<<gkv, KKV::NT, 0, ctx->stream>>>(dk, dv, D, lse, dout, q, k, v, s, sl2, scale);
    CT_LAUNCH_CHECK(ctx);
}

void ct_cuda_attention_fwd(ct_kctx *ctx, void *out, float *stats, const void *q, const void *k, const void *v,
                           const int32_t *pos, int B, int T, int NH, int NKV, int D, int ldq, int ldkv, int window)
{
    if (B <= 0 || T <= 0) return;
    attn_check("attention_fwd", B, T, NH, NKV, D, ldq, ldkv, window, -1, 0, 0);
    const attn_shape s = shape_of(pos, T, NH, NKV, D, ldq, ldkv, window, q, k, v, NULL);
    const float scale = 1.0f / sqrtf((float)D), sl2 = LOG2E * scale; // as in backward, bit for bit
    bf16 *o = (bf16 *)out;
    const bf16 *xq = (const bf16 *)q, *xk = (const bf16 *)k, *xv = (const bf16 *)v;
    switch (padded_hs(D)) {
    case 16: fwd_launch<16>(ctx, o, stats, xq, xk, xv, B, s, sl2); break;
    case 32: fwd_launch<32>(ctx, o, stats, xq, xk, xv, B, s, sl2); break;
    case 64: fwd_launch<64>(ctx, o, stats, xq, xk, xv, B, s, sl2); break;
    default: fwd_launch<128>(ctx, o, stats, xq, xk, xv, B, s, sl2); break;
    }
}

void ct_cuda_attention_bwd(ct_kctx *ctx, void *dq, void *dk, void *dv, float *stats, const void *dout, const void *q,
                           const void *k, const void *v, const void *out, const int32_t *pos, int B, int T, int NH,
                           int NKV, int D, int ldq, int ldkv, int window)
{
    if (B <= 0 || T <= 0) return;
    attn_check("attention_bwd", B, T, NH, NKV, D, ldq, ldkv, window, -1, 0, 0);
    const attn_shape s = shape_of(pos, T, NH, NKV, D, ldq, ldkv, window, q, k, v, dout);
    const float scale = 1.0f / sqrtf((float)D), sl2 = LOG2E * scale;
    const float *lse = stats;
    float *Dst = stats + (size_t)B * NH * T;
    bf16 *gq = (bf16 *)dq, *gk = (bf16 *)dk, *gv = (bf16 *)dv;
    const bf16 *d = (const bf16 *)dout, *xq = (const bf16 *)q, *xk = (const bf16 *)k, *xv = (const bf16 *)v,
               *o = (const bf16 *)out;
    switch (padded_hs(D)) {
    case 16: bwd_launch<16>(ctx, gq, gk, gv, Dst, lse, d, xq, xk, xv, o, B, s, sl2, scale); break;
    case 32: bwd_launch<32>(ctx, gq, gk, gv, Dst, lse, d, xq, xk, xv, o, B, s, sl2, scale); break;
    case 64: bwd_launch<64>(ctx, gq, gk, gv, Dst, lse, d, xq, xk, xv, o, B, s, sl2, scale); break;
    default: bwd_launch<128>(ctx, gq, gk, gv, Dst, lse, d, xq, xk, xv, o, B, s, sl2, scale); break;
    }
}

void ct_cuda_attention_decode(ct_kctx *ctx, void *out, const void *q, const void *kc, const void *vc, int B, int Tq,
                              int pos0, int maxT, int NH, int NKV, int D, int ldq, int window)
{
    if (B <= 0 || Tq <= 0) return;
    attn_check("attention_decode", B, 0, NH, NKV, D, ldq, (long long)NKV * D, window, Tq, pos0, maxT);
    const float sl2 = LOG2E / sqrtf((float)D);
    const int G = NH / NKV, wlim = window ? window : INT_MAX;
    const unsigned grid = (unsigned)(B * Tq * NH);
    bf16 *o = (bf16 *)out;
    const bf16 *xq = (const bf16 *)q, *xk = (const bf16 *)kc, *xv = (const bf16 *)vc;
    if (D <= 32)
        attn_decode_kernel<1><<<grid, 32 * DEC_NW, 0, ctx->stream>>>(o, xq, xk, xv, Tq, pos0, maxT, NH, G, D, ldq, wlim, sl2);
    else if (D <= 64)
        attn_decode_kernel<2><<<grid, 32 * DEC_NW, 0, ctx->stream>>>(o, xq, xk, xv, Tq, pos0, maxT, NH, G, D, ldq, wlim, sl2);
    else
        attn_decode_kernel<4><<<grid, 32 * DEC_NW, 0, ctx->stream>>>(o, xq, xk, xv, Tq, pos0, maxT, NH, G, D, ldq, wlim, sl2);
    CT_LAUNCH_CHECK(ctx);
}
