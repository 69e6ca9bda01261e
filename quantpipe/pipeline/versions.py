"""Library versions recorded with every stage: a result is only reproducible with them."""

from __future__ import annotations

import platform
from functools import cache
from importlib import metadata


@cache
def library_versions() -> dict[str, str]:
    versions = {"python": platform.python_version()}
    for dist in ("quantpipe", "torch", "torchvision", "onnx", "onnxruntime", "onnxslim", "numpy"):
        try:
            versions[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            versions[dist] = "not installed"
    return versions
