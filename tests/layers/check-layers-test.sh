#!/usr/bin/env bash
# The layer check passes on the tree, and fails, naming the file, on a copy
# of the tree with one upward include, one upward proto import and one
# upward link planted in it.
set -euo pipefail
root=$(cd "$(dirname "$0")/../.." && pwd)
check="$root/tests/layers/check_layers.py"
python3 "$check" "$root"

tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
for layer in core kernels data parallel model checkpoint trainer; do
  cp -r "$root/$layer" "$tmp/$layer"
done
fails_with() {  # expected text; the check must exit 1 and print it
  local out rc=0
  out=$(python3 "$check" "$tmp" 2>&1) || rc=$?
  if [[ $rc -ne 1 || "$out" != *"$1"* ]]; then
    echo "expected exit 1 naming '$1', got exit $rc:"; echo "$out"; exit 1
  fi
}
python3 "$check" "$tmp"

cp "$tmp/core/status.h" "$tmp/status.h.orig"
echo '#include "trainer/trainer.h"' >> "$tmp/core/status.h"
fails_with "core/status.h:"
cp "$tmp/status.h.orig" "$tmp/core/status.h"

echo 'import "trainer/tensorboard.proto";' >> "$tmp/checkpoint/checkpoint.proto"
fails_with "checkpoint/checkpoint.proto:"
sed -i '$d' "$tmp/checkpoint/checkpoint.proto"

echo '#include "kernels/gemm.h"' >> "$tmp/data/shard.h"  # data/ uses core/ alone
fails_with "data/shard.h:"
sed -i '$d' "$tmp/data/shard.h"

echo 'target_link_libraries(latam_parallel PUBLIC latam_model)' >> "$tmp/parallel/CMakeLists.txt"
fails_with "latam_parallel links latam_model"
sed -i '$d' "$tmp/parallel/CMakeLists.txt"

python3 "$check" "$tmp"
echo "layer check: passes on the tree, fails on each planted violation"
