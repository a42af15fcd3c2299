"""Benchmarks behind ``audiomamba bench kernels|generate|stream|train``, one per module, on the timing helpers
of ``timing``. Development sweeps of kernel launch settings live outside the package, in ``benchmarks/``."""

from .generate import bench_generate
from .kernels import bench_kernels, bench_scan, bench_ssd
from .stream import bench_stream
from .train import bench_train

__all__ = ["bench_generate", "bench_kernels", "bench_scan", "bench_ssd", "bench_stream", "bench_train"]
