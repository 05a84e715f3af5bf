# DMD at scale on one multi-GPU machine (nvidia-h200-x2; not yet run): the same short run of the
# built-in world under torchrun with ddp, under torchrun with fsdp + activation checkpointing, and
# as Ray Train workers (fsdp); prints each run's last log line (logged every 25 steps). The
# student starts from the teacher's weights (a smoke run of the layouts, not a distillation).
#   NPROC=2 STEPS=50 bash benchmarks/distill/dmd_scale_check.sh
set -euo pipefail
source benchmarks/distill/common.sh
ROOT=${ROOT:-runs/dmd_scale}; NPROC=${NPROC:-2}; STEPS=${STEPS:-50}
stamp gen-data
$world gen-data --out "$ROOT/data" --clips 64 --frames $FRAMES --height $SIZE --width $SIZE --workers "$WORKERS" --quiet
seed=(--student_path "$TEACHER" --teacher_path "$TEACHER" --data_path "$ROOT/data" --vae_path "$WEIGHTS"
      --steps "$STEPS" --batch_size 4)
stamp torchrun ddp
torchrun --nproc_per_node="$NPROC" distillation/train_dmd.py "${seed[@]}" --output_path "$ROOT/ddp" --strategy ddp
stamp torchrun fsdp + activation checkpointing
torchrun --nproc_per_node="$NPROC" distillation/train_dmd.py "${seed[@]}" --output_path "$ROOT/fsdp" --strategy fsdp \
    --activation_checkpointing
stamp ray train
$distill dmd --student "$TEACHER" --teacher "$TEACHER" --data "$ROOT/data" --vae "$WEIGHTS" --steps "$STEPS" \
    --batch-size 4 --out "$ROOT/ray" --workers "$NPROC" --gpus-per-worker 1 --strategy fsdp
for run in ddp fsdp ray; do echo "$run: $(tail -n1 "$ROOT/$run/log.jsonl")"; done
