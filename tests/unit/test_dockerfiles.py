"""The Dockerfiles' structure: a base image pinned by tag and replaceable by a build argument,
a non-root numeric user, `quantpipe` as entrypoint, and no secret baked in (hadolint, in
`make lint`, checks the rest)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

DOCKER = Path(__file__).parents[2] / "docker"
FILES = sorted(DOCKER.glob("Dockerfile.*"))


def _instructions(path: Path) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with continuation lines joined and comments dropped."""
    text = re.sub(r"\\\n", " ", path.read_text())
    lines = [ln.strip() for ln in text.splitlines()]
    return [
        (ln.split(None, 1)[0].upper(), ln.split(None, 1)[1] if " " in ln else "")
        for ln in lines
        if ln and not ln.startswith("#")
    ]


def test_there_are_a_cpu_and_a_gpu_image() -> None:
    assert [p.name for p in FILES] == ["Dockerfile.cpu", "Dockerfile.gpu"]


@pytest.mark.parametrize("path", FILES, ids=lambda p: p.name)
def test_each_image_is_pinned_replaceable_non_root_and_runs_quantpipe(path: Path) -> None:
    ins = _instructions(path)
    kinds = [k for k, _ in ins]
    base = next(a for k, a in ins if k == "ARG" and a.startswith("BASE="))
    assert kinds.index("ARG") < kinds.index("FROM")  # the build argument replaces the base
    assert next(a for k, a in ins if k == "FROM") == "${BASE}"
    tag = base.split("=", 1)[1].rsplit(":", 1)
    assert len(tag) == 2 and tag[1] not in ("", "latest")
    (user,) = [a for k, a in ins if k == "USER"]
    assert user.isdigit() and int(user) >= 1000
    assert kinds.index("USER") > max(i for i, k in enumerate(kinds) if k == "RUN")
    assert next(a for k, a in ins if k == "ENTRYPOINT") == '["quantpipe"]'
    copied = " ".join(a for k, a in ins if k in ("COPY", "ADD", "ENV"))
    assert not re.search(r"(?i)\.crt|\.pem|token|password|secret", copied)


def test_the_build_context_leaves_environments_and_runs_out() -> None:
    ignore = (DOCKER.parent / ".dockerignore").read_text().splitlines()
    assert "*" in ignore  # everything out, then back in what the build needs
    allowed = {ln[1:].rstrip("/") for ln in ignore if ln.startswith("!")}
    assert {"pyproject.toml", "quantpipe", "requirements-serve.txt"} <= allowed
    assert not allowed & {".venv", ".venv-serve", "runs", ".git"}
