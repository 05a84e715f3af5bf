#!/usr/bin/env bash
# Longer DMD of the built-in world's students, in segments: every run in RUNS continues from its
# own checkpoint for SEG_MIN minutes, side by side on one GPU, and every student (the EMA) is
# evaluated on the held-out clips after every segment (eval_<run>_<segment>/, side by side too).
# Resumes. A run is name=initial-student:lr[:data-loss-weight[:config-yaml]] (its own DMDConfig
# YAML instead of CONFIG). EVAL=0 skips the evaluations.
#   RUNS="a=students/dmd_init_tf:2e-5 b=students/dmd_init_tf:5e-5:0.5" SEGMENTS=3 SEG_MIN=6 \
#       bash benchmarks/distill/dmd_segments.sh
set -euo pipefail
source "$(dirname "$0")/common.sh"
RUNS=${RUNS:?name=initial-student-dir:lr ...}; SEGMENTS=${SEGMENTS:-3}; SEG_MIN=${SEG_MIN:-6}
CONFIG=${CONFIG:-}               # a DMDConfig YAML (e.g. ema_decay); the flags below override it
DMD_BATCH=${DMD_BATCH:-128}; CLIPS=${CLIPS:-1024}; HELDOUT=${HELDOUT:-64}

stamp gen-data
[ -f "$ROOT/heldout/dataset.json" ] || gen_data "$CLIPS" "$HELDOUT"
for segment in $(seq 1 "$SEGMENTS"); do
    stamp "DMD segment $segment of $SEGMENTS ($SEG_MIN min): $RUNS"
    for run in $RUNS; do
        name=${run%%=*}; IFS=: read -r init lr weight config <<< "${run#*=}"; config=${config:-$CONFIG}
        $distill dmd --student "$init" --teacher "$TEACHER" --data "$ROOT/data" --vae "$WEIGHTS" --device "$DEVICE" \
            --out "$ROOT/dmd_$name" --batch-size "$DMD_BATCH" --generator-lr "$lr" --critic-lr "$lr" \
            ${weight:+--data-loss-weight "$weight"} \
            --steps 1000000 --minutes "$SEG_MIN" ${config:+--config "$config"} >> "$ROOT/dmd_$name.log" 2>&1 &
    done
    wait
    [ "${EVAL:-1}" = 0 ] && continue
    for run in $RUNS; do
        name=${run%%=*}
        evaluate "${name}_$segment" --student "$ROOT/dmd_$name/student" &
    done
    wait
done
stamp done
