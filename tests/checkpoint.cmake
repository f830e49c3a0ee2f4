# The checkpoint tests (included from tests/CMakeLists.txt). The test damages checkpoints with
# the HDF5 C API (deleted links, rewritten attributes, H5Dget_offset to find a tensor's bytes),
# so it includes <hdf5.h> itself: ct_hdf5 is defined in data/.
ct_unit_test(test_checkpoint test_checkpoint.c)
target_link_libraries(test_checkpoint PRIVATE ct_hdf5)

# Again under AddressSanitizer and UBSan, with the checkpoint and model sources rebuilt
# instrumented: its fuzz pass flips bytes in checkpoints' headers and metadata, and an
# out-of-bounds read on a damaged file fails the test instead of passing by luck.
set(ct_model_dir ${CMAKE_SOURCE_DIR}/train/model)
ct_asan_test(test_checkpoint_asan test_checkpoint.c ${CMAKE_SOURCE_DIR}/train/checkpoint.c
  ${CMAKE_SOURCE_DIR}/train/optim.c ${CMAKE_SOURCE_DIR}/train/rng.c ${CMAKE_SOURCE_DIR}/train/json_file.c
  ${ct_model_dir}/model.c ${ct_model_dir}/gpt2.c ${ct_model_dir}/llama.c ${ct_model_dir}/hf_config.c
  ${ct_model_dir}/lora.c ${CMAKE_SOURCE_DIR}/train/safetensors.c ${CMAKE_SOURCE_DIR}/train/write_file.c
  ${CMAKE_SOURCE_DIR}/data/json_check.c)
target_include_directories(test_checkpoint_asan PRIVATE ${ct_model_dir} ${CMAKE_SOURCE_DIR}/data)
target_link_libraries(test_checkpoint_asan PRIVATE ct_comm ct_hdf5)
