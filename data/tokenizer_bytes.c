/* placeholder */ typedef int ct_placeholder_tokenizer_bytes;
