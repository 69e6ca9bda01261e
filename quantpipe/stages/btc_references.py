"""What the btc stage compares its result with: the FP32 model's val and test scores and
the 8-bit baselines. Each is measured only when asked for, and cached in the run.

Why lazy: on ResNet-56 each of them is a pass of ONNX Runtime over 4,000 images (8-9 s on
2 AMD cores); `--target-bits` selects nothing on val, so the FP32 val score is never needed
there, and the baselines are the paper's comparison, not part of choosing the coding.
Why cached: they depend only on the exported FP32 model and the splits
(`reference_key`), so a second `btc` on the same model (another budget or block size)
reuses them (`btc/reference-cache.json`).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from quantpipe.data.selection import Selection
from quantpipe.stages.btc_result import Baseline

if TYPE_CHECKING:
    import onnx

    from quantpipe.stages.btc_coder import Coder

REFERENCE_CACHE = "btc/reference-cache.json"
_CACHE_FORMAT = 2  # 1 held FP32 val, test and baselines together, always all three


def reference_key(fp32: onnx.ModelProto, *splits: Selection) -> str:
    """What the FP32 scores and baselines depend on: the exported FP32 model (weights and
    graph) and the samples and labels of each split."""
    digest = hashlib.sha256(fp32.SerializeToString())
    for s in splits:
        digest.update(json.dumps(s.provenance(), sort_keys=True, default=str).encode())
        if s.truth != "labels" and s.labels is not None:  # a reference model's predictions
            digest.update(np.ascontiguousarray(s.labels).tobytes())
    return digest.hexdigest()


class ReferenceCache:
    """One JSON object per `reference_key`: `{"fp32": {"val": .., "test": ..}, "baselines":
    {..}}`, each part present once measured. A missing, damaged or foreign file is an empty
    cache (the values are measured again), never an error; it is written atomically."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def get(self, key: str) -> dict[str, Any]:
        entry = self._read().get(key)
        return entry if isinstance(entry, dict) else {}

    def put(self, key: str, entry: dict[str, Any]) -> None:
        from quantpipe.pipeline.atomic import atomic_write_json

        entries = self._read()
        entries[key] = entry
        atomic_write_json(self.path, {"format": _CACHE_FORMAT, "entries": entries})

    def _read(self) -> dict[str, Any]:
        try:
            payload = json.loads(self.path.read_text())
        except (OSError, ValueError):
            return {}
        if not isinstance(payload, dict) or payload.get("format") != _CACHE_FORMAT:
            return {}
        entries = payload.get("entries")
        return entries if isinstance(entries, dict) else {}


class References:
    """The FP32 scores and the baselines of one model and pair of splits, each measured on
    its first use (or read from the run's cache) and then kept."""

    def __init__(self, run_path: Path, coder: Coder, val: Selection, test: Selection) -> None:
        self.coder, self.val, self.test = coder, val, test
        self.cache = ReferenceCache(run_path / REFERENCE_CACHE)
        self.key = reference_key(coder.fp32, val, test)
        self.entry = self.cache.get(self.key)

    def fp32_val(self) -> float:
        return self._score("val", self.val)

    def fp32_test(self) -> float:
        return self._score("test", self.test)

    def measured_val(self) -> float | None:
        """The FP32 val score if something asked for it (else it was never measured)."""
        return _number(self._fp32().get("val"))

    def baselines(self) -> dict[str, Baseline]:
        from quantpipe.stages.btc_coder import baselines

        try:
            return {k: Baseline(**v) for k, v in self.entry["baselines"].items()}
        except (TypeError, KeyError, AttributeError, ValueError):
            measured = baselines(self.coder, self.test)
            self._store("baselines", {k: asdict(b) for k, b in measured.items()})
            return measured

    def _score(self, split: str, data: Selection) -> float:
        cached = _number(self._fp32().get(split))
        if cached is not None:
            return cached
        value = self.coder.scorer.accuracy(self.coder.fp32, data)
        self._store("fp32", {**self._fp32(), split: value})
        return value

    def _fp32(self) -> dict[str, Any]:
        scores = self.entry.get("fp32")
        return scores if isinstance(scores, dict) else {}

    def _store(self, part: str, value: Any) -> None:
        self.entry = {**self.entry, part: value}
        self.cache.put(self.key, self.entry)


def _number(value: object) -> float | None:
    """A cached score as a float; None for anything else (a bool is not a score)."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value)
