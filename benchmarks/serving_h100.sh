#!/usr/bin/env bash
# Serving on one GPU, in one device call of < 10 minutes (results under $OUT):
#   1. `lingbot-rt serve` with the built-in world (its shipped student): 1, 2 and 4 players for
#      30 s each, then a ramp 1, 2, 4, ... 32 players (20 s a step) to the 16-fps capacity;
#   2. meanwhile, off the serving GPU's clock: a random wan-1.3b release at 480x832 is written, the
#      shipped student's 10-minute long rollout and its held-out evaluation run;
#   3. `lingbot-rt serve` with the wan-1.3b release ($WAN_FLAGS): a ramp 1, 2 players.
# Needs the gRPC/aiohttp/matplotlib wheels the device's torch environment lacks:
#   bash .devlean/install.sh && export PYTHONPATH=/tmp/site:$PWD && bash benchmarks/serving_h100.sh
# (.devlean/: bash benchmarks/device_lean_bundle.sh; PROBE: the pose probe, by default the committed one)
# (DUR, RAMP, RAMP_DUR, ROLL_MIN, WAN, WAN_SIZE shrink it for a CPU smoke run; PARTS picks the parts.)
set -u
OUT=${OUT:-benchmarks/results/serving_h100}; PROBE=${PROBE:-benchmarks/results/world/pose_probe.safetensors}
DUR=${DUR:-30s}; RAMP=${RAMP:-1..32x2}; RAMP_DUR=${RAMP_DUR:-20s}; ROLL_MIN=${ROLL_MIN:-10}
WAN=${WAN:-wan-1.3b}; WAN_SIZE=${WAN_SIZE:-480x832}; DEVICE=${DEVICE:-cuda}
WAN_FLAGS=${WAN_FLAGS:---commit last_step --compile default --fused-qkv}   # the results at d15782b: --commit last_step only
PARTS=${PARTS:-world eval wan}
part() { [[ " $PARTS " == *" $1 "* ]]; }
cli="python -m lingbot_rt.cli"; world="python -m lingbot_rt.world.cli"
export PYTHONUNBUFFERED=1
mkdir -p "$OUT"
MACHINE="$(nvidia-smi --query-gpu=name --format=csv,noheader 2>/dev/null || echo CPU); server and load tester on one host"
stamp() { echo "== $(date +%T) $*"; }

serve() {   # serve NAME ARGS...: start a server, wait until it listens
    local name=$1; shift
    $cli -v serve --metrics-port 9100 "$@" > "$OUT/serve_$name.log" 2>&1 &
    SERVER=$!
    for _ in $(seq 1 ${START_WAIT:-480}); do grep -q "play at" "$OUT/serve_$name.log" && return 0; sleep 0.5; done
    echo "server $name did not start"; tail -n 20 "$OUT/serve_$name.log"; return 1
}
stop() { kill -INT "$SERVER"; wait "$SERVER"; }
loadtest() {   # loadtest NAME ARGS...
    local name=$1; shift
    timeout 300 $cli loadtest --server 127.0.0.1:50051 --machine "$MACHINE" --out "$OUT/$name" "$@" 2>&1 \
        | grep -v "^  player" | tail -n 12
}

if part world; then
stamp "world: 1, 2, 4 players"
serve world --max-sessions 32 --max-batch 16 --max-waiting 0 || exit 1
for n in 1 2 4; do loadtest "world_${n}players" --players "$n" --duration "$DUR"; done
stamp "world: ramp"
loadtest world_ramp --ramp "$RAMP" --duration "$RAMP_DUR" --target-fps 16
curl -s 127.0.0.1:9100/metrics | grep -E "^lingbot_(batch_size|stage_seconds|gpu_memory)" > "$OUT/world_metrics.txt"
stop
fi

stamp "wan-1.3b release; the student's 10-minute rollout and held-out evaluation beside it"
python - "$WAN" "$WAN_SIZE" <<'PY' > "$OUT/wan_release.log" 2>&1 &
import sys
import torch
from lingbot_rt.model.config import model_config
from lingbot_rt.pipeline.release import ReleaseManifest
from lingbot_rt.pipeline.tiny_checkpoint import make_tiny_checkpoint
name, (height, width) = sys.argv[1], map(int, sys.argv[2].split("x"))
text = {"vocab_size": 64, "dim": model_config(name).text_dim, "dim_attn": 256, "dim_ffn": 256, "num_heads": 4,
        "num_layers": 1, "num_buckets": 8}                  # a one-layer umT5 of the DiT's text width
vae = "wan2.1" if name != "tiny" else "tiny"
make_tiny_checkpoint("runs/wan", config=name, num_shards=1, dtype=torch.bfloat16,
                     manifest=ReleaseManifest(vae=vae, text_encoder=text, height=height, width=width))
PY
RELEASE=$!
if part eval; then
$world long-rollout --student lingbot_rt/world/weights/student --probe "$PROBE" --minutes "$ROLL_MIN" --device "$DEVICE" --out "$OUT/long_rollout_10min" \
    > "$OUT/long_rollout.log" 2>&1 &
ROLLOUT=$!
$world gen-data --out runs/heldout --clips 32 --frames 81 --height 128 --width 128 --seed 1 --workers 8 --quiet
$world eval --data runs/heldout --vae lingbot_rt/world/weights --student lingbot_rt/world/weights/student \
    --probe "$PROBE" --clips 32 --out "$OUT/eval_shipped_student" --device "$DEVICE" > /dev/null 2>&1
wait $ROLLOUT
python -c "import json, sys; r = json.load(open(sys.argv[1])); print('long rollout:', r['frames'], 'frames,', \
'all within bounds:', r['all_within_bounds'])" "$OUT/long_rollout_10min/s0/long_rollout.json"
fi
wait $RELEASE

part wan || { stamp done; exit 0; }
stamp "$WAN $WAN_SIZE: ramp"
serve wan --checkpoint runs/wan $WAN_FLAGS --max-sessions 4 --max-batch 4 --max-waiting 0 || exit 1
loadtest "${WAN}_${WAN_SIZE}_ramp" --ramp "${WAN_RAMP:-1,2}" --duration "$RAMP_DUR" --target-fps 16
curl -s 127.0.0.1:9100/metrics | grep -E "^lingbot_(batch_size|stage_seconds|gpu_memory)" > "$OUT/wan_metrics.txt"
stop
stamp done
