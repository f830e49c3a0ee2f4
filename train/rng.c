/* placeholder */ typedef int ct_placeholder_rng;
