#!/usr/bin/env bash
# Compressed-memory layouts for one student, no training, one GPU, one call: for every entry of
# LAYOUTS (name=full_frames:rows,cols[:window_frames]), the student (default: the shipped one)
# evaluated on the held-out clips and rolled out for 10 minutes on SEEDS with that layout, all
# side by side; the rollouts still running after LIMIT seconds are stopped. Results in $OUT.
#   OUT=$OUT LAYOUTS="f1=1:2,2 p4=3:4,4" bash benchmarks/distill/memory_layouts_h100.sh
set -euo pipefail
source "$(dirname "$0")/common.sh"
OUT=${OUT:?where the archives go}; LAYOUTS=${LAYOUTS:?name=full:rows,cols ...}
STUDENT=${STUDENT:-lingbot_rt/world/weights/student}; LIMIT=${LIMIT:-570}
mkdir -p "$ROOT"
stamp gen-data
[ -f "$ROOT/heldout/dataset.json" ] || $world gen-data --out "$ROOT/heldout" --clips "$EVAL_CLIPS" --frames $FRAMES \
    --height $SIZE --width $SIZE --seed 1 --workers "$WORKERS" --quiet
students=""
for entry in $LAYOUTS; do
    name=${entry%%=*}; IFS=: read -r full pool window <<< "${entry#*=}"
    printf "full_frames: $full\nmemory_pool: [$pool]\n${window:+window_frames: $window\n}" > "$ROOT/schedule_$name.yaml"
    evaluate "$name" --student "$STUDENT" --schedule "$ROOT/schedule_$name.yaml" &
    students+=" $name=$STUDENT:$ROOT/schedule_$name.yaml"
done
ROLL_LIMIT=$((LIMIT - SECONDS)) STUDENTS="$students" bash benchmarks/distill/long_rollouts.sh || true
wait
tar -C "$ROOT" -czf "$OUT/results.tar.gz" --exclude='*.pt' --exclude=heldout .
