#!/usr/bin/env bash
# A candidate recipe for the default bundle, measured by grouped cross-validation (every step seeded
# and resumable). It lost to the bundle of its day on DFDC (docs/detector-history.md, "A later
# candidate, measured by grouped cross-validation, that lost").
#   scripts/cv_lite0_160.sh BUILD_DIR [FFPP_DIR] [DFDC_DIR]
# 1. a seeded draw of 8,000 DFDC pairs, and `trainer prepare` of it with the 84 FF++ videos
#    (32 frames a video, 224 px crops at the scan's margin 1.3, split 0.7/0.15/0.15 by identity);
# 2. three grouped folds of the training split (identity groups never split), each fold's training
#    side keeping every FF++ crop and 1,200 DFDC pairs;
# 3. per fold, EfficientNet-Lite0 at 160 px from the offline ImageNet weights, ERM with upload
#    augmentation, self-blends and paired batches, 3 epochs of 6,400 samples; its last epoch scored
#    on the fold's whole validation side (out-of-fold: no epoch is picked on what it is scored on);
# 4. the out-of-fold scores pooled, FF++ and DFDC apart, with intervals over videos.
# The three fold models were to be the bundle's members (`trainer export RUN0 RUN1 RUN2 --checkpoint
# last --data BUILD/data224`, calibrated on the prepared validation split, which no member trained on).
set -euo pipefail
build=$1 ffpp=${2:-../shared/data/ffpp-c23} dfdc=${3:-../shared/data/dfdc-faces}
root=$(cd "$(dirname "$0")/.." && pwd)
py=$root/.venv/bin/python folds_py=$root/scripts/cv_views.py
epochs=${EPOCHS:-3}
mkdir -p "$build"
[ -f "$build/dfdc8k/pairs.csv" ] || "$py" "$folds_py" subset "$dfdc" "$build/dfdc8k" --pairs 8000
"$py" -m trainer prepare "$ffpp" "$build/dfdc8k" --out "$build/data224" --frames 32 --size 224 --margin 1.3 \
  --split 0.7,0.15,0.15 --seed 0
if [ ! -f "$build/folds/folds.json" ]; then
  "$py" -m trainer folds "$build/data224" --k 3 --seed 0 --splits train --out "$build/folds"
  "$py" "$folds_py" prune "$build/folds" --pairs 1200
  "$py" "$folds_py" val-views "$build/folds" "$build/cv" --pairs 300
fi
evals=()
for i in 0 1 2; do
  run=$build/cv/fold-$i eval=$build/cv/fold-$i-eval
  if [ ! -f "$eval/scores.csv" ]; then
    if [ -f "$run/last.pt" ]; then
      "$py" -m trainer fit --out "$run" --resume --epochs "$epochs"
    else
      "$py" -m trainer fit --data "$build/folds/fold-$i" --val-data "$build/cv/valview-$i" --out "$run" \
        --arch efficientnet_lite0 --init lite0-pypi --size 160 --augment uploads --sbi --paired \
        --optimizer adamw --lr 3e-4 --epochs "$epochs" --epoch-size 6400 --batch-size 32 --workers 2 --seed "$i"
    fi
    rm -rf "$eval"
    "$py" -m trainer eval "$run" --data "$build/folds/fold-$i" --split validation --checkpoint last \
      --no-attacks --no-corruptions --heatmaps 0 --out "$eval"
  fi
  evals+=("$eval")
done
"$py" "$folds_py" split-scores "${evals[@]}"
for source in ffpp dfdc; do
  "$py" -m trainer pool "${evals[@]/%//$source}" --json "$build/cv/pooled-$source.json" | tee "$build/cv/pooled-$source.txt"
done
