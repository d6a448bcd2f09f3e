#!/usr/bin/env bash
# The 224-px candidate (issue 13, 2026-12-05): the shipped bundle's recipe at 224 px instead of 128 (same margin 1.15, same
# seeds and splits). Resumable: rerun the script; every stage skips what is done and fits --resume.
set -euo pipefail
cd "$(dirname "$0")/.."
B=.venv/bin; D=build/d224; V=$D/views
TRAIN="--arch efficientnet_lite0 --size 224 --paired --optimizer adamw --lr 3e-4 --workers 2 --seed 0 --augment uploads --no-sbi"
[ -f $D/data/.done ] || { rm -rf $D/data; $B/trainer prepare ../shared/data/ffpp-c23 ../shared/data/dfdc-faces --out $D/data --frames 48 --size 224 --margin 1.15 --split 0.6,0.25,0.15 --seed 0; touch $D/data/.done; }
[ -d $V ] || $B/python scripts/default_bundle_views.py views $D/data $V
if [ ! -f $D/dfdc-pre/.done ]; then
  if [ -f $D/dfdc-pre/last.pt ]; then $B/trainer fit --data $V/dfdc-train --out $D/dfdc-pre --resume
  else $B/trainer fit --data $V/dfdc-train $TRAIN --init lite0-pypi --epochs 3 --epoch-size 12800 --out $D/dfdc-pre; fi
  touch $D/dfdc-pre/.done
fi
[ -f $D/folds/.done ] || { rm -rf $D/folds; $B/trainer folds $V/ffpp-prepared --k 5 --seed 0 --out $D/folds; $B/python scripts/default_bundle_views.py add-pairs $D/folds $D/data; touch $D/folds/.done; }
scripts/cross_validate.sh $D/folds $D/cv $TRAIN --init $D/dfdc-pre/last.pt --epochs 5 --epoch-size 2400
[ -f $D/soup/last.pt ] || $B/trainer average $D/cv/fold-{0,1,2,3,4} --checkpoint last --out $D/soup
[ -f $D/soup-dfdc-val/scores.csv ] || $B/trainer eval $D/soup --data $V/dfdc --split validation --checkpoint last --no-attacks --no-corruptions --heatmaps 0 --out $D/soup-dfdc-val
echo DONE
