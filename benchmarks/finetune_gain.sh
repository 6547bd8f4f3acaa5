#!/usr/bin/env bash
# Pretraining gain on MovieLens-100K (issue #3): MLM-pretrained vs scratch encoders
# fine-tuned on user classification (gender, occupation) and CTR, plus the default
# ablation grid. Results (tables) are printed and saved under OUT (default runs/ft-bench).
#
#   benchmarks/finetune_gain.sh [OUT] [steps...]
#   steps: pretrain gender occupation gender_lr3 ctr ablate (default: all but gender_lr3)
set -euo pipefail
OUT=${1:-runs/ft-bench}
shift || true
STEPS=${*:-pretrain gender occupation ctr ablate}
R=.venv/bin/recbert
PY=.venv/bin/python
mkdir -p "$OUT"
EXP="--set tracking.experiment=recbert-finetune-bench"
CLS="--folds 3 --epochs 5 --set experiment.seeds=[0,1] --set experiment.batch_size=32"
CTR="--epochs 5 --set experiment.max_train_samples=20000 --set experiment.max_val_samples=4000 \
     --set experiment.batch_size=128"

step() { [[ " $STEPS " == *" $1 "* ]]; }
model_of() { sed -n 's/^model: //p' "$1"; }

if step pretrain; then
  # encoder for the user tasks: MLM on all events (labels are never seen)
  /usr/bin/time -f "%e s" $R train -c configs/demo.toml --set pretrain.epochs=20 --set train.epochs=0 \
    --set train.objective=mlm --set out_dir="$OUT" $EXP 2>"$OUT/pretrain_all.log" | tee "$OUT/pretrain_all.txt"
  # encoder for CTR: MLM on the events outside every user's CTR test part only
  $PY -c "from recbert.data.tasks import ctr_pretraining_events as f; \
f('data/ml-100k/events.parquet').write_parquet('$OUT/ctr_pretrain_events.parquet')"
  /usr/bin/time -f "%e s" $R train -c configs/demo.toml --set pretrain.epochs=20 --set train.epochs=0 \
    --set train.objective=mlm --set out_dir="$OUT" --events "$OUT/ctr_pretrain_events.parquet" $EXP \
    2>"$OUT/pretrain_ctr.log" | tee "$OUT/pretrain_ctr.txt"
fi
for task in gender occupation; do
  if step $task; then
    /usr/bin/time -f "%e s" $R finetune --task $task --model-dir "$(model_of "$OUT/pretrain_all.txt")" --compare \
      $CLS $EXP 2>"$OUT/$task.log" | tee "$OUT/$task.txt"
  fi
done
if step gender_lr3; then  # the same with a 10x higher encoder learning rate (1e-3)
  /usr/bin/time -f "%e s" $R finetune --task gender --model-dir "$(model_of "$OUT/pretrain_all.txt")" --compare \
    $CLS --set finetune.encoder_lr=0.001 $EXP 2>"$OUT/gender_lr3.log" | tee "$OUT/gender_lr3.txt"
fi
if step ctr; then
  /usr/bin/time -f "%e s" $R finetune --task ctr --model-dir "$(model_of "$OUT/pretrain_ctr.txt")" --compare \
    $CTR $EXP 2>"$OUT/ctr.log" | tee "$OUT/ctr.txt"
fi
if step ablate; then
  /usr/bin/time -f "%e s" $R ablate $EXP 2>"$OUT/ablate.log" | tee "$OUT/ablate.txt"
fi
