# Shared by the distillation scripts: settings and the evaluation of a model on held-out clips.
ROOT=${ROOT:-runs/distill}; DEVICE=${DEVICE:-cuda}; WORKERS=${WORKERS:-14}; FRAMES=81; SIZE=128
EVAL_CLIPS=${EVAL_CLIPS:-32}
PROBE=${PROBE:-benchmarks/results/world/pose_probe.safetensors}   # the pose probe every evaluation scores with
WEIGHTS=lingbot_rt/world/weights; TEACHER=$WEIGHTS/teacher
world="python -m lingbot_rt.world.cli"; distill="python -m lingbot_rt.distillation.cli"
stamp() { echo "== $(date +%T) $*"; }
# the shipped student's DMD recipe as DMDConfig YAML (a run adds its keys; `student:` keys indented)
DMD_RECIPE="ema_decay: 0.9\nsave_every: 100\nlog_every: 10\nstudent:\n  guidance: 5.0\n"

gen_data() {   # gen_data <clips> <heldout clips>: training clips (TRAIN_FRAMES long) and held-out clips (another seed)
    $world gen-data --out "$ROOT/data" --clips "$1" --frames "${TRAIN_FRAMES:-$FRAMES}" --height $SIZE --width $SIZE \
        --shard-size 200 --workers "$WORKERS" --quiet
    $world gen-data --out "$ROOT/heldout" --clips "$2" --frames $FRAMES --height $SIZE --width $SIZE \
        --seed 1 --workers "$WORKERS" --quiet
}

evaluate() {   # evaluate <name> --teacher DIR | --student DIR: eval_<name>/eval.json and a one-line summary
    local name=$1; shift
    $world eval --data "$ROOT/heldout" --vae "$WEIGHTS" "$@" --probe "$PROBE" --clips $EVAL_CLIPS \
        --out "$ROOT/eval_$name" --device "$DEVICE" > /dev/null
    python -c "import json,sys; r=json.load(open(sys.argv[1])); m=r['model']; a=r['action_following']['model']; \
print(f\"$name: psnr_3s {m['psnr_3s']} ssim_3s {m['ssim_3s']} yaw {a['yaw_direction_accuracy']} \
forward {a['forward_direction_accuracy']} backward {a.get('backward_direction_accuracy')} flops/frame {r['dit_flops_per_frame']:.3g}\")" "$ROOT/eval_$name/eval.json"
}
