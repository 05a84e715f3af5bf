#!/usr/bin/env bash
# Long-horizon DMD against its control, on one GPU in one call: from the shipped student, DMD
# with rollouts past the KV window (`lh`, --rollout-frames LONG) and the same DMD on clip-length
# rollouts (`ctl`), side by side for SEG_MIN minutes (the shipped recipe: data loss 1.5,
# guidance 5, lr 5e-5, EMA 0.9, a fresh critic); held-out evaluation of both; both students
# exported (FP8 matrices, the shipped format); 10-minute rollouts of both on seeds 0-4 until
# the call's time (LIMIT seconds) runs out. Everything lands in $OUT as archives. NAMES picks
# the runs (default "lh ctl"; `lt`: windows anchored on the true frames, which needs training
# clips of LONG latent frames: TRAIN_FRAMES=$((4 * LONG + 1))), START the student they start
# from, ROLL=0 skips the rollouts (then `long_rollouts.sh` in a call of its own), EVAL=0 the
# held-out evaluations; FULL (and POOL, default "2, 2") trains and evaluates with a compressed
# memory (`StudentSchedule.full_frames`, `memory_pool`); DMD_BATCH is the batch (default 48).
# ACTIONS="name=weight[:balanced[:decoded]] ..." adds `lt` runs with the action loss at that
# weight (`action_loss.py`; `balanced` weighs walking forward, walking back and neither alike, `-`
# does not; `decoded` reads the samples decoded by the stream's tiny decoder with a pixel probe),
# first training the latent motion probe on the training clips (latent_probe.safetensors, its
# held-out accuracy in latent_probe.log) or the pixel probe on their latents decoded
# (decoded_probe.safetensors, decoded_probe.log).
#   OUT=$OUT bash benchmarks/distill/long_horizon_h100.sh
set -euo pipefail
source "$(dirname "$0")/common.sh"
OUT=${OUT:?where the archives go}
LONG=${LONG:-63}; SEG_MIN=${SEG_MIN:-5}; LIMIT=${LIMIT:-570}; NAMES=${NAMES:-lh ctl}; ROLL=${ROLL:-1}
START=${START:-lingbot_rt/world/weights/student}
mkdir -p "$ROOT"
RECIPE="${DMD_RECIPE}${FULL:+  full_frames: $FULL\n  memory_pool: [${POOL:-2, 2}]\n}"
printf "$RECIPE" > "$ROOT/dmd.yaml"
printf "${RECIPE}rollout_frames: $LONG\n" > "$ROOT/dmd_lh.yaml"
printf "${RECIPE}rollout_frames: $LONG\nwindow_anchor: truth\nscore_frames: 21\n" > "$ROOT/dmd_lt.yaml"
declare -A config=([lh]="$ROOT/dmd_lh.yaml" [ctl]="$ROOT/dmd.yaml" [lt]="$ROOT/dmd_lt.yaml")
probes=""
for spec in ${ACTIONS:-}; do
    name=${spec%%=*}; IFS=: read -r weight balanced decoded <<< "${spec#*=}"; config[$name]="$ROOT/dmd_$name.yaml"
    probe=${decoded:+decoded}; probe=${probe:-latent}; probes+=" $probe"
    [ "$balanced" = balanced ] && balance="action_loss_balance: true\n" || balance=""
    printf "${RECIPE}rollout_frames: $LONG\nwindow_anchor: truth\nscore_frames: 21\naction_loss_weight: $weight\naction_probe: $ROOT/${probe}_probe.safetensors\n${balance}${decoded:+action_decoder: $WEIGHTS/decoder\n}" \
        > "${config[$name]}"
done
if [ -n "${ACTIONS:-}" ]; then
    [ -f "$ROOT/heldout/dataset.json" ] || gen_data "${CLIPS:-512}" 32
fi
for probe in $(tr ' ' '\n' <<< "$probes" | sort -u); do
    [ "$probe" = decoded ] && decoder="--decoder $WEIGHTS/decoder" || decoder=""
    $distill $probe-probe --data "$ROOT/data" --vae "$WEIGHTS" $decoder \
        --out "$ROOT/${probe}_probe.safetensors" --device "$DEVICE" > "$ROOT/${probe}_probe.log" 2>&1
    stamp "$probe probe at ${SECONDS}s: $(tail -1 "$ROOT/${probe}_probe.log" | tr '\r' '\n' | tail -1)"
done
runs=""; students=""
for name in $NAMES; do
    runs+=" $name=$START:5e-5:1.5:${config[$name]}"; students+=" $name=$ROOT/export_$name/student"
done
ROOT=$ROOT CLIPS=${CLIPS:-512} HELDOUT=32 SEGMENTS=1 SEG_MIN=$SEG_MIN DMD_BATCH=${DMD_BATCH:-48} RUNS="$runs" \
    bash benchmarks/distill/dmd_segments.sh
for name in $NAMES; do
    $world export --student "$ROOT/dmd_$name/student" --out "$ROOT/export_$name" > /dev/null
    tar -C "$ROOT/export_$name" -cf "$OUT/student_$name.tar" student
done
stamp "export done at ${SECONDS}s"
[ "$ROLL" = 0 ] || ROLL_LIMIT=$((LIMIT - SECONDS)) STUDENTS="$students" \
    bash benchmarks/distill/long_rollouts.sh || true
tar -C "$ROOT" -czf "$OUT/results.tar.gz" --exclude='*.pt' --exclude=data --exclude=heldout --exclude='dmd_*/checkpoint' \
    --exclude='export_*' --exclude='dmd_*/student' .
