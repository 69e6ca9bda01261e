"""Read the CIFAR family's python pickles without letting a file run code.

These pickles hold only dicts, lists, bytes and numpy arrays. `pickle.load` would
import and call whatever a crafted file names; this unpickler refuses every class
except numpy's array reconstruction, so the worst a bad file can do is fail to load.
"""

from __future__ import annotations

import pickle
from pathlib import Path
from typing import Any

from quantpipe.errors import DataError

_ALLOWED = {
    ("numpy.core.multiarray", "_reconstruct"),
    ("numpy._core.multiarray", "_reconstruct"),
    ("numpy", "ndarray"),
    ("numpy", "dtype"),
    ("_codecs", "encode"),
}


class _SafeUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> Any:
        if (module, name) not in _ALLOWED:
            raise pickle.UnpicklingError(f"refusing to load {module}.{name}")
        return super().find_class(module, name)


def read_pickle_dict(path: Path, what: str, keys: tuple[bytes, ...]) -> dict[bytes, Any]:
    """Load a pickled dict (keys as bytes, as Python 2 wrote them) that must hold `keys`.

    `what` names the expected file in errors, e.g. "CIFAR-10 pickle batch".
    """
    try:
        with open(path, "rb") as f:
            loaded = _SafeUnpickler(f, encoding="bytes").load()
    except (OSError, pickle.UnpicklingError, EOFError, ValueError) as e:
        raise DataError(f"{path} is not a {what} ({e})") from None
    if not isinstance(loaded, dict):
        raise DataError(f"{path} is not a {what} (holds a {type(loaded).__name__}, not a dict)")
    missing = [k.decode() for k in keys if k not in loaded]
    if missing:
        raise DataError(f"{path} is not a {what} (no {'/'.join(missing)} keys)")
    return loaded
