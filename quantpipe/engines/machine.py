"""What machine a figure or an engine belongs to: the CPU (model, cores, the instruction
sets INT8 speed depends on) or the GPU (name, compute capability). Recorded with every
engine and every benchmark: the machines here differ (AVX-512 VNNI/AMX Xeons, AVX2 EPYCs)."""

from __future__ import annotations

import os
import platform
from dataclasses import dataclass, field
from pathlib import Path

from quantpipe.engines.cuda_driver import gpu_name_and_capability

# The flags that decide how fast ONNX Runtime's integer kernels are.
ISA_FLAGS = ("avx2", "fma", "avx512f", "avx512_vnni", "avx_vnni", "avx512_bf16", "amx_int8")


@dataclass(frozen=True)
class CpuInfo:
    model: str
    cores: int
    isa: list[str] = field(default_factory=list)

    def describe(self) -> str:
        return f"{self.model} ({self.cores} cores; {' '.join(self.isa) or 'no AVX2'})"


@dataclass(frozen=True)
class GpuInfo:
    name: str
    compute_capability: str

    def describe(self) -> str:
        return f"{self.name} (compute capability {self.compute_capability})"


def cpu_info() -> CpuInfo:
    """This CPU as /proc/cpuinfo names it, with the ISA flags that matter for INT8."""
    path = Path("/proc/cpuinfo")
    text = path.read_text() if path.exists() else ""
    lines = text.splitlines()
    model = next((ln.split(":", 1)[1].strip() for ln in lines if "model name" in ln), "")
    flags = next((ln.split(":", 1)[1].split() for ln in lines if ln.startswith("flags")), [])
    return CpuInfo(
        model or platform.processor() or platform.machine(),
        len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1,
        [f for f in ISA_FLAGS if f in flags],
    )


def gpu_info(index: int = 0) -> GpuInfo | None:
    found = gpu_name_and_capability(index)
    return None if found is None else GpuInfo(*found)
