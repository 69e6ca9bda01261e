"""Typed stage results and their JSON form in the manifest.

A result is a frozen dataclass that inherits `JsonResult`. The manifest stores
`to_json()`; a stage that is skipped because it is up to date gets its result back with
`from_json()`, typed and validated, so whoever prints or summarises results never reads
string keys. pydantic does the (de)serialisation of nested dataclasses: it validates
types on the way in, which a hand-written reader would have to repeat per class.
"""

from __future__ import annotations

from typing import Any, Self


class JsonResult:
    """Mixin for result dataclasses: `to_json()`, `from_json()`, and the lines the CLI
    prints under a finished stage."""

    def lines(self) -> list[str]:
        """Headline lines (each names its metric and data); none by default."""
        return []

    def to_json(self) -> dict[str, Any]:
        # Python mode keeps NaN as NaN (the manifest writes it as JSON's NaN); JSON mode
        # would turn it into null and change the value on the way back.
        data: dict[str, Any] = _adapter(type(self)).dump_python(self, mode="python")
        return data

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Self:
        from pydantic import ValidationError

        from quantpipe.errors import CorruptArtifactError

        try:
            result: Self = _adapter(cls).validate_python(data)
        except ValidationError as e:
            first = e.errors()[0]
            where = ".".join(str(p) for p in first["loc"])
            raise CorruptArtifactError(
                f"a recorded {cls.__name__} does not have the expected form ({where}: "
                f"{first['msg']}); rerun the stage with --force"
            ) from None
        return result


_ADAPTERS: dict[type, Any] = {}


def _adapter(cls: type) -> Any:
    """pydantic's (de)serialiser of a result class, built once per class."""
    if cls not in _ADAPTERS:
        from pydantic import TypeAdapter

        _ADAPTERS[cls] = TypeAdapter(cls)
    return _ADAPTERS[cls]
