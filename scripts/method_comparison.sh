#!/usr/bin/env bash
# Every training method at equal CPU time, for the model card:
#   scripts/method_comparison.sh FOLD_DIR START_RUN OUT_DIR [SECONDS]
# Each method fine-tunes START_RUN's last epoch on FOLD_DIR's training side at eps 1/255 for about
# SECONDS (240) of training: a PROBE-sample probe measures the method's img/s on this machine and
# sets its epoch size. START_RUN and every result are then scored on the same LIMIT seeded crops of
# FOLD_DIR's held-out videos, clean and under PGD-10 at 0.25-4/255 (`--attack-set curve`).
# Resumable: a method whose run exists is not retrained. SIZE (128), LIMIT (128 crops), PROBE
# (320 samples, also the least epoch size) and METHODS (all seven) change the settings for a quick
# check (tests/test_recipe_scripts.py).
set -euo pipefail
[ $# -ge 3 ] || { echo "usage: $0 FOLD_DIR START_RUN OUT_DIR [SECONDS]" >&2; exit 2; }
fold=$1 start=$2 out=$3 budget=${4:-240} px=${SIZE:-128} limit=${LIMIT:-128} probe=${PROBE:-320}
bin=$(dirname "$0")/../.venv/bin
eps=0.00392156862745098
fit=(--data "$fold" --arch efficientnet_lite0 --size $px --paired --optimizer adamw --lr 1e-4 --workers 2
     --seed 0 --augment uploads --no-sbi --init "$start/last.pt" --epochs 1)
score=(--data "$fold" --split validation --checkpoint last --limit $limit --no-corruptions --heatmaps 0 --attack-set curve)
read -r -a methods <<< "${METHODS:-erm fgsm-at fgsm-rs pgd-at trades gradreg dual-attacker}"
declare -A options=(
  [erm]=""
  [fgsm-at]="-o p=1 -o eps_choices=$eps"
  [fgsm-rs]="-o eps=$eps"
  [pgd-at]="-o eps=$eps -o steps=2"
  [trades]="-o eps=$eps -o steps=2 -o beta=6"
  [gradreg]=""
  [dual-attacker]="-o pgd_eps=$eps -o pgd_steps=2 -o eps_unet=$eps"
)
mkdir -p "$out"
[ -f "$out/start-eval/metrics.json" ] || "$bin/trainer" eval "$start" "${score[@]}" --out "$out/start-eval"
for method in "${methods[@]}"; do
  run=$out/$method
  if [ ! -f "$run/last.pt" ]; then
    rm -rf "$out/probe-$method"
    # shellcheck disable=SC2086  # the options are words on purpose
    "$bin/trainer" fit "${fit[@]}" --method $method ${options[$method]} --epoch-size $probe --out "$out/probe-$method" \
      > "$out/probe-$method.log" 2>&1
    size=$("$bin/python" -c "import json, sys
rate = json.loads(open(sys.argv[1]).readline())['images_per_second']
print(max($probe, int(rate * $budget) // 32 * 32))" "$out/probe-$method/metrics.jsonl")
    echo "$method: epoch size $size from the probe's img/s"
    # shellcheck disable=SC2086
    "$bin/trainer" fit "${fit[@]}" --method $method ${options[$method]} --epoch-size "$size" --out "$run" > "$run.log" 2>&1
    grep '^epoch 1' "$run.log"
  fi
  [ -f "$out/$method-eval/metrics.json" ] || "$bin/trainer" eval "$run" "${score[@]}" --out "$out/$method-eval" > "$out/$method-eval.log" 2>&1
done
"$bin/python" "$(dirname "$0")/method_table.py" "$out" "${methods[@]}"
