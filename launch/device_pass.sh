#!/usr/bin/env bash
# One pass on a GPU machine that has CUDA, CMake and ninja but no MPI, HDF5, cJSON or OpenBLAS and
# no network (the device tool's machine); also runs anywhere else, where the GPU test skips.
#
#   bash launch/device_pass.sh
#
# Needs .devdeps/debs, made on a Debian 12 machine by launch/device_deps.sh (carry .devdeps/debs;
# .devdeps/root is unpacked from it here when missing or stale), and for the bench, where the
# image lacks transformers or peft, .devdeps/wheels (carry it too). Then, each phase timed:
#   env        nvidia-smi, nvcc --version, compilers
#   deps       unpack .devdeps/debs into .devdeps/root (a no-op when up to date)
#   libpath    build-device/devlib: links to the carried libraries for LD_LIBRARY_PATH: always
#              HDF5 (serial), libsz/libaec, cJSON and OpenBLAS; the other carried libraries
#              (libcurl and its closure, libgfortran...) only where this machine lacks the soname
#   configure  -DCTRAIN_MPI=OFF -DCTRAIN_CUDA=ON Release, HDF5/cJSON/OpenBLAS from .devdeps/root
#   build      all cores
#   check      the cache names the carried paths; ldd resolves the carried libraries
#   gpu        ctest -L gpu --output-on-failure (every CUDA op, GPT-2 and Llama steps and decoding
#              against the CPU backend, the device side's collectives, end to end train/resume)
#   bench      bench/run_gpu.sh: GPT-2 124M pretraining against PyTorch (eager, compile), GPT-2
#              medium LoRA against transformers + peft, then a Llama-3.2-1B shape (LoRA against
#              transformers + peft, full fine-tuning MFU); what no longer fits the deadline is
#              skipped, so the Llama section usually needs a call of its own:
#              CTRAIN_DEVICE_PHASES=bench CTRAIN_BENCH_ONLY=llama bash launch/device_pass.sh
#   unit       ctest -L unit -LE mpi --output-on-failure (the CPU unit tests that need no MPI)
# Logs go to $OUT when set (the device tool), else build-device/logs: device_pass.log (all of the
# above), CMakeCache.txt, LastTest_gpu.log and LastTest_unit.log (every test's full output),
# bench_gpu.log, bench_gpu.json and bench_gpu.md (bench/run_gpu.sh's; 7 files, the device tool
# brings back 8 at most).
# CTRAIN_DEVICE_PHASES picks the groups to run, comma-separated, in this order whatever the
# order named: build (configure, build, check), gpu, sanitize, bench, unit; default all but
# sanitize (compute-sanitizer memcheck on the two C GPU tests, racecheck and synccheck on the
# ops' test: minutes, so a call of its own: CTRAIN_DEVICE_PHASES=sanitize). env, deps and
# libpath always run (seconds). E.g. a second call on the same warm machine, whose build folder
# persists: CTRAIN_DEVICE_PHASES=bench bash launch/device_pass.sh. Its output goes to
# device_pass.log only.
# Time: the pass aims to end within CTRAIN_DEVICE_BUDGET_S seconds of its start (default 570,
# under the device tool's 600 s a call): bench/run_gpu.sh gets a deadline that leaves the unit
# phase CTRAIN_DEVICE_UNIT_S (default 60) and skips what no longer fits; unit is skipped when
# less than that is left. Each test has a limit of CTRAIN_DEVICE_TEST_TIMEOUT seconds (300).
# bench/run_gpu.sh's own variables (CTRAIN_BENCH_ONLY, CTRAIN_BENCH_BATCH...) pass through.
# Environment: CTRAIN_DEVICE_BUILD (build folder, default build-device), CTRAIN_CUDA_ARCHITECTURES
# (e.g. 90; default the project's), CTRAIN_DEVICE_CMAKE_ARGS (extra configure arguments),
# CTRAIN_DEVICE_CARRIED_ONLY=1 (put every carried library on LD_LIBRARY_PATH, even those the
# machine has: the fallback should a system library turn out incompatible).
# Exit status: 0 when every phase passed; a skipped GPU test fails the pass only where nvidia-smi
# lists a GPU (elsewhere it is the expected outcome); bench is skipped (not failed) without one.
set -uo pipefail
cd "$(dirname "$0")/.." || exit 1
src=$PWD
deps=$src/.devdeps/root
libdir=$deps/usr/lib/x86_64-linux-gnu
build=$src/${CTRAIN_DEVICE_BUILD:-build-device}
devlib=$build/devlib
logs=${OUT:-$build/logs}
jobs=$(nproc)
mkdir -p "$logs"

# CMake, ctest and ninja may be pip packages beside python3 (the device image's venv) and off PATH.
for tool in cmake ninja; do
  if ! command -v "$tool" >/dev/null; then
    pybin=$(python3 -c 'import os, sys; print(os.path.dirname(sys.executable))' 2>/dev/null)
    [ -n "$pybin" ] && [ -x "$pybin/$tool" ] && PATH=$pybin:$PATH
  fi
done

# Sonames ctrain links from the carried tree, whatever the machine has.
PRIMARY_SONAMES=(libhdf5_serial.so.103 libsz.so.2 libaec.so.0 libcjson.so.1 libopenblas.so.0 libutf8proc.so.2)

pass_start=$(date +%s)
budget_end=$((pass_start + ${CTRAIN_DEVICE_BUDGET_S:-570}))
unit_s=${CTRAIN_DEVICE_UNIT_S:-60}
test_timeout=${CTRAIN_DEVICE_TEST_TIMEOUT:-300}
phases=,${CTRAIN_DEVICE_PHASES:-build,gpu,bench,unit},
for p in ${phases//,/ }; do
  case $p in build|gpu|sanitize|bench|unit) ;; *) echo "device_pass: CTRAIN_DEVICE_PHASES: unknown phase '$p' (build, gpu, sanitize, bench, unit)" >&2; exit 2 ;; esac
done
wants() { [[ $phases == *",$1,"* ]]; }

summary=()
failed=0
bench_ran=0
# A phase function returns 77 when it has nothing to do here: reported as skipped, not failed.
phase() {
  local name=$1 t0 t1 rc
  shift
  echo
  echo "=== phase $name: $(date -u +%H:%M:%S)"
  t0=$(date +%s.%N)
  "$@"
  rc=$?
  t1=$(date +%s.%N)
  local line
  line=$(awk -v n="$name" -v a="$t0" -v b="$t1" -v r="$rc" 'BEGIN {printf "%-10s %7.1f s  %s", n, b - a, (r == 0 ? "ok" : r == 77 ? "skipped" : "FAILED (" r ")")}')
  echo "=== $line"
  summary+=("$line")
  [ "$rc" = 0 ] || [ "$rc" = 77 ] || failed=1
  return "$rc"
}

env_info() {
  local smi nvcc
  smi=$(command -v nvidia-smi || ls /usr/local/nvidia/bin/nvidia-smi /usr/bin/nvidia-smi 2>/dev/null | head -1)
  if [ -n "$smi" ]; then "$smi" || echo "(nvidia-smi exited $?)"; else echo "nvidia-smi: not found (no GPU driver here)"; fi
  nvcc=$(command -v nvcc || ls /usr/local/cuda/bin/nvcc 2>/dev/null | head -1)
  if [ -n "$nvcc" ]; then "$nvcc" --version; else echo "nvcc: not found"; fi
  echo "host: $(uname -srm), $(nproc) cores; $(ldd --version 2>&1 | head -1)"
  echo "cc: $(cc --version 2>&1 | head -1); cmake: $(cmake --version | head -1); ninja: $(ninja --version 2>/dev/null || echo none)"
  echo "LD_LIBRARY_PATH at start: ${LD_LIBRARY_PATH:-(unset)}"
  return 0
}

# Whether this machine resolves a soname without us: the loader cache or LD_LIBRARY_PATH as given.
system_has() {
  grep -qxF "$1" <<<"$system_sonames" && return 0
  local d
  IFS=: read -ra dirs <<<"${orig_ld_library_path:-}"
  for d in "${dirs[@]}"; do [ -n "$d" ] && [ -e "$d/$1" ] && return 0; done
  return 1
}

make_libpath() {
  local ldconfig f name
  ldconfig=$(command -v ldconfig || echo /sbin/ldconfig)
  system_sonames=$("$ldconfig" -p 2>/dev/null | awk '/x86-64/ {print $1}' | sort -u)
  rm -rf "$devlib"
  mkdir -p "$devlib"
  # Debian ships each library's soname as a file or link named lib*.so.N.
  local exposed=() skipped=()
  while read -r f; do
    name=$(basename "$f")
    if [[ " ${PRIMARY_SONAMES[*]} " == *" $name "* ]] || [ "${CTRAIN_DEVICE_CARRIED_ONLY:-0}" = 1 ] ||
       ! system_has "$name"; then
      ln -sf "$f" "$devlib/$name"
      exposed+=("$name")
    else
      skipped+=("$name")
    fi
  done < <(find "$libdir" "$libdir/openblas-openmp" -maxdepth 1 \( -type f -o -type l \) \
             -regextype posix-extended -regex '.*/lib[^/]*\.so\.[0-9]+$' | sort)
  echo "carried, on LD_LIBRARY_PATH: ${exposed[*]}"
  echo "carried, not needed (the machine has them): ${skipped[*]:-(none)}"
  for name in "${PRIMARY_SONAMES[@]}"; do
    [ -e "$devlib/$name" ] || { echo "missing carried library $name" >&2; return 1; }
  done
}

configure() {
  # A cache made by another generator cannot be reused.
  local gen=()
  command -v ninja >/dev/null && gen=(-G Ninja)
  if [ -f "$build/CMakeCache.txt" ]; then
    local had; had=$(sed -n 's/^CMAKE_GENERATOR:INTERNAL=//p' "$build/CMakeCache.txt")
    [ "$had" = "${gen[1]:-Unix Makefiles}" ] || rm -rf "$build/CMakeCache.txt" "$build/CMakeFiles"
  fi
  local arch=()
  [ -n "${CTRAIN_CUDA_ARCHITECTURES:-}" ] && arch=(-DCMAKE_CUDA_ARCHITECTURES="$CTRAIN_CUDA_ARCHITECTURES")
  local extra=()
  [ -n "${CTRAIN_DEVICE_CMAKE_ARGS:-}" ] && read -ra extra <<<"$CTRAIN_DEVICE_CMAKE_ARGS"
  # HDF5: FindHDF5 is pointed at the carried serial build explicitly. HDF5_ROOT makes every one
  # of its searches NO_DEFAULT_PATH under .devdeps/root/usr, so neither a system h5cc/h5pcc nor
  # a system HDF5 is picked up; the carried tree has no h5cc (its paths would be Debian's /usr);
  # the include folder and library are given as the cache entries FindHDF5 fills itself.
  # cJSON: its package file (rewritten relative by device_deps.sh). OpenBLAS: the two cache
  # entries the top-level CMakeLists.txt searches for; PCRE2 and utf8proc: data/'s four.
  # -rpath-link lets the linker follow libhdf5's own dependencies (libsz, libcurl...) into the
  # carried tree.
  cmake -S "$src" -B "$build" "${gen[@]}" \
    -DCMAKE_BUILD_TYPE=Release -DCTRAIN_MPI=OFF -DCTRAIN_CUDA=ON \
    -DHDF5_ROOT="$deps/usr" -DHDF5_NO_FIND_PACKAGE_CONFIG_FILE=ON -DHDF5_USE_STATIC_LIBRARIES=OFF \
    -DHDF5_C_INCLUDE_DIR="$deps/usr/include/hdf5/serial" \
    -DHDF5_hdf5_LIBRARY_RELEASE="$libdir/hdf5/serial/libhdf5.so" \
    -DcJSON_DIR="$libdir/cmake/cJSON" \
    -DCBLAS_INCLUDE_DIR="$deps/usr/include/x86_64-linux-gnu/openblas-openmp" \
    -DCBLAS_LIBRARY="$libdir/openblas-openmp/libopenblas.so" \
    -DPCRE2_INCLUDE_DIR="$deps/usr/include" -DPCRE2_LIBRARY="$libdir/libpcre2-8.so" \
    -DUTF8PROC_INCLUDE_DIR="$deps/usr/include" -DUTF8PROC_LIBRARY="$libdir/libutf8proc.so" \
    -DCMAKE_EXE_LINKER_FLAGS="-Wl,-rpath-link,$devlib" \
    -DCMAKE_SHARED_LINKER_FLAGS="-Wl,-rpath-link,$devlib" \
    "${arch[@]}" "${extra[@]}"
  local rc=$?
  [ -f "$build/CMakeCache.txt" ] && cp "$build/CMakeCache.txt" "$logs/CMakeCache.txt"
  return $rc
}

build_all() { cmake --build "$build" -j "$jobs"; }

# CUDA's run-time libraries where the loader cache lacks them (also for a pass without the build
# phase, whose check does not run).
cuda_libpath() {
  local d
  if ldd "$build/train/ctrain" 2>&1 | grep -q 'libcu.*not found' && [[ $LD_LIBRARY_PATH != *cuda* ]]; then
    for d in /usr/local/cuda/lib64 /usr/local/cuda/targets/x86_64-linux/lib; do
      [ -d "$d" ] && LD_LIBRARY_PATH=$LD_LIBRARY_PATH:$d
    done
    echo "-- CUDA libraries not in the loader cache: LD_LIBRARY_PATH=$LD_LIBRARY_PATH"
  fi
}

check() {
  local bad=0 line key
  echo "-- CMakeCache.txt: what HDF5, cJSON, BLAS, CUDA and MPI resolved to"
  grep -E '^(HDF5_C_INCLUDE_DIR|HDF5_hdf5_LIBRARY_RELEASE|HDF5_hdf5_LIBRARY_DEBUG|HDF5_C_COMPILER_EXECUTABLE|HDF5_DIFF_EXECUTABLE|HDF5_DIR|cJSON_DIR|CBLAS_INCLUDE_DIR|CBLAS_LIBRARY|CMAKE_CUDA_COMPILER|CMAKE_CUDA_ARCHITECTURES|CTRAIN_MPI|CTRAIN_CUDA|OpenMP_C_FLAGS)[:=]' \
    "$build/CMakeCache.txt"
  for key in HDF5_C_INCLUDE_DIR HDF5_hdf5_LIBRARY_RELEASE cJSON_DIR CBLAS_INCLUDE_DIR CBLAS_LIBRARY; do
    line=$(grep -E "^$key:" "$build/CMakeCache.txt" | cut -d= -f2-)
    [[ $line == "$deps"/* ]] || { echo "CHECK: $key is '$line', not under $deps" >&2; bad=1; }
  done
  # Any other HDF5 path found outside the carried tree (a system wrapper or library).
  if grep -E '^HDF5_[A-Za-z0-9_]*:(FILEPATH|PATH)=/' "$build/CMakeCache.txt" | grep -v "=$deps/"; then
    echo "CHECK: the lines above point outside $deps" >&2; bad=1
  fi
  cuda_libpath
  # ctrain links all three carried libraries, test_data HDF5 (its own H5 calls).
  local exe out lib libs
  for exe in "$build/train/ctrain" "$build/tests/test_data"; do
    echo "-- ldd ${exe#$src/} (LD_LIBRARY_PATH=$LD_LIBRARY_PATH)"
    out=$(ldd "$exe" 2>&1)
    echo "$out"
    if grep -q 'not found' <<<"$out"; then echo "CHECK: unresolved libraries in $exe" >&2; bad=1; fi
    libs="libhdf5_serial.so.103 libsz.so.2"
    [[ $exe == */ctrain ]] && libs+=" libcjson.so.1 libopenblas.so.0"
    for lib in $libs; do
      grep -qE "^\s*$lib => ($devlib|$deps)/" <<<"$out" ||
        { echo "CHECK: $lib not resolved from the carried tree in $exe" >&2; bad=1; }
    done
  done
  [ $bad = 0 ] && echo "-- check: the carried HDF5 (serial), cJSON and OpenBLAS are the ones configured and loaded"
  return $bad
}

run_ctest() {
  local tag=$1 rc
  shift
  (cd "$build" && ctest "$@" --timeout "$test_timeout" --output-on-failure --no-tests=error) | tee "$build/ctest_$tag.out"
  rc=${PIPESTATUS[0]}
  cp "$build/Testing/Temporary/LastTest.log" "$logs/LastTest_$tag.log" 2>/dev/null
  return $rc
}

# ctest counts a skipped test as passed; where nvidia-smi lists a GPU a skip is a failure here.
gpu_tests() {
  local rc smi
  run_ctest gpu -L gpu
  rc=$?
  smi=$(command -v nvidia-smi || ls /usr/local/nvidia/bin/nvidia-smi 2>/dev/null | head -1)
  if [ -n "$smi" ] && "$smi" -L 2>/dev/null | grep -q '^GPU ' &&
     grep -q '\*\*\*Skipped' "$build/ctest_gpu.out"; then
    echo "device_pass: a GPU is present but the GPU tests skipped" >&2
    rc=1
  fi
  return $rc
}

has_gpu() {
  local smi
  smi=$(command -v nvidia-smi || ls /usr/local/nvidia/bin/nvidia-smi /usr/bin/nvidia-smi 2>/dev/null | head -1)
  [ -n "$smi" ] && "$smi" -L 2>/dev/null | grep -q '^GPU '
}

# The benchmarks (bench/run_gpu.sh), with a deadline that leaves the unit phase its time.
bench() {
  if ! has_gpu; then
    echo "device_pass: bench skipped: no GPU here (nvidia-smi lists none), nothing to benchmark"
    return 77
  fi
  local deadline=$budget_end
  bench_ran=1
  rm -f "$logs/bench_gpu.md"
  wants unit && deadline=$((budget_end - unit_s))
  echo "device_pass: bench until $(date -u -d "@$deadline" +%H:%M:%S) UTC ($((deadline - $(date +%s))) s)"
  local how="bash launch/device_pass.sh"
  [ -n "${CTRAIN_CUDA_ARCHITECTURES:-}" ] && how="CTRAIN_CUDA_ARCHITECTURES=$CTRAIN_CUDA_ARCHITECTURES $how"
  [ -n "${CTRAIN_DEVICE_PHASES:-}" ] && how="CTRAIN_DEVICE_PHASES=$CTRAIN_DEVICE_PHASES $how"
  [ -n "${CTRAIN_BENCH_ONLY:-}" ] && how="CTRAIN_BENCH_ONLY=$CTRAIN_BENCH_ONLY $how"
  OUT=$logs CTRAIN_DEVICE_BUILD=${build#"$src"/} CTRAIN_BENCH_DEADLINE=$deadline \
    CTRAIN_BENCH_INVOCATION="$how     # its bench phase: bench/run_gpu.sh" bash "$src/bench/run_gpu.sh"
}

# compute-sanitizer over the GPU tests that drive kernels directly: memcheck (out-of-bounds and
# misaligned accesses, uninitialised device memory reads), racecheck and synccheck (shared memory
# hazards and barrier misuse: the attention kernels). Each run is capped so the pass keeps its budget.
sanitize() {
  has_gpu || { echo "device_pass: sanitize skipped: no GPU here"; return 77; }
  local cs rc=0 t tool
  cs=$(command -v compute-sanitizer || ls /usr/local/cuda/bin/compute-sanitizer 2>/dev/null | head -1)
  [ -n "$cs" ] || { echo "device_pass: compute-sanitizer not found" >&2; return 1; }
  for t in test_cuda_ops test_cuda_model; do
    echo "-- $cs --tool memcheck $t"
    CTRAIN_CUDA_SYNC=1 CT_TEST_SEED=1 timeout 240 "$cs" --tool memcheck --leak-check full --error-exitcode 3 \
      "$build/tests/$t" || rc=1
  done
  for tool in racecheck synccheck; do
    echo "-- $cs --tool $tool test_cuda_ops"
    CT_TEST_SEED=1 timeout 240 "$cs" --tool "$tool" --error-exitcode 3 "$build/tests/test_cuda_ops" || rc=1
  done
  return $rc
}

unit_tests() {
  local left=$((budget_end - $(date +%s)))
  if ((left < unit_s)); then
    echo "device_pass: unit skipped: $left s left of the pass's budget (CTRAIN_DEVICE_BUDGET_S), $unit_s needed"
    return 77
  fi
  # At most 8 at once: the tests are small, several start 2 OpenMP threads.
  run_ctest unit -L unit -LE mpi -j "$(( jobs < 8 ? jobs : 8 ))"
}

main() {
  echo "device_pass: $src -> $build, logs in $logs, phases ${phases:1:-1}, $(date -u '+%Y-%m-%d %H:%M:%S UTC')"
  phase env env_info
  phase deps bash "$src/launch/device_deps.sh" --unpack || { finish; return 1; }
  orig_ld_library_path=${LD_LIBRARY_PATH:-}
  phase libpath make_libpath || { finish; return 1; }
  export LD_LIBRARY_PATH="$devlib${orig_ld_library_path:+:$orig_ld_library_path}"
  if wants build; then
    phase configure configure || { finish; return 1; }
    phase build build_all || { finish; return 1; }
    phase check check
  elif [ ! -x "$build/train/ctrain" ]; then
    echo "device_pass: no build in $build: add build to CTRAIN_DEVICE_PHASES" >&2
    failed=1
    finish
    return 1
  else
    cuda_libpath
  fi
  wants gpu && phase gpu gpu_tests
  wants sanitize && phase sanitize sanitize
  wants bench && phase bench bench
  wants unit && phase unit unit_tests
  finish
  return $failed
}

finish() {
  if [ "$bench_ran" = 1 ] && [ -s "$logs/bench_gpu.md" ]; then
    echo
    echo "=== bench results ($logs/bench_gpu.md)"
    cat "$logs/bench_gpu.md"
  fi
  echo
  echo "=== device_pass summary ($(( $(date +%s) - pass_start )) s)"
  printf '%s\n' "${summary[@]}"
  [ $failed = 0 ] && echo "=== all phases passed" || echo "=== some phase FAILED"
}

main 2>&1 | tee "$logs/device_pass.log"
exit "${PIPESTATUS[0]}"
