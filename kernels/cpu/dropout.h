/* dropout.h — private: the stateless dropout mask of kernels.h's lora_fwd. Whether element i
 * of a tensor is kept is a pure function of (seed, i), so a backward pass regenerates the
 * forward's mask instead of storing it, and every thread count draws the same mask. Written
 * so loops calling it vectorise (no state, no branches). */
#ifndef CT_KERNELS_CPU_DROPOUT_H
#define CT_KERNELS_CPU_DROPOUT_H

#include <stdint.h>

/* Elements whose 32-bit draw lies below this are dropped: floor(p * 2^32) for 0 <= p < 1
 * (a float below 1 times 2^32 is below 2^32, so it fits); 0 (keep all) for p <= 0 or NaN.
 * p >= 1 is outside the contract; it gives UINT32_MAX rather than an undefined conversion. */
static inline uint32_t ct_dropout_threshold(float p)
{
    if (!(p > 0.0f)) return 0u;
    if (p >= 1.0f) return UINT32_MAX;
    return (uint32_t)((double)p * 4294967296.0);
}

/* 1 if element i is kept under seed: the top 32 bits of splitmix64's finalizer applied to
 * seed ^ (i * golden ratio), compared against ct_dropout_threshold(p). */
static inline int ct_dropout_keep(uint64_t seed, uint64_t i, uint32_t threshold)
{
    uint64_t z = seed ^ (i * 0x9E3779B97F4A7C15ull);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    z ^= z >> 31;
    return (uint32_t)(z >> 32) >= threshold;
}

#endif
