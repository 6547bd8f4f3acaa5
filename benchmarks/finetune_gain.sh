#!/usr/bin/env bash
# Pretraining gain on MovieLens-100K (issue #3): MLM-pretrained vs scratch encoders
# fine-tuned on user classification (gender, age, occupation) and CTR, each against its
# scikit-learn baseline in the same call, plus the default ablation grid. Tables are
# printed and saved under OUT (default runs/ft-bench).
#
#   benchmarks/finetune_gain.sh [OUT] [steps...]
#   steps: pretrain gender age occupation gender_lr4 ctr ablate (default: all)
#
# PRETRAIN_ARGS (environment) is appended to both pretraining commands, e.g. the attribute
# objective on the shipped genres (issue #9):
#   PRETRAIN_ARGS='--set pretrain.objective=mlm_attributes --set data.item_features=data/ml-100k/items.parquet
#     --set data.item_feature_columns=["genres"]' benchmarks/finetune_gain.sh runs/ft-attr pretrain gender
set -euo pipefail
OUT=${1:-runs/ft-bench}
shift || true
STEPS=${*:-pretrain gender age occupation gender_lr4 ctr ablate}
read -r -a PRE <<< "${PRETRAIN_ARGS:-}"
R=.venv/bin/recbert
PY=.venv/bin/python
mkdir -p "$OUT"
EXP="--set tracking.experiment=recbert-finetune-bench"
CLS="--folds 3 --epochs 5 --set experiment.seeds=[0,1,2] --set experiment.batch_size=32"
# CTR re-encodes each sample's history (69k training samples would take ~7 min per run and
# variant here): a seeded subsample of 20k / 4k / 10k train / validation / test samples
CTR="--epochs 5 --set experiment.seeds=[0,1] --set experiment.batch_size=128 \
     --set experiment.max_train_samples=20000 --set experiment.max_val_samples=4000 \
     --set experiment.max_test_samples=10000"

step() { [[ " $STEPS " == *" $1 "* ]]; }
model_of() { sed -n 's/^model: //p' "$1"; }
timed() { local name=$1; shift; /usr/bin/time -f "%e s" "$@" 2>"$OUT/$name.log" | tee "$OUT/$name.txt"; }

if step pretrain; then
  # encoder for the user tasks: MLM on all events (labels are never seen)
  timed pretrain_all $R train -c configs/demo.toml --set pretrain.epochs=20 --set train.epochs=0 \
    --set train.objective=mlm --set out_dir="$OUT" $EXP "${PRE[@]}"
  # encoder for CTR: MLM on the events outside every user's CTR test part only
  $PY -c "from recbert.data.tasks import ctr_pretraining_events as f; \
f('data/ml-100k/events.parquet').write_parquet('$OUT/ctr_pretrain_events.parquet')"
  timed pretrain_ctr $R train -c configs/demo.toml --set pretrain.epochs=20 --set train.epochs=0 \
    --set train.objective=mlm --set out_dir="$OUT" --events "$OUT/ctr_pretrain_events.parquet" $EXP "${PRE[@]}"
fi
for task in gender age occupation; do
  if step $task; then
    timed $task $R finetune --task $task --model-dir "$(model_of "$OUT/pretrain_all.txt")" --compare $CLS $EXP
  fi
done
if step gender_lr4; then  # the same with the old, 10x lower encoder learning rate (1e-4)
  timed gender_lr4 $R finetune --task gender --model-dir "$(model_of "$OUT/pretrain_all.txt")" --compare \
    $CLS --set finetune.encoder_lr=0.0001 $EXP
fi
if step ctr; then
  timed ctr $R finetune --task ctr --model-dir "$(model_of "$OUT/pretrain_ctr.txt")" --compare $CTR $EXP
fi
if step ablate; then
  timed ablate $R ablate --set "grid.seeds=[0,1,2]" $EXP
fi
