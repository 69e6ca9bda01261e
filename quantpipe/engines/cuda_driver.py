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


# cuDeviceGetAttribute codes (CUDA driver API, CUdevice_attribute).
_CC_MAJOR, _CC_MINOR = 75, 76


def gpu_name_and_capability(index: int = 0) -> tuple[str, str] | None:
    """(name, compute capability "9.0") of CUDA device `index`; None without a GPU."""
    if visible_gpus()[0] <= index:
        return None
    lib = ctypes.CDLL("libcuda.so.1")
    device = ctypes.c_int(0)
    if lib.cuDeviceGet(ctypes.byref(device), index) != _CUDA_SUCCESS:
        return None
    name = ctypes.create_string_buffer(256)
    lib.cuDeviceGetName(name, len(name), device)
    major, minor = ctypes.c_int(0), ctypes.c_int(0)
    lib.cuDeviceGetAttribute(ctypes.byref(major), _CC_MAJOR, device)
    lib.cuDeviceGetAttribute(ctypes.byref(minor), _CC_MINOR, device)
    return name.value.decode(errors="replace"), f"{major.value}.{minor.value}"
