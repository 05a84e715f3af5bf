#!/usr/bin/env bash
# Distil the world VAE's decoder into the tiny streaming decoder on one H100 and score it: the
# run's eval.json (PSNR on 32 held-out training-seed clips against the VAE's decode and the
# rendered frames), then the shipped student's held-out evaluation (the shipped evaluation's
# clips) with its latents decoded by both the VAE and the tiny decoder.
#
#   bash .devlean/install.sh && export PYTHONPATH=/tmp/site:$PWD && OUT=$OUT MINUTES=4 bash benchmarks/world/device_decoder.sh
#
# Scored with the committed pose probe (common.sh's PROBE). Writes 5 files under $OUT.
set -eu
ROOT=${ROOT:-/tmp/decoder}; OUT=${OUT:-runs/decoder}; MINUTES=${MINUTES:-4}
source benchmarks/distill/common.sh
mkdir -p "$ROOT" "$OUT/decoder"
stamp data; gen_data 544 32
stamp train
$world train-decoder --data "$ROOT/data" --vae "$WEIGHTS" --out "$ROOT/decoder" --minutes "$MINUTES" \
    --heldout-clips 32 --device "$DEVICE" 2>&1 | tr '\r' '\n' | grep -v "it/s\|step/s\|clip/s" || true
cp "$ROOT"/decoder/{decoder.safetensors,decoder_config.json,eval.json,log.jsonl} "$OUT/decoder/"
stamp eval
evaluate student_tiny --student "$WEIGHTS/student" --decoder "$ROOT/decoder"
cp "$ROOT/eval_student_tiny/eval.json" "$OUT/eval_student_tiny_decoder.json"
python - "$OUT" <<'PY'
import json, sys
d = json.load(open(f"{sys.argv[1]}/decoder/eval.json"))
r = json.load(open(f"{sys.argv[1]}/eval_student_tiny_decoder.json"))
print("decoder:", d)
for name, m, a in (("student + VAE", r["model"], r["action_following"]["model"]),
                   ("student + tiny", r["tiny_decoder"]["model"], r["tiny_decoder"]["action_following"])):
    print(f"{name}: psnr_3s {m['psnr_3s']} ssim_3s {m['ssim_3s']} yaw {a['yaw_direction_accuracy']} "
          f"forward {a['forward_direction_accuracy']}")
print("tiny vs VAE decode of the student's latents: psnr_3s", r["tiny_decoder"]["against_vae_decode"]["psnr_3s"])
PY
stamp done
