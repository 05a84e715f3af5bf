#!/usr/bin/env bash
# 10-minute rollouts (`world long-rollout`) of students, every (student, seed) a process of its
# own, side by side on one GPU; then the drift of each student's seeds. Rollouts still running
# after ROLL_LIMIT seconds are stopped (0: no limit); a finished report is kept. An entry is
# name=student-dir[:schedule-yaml] (a StudentSchedule, e.g. a compressed memory's).
#   STUDENTS="lh=runs/lh/dmd_lh/student ctl=runs/lh/dmd_ctl/student" \
#       bash benchmarks/distill/long_rollouts.sh
set -euo pipefail
source "$(dirname "$0")/common.sh"
STUDENTS=${STUDENTS:?name=student-dir ...}
SEEDS=${SEEDS:-0 1 2 3 4}; MINUTES=${MINUTES:-10}; ROLL_LIMIT=${ROLL_LIMIT:-0}

mkdir -p "$ROOT"
stamp "long rollouts: $STUDENTS, seeds $SEEDS"
for entry in $STUDENTS; do
    name=${entry%%=*}; IFS=: read -r student schedule <<< "${entry#*=}"
    for seed in $SEEDS; do
        out="$ROOT/rollout_${name}_s$seed"
        [ -f "$out/long_rollout.json" ] && continue
        timeout "$ROLL_LIMIT" $world long-rollout --student "$student" ${schedule:+--schedule "$schedule"} \
            --probe "$PROBE" --minutes "$MINUTES" \
            --seed "$seed" --device "$DEVICE" --out "$out" > "$ROOT/rollout_${name}_s$seed.log" 2>&1 &
    done
done
wait || true
for entry in $STUDENTS; do
    name=${entry%%=*}
    reports=("$ROOT"/rollout_"$name"_s*/long_rollout.json)
    [ -f "${reports[0]}" ] || { stamp "$name: no finished rollout"; continue; }
    PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH} python benchmarks/world/long_rollout_drift.py "${reports[@]}" --out "$ROOT/drift_$name.json" > /dev/null
    python - "$name" "${reports[@]}" <<'PY'
import json, sys
name, paths = sys.argv[1], sys.argv[2:]
for path in paths:
    r = json.load(open(path))
    misses = [f"{k}@{m['minute']}" for m in r["per_minute"] for k, ok in m["within_bounds"].items() if ok is False]
    fixed = [f"{k}@{m['minute']}" for m in r["per_minute"] for k, ok in m["within_fixed_bounds"].items() if ok is False]
    contrast = [m["contrast"] / r["per_minute"][0]["contrast"] for m in r["per_minute"]]
    print(f"{name} seed {r['seed']}: all within bounds {r['all_within_bounds']} (fixed bounds "
          f"{r['all_within_fixed_bounds']}, the truth {r['ground_truth_all_within_fixed_bounds']}); contrast x minute "
          f"one {min(contrast):.2f}-{max(contrast):.2f}; misses {' '.join(misses) or '-'}; of the fixed bounds "
          f"{' '.join(fixed) or '-'}")
PY
done
stamp done
