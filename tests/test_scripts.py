"""scripts/run.sh in a copy of the checkout, with .venv's pip and sessiond replaced by stubs
that record their calls: it says what it installs before it does, installs only when
pyproject.toml changed, and runs the daemon on config/local.yaml, an untracked copy of the
shipped config made once, so that following the README's hot-reload walkthrough leaves
`git status` clean."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]

STUB = """#!/bin/sh
echo "$(basename "$0") $*" >>"$(dirname "$0")/../calls"
"""
PIP_STUB = STUB + 'cp "$(dirname "$0")/sessiond.stub" "$(dirname "$0")/sessiond"\n'


@pytest.fixture
def checkout(tmp_path: Path) -> Path:
    """The tracked files of this checkout in a fresh git repository, with a fake .venv."""
    if shutil.which("redis-cli") is None:
        pytest.skip("run.sh would apt-get install redis-tools (scripts/test.sh installs it)")
    listed = subprocess.run(
        ["git", "ls-files", "-z"], cwd=REPO, capture_output=True, check=True
    ).stdout.decode()
    root = tmp_path / "sessiond"
    for name in filter(None, listed.split("\0")):
        if name.startswith(("scripts/", "config/")) or name in {"pyproject.toml", ".gitignore"}:
            (root / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(REPO / name, root / name)
    git = ["git", "-c", "user.name=t", "-c", "user.email=t@t", "-C", str(root)]
    subprocess.run([*git, "init", "-q"], check=True)
    subprocess.run([*git, "add", "-A"], check=True)
    subprocess.run([*git, "commit", "-q", "-m", "copy"], check=True)
    venv_bin = root / ".venv" / "bin"
    venv_bin.mkdir(parents=True)
    (venv_bin / "python").symlink_to(sys.executable)
    for name, text in (("pip", PIP_STUB), ("sessiond.stub", STUB)):
        (venv_bin / name).write_text(text)
        (venv_bin / name).chmod(0o755)
    return root


def run_sh(root: Path, *args: str) -> tuple[subprocess.CompletedProcess[str], list[str]]:
    calls = root / ".venv" / "calls"
    calls.unlink(missing_ok=True)
    proc = subprocess.run(
        ["bash", "scripts/run.sh", *args],
        cwd=root,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    return proc, calls.read_text().splitlines() if calls.exists() else []


def git_status(root: Path) -> str:
    return subprocess.run(
        ["git", "-C", str(root), "status", "--porcelain"], capture_output=True, text=True
    ).stdout


def test_first_run_installs_copies_the_config_and_says_so(checkout: Path) -> None:
    proc, calls = run_sh(checkout)
    assert calls == ["pip install -q -e .", "sessiond run --config config/local.yaml"]
    assert proc.stderr.splitlines() == [
        "run.sh: installing sessiond and its dependencies into .venv with pip (first run: ~20 s)",
        "run.sh: copied config/sessiond.yaml to config/local.yaml (untracked): edit the copy, "
        "the daemon reloads it on save",
        "run.sh: starting: sessiond run --config config/local.yaml (Ctrl-C stops it)",
    ]
    assert (checkout / "config" / "local.yaml").read_text() == (
        checkout / "config" / "sessiond.yaml"
    ).read_text()
    assert git_status(checkout) == ""


def test_later_runs_skip_the_install_and_keep_the_edited_copy(checkout: Path) -> None:
    run_sh(checkout)
    local = checkout / "config" / "local.yaml"
    local.write_text(local.read_text().replace("max_sessions: 10000", "max_sessions: 500"))
    proc, calls = run_sh(checkout)
    assert calls == ["sessiond run --config config/local.yaml"]
    assert proc.stderr == (
        "run.sh: starting: sessiond run --config config/local.yaml (Ctrl-C stops it)\n"
    )
    assert "max_sessions: 500" in local.read_text()
    assert git_status(checkout) == ""


def test_a_changed_pyproject_reinstalls(checkout: Path) -> None:
    run_sh(checkout)
    pyproject = checkout / "pyproject.toml"
    pyproject.write_text(pyproject.read_text() + "\n# changed\n")
    proc, calls = run_sh(checkout)
    assert calls[0] == "pip install -q -e ."
    assert "run.sh: pyproject.toml changed: reinstalling sessiond" in proc.stderr
    _proc, calls = run_sh(checkout)
    assert calls == ["sessiond run --config config/local.yaml"]


def test_arguments_replace_the_local_config(checkout: Path) -> None:
    _proc, calls = run_sh(checkout, "--config", "config/sessiond.yaml")
    assert calls[-1] == "sessiond run --config config/sessiond.yaml"
    assert not (checkout / "config" / "local.yaml").exists()


def test_a_newer_shipped_config_is_pointed_out(checkout: Path) -> None:
    run_sh(checkout)
    shipped = checkout / "config" / "sessiond.yaml"
    local_mtime = (checkout / "config" / "local.yaml").stat().st_mtime
    os.utime(shipped, (local_mtime + 10, local_mtime + 10))
    proc, calls = run_sh(checkout)
    assert "config/sessiond.yaml changed after config/local.yaml was copied" in proc.stderr
    assert calls == ["sessiond run --config config/local.yaml"]
