#!/usr/bin/env bash
# Proves the README's two commands on a bare Debian 12: builds a minimal root
# with `debootstrap --variant=minbase bookworm` (cached as a tarball outside
# the repository), clones the committed HEAD into it, mounts /proc, /sys,
# /dev, /dev/pts, a tmpfs /dev/shm and, read-only, the host's CUDA toolkit
# when it has one (as on a GPU user's machine), copies the host's local
# certificate authorities, and inside it runs, as root and exactly as the
# README writes them:
#   ./launch/quickstart.sh   (with fewer training steps)
#   ./tests/run.sh           (a subset of the labels, see --labels)
# Before them, while the root is still bare, the GPU bundle
# (bench/gpu_bundle.sh, from this checkout's build/ when it was built with
# CUDA) must run there: latam-train trains three steps on the CPU and the
# CUDA programs start, with no MPI, protobuf or oneDNN installed, as on a GPU
# machine that has only a driver, the CUDA runtime and PyTorch.
# Each command's output goes to a log; a failure names the command and its
# first error line. What was mounted is always unmounted, and the root is
# deleted only when nothing is mounted under it any more.
#
# Usage: tests/fresh_machine.sh [options]
#   --steps N          quickstart training steps (default 200)
#   --labels REGEX     ctest labels for ./tests/run.sh -L (default
#                      'unit|mpi|corpus|launch|cuda|cuda-build')
#   --no-cuda          do not mount the host's CUDA toolkit
#   --refresh          rebuild the cached Debian root
#   --keep             keep the root (unmounted) for inspection
#   --timeout-s N      limit per command (default 2400)
# Environment:
#   LATAM_FRESH_CACHE  cache and logs (default ~/.cache/latam-fresh-machine)
#   LATAM_FRESH_WORK   where the root is unpacked (default /var/tmp)
#   LATAM_DEBIAN_MIRROR  Debian mirror (default http://deb.debian.org/debian)
#
# Needs root (chroot, mount) on a Debian/Ubuntu host; installs debootstrap
# when missing. Exits 0 when both commands pass, 1 otherwise, 77 (skipped)
# when not root.
set -euo pipefail
cd "$(dirname "$0")/.."
REPO=$(pwd)

log() { echo "fresh-machine: $*"; }
die() { echo "fresh-machine: error: $*" >&2; exit 1; }

steps=200
labels='unit|mpi|corpus|launch|cuda|cuda-build'
use_cuda=1
refresh=0
keep=0
timeout_s=2400
while [ $# -gt 0 ]; do
  case "$1" in
    --steps) steps=${2:?--steps needs a value}; shift ;;
    --labels) labels=${2:?--labels needs a value}; shift ;;
    --no-cuda) use_cuda=0 ;;
    --refresh) refresh=1 ;;
    --keep) keep=1 ;;
    --timeout-s) timeout_s=${2:?--timeout-s needs a value}; shift ;;
    -h|--help) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
    *) die "unknown argument $1 (see --help)" ;;
  esac
  shift
done
[[ "$steps" =~ ^[1-9][0-9]*$ ]] || die "--steps: '$steps' is not a positive integer"
[[ "$timeout_s" =~ ^[1-9][0-9]*$ ]] || die "--timeout-s: '$timeout_s' is not a positive integer"

if [ "$(id -u)" -ne 0 ]; then
  echo "SKIP: tests/fresh_machine.sh needs root (chroot and mount)"
  exit 77
fi
MIRROR=${LATAM_DEBIAN_MIRROR:-http://deb.debian.org/debian}
CACHE=${LATAM_FRESH_CACHE:-$HOME/.cache/latam-fresh-machine}
TARBALL=$CACHE/debian12-minbase.tar.gz
LOGS=$CACHE/logs
mkdir -p "$CACHE" "$LOGS"

head=$(git rev-parse HEAD)
if [ -n "$(git status --porcelain --untracked-files=no)" ]; then
  log "note: uncommitted changes are not tested; the root gets commit ${head:0:12}"
fi

# ---- the cached bare root -----------------------------------------------------
t_start=$SECONDS
if [ "$refresh" -eq 1 ] || [ ! -f "$TARBALL" ]; then
  launch/install-deps.sh debootstrap >/dev/null
  staging=$(mktemp -d "${LATAM_FRESH_WORK:-/var/tmp}/latam-debootstrap.XXXXXX")
  log "debootstrap --variant=minbase bookworm ($MIRROR) into $staging"
  if ! debootstrap --variant=minbase bookworm "$staging/root" "$MIRROR" >"$LOGS/debootstrap.log" 2>&1; then
    tail -n 20 "$LOGS/debootstrap.log" >&2
    # debootstrap mounts nothing it leaves behind on failure, but check.
    if ! awk -v r="$staging/" 'index($2, r) == 1 { bad = 1 } END { exit bad }' /proc/mounts; then
      die "debootstrap failed and left mounts under $staging; not deleting it"
    fi
    rm -rf --one-file-system "$staging"
    die "debootstrap failed (log: $LOGS/debootstrap.log)"
  fi
  # The package sources of a stock Debian 12 installation.
  cat >"$staging/root/etc/apt/sources.list" <<EOF
deb $MIRROR bookworm main
deb $MIRROR bookworm-updates main
deb ${MIRROR%/debian}/debian-security bookworm-security main
EOF
  chroot "$staging/root" apt-get clean
  tar --numeric-owner -C "$staging/root" -czf "$TARBALL.tmp" .
  mv -f "$TARBALL.tmp" "$TARBALL"
  rm -rf --one-file-system "$staging"
  log "cached the bare root in $TARBALL ($(du -h "$TARBALL" | cut -f1))"
fi

declare -A took   # seconds per command, by name
WORK=$(mktemp -d "${LATAM_FRESH_WORK:-/var/tmp}/latam-fresh.XXXXXX")
ROOT=$WORK/root
mounted=()

# Mount points under ROOT, as /proc/mounts lists them.
mounts_under_root() { awk -v r="$ROOT" '$2 == r || index($2, r "/") == 1 { print $2 }' /proc/mounts; }

cleanup() {
  local rc=$? p i
  # Processes a command left running inside the root (a daemon, an MPI rank)
  # would keep its mounts busy.
  for p in /proc/[0-9]*; do
    [ "$(readlink "$p/root" 2>/dev/null)" = "$ROOT" ] && kill -KILL "${p#/proc/}" 2>/dev/null || true
  done
  for ((i = ${#mounted[@]} - 1; i >= 0; i--)); do
    umount "${mounted[i]}" 2>/dev/null || umount --lazy "${mounted[i]}" || true
  done
  if [ -n "$(mounts_under_root)" ]; then
    echo "fresh-machine: error: still mounted under $ROOT, so it is not deleted:" >&2
    mounts_under_root >&2
    exit 1
  fi
  if [ "$keep" -eq 1 ]; then
    log "kept the root in $ROOT"
  else
    rm -rf --one-file-system "$WORK"
  fi
  exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

mount_at() {  # mount_at TARGET MOUNT-ARGS...
  local target=$1; shift
  mkdir -p "$target"
  mount "$@" "$target"
  mounted+=("$target")
}

mkdir -p "$ROOT"
tar --numeric-owner -C "$ROOT" -xzf "$TARBALL"
cp /etc/resolv.conf "$ROOT/etc/resolv.conf"
printf '127.0.0.1\tlocalhost\n127.0.1.1\t%s\n' "$(hostname)" >"$ROOT/etc/hosts"
# Certificate authorities the host's administrator added (a TLS-inspecting
# proxy on this network needs them to reach the npm registry): a machine on
# the same network has them too. update-ca-certificates picks them up when
# the project's scripts install ca-certificates.
if compgen -G '/usr/local/share/ca-certificates/*.crt' >/dev/null; then
  mkdir -p "$ROOT/usr/local/share/ca-certificates"
  cp /usr/local/share/ca-certificates/*.crt "$ROOT/usr/local/share/ca-certificates/"
fi
log "bare Debian $(cat "$ROOT/etc/debian_version") root ready in $ROOT ($((SECONDS - t_start)) s)"

mount_at "$ROOT/proc" -t proc proc
mount_at "$ROOT/sys" -t sysfs -o ro sysfs
mount_at "$ROOT/dev" --bind /dev
mount --make-private "$ROOT/dev"
mount_at "$ROOT/dev/pts" --bind /dev/pts
mount_at "$ROOT/dev/shm" -t tmpfs -o mode=1777,nosuid,nodev tmpfs
if [ "$use_cuda" -eq 1 ] && [ -x /usr/local/cuda/bin/nvcc ]; then
  cuda=$(readlink -f /usr/local/cuda)
  mount_at "$ROOT$cuda" --bind "$cuda"
  mount -o remount,bind,ro "$ROOT$cuda"
  [ "$cuda" = /usr/local/cuda ] || ln -sfn "$cuda" "$ROOT/usr/local/cuda"
  log "CUDA toolkit $cuda mounted read-only"
fi

git clone --quiet --no-hardlinks "$REPO" "$ROOT/root/latam"
git -C "$ROOT/root/latam" checkout --quiet --detach "$head"
log "cloned commit ${head:0:12} into /root/latam"

# Runs one README command in the root as a new root login would: a clean
# environment, the stock PATH, no locale. Output goes to LOGS/NAME.log.
run_in_root() {  # NAME COMMAND
  local name=$1 cmd=$2 t0=$SECONDS rc=0
  log "[$name] $cmd  (log: $LOGS/$name.log)"
  timeout --kill-after=30 "$timeout_s" \
    chroot "$ROOT" /usr/bin/env -i HOME=/root USER=root LOGNAME=root SHELL=/bin/bash TERM=dumb \
    PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
    /bin/bash -c "cd /root/latam && $cmd" >"$LOGS/$name.log" 2>&1 </dev/null || rc=$?
  took[$name]=$((SECONDS - t0))
  if [ "$rc" -ne 0 ]; then
    local first
    first=$(grep -m 1 -E '(^|[[:space:]])([Ee]rror|ERROR|FAIL(ED)?|Failed)([:[:space:]]|$)' "$LOGS/$name.log" || true)
    tail -n 40 "$LOGS/$name.log" >&2
    [ "$rc" -ne 124 ] || first="timed out after $timeout_s s"
    die "'$cmd' failed on the bare Debian 12 root (exit $rc) after $((SECONDS - t0)) s; first error: ${first:-none found}"
  fi
  log "[$name] passed in $((SECONDS - t0)) s"
}

if [ -f build/CMakeCache.txt ] && grep -q '^LATAM_CUDA:BOOL=ON' build/CMakeCache.txt && [ "$use_cuda" -eq 1 ]; then
  bench/gpu_bundle.sh build "$ROOT/root/gpu-bundle" >"$LOGS/bundle-build.log" 2>&1 ||
    { tail -n 20 "$LOGS/bundle-build.log" >&2; die "bench/gpu_bundle.sh failed (log: $LOGS/bundle-build.log)"; }
  log "$(tail -n 1 "$LOGS/bundle-build.log")"
  cp bench/configs/cpu-7m.textproto "$ROOT/root/gpu-bundle-check.textproto"
  run_in_root bundle "source ../gpu-bundle/env.sh &&
    latam-data synthesize --out /tmp/synthetic.bin --vocab 8192 --tokens 100000 --seed 1 &&
    latam-train --config ../gpu-bundle-check.textproto --set data.train[0].path=/tmp/synthetic.bin \
      --set train.steps=3 --set train.log_every=1 --set train.save_every=0 --set train.run_dir=/tmp/bundle-run &&
    bench_cuda_kernels --help && latam_cuda_tests --gtest_list_tests | head -n 3"
  grep -q '^step *3/3 ' "$LOGS/bundle.log" || die "the bundle's latam-train did not train 3 steps (log: $LOGS/bundle.log)"
else
  log "no CUDA build in build/: the GPU bundle is not checked"
fi

run_in_root quickstart "./launch/quickstart.sh --set train.steps=$steps"
q=$LOGS/quickstart.log
for g in es pt indigenous; do
  line=$(grep "^quickstart: eval_loss/$g " "$q") || die "quickstart printed no eval_loss/$g (the 50/30/20 mixture needs all three groups)"
  read -r a b < <(sed -E 's/.* ([0-9.e+-]+) -> ([0-9.e+-]+)$/\1 \2/' <<<"$line")
  awk -v a="$a" -v b="$b" 'BEGIN { exit !(b < a) }' || die "quickstart: eval_loss/$g did not fall ($a -> $b)"
done
grep -q '^quickstart: generated: ' "$q" || die "quickstart printed no generated continuation"

run_in_root tests "./tests/run.sh -L '$labels'"
t=$LOGS/tests.log
# The reference tokenizer and corpus checks need Node.js and npm, which a bare
# machine lacks until the scripts install them: they must have passed, not
# skipped.
not_run=$(sed -n '/^The following tests did not run:/,/^$/p' "$t" | grep -E '^[[:space:]]+[0-9]+ - ' || true)
must_pass=()
[[ "$labels" != *unit* ]] || must_pass+=(Llama3ReferenceTest)
[[ "$labels" != *corpus* ]] || must_pass+=(SampleCorpus)
for name in "${must_pass[@]}"; do
  grep -q -E "Test +#[0-9]+: $name[^ ]* \.+ +Passed" "$t" || die "no $name test passed (log: $t)"
done

log "summary (bare Debian 12, $(nproc) cores, commit ${head:0:12}):"
[ -z "${took[bundle]:-}" ] || log "  the GPU bundle on the bare root: ${took[bundle]} s ($(tail -n 1 "$LOGS/bundle-build.log" | sed 's/^gpu_bundle: //'))"
log "  ./launch/quickstart.sh --set train.steps=$steps: ${took[quickstart]} s ($(grep '^quickstart: packages ' "$q" | sed 's/^quickstart: //'))"
log "  ./tests/run.sh -L '$labels': ${took[tests]} s ($(grep '^run.sh: packages ' "$t" | sed 's/^run.sh: //'))"
log "  $(grep -E '^[0-9]+% tests passed' "$t")"
if [ -n "$not_run" ]; then
  log "  not run here (no GPU, or a tool this machine lacks):"
  sed -E 's/^[[:space:]]*/    /' <<<"$not_run"
fi
log "PASS"
