#!/usr/bin/env bash
# The built-in world's distillation on one GPU: the shipped 50-step teacher -> a 4-step
# block-causal student. Data; ODE pairs; two causal initialisations side by side (ODE
# regression from the teacher; teacher forcing, then ODE regression); DMD (Self-Forcing
# rollouts) from the better one at two learning rates side by side; evaluation of the teacher
# and of every student on held-out clips. Every stage resumes from what it finds under $ROOT.
#   bash benchmarks/distill/distill_world.sh                 (the H100 run of the report)
set -euo pipefail
source "$(dirname "$0")/common.sh"
CLIPS=${CLIPS:-2400}; HELDOUT=${HELDOUT:-64}
PAIRS=${PAIRS:-1024}; INIT_MIN=${INIT_MIN:-4}; TF_MIN=${TF_MIN:-2}; DMD_MIN=${DMD_MIN:-7}
DMD_BATCH=${DMD_BATCH:-32}; LR_A=${LR_A:-2e-5}; LR_B=${LR_B:-5e-5}
MAX_CLIPS=${MAX_CLIPS:-1024}     # clips conditioning the pairs, the initialisations and DMD
data=(--data "$ROOT/data" --vae "$WEIGHTS" --device "$DEVICE" --max-clips "$MAX_CLIPS")

stamp gen-data
gen_data "$CLIPS" "$HELDOUT"

stamp teacher eval
[ -f "$ROOT/eval_teacher/eval.json" ] || evaluate teacher --teacher "$TEACHER"

stamp ode-pairs
$distill ode-pairs --teacher "$TEACHER" "${data[@]}" --out "$ROOT/pairs" --num-pairs "$PAIRS"

stamp causal-init: ode and teacher_forcing+ode side by side
$distill causal-init --teacher "$TEACHER" "${data[@]}" --pairs "$ROOT/pairs" --objective ode \
    --out "$ROOT/init_ode" --steps 100000 --minutes "$INIT_MIN" > "$ROOT/init_ode.log" 2>&1 &
( $distill causal-init --teacher "$TEACHER" "${data[@]}" --objective teacher_forcing --out "$ROOT/init_tf" \
      --steps 100000 --minutes "$TF_MIN" &&
  $distill causal-init --teacher "$TEACHER" "${data[@]}" --pairs "$ROOT/pairs" --objective ode \
      --init "$ROOT/init_tf/student" --out "$ROOT/init_tf_ode" --steps 100000 \
      --minutes "$(python -c "print($INIT_MIN - $TF_MIN)")" ) > "$ROOT/init_tf_ode.log" 2>&1 &
wait
evaluate init_ode --student "$ROOT/init_ode/student"
evaluate init_tf --student "$ROOT/init_tf/student"
evaluate init_tf_ode --student "$ROOT/init_tf_ode/student"
best=$(python -c "import json,sys; print(max(['init_ode', 'init_tf_ode'], key=lambda n: \
json.load(open(f'{sys.argv[1]}/eval_{n}/eval.json'))['model']['psnr_3s']))" "$ROOT")
stamp "DMD from $best at lr $LR_A and $LR_B side by side"
for lr in "$LR_A" "$LR_B"; do
    $distill dmd --student "$ROOT/$best/student" --teacher "$TEACHER" "${data[@]}" --out "$ROOT/dmd_$lr" \
        --batch-size "$DMD_BATCH" --generator-lr "$lr" --critic-lr "$lr" --steps 1000000 --minutes "$DMD_MIN" \
        > "$ROOT/dmd_$lr.log" 2>&1 &
done
wait
for lr in "$LR_A" "$LR_B"; do evaluate "dmd_$lr" --student "$ROOT/dmd_$lr/student"; done
stamp done
