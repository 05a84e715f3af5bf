#!/usr/bin/env bash
# The compressed KV memory (`CacheConfig.full_frames`, `memory_pool`) on the built-in world, one
# GPU, one call: the shipped student evaluated on the held-out clips with its full cache and, as
# it is, with the compressed memory (the latest FULL window frames at full resolution, the sink
# and the older frames pooled POOL, "rows, cols"); the same student fine-tuned for SEG_MIN
# minutes by DMD streaming with the compressed memory (the shipped recipe: data loss 1.5,
# guidance 5, lr 5e-5, EMA 0.9, a fresh critic), evaluated, exported (FP8 matrices) and the
# export evaluated; then 10-minute rollouts of the export on SEEDS until the call's time (LIMIT
# seconds) runs out (ROLL=0: none). BASELINES=0 skips the shipped student's evaluations.
# STUDENT=<an exported student> skips those and the DMD, and evaluates and rolls out that one
# (`memory_student`).
#   OUT=$OUT bash benchmarks/distill/compressed_memory_h100.sh
set -euo pipefail
source "$(dirname "$0")/common.sh"
OUT=${OUT:?where the archives go}
FULL=${FULL:-3}; POOL=${POOL:-2, 2}; SEG_MIN=${SEG_MIN:-5}; LIMIT=${LIMIT:-570}; ROLL=${ROLL:-1}
START=${START:-lingbot_rt/world/weights/student}
mkdir -p "$ROOT"
printf "full_frames: $FULL\nmemory_pool: [$POOL]\n" > "$ROOT/schedule.yaml"
printf "${DMD_RECIPE}  full_frames: $FULL\n  memory_pool: [$POOL]\n" > "$ROOT/dmd_cm.yaml"
stamp gen-data
if [ -n "${STUDENT:-}" ]; then
    [ -f "$ROOT/heldout/dataset.json" ] || $world gen-data --out "$ROOT/heldout" --clips 32 --frames $FRAMES \
        --height $SIZE --width $SIZE --seed 1 --workers "$WORKERS" --quiet
    evaluate memory_student --student "$STUDENT" --schedule "$ROOT/schedule.yaml" &
    rolled="$STUDENT"
else
    [ -f "$ROOT/heldout/dataset.json" ] || gen_data "${CLIPS:-512}" 32
    stamp "evaluations of the shipped student beside DMD with the compressed memory ($SEG_MIN min)"
    if [ "${BASELINES:-1}" = 1 ]; then
        evaluate shipped --student "$START" &
        evaluate shipped_memory --student "$START" --schedule "$ROOT/schedule.yaml" &
    fi
    ROOT=$ROOT SEGMENTS=1 SEG_MIN=$SEG_MIN DMD_BATCH=48 EVAL=0 RUNS="cm=$START:5e-5:1.5:$ROOT/dmd_cm.yaml" \
        bash benchmarks/distill/dmd_segments.sh
    wait
    evaluate memory_dmd --student "$ROOT/dmd_cm/student" --schedule "$ROOT/schedule.yaml" &
    $world export --student "$ROOT/dmd_cm/student" --out "$ROOT/export_cm" > /dev/null
    tar -C "$ROOT/export_cm" -cf "$OUT/student_cm.tar" student
    evaluate memory_student --student "$ROOT/export_cm/student" --schedule "$ROOT/schedule.yaml"
    wait
    stamp "export evaluated at ${SECONDS}s"
    rolled="$ROOT/export_cm/student"
fi
[ "$ROLL" = 0 ] || ROLL_LIMIT=$((LIMIT - SECONDS)) STUDENTS="cm=$rolled:$ROOT/schedule.yaml" \
    bash benchmarks/distill/long_rollouts.sh || true
wait
tar -C "$ROOT" -czf "$OUT/results.tar.gz" --exclude='*.pt' --exclude=data --exclude=heldout --exclude='dmd_*/checkpoint' \
    --exclude='export_*' --exclude='dmd_*/student' .
