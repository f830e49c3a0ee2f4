#!/usr/bin/env bash
# Prepares the Debian 12 packages that a -DCTRAIN_MPI=OFF build of ctrain (and its tests) needs
# on a machine that has none of them and no network: the GPU machine of launch/device_pass.sh
# (an Ubuntu-like image with CUDA, CMake and ninja but no HDF5, cJSON or OpenBLAS).
#
#   bash launch/device_deps.sh            here (Debian 12, network): download into .devdeps/debs,
#                                         then unpack into .devdeps/root
#   bash launch/device_deps.sh --unpack   anywhere, no network: unpack .devdeps/debs into
#                                         .devdeps/root (device_pass.sh does this when needed)
#   bash launch/device_deps.sh --wheels   here (PyPI): only the Python wheels below
#
# Only .devdeps/debs needs to travel (about 24 MiB: the .debs are compressed, the unpacked tree,
# about 62 MiB, is not: carrying all of .devdeps would pass the device tool's 64 MiB limit);
# .devdeps/root is rebuilt from it wherever it is missing or stale. Idempotent: packages
# already downloaded at the current candidate version are kept, an up-to-date tree is kept.
#
# Python wheels (.devdeps/wheels, about 30 MiB; carry it beside .devdeps/debs: 55 MiB together):
# what bench/run_gpu.sh needs beyond torch (transformers, peft and their pure dependencies), for
# a device image that lacks them (the device tool's image has them, KINDS.md; these are the
# fallback). Pinned to the versions the reference tests use here; never torch, numpy or
# nvidia-* (huge, and on the device already). For CPython 3.12 (the device's python3), or the
# versions in CTRAIN_WHEEL_PYTHONS (e.g. "3.12 3.11": 3.7 MiB more; transformers 5 needs >= 3.11).
# bench/run_gpu.sh installs them, only when an import fails, into a venv that sees the system's
# torch (pip install --no-index --find-links .devdeps/wheels).
#
# Packages:
#   - PRIMARY: what ctrain links (serial HDF5, cJSON, OpenBLAS's OpenMP build, utf8proc, PCRE2's
#     headers and link name; libpcre2-8.so.0 itself is a FALLBACK: every image has it) and the libraries
#     they need that no Ubuntu image ships (libsz2, libaec0). device_pass.sh always puts these
#     first on the library path.
#   - FALLBACK: the rest of their run-time closure (libgfortran5 for OpenBLAS; libcurl4 and its
#     closure for HDF5, which links libcurl and libcrypto). An image usually has some or all of
#     them, and device_pass.sh exposes one only when the machine lacks its soname, so a newer
#     system library is never shadowed by these older ones.
#   - Not carried: libc6, libgcc-s1 and libgomp1 (the compiler's own; the build needs them anyway).
# The unpacked tree is pruned (docs, static archives, the h5cc wrappers whose paths are absolute
# /usr paths, LAPACK/BLAS aliases) and cJSON's CMake package file, which Debian writes with
# absolute /usr paths, is rewritten relative to its own folder.
set -euo pipefail
cd "$(dirname "$0")/.."
top=$PWD/.devdeps
debs=$top/debs
root=$top/root

PRIMARY=(libhdf5-dev libhdf5-103-1 libsz2 libaec0 libcjson1 libcjson-dev
  libopenblas0-openmp libopenblas-openmp-dev libutf8proc2 libutf8proc-dev libpcre2-dev)
FALLBACK=(libpcre2-8-0 libgfortran5 libquadmath0
  libcurl4 libssl3 zlib1g libzstd1 libbrotli1 libnghttp2-14 libidn2-0 libunistring2 libpsl5
  librtmp1 libgnutls30 libhogweed6 libnettle8 libgmp10 libtasn1-6 libp11-kit0 libffi8
  libssh2-1 libgssapi-krb5-2 libkrb5-3 libk5crypto3 libkrb5support0 libcom-err2 libkeyutils1
  libldap-2.5-0 libsasl2-2)
# Sonames every target machine is assumed to have (glibc, the compiler's run-time libraries).
BASE_SONAMES='^(libc|libm|libdl|librt|libpthread|libresolv|ld-linux-x86-64|libgcc_s|libgomp)\.so'

# transformers + peft and their dependency closure (less torch, numpy), pinned.
WHEELS=(transformers==5.23.0 peft==0.21.2 accelerate==1.15.0 huggingface-hub==2.4.0 tokenizers==0.23.3
  safetensors==0.8.0 hf-xet==1.8.0 pyyaml==6.0.3 regex==2026.11.15 tqdm==4.70.1 packaging==26.3
  filelock==4.2.11 fsspec==2026.9.0 psutil==7.2.2 typing-extensions==4.16.0 typer==0.29.2 click==8.5.1
  shellingham==1.5.4 rich==15.0.0 pygments==2.21.0 markdown-it-py==4.3.0 mdurl==0.1.2
  annotated-doc==0.0.7 annotated-types==0.8.0 pydantic==2.14.3 pydantic-core==2.50.4
  typing-inspection==0.4.5 httpx2==2.16.2 httpcore2==2.16.2 h11==0.16.0 anyio==4.16.0 idna==3.20
  truststore==0.10.5)
WHEEL_PYTHONS=${CTRAIN_WHEEL_PYTHONS:-3.12}
wheels=$top/wheels

mode=${1:-all}
case $mode in all|--unpack|--wheels) ;; *) echo "usage: launch/device_deps.sh [--unpack|--wheels]" >&2; exit 2 ;; esac

mib() { du -sm "$1" 2>/dev/null | cut -f1; }

download() {
  mkdir -p "$debs"
  local apt_opts=(-o APT::Sandbox::User=root)
  if [ "$(dpkg --print-architecture)" != amd64 ]; then
    # The device is x86-64 whatever this machine is (see .library/device/README.md).
    apt_opts+=(-oAPT::Architecture=amd64 -oAPT::Architectures=amd64 -oDir::State::Lists=/tmp/ctrain-amd64-lists)
    mkdir -p /tmp/ctrain-amd64-lists/partial
    apt-get "${apt_opts[@]}" update -qq
  fi
  local want=() pkg ver file
  declare -A cand=()
  # One apt-cache call for all: "pkg:" lines, each followed by its "Candidate:" line.
  while read -r pkg ver; do cand[$pkg]=$ver; done < <(apt-cache "${apt_opts[@]}" policy \
    "${PRIMARY[@]}" "${FALLBACK[@]}" | awk '/^[^ ].*:$/ {sub(/:$/, ""); sub(/:amd64$/, ""); p=$0}
    /^  Candidate:/ {print p, $2}')
  for pkg in "${PRIMARY[@]}" "${FALLBACK[@]}"; do
    ver=${cand[$pkg]:-}
    if [ -z "$ver" ] || [ "$ver" = "(none)" ]; then
      echo "device_deps: no candidate version of $pkg (apt-get update?)" >&2; exit 1
    fi
    file="${pkg}_${ver//:/%3a}_amd64.deb"
    want+=("$file")
    if [ ! -s "$debs/$file" ]; then
      rm -f "$debs/${pkg}"_*.deb
      (cd "$debs" && apt-get "${apt_opts[@]}" download -q "$pkg:amd64=$ver" >/dev/null)
      echo "device_deps: downloaded $file"
    fi
  done
  # Drop .debs of versions or packages no longer wanted.
  for file in "$debs"/*.deb; do
    [[ " ${want[*]} " == *" $(basename "$file") "* ]] || { echo "device_deps: removing stale $(basename "$file")"; rm -f "$file"; }
  done
}

# dpkg-deb where there is one; else a Python reader of the ar archive (data.tar.xz/gz).
deb_extract() {
  if command -v dpkg-deb >/dev/null; then
    dpkg-deb -x "$1" "$2"
  else
    python3 - "$1" "$2" <<'EOF'
import io, sys, tarfile
data = open(sys.argv[1], 'rb').read()
assert data[:8] == b'!<arch>\n', sys.argv[1] + ': not a .deb'
off = 8
while off + 60 <= len(data):
    name = data[off:off + 16].decode().strip().rstrip('/')
    size = int(data[off + 48:off + 58])
    off += 60
    body = data[off:off + size]
    off += size + (size & 1)
    if name.startswith('data.tar'):
        if name.endswith('.zst'):
            sys.exit(sys.argv[1] + ': zstd-compressed, needs dpkg-deb')
        with tarfile.open(fileobj=io.BytesIO(body)) as t:
            kw = {'filter': 'tar'} if hasattr(tarfile, 'tar_filter') else {}
            t.extractall(sys.argv[2], **kw)
        break
else:
    sys.exit(sys.argv[1] + ': no data member')
EOF
  fi
}

stamp_of() { (cd "$debs" && ls -l --time-style=+ -- *.deb | awk '{print $5, $NF}' | sha256sum | cut -c1-16); }

unpack() {
  ls "$debs"/*.deb >/dev/null 2>&1 || { echo "device_deps: no .debs in $debs (run launch/device_deps.sh on a Debian 12 machine first)" >&2; exit 1; }
  local stamp; stamp=$(stamp_of)
  if [ -f "$root/.devdeps-stamp" ] && [ "$(cat "$root/.devdeps-stamp")" = "$stamp" ]; then
    echo "device_deps: $root is up to date"
    return
  fi
  local tmp=$top/root.tmp f
  rm -rf "$tmp"
  mkdir -p "$tmp"
  for f in "$debs"/*.deb; do deb_extract "$f" "$tmp"; done
  local lib=$tmp/usr/lib/x86_64-linux-gnu
  # Prune: documentation, static archives, HDF5's compiler wrappers (absolute /usr paths: FindHDF5
  # must not run them), LAPACK/BLAS aliases of OpenBLAS (ctrain links libopenblas.so.0), links
  # left dangling by packages not carried (HDF5's C++/Fortran/HL libraries).
  rm -rf "${tmp:?}/usr/share" "${tmp:?}/usr/bin" "${tmp:?}/etc"
  find "$tmp" -name '*.a' -delete
  rm -f "$lib"/openblas-openmp/lib{blas,lapack}.so*
  rm -rf "$lib"/cmake/openblas "$lib"/openblas-openmp/cmake
  find "$tmp" -type l -lname '/*' -delete
  find "$tmp" -xtype l -delete
  # Debian 12 puts some libraries in /lib (merged /usr): fold them into usr/lib.
  if [ -d "$tmp/lib/x86_64-linux-gnu" ]; then
    mkdir -p "$lib"
    cp -a "$tmp/lib/x86_64-linux-gnu/." "$lib/"
    rm -rf "${tmp:?}/lib"
  fi
  # cJSON's package file names /usr/lib/.../libcjson.so.1.7.15 and /usr/include: make it
  # relative to its own folder (<prefix>/lib/x86_64-linux-gnu/cmake/cJSON).
  local cj=$lib/cmake/cJSON
  [ -f "$cj/cJSONConfig.cmake" ] || { echo "device_deps: $cj/cJSONConfig.cmake missing" >&2; exit 1; }
  rm -f "$cj"/cjson.cmake "$cj"/cjson-*.cmake
  cat >"$cj/cJSONConfig.cmake" <<'EOF'
# Written by ctrain's launch/device_deps.sh in place of Debian's file, whose paths are absolute
# (/usr): this one finds the library relative to its own folder, <prefix>/lib/x86_64-linux-gnu/cmake/cJSON.
get_filename_component(_cjson_prefix "${CMAKE_CURRENT_LIST_DIR}/../../../.." ABSOLUTE)
set(CJSON_UTILS_FOUND OFF)
set(CJSON_INCLUDE_DIR "${_cjson_prefix}/include")
set(CJSON_INCLUDE_DIRS "${_cjson_prefix}/include")
set(CJSON_LIBRARY cjson)
set(CJSON_LIBRARIES cjson)
if(NOT TARGET cjson)
  add_library(cjson SHARED IMPORTED)
  set_target_properties(cjson PROPERTIES
    IMPORTED_LOCATION "${_cjson_prefix}/lib/x86_64-linux-gnu/libcjson.so.1"
    IMPORTED_SONAME "libcjson.so.1"
    INTERFACE_INCLUDE_DIRECTORIES "${_cjson_prefix}/include")
endif()
unset(_cjson_prefix)
EOF
  echo "$stamp" >"$tmp/.devdeps-stamp"
  rm -rf "$root"
  mv "$tmp" "$root"
  echo "device_deps: unpacked $(ls "$debs"/*.deb | wc -l) packages into $root"
}

# Every NEEDED soname of every carried library must be carried or be a base soname.
check_closure() {
  if ! command -v readelf >/dev/null; then echo "device_deps: no readelf, closure not checked"; return; fi
  local lib=$root/usr/lib/x86_64-linux-gnu have missing=0 f n
  have=$(find "$lib" -name 'lib*.so.*' -printf '%f\n' | sort -u)
  while read -r f; do
    for n in $(readelf -d "$f" 2>/dev/null | awk '/NEEDED/ {gsub(/[][]/, "", $5); print $5}'); do
      if ! grep -qxF "$n" <<<"$have" && ! [[ $n =~ $BASE_SONAMES ]]; then
        echo "device_deps: ${f#$root/} needs $n, which is neither carried nor a base library" >&2
        missing=1
      fi
    done
  done < <(find "$lib" -type f -name 'lib*.so.*')
  [ $missing = 0 ] && echo "device_deps: run-time closure complete (beyond glibc, libgcc_s, libgomp)"
  return $missing
}

# pip download for x86-64 Linux, one call per Python version (pip skips files it already has),
# then drop every wheel that is not of a pinned version (two versions of one package would stop
# the install there).
download_wheels() {
  mkdir -p "$wheels"
  local py=python3 v f keep name
  command -v pip >/dev/null && ! python3 -m pip --version >/dev/null 2>&1 && py=
  for v in $WHEEL_PYTHONS; do
    ${py:+$py -m} pip download -q --no-deps --only-binary=:all: --implementation cp --python-version "$v" \
      --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64 \
      --platform manylinux2014_x86_64 --platform manylinux_2_12_x86_64 --platform manylinux2010_x86_64 \
      --platform manylinux1_x86_64 -d "$wheels" "${WHEELS[@]}" ||
      { echo "device_deps: pip download for Python $v failed" >&2; return 1; }
  done
  for f in "$wheels"/*.whl; do
    keep=0
    name=$(basename "$f" | cut -d- -f1-2 | tr 'A-Z_.' 'a-z--')
    for v in "${WHEELS[@]}"; do
      [ "$name" = "$(echo "${v/==/-}" | tr 'A-Z_.' 'a-z--')" ] && keep=1
    done
    [ $keep = 1 ] || { echo "device_deps: removing stale $(basename "$f")"; rm -f "$f"; }
  done
  echo "device_deps: $(ls "$wheels"/*.whl | wc -l) wheels for Python $WHEEL_PYTHONS in $wheels ($(mib "$wheels") MiB)"
}

if [ "$mode" = --wheels ]; then download_wheels; exit; fi
[ "$mode" = all ] && download && download_wheels
unpack
check_closure
echo "device_deps: sizes (MiB): debs $(mib "$debs"), wheels $(mib "$wheels"), root $(mib "$root"), total $(mib "$top");" \
  "carry .devdeps/debs and .devdeps/wheels (root is unpacked there)"
