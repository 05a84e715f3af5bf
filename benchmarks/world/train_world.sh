#!/usr/bin/env bash
# The built-in world's whole training run on one GPU: data, VAE, teacher, evaluation.
# Every stage resumes from what it finds under $ROOT, so a second invocation continues.
#   VAE_MIN=11 TEACHER_MIN=9 bash benchmarks/world/train_world.sh          (the H100 run)
# Sizes and budgets come from the environment (defaults: the H100 run of the model card).
set -euo pipefail
ROOT=${ROOT:-runs/world}
CLIPS=${CLIPS:-3000}; HELDOUT=${HELDOUT:-64}; FRAMES=${FRAMES:-81}; SIZE=${SIZE:-128}
WORKERS=${WORKERS:-14}; DEVICE=${DEVICE:-cuda}
VAE_MIN=${VAE_MIN:-11}; VAE_BATCH=${VAE_BATCH:-32}; VAE_LR=${VAE_LR:-5e-4}; VAE_WINDOW=${VAE_WINDOW:-8}
TEACHER_MIN=${TEACHER_MIN:-9}; TEACHER_BATCH=${TEACHER_BATCH:-64}; TEACHER_LR=${TEACHER_LR:-3e-4}
TEACHER_INIT=${TEACHER_INIT:+--init $TEACHER_INIT}       # a model directory to warm-start from
SKIP_VAE=${SKIP_VAE:-}                                   # set: $ROOT/vae already holds the VAE to use
EVAL_CLIPS=${EVAL_CLIPS:-32}; PROBE_CLIPS=${PROBE_CLIPS:-300}; PROBE_STEPS=${PROBE_STEPS:-1500}
EVAL_STEPS=${EVAL_STEPS:-50}
world="python -m lingbot_rt.cli world"
stamp() { echo "== $(date +%T) $*"; }

stamp gen-data
$world gen-data --out "$ROOT/data" --clips "$CLIPS" --frames "$FRAMES" --height "$SIZE" --width "$SIZE" \
    --shard-size 200 --workers "$WORKERS" --quiet
$world gen-data --out "$ROOT/heldout" --clips "$HELDOUT" --frames "$FRAMES" --height "$SIZE" --width "$SIZE" \
    --seed 1 --workers "$WORKERS" --quiet
stamp train-vae
[ -n "$SKIP_VAE" ] || $world train-vae --data "$ROOT/data" --out "$ROOT/vae" --minutes "$VAE_MIN" --batch-size "$VAE_BATCH" \
    --lr "$VAE_LR" --window-frames "$VAE_WINDOW" --episode-frames "$FRAMES" --device "$DEVICE"
stamp train-teacher
$world train-teacher --data "$ROOT/data" --vae "$ROOT/vae" --out "$ROOT/teacher" --minutes "$TEACHER_MIN" \
    --batch-size "$TEACHER_BATCH" --lr "$TEACHER_LR" --device "$DEVICE" $TEACHER_INIT
stamp eval
$world eval --data "$ROOT/heldout" --vae "$ROOT/vae" --teacher "$ROOT/teacher/teacher" --probe-data "$ROOT/data" \
    --probe-clips "$PROBE_CLIPS" --probe-steps "$PROBE_STEPS" --clips "$EVAL_CLIPS" --steps "$EVAL_STEPS" \
    --out "$ROOT/eval" --device "$DEVICE"
stamp done
