# The data module's tests (included from tests/CMakeLists.txt). The test builds its malformed
# HDF5 files with the HDF5 C API, so it includes <hdf5.h> itself: ct_hdf5 is defined in data/.
ct_unit_test(test_data test_data.c)
target_link_libraries(test_data PRIVATE ct_hdf5)

# The fine-tuning prepare step (JSON Lines -> packed, masked datasets). It reads /doc_offsets
# with the HDF5 C API, as test_data does.
ct_unit_test(test_sft test_sft.c)
target_link_libraries(test_sft PRIVATE ct_hdf5)

# tokenizer.json: hand-written files, bad input, threads, and a fuzz-style loop; again under
# ASan/UBSan with the tokenizer sources rebuilt instrumented.
ct_linked_test(test_tokenizer ct_data test_tokenizer.c)
target_link_libraries(test_tokenizer PRIVATE Threads::Threads)
set(ct_tokenizer_sources ${CMAKE_SOURCE_DIR}/data/tokenizer.c ${CMAKE_SOURCE_DIR}/data/tokenizer_bpe.c
  ${CMAKE_SOURCE_DIR}/data/tokenizer_text.c ${CMAKE_SOURCE_DIR}/data/tokenizer_bytes.c ${CMAKE_SOURCE_DIR}/data/read_file.c
  ${CMAKE_SOURCE_DIR}/data/json_check.c)

# A test of the data module again under AddressSanitizer and UBSan, with the data sources it names
# rebuilt instrumented, so an out-of-bounds read on a malformed file fails the test instead of
# passing by luck.
function(ct_data_asan_test name)
  add_executable(${name} ${ARGN})
  target_include_directories(${name} PRIVATE ${CMAKE_CURRENT_SOURCE_DIR} ${CMAKE_SOURCE_DIR}/data)
  target_compile_options(${name} PRIVATE -O1 -fsanitize=address,undefined -fno-omit-frame-pointer
    -fno-sanitize-recover=all)
  target_link_options(${name} PRIVATE -fsanitize=address,undefined)
  target_link_libraries(${name} PRIVATE ct_hdf5 cjson ct_pcre2 ct_utf8proc Threads::Threads m)
  add_test(NAME ${name} COMMAND ${name})
  set_tests_properties(${name} PROPERTIES LABELS "unit;asan" TIMEOUT 300)
endfunction()
set(ct_dataset_sources ${ct_tokenizer_sources} ${CMAKE_SOURCE_DIR}/data/dataset.c ${CMAKE_SOURCE_DIR}/data/prepare.c
  ${CMAKE_SOURCE_DIR}/data/prepare_inputs.c ${CMAKE_SOURCE_DIR}/data/loader.c)
ct_data_asan_test(test_tokenizer_asan test_tokenizer.c ${ct_tokenizer_sources})
ct_data_asan_test(test_data_asan test_data.c ${ct_dataset_sources})

# Chat templates on a byte-per-token tokenizer: text, ids and masks of each family, and the error
# paths; the published templates are read from tests/chat_templates/, so it runs in the source
# tree. Again under ASan/UBSan with the template and tokenizer sources rebuilt instrumented.
ct_linked_test(test_chat_template ct_data test_chat_template.c)
set_tests_properties(test_chat_template PROPERTIES WORKING_DIRECTORY ${CMAKE_SOURCE_DIR})
ct_data_asan_test(test_chat_template_asan test_chat_template.c ${CMAKE_SOURCE_DIR}/data/chat_template.c
  ${ct_tokenizer_sources})
set_tests_properties(test_chat_template_asan PROPERTIES WORKING_DIRECTORY ${CMAKE_SOURCE_DIR})

# The streaming, parallel prepare (inputs, bad inputs, shards through the loader, 1 vs N workers vs
# 2 ranks simulated in one process), linked against ct_data alone, and again under ASan/UBSan.
ct_linked_test(test_prepare ct_data test_prepare.c)
target_link_libraries(test_prepare PRIVATE Threads::Threads m)
ct_data_asan_test(test_prepare_asan test_prepare.c ${ct_dataset_sources})

# ctrain prepare: 1 process = N threads = 2 MPI ranks (dsdump compares what ct_dataset reads)
add_executable(ct_dsdump dsdump.c)
target_link_libraries(ct_dsdump PRIVATE ct_data)
if(CTRAIN_HAVE_MPI)
  add_test(NAME prepare_ranks COMMAND bash ${CMAKE_CURRENT_SOURCE_DIR}/prepare_ranks.sh $<TARGET_FILE:ctrain>
    ${MPIEXEC_EXECUTABLE} $<TARGET_FILE:ct_dsdump>)
  set_tests_properties(prepare_ranks PROPERTIES LABELS "unit;mpi" TIMEOUT 120)
endif()

# The JSON check every reader shares (NUL characters, duplicate keys), and again under ASan/UBSan.
ct_linked_test(test_json_check ct_data test_json_check.c)
target_link_libraries(test_json_check PRIVATE cjson)
ct_data_asan_test(test_json_check_asan test_json_check.c ${CMAKE_SOURCE_DIR}/data/json_check.c)
