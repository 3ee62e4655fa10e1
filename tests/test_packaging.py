"""The package builds with the oldest setuptools pyproject.toml declares, and not with the
release before it (so the declared minimum is the real one): each build runs
`pip wheel --no-deps` in a clean venv with that setuptools pinned. The wheel carries the
license as a PEP 639 expression and the LICENSE file."""

from __future__ import annotations

import re
import subprocess
import sys
import tomllib
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
# The last setuptools release before PEP 639 license expressions (77.0.0 was never published).
BEFORE_PEP_639 = "76.1.0"


def declared_minimum() -> str:
    requires = tomllib.loads((REPO / "pyproject.toml").read_text())["build-system"]["requires"]
    (setuptools,) = [r for r in requires if r.startswith("setuptools")]
    match = re.fullmatch(r"setuptools>=([\d.]+)", setuptools)
    assert match, f"declare the minimum as setuptools>=X.Y.Z, not {setuptools!r}"
    return match.group(1)


def source_tree(dest: Path) -> Path:
    """The files git would ship (tracked and new, not ignored), copied, so that the build
    leaves no build/ or egg-info behind in the checkout."""
    listed = subprocess.run(
        ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        cwd=REPO,
        capture_output=True,
        check=True,
    ).stdout
    for name in filter(None, listed.decode().split("\0")):
        source = REPO / name
        if source.is_file():
            target = dest / name
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(source.read_bytes())
    return dest


def build(setuptools: str, tmp_path: Path) -> tuple[subprocess.CompletedProcess[str], Path]:
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=120)
    pip = [str(venv / "bin" / "python"), "-m", "pip", "--disable-pip-version-check"]
    install = subprocess.run(
        [*pip, "install", "-q", f"setuptools=={setuptools}"],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    if install.returncode != 0:
        pytest.skip(f"cannot install setuptools=={setuptools} (no index?): {install.stderr[-300:]}")
    src = source_tree(tmp_path / "src")
    out = tmp_path / "out"
    proc = subprocess.run(
        [*pip, "wheel", "-q", "--no-deps", "--no-build-isolation", "-w", str(out), "."],
        cwd=src,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    return proc, out


def test_builds_with_the_declared_minimum_setuptools(tmp_path: Path) -> None:
    proc, out = build(declared_minimum(), tmp_path)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    (wheel,) = out.glob("sessiond-*.whl")
    with zipfile.ZipFile(wheel) as zf:
        names = zf.namelist()
        dist_info = next(n.split("/")[0] for n in names if n.endswith(".dist-info/METADATA"))
        metadata = zf.read(f"{dist_info}/METADATA").decode()
        license_text = zf.read(f"{dist_info}/licenses/LICENSE").decode()
        entry_points = zf.read(f"{dist_info}/entry_points.txt").decode()
    assert "License-Expression: MIT" in metadata.splitlines()
    assert "License-File: LICENSE" in metadata.splitlines()
    assert license_text.startswith("MIT License")
    assert "Copyright (c) 2026 sessiond authors" in license_text
    assert "sessiond = sessiond.cli:main" in entry_points
    assert "sessiond/py.typed" in names


def test_the_release_before_cannot_build_it(tmp_path: Path) -> None:
    assert tuple(map(int, BEFORE_PEP_639.split("."))) < tuple(
        map(int, declared_minimum().split("."))
    )
    proc, _out = build(BEFORE_PEP_639, tmp_path)
    assert proc.returncode != 0
    assert "project.license" in proc.stdout + proc.stderr
