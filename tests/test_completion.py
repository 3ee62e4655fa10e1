"""Shell completion (deploy/completion/, generated from the argument parser): bash sources
the script and calls its function with COMP_WORDS/COMP_CWORD as bash would; zsh loads it
through compinit in an interactive shell on a pseudo-terminal and completes on a Tab
(tests/tools/zsh_complete.zsh). Both offer the subcommands, the options of each, and file
names after --config."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
COMPLETION = REPO / "deploy" / "completion"
ZSH_COMPLETE = REPO / "tests" / "tools" / "zsh_complete.zsh"


@pytest.fixture
def workdir(tmp_path: Path) -> Path:
    (tmp_path / "local config.yaml").write_text("")
    (tmp_path / "conf.d").mkdir()
    (tmp_path / "other.txt").write_text("")
    return tmp_path


def bash_complete(cwd: Path, words: list[str], cword: int | None = None) -> list[str]:
    """COMPREPLY for the command line `words`, completing word `cword` (default: the last)."""
    cword = len(words) - 1 if cword is None else cword
    script = (
        'source "$1"; shift\n'
        '[[ "$(complete -p sessiond)" == "complete -F _sessiond sessiond" ]] || exit 3\n'
        'COMP_WORDS=("$@"); COMP_CWORD=$CWORD; COMP_LINE="$*"; COMP_POINT=${#COMP_LINE}\n'
        "_sessiond\n"
        'printf "%s\\n" "${COMPREPLY[@]}"\n'
    )
    proc = subprocess.run(
        [
            "bash",
            "--norc",
            "--noprofile",
            "-c",
            script,
            "bash",
            COMPLETION / "sessiond.bash",
            *words,
        ],
        capture_output=True,
        text=True,
        cwd=cwd,
        env={"PATH": "/usr/bin:/bin", "CWORD": str(cword)},
        timeout=30,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr == ""
    return sorted(filter(None, proc.stdout.split("\n")))


@pytest.mark.parametrize(
    "words,expected",
    [
        (["sessiond", ""], ["--help", "--version", "-h", "check-config", "import", "run"]),
        (["sessiond", "--v"], ["--version"]),
        (["sessiond", "ch"], ["check-config"]),
        (["sessiond", "run", "--"], ["--config", "--help"]),
        (["sessiond", "import", "--"], ["--config", "--help", "--match"]),
        (["sessiond", "check-config", "--config", "x.yaml", "-"], ["--config", "--help", "-h"]),
        (["sessiond", "run", "--config", ""], ["conf.d", "local config.yaml", "other.txt"]),
        (["sessiond", "run", "--config", "lo"], ["local config.yaml"]),
        (["sessiond", "check-config", "--config", "=", "co"], ["conf.d"]),  # --config=co
        (
            ["sessiond", "check-config", "--config", "="],
            ["conf.d", "local config.yaml", "other.txt"],
        ),
    ],
)
def test_bash(workdir: Path, words: list[str], expected: list[str]) -> None:
    assert bash_complete(workdir, words) == expected


def test_bash_completes_the_word_under_the_cursor(workdir: Path) -> None:
    assert bash_complete(workdir, ["sessiond", "r", "--config"], cword=1) == ["run"]


def zsh_complete(cwd: Path, line: str) -> list[str]:
    zsh = shutil.which("zsh")
    if zsh is None:
        pytest.skip("zsh is not installed (scripts/test.sh installs Debian's zsh)")
    proc = subprocess.run(
        [zsh, "-f", str(ZSH_COMPLETE), str(COMPLETION), line],
        capture_output=True,
        text=True,
        cwd=cwd,
        env={"PATH": "/usr/bin:/bin", "HOME": str(cwd), "TERM": "dumb"},
        timeout=60,
        check=False,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return sorted(filter(None, proc.stdout.split("\n")))


@pytest.mark.parametrize(
    "line,expected",
    [
        ("sessiond ", ["check-config", "import", "run"]),
        ("sessiond -", ["--help", "--version", "-h"]),
        ("sessiond run -", ["--config", "--help", "-h"]),
        # as inserted on the command line: the space quoted
        ("sessiond run --config ", ["conf.d", "local\\ config.yaml", "other.txt"]),
        ("sessiond check-config --config=lo", ["local\\ config.yaml"]),
        ("sessiond check-config --config x.yaml -", ["--help", "-h"]),
    ],
)
def test_zsh(workdir: Path, line: str, expected: list[str]) -> None:
    assert zsh_complete(workdir, line) == expected
