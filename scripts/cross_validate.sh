#!/usr/bin/env bash
# One candidate through grouped K-fold cross-validation (see trainer/evaluation/folds.py):
#   scripts/cross_validate.sh FOLDS_DIR OUT_DIR [trainer fit options...]
# fits OUT_DIR/fold-{i} on FOLDS_DIR/fold-{i}, scores each fold's validation videos with its last
# epoch (no epoch is picked on the videos it is scored on), clean and under the goals' two
# compressions (JPEG 50, H.264 CRF 35: a candidate's out-of-fold compression loss, beside its clean
# figure), and pools the out-of-fold clean scores into OUT_DIR/pooled.json. Resumable: a fold whose
# evaluation exists is skipped; a fit continues.
set -euo pipefail
folds=$1 out=$2
shift 2
bin=$(dirname "$0")/../.venv/bin
mkdir -p "$out"
reports=()
for fold in "$folds"/fold-*/; do
  name=$(basename "$fold")
  run=$out/$name eval=$out/$name-eval
  if [ ! -f "$eval/scores.csv" ]; then
    if [ -f "$run/last.pt" ]; then
      "$bin/trainer" fit --data "$fold" --out "$run" --resume
    else
      "$bin/trainer" fit --data "$fold" --out "$run" "$@"
    fi
    rm -rf "$eval"
    "$bin/trainer" eval "$run" --data "$fold" --split validation --checkpoint last \
      --no-attacks --corruption "jpeg q=50" --corruption "h264 crf=35" --heatmaps 0 --out "$eval"
  fi
  reports+=("$eval")
done
"$bin/trainer" pool "${reports[@]}" --json "$out/pooled.json" | tee "$out/pooled.txt"
