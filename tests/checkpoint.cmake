# The checkpoint tests (included from tests/CMakeLists.txt). The test damages checkpoints with
# the HDF5 C API (deleted links, rewritten attributes, H5Dget_offset to find a tensor's bytes),
# so it includes <hdf5.h> itself: ct_hdf5 is defined in data/.
ct_unit_test(test_checkpoint test_checkpoint.c)
target_link_libraries(test_checkpoint PRIVATE ct_hdf5)
