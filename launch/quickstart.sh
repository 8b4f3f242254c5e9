#!/usr/bin/env bash
# Quickstart: installs what is missing, builds Release into build/, builds the
# Latin American sample corpus, trains a tokenizer, tokenizes, and trains the
# `quickstart` model on this machine's CPUs with 4 MPI ranks (2-way tensor x
# 2-way pipeline parallelism) on a language mixture (es/pt/indigenous),
# reporting the eval loss of each language, saving checkpoints every 200
# steps, and ending with the trained model's continuation of a Spanish prompt
# and its scores on the regional held-out tasks (latam-eval, 2 ranks).
#
# Extra arguments go to latam-train (e.g. --set train.steps=50). Environment:
#   LATAM_BUILD_DIR  build directory (default build)
#   LATAM_DATA_DIR   where the corpus and shards go (default data)
#   LATAM_RUNS_DIR   where run directories go (default runs)
set -euo pipefail
cd "$(dirname "$0")/.."

BUILD=${LATAM_BUILD_DIR:-build}
DATA=${LATAM_DATA_DIR:-data}
RUNS=${LATAM_RUNS_DIR:-runs}

# Seconds spent in each part, printed at the end.
t0=$SECONDS
./launch/install-deps.sh
t_packages=$((SECONDS - t0))

t0=$SECONDS
[ -f "$BUILD/CMakeCache.txt" ] || cmake -S . -B "$BUILD" -G Ninja -DCMAKE_BUILD_TYPE=Release >/dev/null
cmake --build "$BUILD" -j "$(nproc)" --target latam-train latam-data latam-ckpt latam-generate latam-eval
t_build=$((SECONDS - t0))

t0=$SECONDS
LATAM_BUILD_DIR=$BUILD launch/prepare-sample-data.sh "$DATA/sample" "$DATA/quickstart" 4096
t_data=$((SECONDS - t0))

if [ "$(id -u)" -eq 0 ]; then
  export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
fi
RUN_DIR=$RUNS/quickstart-$(date +%Y%m%d-%H%M%S)
overrides=(--set train.run_dir="$RUN_DIR" --set data.tokenizer="$DATA/quickstart/tokenizer.json")
i=0
for g in es pt indigenous; do
  overrides+=(--set "data.train[$i].path=$DATA/quickstart/$g-train.bin" --set "data.eval[$i].path=$DATA/quickstart/$g-eval.bin")
  i=$((i + 1))
done
# 4 ranks on any number of cores (--oversubscribe); --bind-to none lets each
# rank size its OpenMP team to its share of the node's cores.
t0=$SECONDS
mpirun -np 4 --oversubscribe --bind-to none "$BUILD/bin/latam-train" --config configs/quickstart.textproto \
  "${overrides[@]}" "$@"
t_train=$((SECONDS - t0))

# Per-language eval loss, first and last evaluation.
first=$(grep -m1 '"eval_loss"' "$RUN_DIR/metrics.jsonl")
last=$(grep '"eval_loss"' "$RUN_DIR/metrics.jsonl" | tail -n 1)
for g in es pt indigenous; do
  a=$(sed -E "s/.*\"eval_loss\/$g\":([0-9.e+-]+).*/\1/" <<<"$first")
  b=$(sed -E "s/.*\"eval_loss\/$g\":([0-9.e+-]+).*/\1/" <<<"$last")
  printf 'quickstart: eval_loss/%-10s %s -> %s\n' "$g" "$a" "$b"
done
echo "quickstart: metrics in $RUN_DIR/metrics.jsonl (TensorBoard: tensorboard --logdir $RUN_DIR)"
echo "quickstart: checkpoint $RUN_DIR/checkpoints/$(cat "$RUN_DIR/checkpoints/latest") (inspect: $BUILD/bin/latam-ckpt info $RUN_DIR)"

# The trained model continues a Spanish prompt (one process, any saved layout).
prompt="La historia de América Latina"
t0=$SECONDS
continuation=$("$BUILD/bin/latam-generate" --checkpoint "$RUN_DIR" --prompt "$prompt" \
  --max-new-tokens 48 --min-new-tokens 24 --temperature 0.7 --top-p 0.9 --seed 1)
echo "quickstart: generated: $prompt$continuation"
t_generate=$((SECONDS - t0))

# Its scores on the regional tasks built from the held-out documents
# (perplexity and continuation choice per language), items split over 2 ranks.
t0=$SECONDS
mpirun -np 2 --oversubscribe --bind-to none "$BUILD/bin/latam-eval" --checkpoint "$RUN_DIR" \
  --tasks "$DATA/quickstart/regional-tasks.jsonl" | sed 's/^/quickstart: eval: /'
echo "quickstart: packages ${t_packages} s, build ${t_build} s, data ${t_data} s," \
  "training ${t_train} s, generation ${t_generate} s, eval $((SECONDS - t0)) s"
