#!/usr/bin/env bash
# Builds, on a machine with nvcc (no GPU needed), what bench/gpu_first_run.sh
# runs on a GPU machine that has only a driver, the CUDA 13 runtime and
# cuBLASLt (the toolkit's, or PyTorch's nvidia-* packages) and PyTorch: the
# CUDA tests, the kernel benchmark, latam-train and latam-data, with every
# shared library they load that such a machine lacks (oneDNN, protobuf,
# PCRE2, Open MPI with its plugins and helper programs, ...), into one folder.
#
# Usage: bench/gpu_bundle.sh [BUILD_DIR [BUNDLE_DIR]]     (build, gpu-bundle)
#
# BUNDLE_DIR (git-ignored when it is gpu-bundle/):
#   bin/NAME      a wrapper per program: runs libexec/NAME with the bundle's
#                 libraries first on its library path, so that other programs
#                 (python3 and PyTorch) keep their own
#   libexec/      the programs
#   lib/          the libraries (never glibc's, libstdc++, libgcc_s or the
#                 CUDA libraries, which the GPU machine has in newer versions)
#   openmpi/      Open MPI's plugins, help texts and default parameters
#   pmix/         PMIx's plugins and help texts
#   env.sh        to source there: puts bin/ first on PATH and finds the CUDA
#                 and NCCL libraries (/usr/local/cuda, PyTorch's packages)
# Copy the repository with BUNDLE_DIR in it, then there:
#   bench/gpu_first_run.sh OUT_DIR          (finds ./gpu-bundle by itself)
# The size is printed at the end; it must stay under 50 MiB to travel with
# the checkout, so every program and library over 1 MiB is kept compressed
# (*.gz, gzip being on every system) and unpacked by unpack.sh the first time
# a wrapper starts.
set -euo pipefail
cd "$(dirname "$0")/.."

BUILD=${1:-build}
BUNDLE=${2:-gpu-bundle}
# latam-train is the signal-blocking launcher; it execs latam-train-main from its own folder.
PROGRAMS=(latam_cuda_tests bench_cuda_kernels latam-train latam-train-main latam-data)
# Libraries never bundled: the C runtime, the C++ runtime (PyTorch needs the
# GPU machine's newer one, and the bundle's programs run with it), the
# kernel's vDSO, and the CUDA libraries the GPU machine provides.
SKIP='^(linux-vdso|ld-linux|libc\.|libm\.|libdl\.|libpthread\.|librt\.|libresolv\.|libutil\.|libstdc\+\+\.|libgcc_s\.|libcuda\.|libcudart\.|libcublas|libcublasLt\.|libnccl\.|libnvidia)'
COMPRESS_OVER=$((1024 * 1024))  # bytes; files larger than this travel as .gz

log() { echo "gpu_bundle: $*"; }
die() { echo "gpu_bundle: error: $*" >&2; exit 2; }

if [ ! -f "$BUILD/CMakeCache.txt" ]; then
  log "configuring $BUILD"
  cmake -S . -B "$BUILD" -G Ninja -DCMAKE_BUILD_TYPE=Release >/dev/null
fi
grep -q '^LATAM_CUDA:BOOL=ON' "$BUILD/CMakeCache.txt" ||
  die "$BUILD is configured without LATAM_CUDA (needs nvcc; no GPU needed)"
cmake --build "$BUILD" -j "$(nproc)" --target "${PROGRAMS[@]}"

case "$BUNDLE" in /*) ;; *) BUNDLE=$(pwd)/$BUNDLE ;; esac
[ "$BUNDLE" != / ] || die "BUNDLE_DIR must not be /"
rm -rf "$BUNDLE"
mkdir -p "$BUNDLE/bin" "$BUNDLE/libexec" "$BUNDLE/lib"

# Copies the libraries $1 loads (ldd) into lib/, skipping SKIP.
gather() {
  local name path
  while read -r name path; do
    if [[ ! $name =~ $SKIP ]] && [ ! -e "$BUNDLE/lib/$name" ]; then cp -L "$path" "$BUNDLE/lib/$name"; fi
  done < <(ldd "$1" 2>/dev/null | awk '$2 == "=>" && $3 ~ /^\// { print $1, $3 }')
}

for p in "${PROGRAMS[@]}"; do
  cp -L "$BUILD/bin/$p" "$BUNDLE/libexec/$p"
done

# Open MPI, for latam-train: a process started without mpirun is an MPI
# singleton, which starts the orted helper and loads plugins from the
# folders compiled into the library (ompi_info names them); the wrappers
# point it at the bundle's copies.
command -v ompi_info >/dev/null 2>&1 || die "ompi_info (openmpi-bin) not found"
ompi_path() { ompi_info --parsable --path "$1" | sed -n "s/^path:$1://p"; }
plugins=$(ompi_path pkglibdir)
[ -d "$plugins" ] || die "Open MPI's plugin folder '$plugins' (ompi_info --path pkglibdir) does not exist"
mkdir -p "$BUNDLE/openmpi"
cp -rL "$plugins" "$BUNDLE/openmpi/plugins"
for helper in orted orterun; do
  [ -x "$(ompi_path bindir)/$helper" ] || die "no $(ompi_path bindir)/$helper (openmpi-bin)"
  cp -L "$(ompi_path bindir)/$helper" "$BUNDLE/libexec/$helper"
done
cp -rL "$(ompi_path pkgdatadir)" "$BUNDLE/openmpi/share"
cp -rL "$(ompi_path sysconfdir)" "$BUNDLE/openmpi/etc"
# PMIx, which Open MPI loads, has plugins and help texts of its own under
# its prefix (Debian: /usr/lib/<triplet>/pmix2), found through PMIX_PKGLIBDIR
# and PMIX_PKGDATADIR.
libpmix=$(for f in "$plugins"/*.so; do ldd "$f" 2>/dev/null; done | awk '$1 ~ /^libpmix\.so/ && !seen++ { print $3 }')
if [ -n "$libpmix" ]; then
  pmix_prefix=$(dirname "$(dirname "$(readlink -f "$libpmix")")")
  mkdir -p "$BUNDLE/pmix/lib" "$BUNDLE/pmix/share"
  [ -d "$pmix_prefix/lib/pmix" ] && cp -rL "$pmix_prefix/lib/pmix" "$BUNDLE/pmix/lib/"
  [ -d "$pmix_prefix/share/pmix" ] && cp -rL "$pmix_prefix/share/pmix" "$BUNDLE/pmix/share/"
fi

for f in "$BUNDLE"/libexec/* "$BUNDLE"/openmpi/plugins/*.so "$BUNDLE"/pmix/lib/pmix/*.so "$BUNDLE"/lib/*; do
  gather "$f"
done
# Libraries pulled in by the ones just copied.
for f in "$BUNDLE"/lib/*; do gather "$f"; done

# A wrapper per program. The CUDA and NCCL folders come from env.sh
# (LATAM_BUNDLE_CUDA_LIBS); without it, /usr/local/cuda's.
for path in "$BUNDLE"/libexec/*; do
  name=$(basename "$path")
  cat >"$BUNDLE/bin/$name" <<'EOF'
#!/bin/sh
# Runs the bundle's program of this name with the bundle's libraries.
here=$(cd "$(dirname "$(readlink -f "$0")")/.." && pwd)
"$here/unpack.sh" || exit 1
export LD_LIBRARY_PATH="$here/lib:${LATAM_BUNDLE_CUDA_LIBS:-/usr/local/cuda/lib64}${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
export OMPI_MCA_mca_base_component_path="$here/openmpi/plugins"
export OPAL_PKGDATADIR="$here/openmpi/share" OPAL_SYSCONFDIR="$here/openmpi/etc"
export OPAL_BINDIR="$here/bin"
export PMIX_PKGLIBDIR="$here/pmix/lib/pmix" PMIX_PKGDATADIR="$here/pmix/share/pmix"
# One node, no ssh: start the local daemon without a remote-shell agent.
export OMPI_MCA_plm=isolated
exec "$here/libexec/$(basename "$0")" "$@"
EOF
  chmod +x "$BUNDLE/bin/$name"
done

# What is still unresolved once the bundle's libraries are found: only the
# skipped ones may remain.
missing=$(for f in "$BUNDLE"/libexec/*; do
  LD_LIBRARY_PATH="$BUNDLE/lib" ldd "$f" 2>/dev/null | awk '$3 == "not" { print $1 }'
done | sort -u)
[ -z "$missing" ] || log "note: not found here, expected on the GPU machine: $(echo "$missing" | tr '\n' ' ')"

# Large files travel compressed; unpack.sh restores them once.
for f in "$BUNDLE"/lib/* "$BUNDLE"/libexec/*; do
  if [ "$(stat -c %s "$f")" -gt "$COMPRESS_OVER" ]; then gzip -9 "$f"; fi
done
cat >"$BUNDLE/unpack.sh" <<'EOF'
#!/bin/sh
# Decompresses the bundle's large files (lib/*.gz, libexec/*.gz) the first
# time; the programs keep their execute permission.
here=$(cd "$(dirname "$0")" && pwd)
for f in "$here"/lib/*.gz "$here"/libexec/*.gz; do
  [ -e "$f" ] || continue
  out=${f%.gz}
  [ -e "$out" ] && continue
  { gzip -dc "$f" >"$out.tmp.$$" && chmod --reference="$f" "$out.tmp.$$" && mv -f "$out.tmp.$$" "$out"; } ||
    { echo "gpu-bundle: cannot unpack $f" >&2; rm -f "$out.tmp.$$"; exit 1; }
done
EOF
chmod +x "$BUNDLE/unpack.sh"

cat >"$BUNDLE/env.sh" <<'EOF'
# Source this on the GPU machine: the bundle's programs come first on PATH,
# and LATAM_BUNDLE_CUDA_LIBS names the folders of the CUDA runtime, cuBLASLt
# and NCCL there, which their wrappers add to the library path.
latam_bundle=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
"$latam_bundle/unpack.sh" || return 1
export PATH="$latam_bundle/bin:$PATH"
LATAM_BUNDLE_CUDA_LIBS=${CUDA_HOME:-/usr/local/cuda}/lib64
for latam_pkg in nvidia.cu13 nvidia.cublas nvidia.cuda_runtime nvidia.nccl; do
  latam_dir=$(python3 -c "import $latam_pkg as m, os; print(os.path.join(list(m.__path__)[0], 'lib'))" 2>/dev/null) &&
    [ -d "$latam_dir" ] && LATAM_BUNDLE_CUDA_LIBS="$LATAM_BUNDLE_CUDA_LIBS:$latam_dir"
done
export LATAM_BUNDLE_CUDA_LIBS
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
unset latam_pkg latam_dir
EOF

size=$(du -sb "$BUNDLE" | cut -f1)
log "$BUNDLE: $(du -sh "$BUNDLE" | cut -f1) ($size bytes; $(ls "$BUNDLE/libexec" | wc -l) programs," \
  "$(ls "$BUNDLE/lib" | wc -l) libraries)"
[ "$size" -lt $((50 * 1024 * 1024)) ] || die "$BUNDLE is over 50 MiB"
