"""Is there a CUDA GPU, asked of the driver itself (libcuda), without importing torch.

The ONNX Runtime CUDA and TensorRT probes need to know whether a GPU is visible; importing
torch for that would cost seconds and gigabytes on hosts that serve ONNX models only.
"""

from __future__ import annotations

import ctypes
import functools

_CUDA_SUCCESS = 0


@functools.cache
def visible_gpus() -> tuple[int, str]:
    """(number of CUDA devices, why none when 0)."""
    try:
        lib = ctypes.CDLL("libcuda.so.1")
    except OSError:
        return 0, "no CUDA driver (libcuda.so.1 not found)"
    status = lib.cuInit(0)
    if status != _CUDA_SUCCESS:
        return 0, f"the CUDA driver failed to initialise (cuInit error {status})"
    count = ctypes.c_int(0)
    status = lib.cuDeviceGetCount(ctypes.byref(count))
    if status != _CUDA_SUCCESS or count.value == 0:
        return 0, "the CUDA driver sees no device"
    return count.value, ""
