"""The generated documentation: man pages, shell completions and the example config are
current (``python -m sessiond.docgen --check``), the man pages render in a real ``man``
without a warning, and they agree with what the CLI itself says (``--help``,
``check-config``) and with the README.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
MAN_DIR = REPO / "deploy" / "man"
PAGES = [MAN_DIR / "man8" / "sessiond.8", MAN_DIR / "man5" / "sessiond.yaml.5"]


def python(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, *args], capture_output=True, text=True, timeout=60, cwd=cwd, check=False
    )


def man(page: Path, width: int = 80) -> subprocess.CompletedProcess[str]:
    if shutil.which("man") is None or shutil.which("nroff") is None:
        pytest.skip("needs man (man-db) and nroff (groff-base); scripts/test.sh installs them")
    env = {**os.environ, "MANWIDTH": str(width), "MANPAGER": "cat", "LC_ALL": "C.UTF-8"}
    return subprocess.run(
        ["man", "--warnings=w", "-l", str(page)],  # w: every groff warning
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
        check=False,
    )


def rendered(page: Path) -> str:
    proc = man(page)
    assert proc.returncode == 0, proc.stderr
    # Undo the line filling, so that phrases can be searched for.
    return re.sub(r"\s+", " ", proc.stdout)


# ------------------------------------------------------------------ generated files


def test_generated_files_are_current() -> None:
    proc = python("-m", "sessiond.docgen", "--check", str(REPO))
    assert proc.returncode == 0, proc.stderr


def test_check_names_a_stale_file(tmp_path: Path) -> None:
    """--check is not vacuous: it sees an edited page and a missing completion."""
    assert python("-m", "sessiond.docgen", str(tmp_path)).returncode == 0
    page = tmp_path / "deploy" / "man" / "man8" / "sessiond.8"
    page.write_text(page.read_text().replace("EXIT STATUS", "EXIT CODES"))
    (tmp_path / "deploy" / "completion" / "_sessiond").unlink()
    proc = python("-m", "sessiond.docgen", "--check", str(tmp_path))
    assert proc.returncode == 1
    assert "deploy/man/man8/sessiond.8" in proc.stderr
    assert "deploy/completion/_sessiond" in proc.stderr
    assert "config/sessiond.yaml" not in proc.stderr
    assert python("-m", "sessiond.docgen", str(tmp_path)).returncode == 0
    assert python("-m", "sessiond.docgen", "--check", str(tmp_path)).returncode == 0


# ------------------------------------------------------------------ man pages


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.name)
@pytest.mark.parametrize("width", [80, 60])
def test_man_renders_without_warnings(page: Path, width: int) -> None:
    proc = man(page, width)
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr == ""
    assert len(proc.stdout.splitlines()) > 40
    if width == 80:  # narrower, the examples' lines (no-fill) stick out, as in any man page
        too_long = [line for line in proc.stdout.splitlines() if len(line) > width]
        assert too_long == []
    assert page.read_bytes().isascii()


def test_man_would_report_a_broken_page(tmp_path: Path) -> None:
    """The warning check above is not vacuous: groff warns about an unknown request."""
    broken = tmp_path / "broken.8"
    broken.write_text(PAGES[0].read_text().replace(".SH DESCRIPTION", ".SH DESCRIPTION\n.XYZZY"))
    assert "XYZZY" in man(broken).stderr


def test_sessiond_8_agrees_with_help() -> None:
    text = rendered(PAGES[0])
    help_text = python("-m", "sessiond", "--help").stdout
    for command in ("run", "check-config"):
        assert f"sessiond {command} [--config PATH]" in text
        sub_help = python("-m", "sessiond", command, "--help").stdout
        description = re.sub(r"\s+", " ", sub_help.split("\n\n")[1])
        assert description in text, command
    assert "sessiond --version" in text
    exit_codes = re.findall(r"^  (\d+) ", help_text.split("exit status:")[1], re.M)
    assert exit_codes == ["0", "1", "2", "130"]
    section = text.split("EXIT STATUS")[1].split("SIGNALS")[0]
    assert re.findall(r"(?:^| )(\d+) [A-Z]", section) == exit_codes


def test_sessiond_yaml_5_states_the_daemons_defaults(tmp_path: Path) -> None:
    """A config that sets every key to the default sessiond.yaml(5) states is the same as
    the built-in defaults, as `check-config` prints them."""
    text = rendered(PAGES[1])
    stated = dict(re.findall(r" (\w+\.\w+): [^,]+, default (\S+)", text))
    empty = tmp_path / "empty.yaml"
    empty.write_text("")
    defaults = python("-m", "sessiond", "check-config", "--config", str(empty))
    assert defaults.returncode == 0, defaults.stderr
    effective = yaml.safe_load(defaults.stdout)
    keys = {f"{s}.{k}" for s, section in effective.items() for k in section}
    assert set(stated) == keys
    nested: dict[str, dict[str, object]] = {}
    for dotted, value in stated.items():
        section, key = dotted.split(".")
        nested.setdefault(section, {})[key] = yaml.safe_load(value)
    # The two paths are absolute, as in the defaults; the password stays unset.
    full = tmp_path / "full.yaml"
    full.write_text(yaml.safe_dump(nested))
    proc = python("-m", "sessiond", "check-config", "--config", str(full))
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.partition("\n")[2] == defaults.stdout.partition("\n")[2]


def test_sessiond_yaml_5_lists_the_keys_a_reload_does_not_apply() -> None:
    text = rendered(PAGES[1]).split(" RELOADING ")
    entries = re.split(r" (\w+\.\w+): [^,]+, default ", text[0])[1:]
    restart = {
        key for key, body in zip(entries[::2], entries[1::2], strict=True)
        if "Takes effect at the next start, not on reload." in body
    }  # fmt: skip
    listed = text[1].split("take effect only at the next start: ")[1].split(". A reload")[0]
    assert restart == set(listed.split(", "))
    assert {"socket.path", "persistence.path", "metrics.listen"} <= restart
    assert "cache.max_sessions" not in restart


def test_readme_lists_the_exit_codes_help_prints() -> None:
    readme = (REPO / "README.md").read_text()
    table = readme.split("Exit codes")[1].split("\n\n", 2)[1]
    codes = re.findall(r"^\| (\d+) \|", table, re.M)
    help_text = python("-m", "sessiond", "--help").stdout
    assert codes == re.findall(r"^  (\d+) ", help_text.split("exit status:")[1], re.M)
