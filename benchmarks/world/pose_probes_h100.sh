#!/usr/bin/env bash
# Pose probes side by side, one GPU, one call: training clips (CLIPS of 81 frames at 128x128,
# dataset seed 0); for every entry of PROBES (name=clips:steps:batch:width) a probe trained on
# the dataset's first `clips` clips (`world train-probe`, all side by side); then each probe's
# direction accuracy on the rendered truth of the long rollouts' sessions, seeds SEEDS of map 7
# (`truth_minutes.py`): the instrument's own floor, where every miss is the probe's. Results
# (the probes, the truth files, the log) in $OUT.
#   OUT=$OUT PROBES="old=300:1500:128:32 big=1500:8000:256:32" bash benchmarks/world/pose_probes_h100.sh
set -euo pipefail
ROOT=${ROOT:-runs/probes}; OUT=${OUT:?where the results go}; PROBES=${PROBES:?name=clips:steps:batch:width ...}
CLIPS=${CLIPS:-1500}; SEEDS=${SEEDS:-0-19}; MINUTES=${MINUTES:-10}; WORKERS=${WORKERS:-14}; DEVICE=${DEVICE:-cuda}
world="python -m lingbot_rt.world.cli"
stamp() { echo "== $(date +%T) $*"; }

stamp gen-data
$world gen-data --out "$ROOT/data" --clips "$CLIPS" --frames 81 --height 128 --width 128 --shard-size 200 \
    --workers "$WORKERS" --quiet
stamp "train-probe: $PROBES"
for entry in $PROBES; do
    name=${entry%%=*}; IFS=: read -r clips steps batch width <<< "${entry#*=}"
    $world train-probe --data "$ROOT/data" --clips "$clips" --steps "$steps" --batch-size "$batch" --width "$width" \
        --device "$DEVICE" --out "$OUT/probe_$name.safetensors" > "$ROOT/train_$name.log" 2>&1 &
done
wait
stamp "truth minutes, seeds $SEEDS"
probes=($PROBES)
for entry in "${probes[@]}"; do
    name=${entry%%=*}
    python benchmarks/world/truth_minutes.py --probe "$OUT/probe_$name.safetensors" --seeds "$SEEDS" --minutes "$MINUTES" \
        --workers $((WORKERS / ${#probes[@]})) --out "$OUT/truth_minutes_$name.json" > "$ROOT/truth_$name.log" 2>&1 &
done
wait
for entry in "${probes[@]}"; do
    name=${entry%%=*}
    python - "$name" "$OUT/truth_minutes_$name.json" <<'PY'
import json, sys
r = json.load(open(sys.argv[2]))
f = r["probe_on_the_truth"]
print(f"{sys.argv[1]}: truth yaw acc. mean {f['yaw_direction_accuracy']['mean']} min {f['yaw_direction_accuracy']['min']}; "
      f"forward mean {f['forward_direction_accuracy']['mean']} min {f['forward_direction_accuracy']['min']}; "
      f"seeds within every fixed bound {r['seeds_within_every_bound']} of {r['seeds']}")
PY
done
stamp done
