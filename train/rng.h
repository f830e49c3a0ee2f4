/* rng.h — a small seeded generator (xoshiro256**) for weight init, shuffling and dropout.
 * Plain data so its state can be saved in a checkpoint and restored bit-exactly. */
#ifndef CT_TRAIN_RNG_H
#define CT_TRAIN_RNG_H

#include <stdint.h>

typedef struct {
    uint64_t s[4];
} ct_rng;

void ct_rng_seed(ct_rng *r, uint64_t seed);
uint64_t ct_rng_u64(ct_rng *r);
/* uniform in [0, 1) with 24 random bits */
float ct_rng_uniform(ct_rng *r);
/* standard normal (Box-Muller, both values used in turn is not kept: one draw pair per value,
 * so the sequence depends only on the number of calls) */
float ct_rng_normal(ct_rng *r);

#endif
