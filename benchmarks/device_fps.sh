#!/usr/bin/env bash
# The bench_fps matrix on one H100, in one device call of <= 9 minutes (writes JSONs under $OUT,
# prints a table last). Each run has its own time limit so a slow one cannot starve the rest;
# a run past its limit is reported as such in the table. Two sets (the device returns at most
# 8 files per call, so they are two calls):
#
#   bash benchmarks/device_fps.sh            # main: world, wan-1.3b 480p/720p, lingbot-14b 480p, flat cost
#   bash benchmarks/device_fps.sh ablation   # wan-1.3b 480p: each switch on its own, then all, then + FP8
#   bash benchmarks/device_fps.sh profile    # where a pass's time goes (14B bf16/FP8, wan-1.3b + compiled VAE)
#   bash benchmarks/device_fps.sh tiny       # the tiny streaming decoder instead of the VAE's (random weights)
#   bash benchmarks/device_fps.sh overlap    # tiny decoder + JPEG in a worker thread (as the gateway encodes)
#   bash benchmarks/device_fps.sh long       # wan-1.3b 480p, tiny decoder: 500 blocks, flat per-block cost
#   bash benchmarks/device_fps.sh sync       # overlap's runs after the cache view stopped blocking, wan-1.3b with
#                                            # the JPEG beside and in line, each with the host's profile of a block
#   bash benchmarks/device_fps.sh cond       # overlap's runs after the I2V condition stopped re-running settled encoder steps
#   bash benchmarks/device_fps.sh window720  # 720p with FP8 linears at window 15, 6 and 3 (+ sink 3)
#   bash benchmarks/device_fps.sh fp8att     # overlap's wan-1.3b runs with the self-attention in FP8 (our Triton kernel)
#   bash benchmarks/device_fps.sh fp8att14b  # overlap's 14B run with the self-attention in FP8
#   bash benchmarks/device_fps.sh memory720  # 720p with the compressed KV memory (latest 3 window frames at full
#                                            # resolution, the sink and older frames pooled 3x4 or 5x5), against the
#                                            # dense cache; wan-1.3b 480p dense (the token-indexed cache writes)
#   OUT=/tmp/fps bash benchmarks/device_fps.sh smoke   # the script itself on a CPU
#
# Run on the device as: bash .devlean/install.sh && export PYTHONPATH=/tmp/site:$PWD && bash benchmarks/device_fps.sh
# with LINGBOT_RT_COMMIT=<short commit> exported (the device copy's git metadata may be stale).
set -u
OUT=${OUT:-benchmarks/results}
SET=${1:-main}
export PYTHONUNBUFFERED=1
BEST="--compile default --attention cudnn --fused-qkv --commit last_step"

LOG=$OUT/device_fps.log    # one log for every run: the device returns at most 8 files

bench() {   # bench NAME LIMIT_S FLAGS...
  local name=$1 limit=$2; shift 2
  echo "=== $name: bench_fps.py $*" | tee -a "$LOG"
  local begin=$SECONDS
  timeout "$limit" python benchmarks/bench_fps.py "$@" --out "$OUT/fps_$name.json" >> "$LOG" 2>&1
  local rc=$?
  echo "=== $name: exit $rc after $((SECONDS - begin))s (124 = past its ${limit}s limit)" | tee -a "$LOG"
  [ $rc -eq 0 ] || tail -n 5 "$LOG"
}

mkdir -p "$OUT"
command -v nvidia-smi > /dev/null && nvidia-smi --query-gpu=name,memory.used,memory.total,clocks.sm --format=csv,noheader
start=$SECONDS
case $SET in
  main)      # limits sum to 530 s; the headline runs first
    bench world_128 30 --model world --resolution 128x128 --warmup 2 --blocks 21
    bench wan-1.3b_480p_eager 60 --model wan-1.3b --resolution 480p --warmup 2 --blocks 21
    bench wan-1.3b_480p_best 90 --model wan-1.3b --resolution 480p $BEST
    bench lingbot-14b_480p_best 170 --model lingbot-14b --resolution 480p $BEST
    bench wan-1.3b_720p_best 100 --model wan-1.3b --resolution 720p $BEST
    bench world_480p_long500 80 --model world --resolution 480p --warmup 2 --long 500
    ;;
  ablation)  # limits sum to 530 s
    bench abl_eager 50 --model wan-1.3b --resolution 480p --warmup 2 --blocks 21
    bench abl_cudnn 50 --model wan-1.3b --resolution 480p --warmup 2 --blocks 21 --attention cudnn
    bench abl_fused 50 --model wan-1.3b --resolution 480p --warmup 2 --blocks 21 --fused-qkv
    bench abl_last_step 50 --model wan-1.3b --resolution 480p --warmup 2 --blocks 21 --commit last_step
    bench abl_compile 90 --model wan-1.3b --resolution 480p --compile default
    bench abl_best_fp8 90 --model wan-1.3b --resolution 480p $BEST --fp8
    bench abl_14b_best_fp8 150 --model lingbot-14b --resolution 480p $BEST --fp8 --blocks 11
    ;;
  profile)   # limits sum to 540 s
    bench wan-1.3b_480p_best_cvae 140 --model wan-1.3b --resolution 480p $BEST --compile-vae --blocks 21 --profile
    bench lingbot-14b_480p_best_fp8_prof 200 --model lingbot-14b --resolution 480p $BEST --fp8 --blocks 13 --profile
    bench lingbot-14b_480p_best_prof 200 --model lingbot-14b --resolution 480p $BEST --blocks 13 --profile
    ;;
  tiny)      # limits sum to 540 s
    bench wan-1.3b_480p_tiny 150 --model wan-1.3b --resolution 480p $BEST --decoder wan2.1 --blocks 31 --profile
    bench lingbot-14b_480p_fp8_tiny 240 --model lingbot-14b --resolution 480p $BEST --fp8 --decoder wan2.1 --blocks 21
    bench wan-1.3b_720p_tiny 150 --model wan-1.3b --resolution 720p $BEST --decoder wan2.1 --blocks 21
    ;;
  overlap)   # limits sum to 510 s
    bench lingbot-14b_480p_fp8_tiny_jt 240 --model lingbot-14b --resolution 480p $BEST --fp8 --decoder wan2.1 --jpeg-thread --blocks 21
    bench wan-1.3b_480p_tiny_jt 120 --model wan-1.3b --resolution 480p $BEST --decoder wan2.1 --jpeg-thread --blocks 31
    bench wan-1.3b_720p_tiny_jt 150 --model wan-1.3b --resolution 720p $BEST --decoder wan2.1 --jpeg-thread --blocks 21
    ;;
  sync)      # limits sum to 560 s
    bench wan-1.3b_480p_tiny_jt_sync 150 --model wan-1.3b --resolution 480p $BEST --decoder wan2.1 --jpeg-thread --blocks 31 --profile
    bench wan-1.3b_480p_tiny_sync 150 --model wan-1.3b --resolution 480p $BEST --decoder wan2.1 --blocks 31 --profile
    bench lingbot-14b_480p_fp8_tiny_jt_sync 260 --model lingbot-14b --resolution 480p $BEST --fp8 --decoder wan2.1 --jpeg-thread --blocks 21
    ;;
  control)   # the block's control embedding built on the GPU (it had been built on the CPU)
    bench wan-1.3b_480p_tiny_jt_gpuctrl 150 --model wan-1.3b --resolution 480p $BEST --decoder wan2.1 --jpeg-thread --blocks 31 --profile
    ;;
  cond)      # the I2V condition's black frames by encoder fixed points (limits sum to 570 s)
    bench wan-1.3b_480p_tiny_jt_cond 120 --model wan-1.3b --resolution 480p $BEST --decoder wan2.1 --jpeg-thread --blocks 31 --profile
    bench wan-1.3b_480p_tiny_jt_cond_cvae 140 --model wan-1.3b --resolution 480p $BEST --decoder wan2.1 --jpeg-thread --blocks 31 --compile-vae
    bench lingbot-14b_480p_fp8_tiny_jt_cond 190 --model lingbot-14b --resolution 480p $BEST --fp8 --decoder wan2.1 --jpeg-thread --blocks 21
    bench wan-1.3b_720p_tiny_jt_cond 120 --model wan-1.3b --resolution 720p $BEST --decoder wan2.1 --jpeg-thread --blocks 21
    ;;
  window720) # 720p: FP8 linears, then shorter windows (what 16 FPS at 720p would cost; limits sum to 360 s)
    bench wan-1.3b_720p_fp8_tiny_jt 120 --model wan-1.3b --resolution 720p $BEST --fp8 --decoder wan2.1 --jpeg-thread --blocks 21
    bench wan-1.3b_720p_fp8_tiny_jt_w6 120 --model wan-1.3b --resolution 720p $BEST --fp8 --decoder wan2.1 --jpeg-thread --blocks 21 --window 6
    bench wan-1.3b_720p_fp8_tiny_jt_w3 120 --model wan-1.3b --resolution 720p $BEST --fp8 --decoder wan2.1 --jpeg-thread --blocks 21 --window 3
    ;;
  fp8att)    # limits sum to 300 s
    bench wan-1.3b_480p_tiny_jt_fp8att 130 --model wan-1.3b --resolution 480p $BEST --decoder wan2.1 --jpeg-thread --blocks 31 --fp8-attention
    bench wan-1.3b_720p_tiny_jt_fp8att 170 --model wan-1.3b --resolution 720p $BEST --decoder wan2.1 --jpeg-thread --blocks 21 --fp8-attention
    ;;
  fp8att14b)
    bench lingbot-14b_480p_fp8_tiny_jt_fp8att 260 --model lingbot-14b --resolution 480p $BEST --fp8 --decoder wan2.1 --jpeg-thread --blocks 21 --fp8-attention
    ;;
  memory720) # limits sum to 490 s
    bench wan-1.3b_720p_tiny_jt_dense 125 --model wan-1.3b --resolution 720p $BEST --decoder wan2.1 --jpeg-thread --blocks 21
    bench wan-1.3b_720p_tiny_jt_m3p3x4 125 --model wan-1.3b --resolution 720p $BEST --decoder wan2.1 --jpeg-thread --blocks 21 --full-frames 3 --memory-pool 3x4
    bench wan-1.3b_720p_tiny_jt_m3p5x5 125 --model wan-1.3b --resolution 720p $BEST --decoder wan2.1 --jpeg-thread --blocks 21 --full-frames 3 --memory-pool 5x5
    bench wan-1.3b_480p_tiny_jt_dense 115 --model wan-1.3b --resolution 480p $BEST --decoder wan2.1 --jpeg-thread --blocks 31
    ;;
  long)      # ~0.45 s a block: 500 blocks + warm-up in ~5 minutes
    bench wan-1.3b_480p_long500 400 --model wan-1.3b --resolution 480p $BEST --decoder wan2.1 --long 500
    ;;
  smoke)      # the script itself, on a CPU, in seconds
    bench smoke_tiny 120 --model tiny --resolution 64x64 --device cpu --dtype fp32 --warmup 1 --blocks 3 --profile
    ;;
  *) echo "unknown set $SET (main, ablation, profile, tiny, overlap, sync, control, cond, window720, fp8att, fp8att14b, memory720, long or smoke)"; exit 2 ;;
esac
echo "total $((SECONDS - start))s"
python - "$OUT" <<'PY'
import json, pathlib, sys
rows = []
for path in sorted(pathlib.Path(sys.argv[1]).glob("fps_*.json")):
    r = json.loads(path.read_text()); s = r["summary"]; st = r["settings"]
    rows.append((path.stem[4:], f"{r['resolution'][1]}x{r['resolution'][0]}",
                 f"{st['commit']}/{st['compile']}/{st['attention']}{'/qkv' if st['fused_qkv'] else ''}{'/fp8' if st['fp8'] else ''}{'/fp8att' if st.get('fp8_attention') else ''}"
                 f"{'/dec=' + st['decoder'] if st.get('decoder', 'vae') != 'vae' else ''}"
                 f"{'/jpeg-thread' if st.get('jpeg_thread') else ''}"
                 f"{'/memory=%s:%s:%d keys' % (st['full_frames'], 'x'.join(map(str, st['memory_pool'])), st['keys_per_query']) if st.get('full_frames') is not None else ''}",
                 s["sustained_fps"], s["pipelined_fps_bound"], "+".join(f"{x * 1e3:.0f}" for x in s["step_s_mean"]),
                 f"{s['commit_s_mean'] * 1e3:.0f}", f"{s['decode_s_mean'] * 1e3:.0f}", f"{s['encode_s_mean'] * 1e3:.0f}",
                 s["first_frame_s"], s["action_to_frame_s"]["mean"], r.get("peak_memory_gib"),
                 s["fraction_of_matmul_ceiling"]["dit"], r.get("flat_cost", {}).get("ratio", ""),
                 "/".join(str(r["summary_steady"][k]) for k in ("sustained_fps", "pipelined_fps_bound"))
                 if "summary_steady" in r else ""))
head = ("run", "size", "commit/compile/attn", "FPS", "pipelined", "steps ms", "commit", "decode", "jpeg",
        "first s", "act->frame s", "GiB", "DiT/ceil", "flat", "steady FPS/pipelined")
print(" | ".join(head))
for row in rows:
    print(" | ".join(str(v) for v in row))
for path in sorted(pathlib.Path(sys.argv[1]).glob("fps_*.json")):
    for part, p in json.loads(path.read_text()).get("profile", {}).items():
        if part == "host_block":
            continue
        kinds = ", ".join(f"{k} {v}" for k, v in p["kernel_ms_by_kind"].items())
        print(f"{path.stem[4:]} {part}: wall {p['wall_ms']} ms, kernels {p['kernel_ms']} ms ({kinds})")
PY
