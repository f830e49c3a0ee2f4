// dropout.cuh — private: kernels.h's stateless LoRA dropout mask for host and device code.
// The same arithmetic as kernels/cpu/dropout.h (tests/gpu checks the two agree): element i
// is kept under seed when the top 32 bits of splitmix64's finalizer of seed ^ (i * golden
// ratio) are >= floor(p * 2^32), computed in double.
#ifndef CT_KERNELS_CUDA_DROPOUT_CUH
#define CT_KERNELS_CUDA_DROPOUT_CUH

#include <stdint.h>

static inline __host__ __device__ uint32_t ct_cuda_dropout_threshold(float p)
{
    if (!(p > 0.0f)) return 0u;
    if (p >= 1.0f) return 0xFFFFFFFFu;
    return (uint32_t)((double)p * 4294967296.0);
}

static inline __host__ __device__ int ct_cuda_dropout_keep(uint64_t seed, uint64_t i, uint32_t threshold)
{
    uint64_t z = seed ^ (i * 0x9E3779B97F4A7C15ull);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    z ^= z >> 31;
    return (uint32_t)(z >> 32) >= threshold;
}

#endif
