/* placeholder */ typedef int ct_placeholder_hf_gpt2;
