/* placeholder */ typedef int ct_placeholder_gpt2;
