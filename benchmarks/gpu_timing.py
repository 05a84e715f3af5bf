"""Measuring on the device: event-timed regions, the matmul ceiling at given GEMM shapes,
FLOPs of a region. Shared by the benchmarks (`bench_fps.py`).

CUDA work is asynchronous: a host clock read right after a launch measures the launch, not
the kernel. `RegionTimer` records a CUDA event pair around each region and reads them only
after the device has finished (one synchronisation when collected); on the CPU ops run
synchronously and a host clock is exact.
"""
from __future__ import annotations

import statistics
import time
from contextlib import contextmanager

import torch
from torch.utils.flop_counter import FlopCounterMode, register_flop_formula, sdpa_flop_count


class RegionTimer:
    """Named regions timed on `device`; `collect()` returns [(name, seconds)] in order and clears."""

    def __init__(self, device: torch.device):
        self.cuda = device.type == "cuda"
        self._open: list[tuple[str, object, object]] = []

    @contextmanager
    def region(self, name: str):
        if self.cuda:
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            yield
            end.record()
        else:
            start = time.perf_counter()
            yield
            end = time.perf_counter()
        self._open.append((name, start, end))

    def collect(self) -> list[tuple[str, float]]:
        if self.cuda:
            torch.cuda.synchronize()   # every recorded event has completed after this
            done = [(name, start.elapsed_time(end) / 1000) for name, start, end in self._open]
        else:
            done = [(name, end - start) for name, start, end in self._open]
        self._open.clear()
        return done


def matmul_ceiling(shapes: list[tuple[int, int, int]], dtype: torch.dtype, device: torch.device,
                   repeats: int = 20) -> dict[str, float]:
    """Median TFLOP/s of x[M, K] @ w[K, N] for each (M, K, N), on random data (zeros run faster
    on some GPUs), rotating among input sets so repeats do not hit a warm L2."""
    timer = RegionTimer(device)
    rates = {}
    for m, k, n in shapes:
        sets = [(torch.randn(m, k, device=device, dtype=dtype), torch.randn(k, n, device=device, dtype=dtype))
                for _ in range(3)]
        for x, w in sets:           # warm-up: kernel selection, handles
            x @ w
        for r in range(repeats):
            x, w = sets[r % len(sets)]
            with timer.region("mm"):
                x @ w
        seconds = statistics.median(s for _, s in timer.collect())
        rates[f"{m}x{k}x{n}"] = float(f"{2 * m * k * n / seconds / 1e12:.4g}")
        del sets
    return rates


@register_flop_formula(torch.ops.aten._scaled_dot_product_flash_attention_for_cpu)
def _cpu_sdpa_flops(query_shape, key_shape, value_shape, *args, out_shape=None, **kwargs) -> int:
    """PyTorch counts the CUDA SDPA kernels but not the CPU one (CPU smoke runs)."""
    return sdpa_flop_count(query_shape, key_shape, value_shape)


def count_flops(fn) -> tuple[int, dict[str, int]]:
    """Run fn() under FlopCounterMode: total FLOPs and FLOPs per aten op (matmuls, convolutions
    and the SDPA kernels; elementwise ops count 0)."""
    counter = FlopCounterMode(display=False)
    with counter:
        fn()
    by_op = {str(op): int(n) for op, n in counter.get_flop_counts()["Global"].items()}
    return counter.get_total_flops(), by_op


KERNEL_KINDS = (("attention", ("sdpa", "fmha", "flash", "attention", "attn")),
                ("convolution", ("conv", "fprop", "dgrad", "wgrad")),
                ("gemm", ("gemm", "nvjet", "xmma", "cutlass", "scaled_mm", "addmm", "mm")),
                ("fused (compiled)", ("triton",)),
                ("copy", ("copy", "cat", "memcpy", "memset")))


def kernel_kind(name: str) -> str:
    """Which kind of work a kernel (or, on the CPU, an aten op) name is: attention, convolution, gemm, the
    compiler's fused element-wise/reduction kernels, copies, or other."""
    lowered = name.lower()
    return next((kind for kind, marks in KERNEL_KINDS if any(mark in lowered for mark in marks)), "other")


def profile_kernels(fn, device: torch.device, top: int = 12) -> dict:
    """Run fn() once under torch.profiler: its wall time, the time its kernels took (CUDA; on
    the CPU the aten ops' self time) by kind and the `top` kernels by total time. Wall time
    minus kernel time is when the device sat idle (launch-bound gaps)."""
    from torch.autograd import DeviceType
    from torch.profiler import ProfilerActivity, profile

    cuda = device.type == "cuda"
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])
    with profile(activities=activities) as prof:
        start = time.perf_counter()
        fn()
        if cuda:
            torch.cuda.synchronize(device)
        wall = time.perf_counter() - start
    if cuda:
        rows = [(e.key, e.self_device_time_total, e.count) for e in prof.key_averages()
                if e.device_type == DeviceType.CUDA and e.self_device_time_total > 0]
    else:
        rows = [(e.key, e.self_cpu_time_total, e.count) for e in prof.key_averages()
                if e.key.startswith("aten::") and e.self_cpu_time_total > 0]
    kernel_us = sum(us for _, us, _ in rows)
    by_kind: dict[str, float] = {}
    for name, us, _ in rows:
        by_kind[kernel_kind(name)] = by_kind.get(kernel_kind(name), 0.0) + us
    rows.sort(key=lambda row: -row[1])
    return {"wall_ms": round(wall * 1e3, 2), "kernel_ms": round(kernel_us / 1e3, 2),
            "kernel_ms_by_kind": {kind: round(us / 1e3, 2) for kind, us in sorted(by_kind.items(), key=lambda kv: -kv[1])},
            "top_kernels": [{"name": name[:160], "ms": round(us / 1e3, 3), "calls": count, "kind": kernel_kind(name)}
                            for name, us, count in rows[:top]]}
