#!/usr/bin/env bash
# 10-minute rollouts (`world long-rollout`) of students: every student one process, all its
# seeds batched in it, the students side by side on one GPU; then the drift of each student's
# seeds and a line per seed. A process still running after ROLL_LIMIT seconds is stopped (0: no
# limit); each seed's report is rewritten as its minutes close, so a stopped run leaves its
# closed minutes ("complete": false). An entry is name=student-dir[:schedule-yaml] (a
# StudentSchedule, e.g. a compressed memory's). NOISE_DRAW=k > 0 keeps every seed's keys and
# redraws the stream's noise (`--noise-draw`).
# Each process renders the truth, runs the probe and decodes its sessions on one core: on a
# 16-core GPU machine 20 single-seed runs (ROOT and SEEDS per run) finish 10 minutes in 330 s,
# where 10 processes of 10 seeds each (half with action guidance, beside two evaluations) reached
# 7-9 minutes in 480 s (results/distill/README.md, eighth run).
#   STUDENTS="lh=runs/lh/dmd_lh/student ctl=runs/lh/dmd_ctl/student" SEEDS=0-49 \
#       bash benchmarks/distill/long_rollouts.sh
set -euo pipefail
source "$(dirname "$0")/common.sh"
STUDENTS=${STUDENTS:?name=student-dir ...}
SEEDS=${SEEDS:-0-4}; MINUTES=${MINUTES:-10}; ROLL_LIMIT=${ROLL_LIMIT:-0}; NOISE_DRAW=${NOISE_DRAW:-0}

mkdir -p "$ROOT"
stamp "long rollouts: $STUDENTS, seeds $SEEDS"
for entry in $STUDENTS; do
    name=${entry%%=*}; IFS=: read -r student schedule <<< "${entry#*=}"
    timeout "$ROLL_LIMIT" $world long-rollout --student "$student" ${schedule:+--schedule "$schedule"} \
        --probe "$PROBE" --minutes "$MINUTES" --seeds "$SEEDS" --noise-draw "$NOISE_DRAW" --device "$DEVICE" \
        --out "$ROOT/rollout_$name" > "$ROOT/rollout_$name.log" 2>&1 &
done
wait || true
for entry in $STUDENTS; do
    name=${entry%%=*}
    reports=("$ROOT"/rollout_"$name"/s*/long_rollout.json)
    [ -f "${reports[0]}" ] || { stamp "$name: no report"; continue; }
    PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH} python benchmarks/world/long_rollout_drift.py "${reports[@]}" --out "$ROOT/drift_$name.json" > /dev/null
    python - "$name" "${reports[@]}" <<'PY'
import json, sys
name, paths = sys.argv[1], sys.argv[2:]
reports = sorted((json.load(open(path)) for path in paths), key=lambda r: r["seed"])
for r in reports:
    misses = [f"{k}@{m['minute']}" for m in r["per_minute"] for k, ok in m["within_bounds"].items() if ok is False]
    fixed = [f"{k}@{m['minute']}" for m in r["per_minute"] for k, ok in m["within_fixed_bounds"].items() if ok is False]
    contrast = [m["contrast"] / r["per_minute"][0]["contrast"] for m in r["per_minute"]]
    print(f"{name} seed {r['seed']} ({r['minutes']} min{'' if r['complete'] else ', stopped'}): all within bounds "
          f"{r['all_within_bounds']} (fixed bounds {r['all_within_fixed_bounds']}, the truth "
          f"{r['ground_truth_all_within_fixed_bounds']}); contrast x minute one {min(contrast):.2f}-{max(contrast):.2f}; "
          f"misses {' '.join(misses) or '-'}; of the fixed bounds {' '.join(fixed) or '-'}")
complete = [r for r in reports if r["complete"]]
print(f"{name}: {sum(r['all_within_bounds'] for r in complete)} of {len(complete)} complete seeds within every bound "
      f"({sum(r['all_within_fixed_bounds'] for r in complete)} within the fixed bounds); "
      f"{len(reports) - len(complete)} stopped early")
PY
done
stamp done
