"""`benchmarks/bench_fps.py` on the CPU with the tiny model: the JSON has every field the
H100 runs report, the numbers are consistent with each other, and bad flags are refused."""
import importlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"
TINY = ("--model", "tiny", "--resolution", "64x64", "--device", "cpu", "--dtype", "fp32")


def test_tiny_run_reports_every_field(tmp_path):
    out = tmp_path / "fps.json"
    done = subprocess.run([sys.executable, str(BENCHMARKS / "bench_fps.py"), *TINY, "--blocks", "4", "--warmup", "1",
                           "--long", "30", "--commit", "last_step", "--fused-qkv", "--fp8", "--profile", "--out", str(out)],
                          capture_output=True, text=True, timeout=300, env={**os.environ, "OMP_NUM_THREADS": "2"})
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(out.read_text())
    summary = result["summary"]
    for key in ("sustained_fps", "pipelined_fps_bound", "first_frame_s", "action_to_frame_s", "step_s_mean",
                "commit_s_mean", "decode_s_mean", "encode_s_mean", "tflops_per_block", "fraction_of_matmul_ceiling"):
        assert key in summary, key
    assert len(summary["step_s_mean"]) == 4 and summary["commit_s_mean"] == 0.0   # last_step: 4 passes
    assert summary["frames_per_block"] == 12 and summary["timed_blocks"] == 3
    assert summary["sustained_fps"] == pytest.approx(12 / summary["block_s_mean"], rel=1e-2)
    # attention is counted, not only the GEMMs
    assert result["dit_tflops_by_op"]["aten._scaled_dot_product_flash_attention_for_cpu"] > 0
    assert 0 < summary["fraction_of_matmul_ceiling"]["dit"] and result["matmul_ceiling_tflops"] > 0
    assert set(result["transform_rel_err"]) == {"fused_qkv", "fp8"} and result["transform_rel_err"]["fp8"] < 0.1
    per_block = result["per_block"]
    assert len(per_block["steps_s"]) == 30 and len(per_block["block_s"]) == 29
    assert result["flat_cost"]["blocks"] == 30 and result["flat_cost"]["ratio"] > 0
    assert {"device", "torch", "commit", "command"} <= result.keys()
    host = result["profile"].pop("host_block")          # the Python time of one block of the stream
    own = [row["own_ms"] for row in host["by_own_time"]]
    assert host["total_ms"] > 0 and own == sorted(own, reverse=True)
    assert any(row["function"].startswith(("streaming.py", "rollout.py")) for row in host["by_total_time"])
    for profiled in result["profile"].values():          # one denoising pass, one decode
        assert 0 < profiled["kernel_ms"] and 0 < profiled["wall_ms"]
        assert sum(profiled["kernel_ms_by_kind"].values()) == pytest.approx(profiled["kernel_ms"], abs=0.05)
        assert profiled["top_kernels"][0]["ms"] >= profiled["top_kernels"][-1]["ms"]
    assert result["profile"]["denoising_pass"]["kernel_ms_by_kind"]["attention"] > 0
    assert result["profile"]["denoising_pass"]["kernel_ms_by_kind"]["gemm"] > 0


def test_kernel_kinds(monkeypatch):
    monkeypatch.syspath_prepend(str(BENCHMARKS))
    kernel_kind = importlib.import_module("gpu_timing").kernel_kind
    assert kernel_kind("cudnn_generated_fort_native_sdpa_sm90_flash_fprop_wgmma_f16") == "attention"
    assert kernel_kind("nvjet_tst_128x256_64x4_1x2_h_bz_coopA_NTN") == "gemm"
    assert kernel_kind("sm90_xmma_gemm_e4m3bf16_e4m3f32_f32_tn_n_tilesize128x128x128") == "gemm"
    assert kernel_kind("triton_poi_fused_add_mul_native_layer_norm_12") == "fused (compiled)"
    assert kernel_kind("aten::addmm") == "gemm" and kernel_kind("aten::_scaled_dot_product_flash_attention_for_cpu") == "attention"
    assert kernel_kind("sm90_xmma_fprop_implicit_gemm_bf16bf16_bf16f32_f32_nhwckrsc_nhwc") == "convolution"
    assert kernel_kind("void at::native::elementwise_kernel<128, 2>") == "other"


@pytest.mark.parametrize("flags, message", [
    (("--resolution", "100x64"), "multiples of 16, got 100x64"),
    (("--resolution", "4k"), "480p, 720p or HxW"),
    (("--long", "12"), "--long must be >= 30"),
    (("--attention", "xformers"), "invalid choice: 'xformers'"),
    (("--memory-pool", "3"), "expected RxC (e.g. 3x4), got '3'"),
])
def test_bad_flags_are_refused(monkeypatch, capsys, flags, message):
    monkeypatch.syspath_prepend(str(BENCHMARKS))
    bench_fps = importlib.import_module("bench_fps")
    with pytest.raises(SystemExit) as exit_info:
        bench_fps.parse_args([*TINY, *flags])
    assert exit_info.value.code == 2 and message in capsys.readouterr().err


def test_compressed_memory_flags_make_the_cache_config(monkeypatch):
    monkeypatch.syspath_prepend(str(BENCHMARKS))
    bench_fps = importlib.import_module("bench_fps")
    from lingbot_rt.model.config import CacheConfig
    args = bench_fps.parse_args([*TINY, "--full-frames", "3", "--memory-pool", "5x4", "--window", "12"])
    assert bench_fps.cache_config(args) == CacheConfig(window_frames=12, full_frames=3, memory_pool=(5, 4))
    assert bench_fps.cache_config(bench_fps.parse_args(list(TINY))) == CacheConfig()
