"""deploy/systemd: the unit verifies cleanly, is hardened (exposure <= 2.0), agrees with the
example config and the sysusers entry, and its MemoryDenyWriteExecute= does not break the
daemon's native dependencies."""

from __future__ import annotations

import json
import os
import platform
import re
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

REPO_ROOT = Path(__file__).resolve().parents[2]
SYSTEMD_DIR = REPO_ROOT / "deploy" / "systemd"
UNIT = SYSTEMD_DIR / "sessiond.service"
SOCKET_UNIT = SYSTEMD_DIR / "sessiond.socket"
SYSUSERS = SYSTEMD_DIR / "sessiond.sysusers.conf"
CONFIG = SYSTEMD_DIR / "sessiond.yaml"
MAN_DIR = REPO_ROOT / "deploy" / "man"

# docs/configuration.md: every key of the config file.
SPEC_CONFIG_KEYS: dict[str, set[str]] = {
    "socket": {"path", "mode"},
    "cache": {"max_sessions", "max_memory", "default_ttl", "sliding", "sweep_interval"},
    "persistence": {"backend", "path", "durability", "flush_interval", "warm_start"},
    "metrics": {"enabled", "listen"},
    "logging": {"level", "format"},
    "limits": {"max_clients", "max_value_size", "max_request_size", "client_idle_timeout"},
    "security": {"password", "allowed_uids", "allowed_gids"},
}

EXEC_PREFIXES = "@-:+!"


def parse_unit(path: Path) -> dict[str, dict[str, list[str]]]:
    """Minimal systemd unit parser: section -> key -> values in order (keys may repeat)."""
    sections: dict[str, dict[str, list[str]]] = {}
    current: dict[str, list[str]] | None = None
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if not line or line[0] in "#;":
            continue
        assert not line.endswith("\\"), "continuation lines are not supported by this parser"
        if line.startswith("[") and line.endswith("]"):
            current = sections.setdefault(line[1:-1], {})
            continue
        assert current is not None, f"setting outside a section: {raw!r}"
        key, sep, value = line.partition("=")
        assert sep, f"not a key=value line: {raw!r}"
        current.setdefault(key.strip(), []).append(value.strip())
    return sections


def service() -> dict[str, list[str]]:
    return parse_unit(UNIT)["Service"]


def one(key: str) -> str:
    values = service().get(key)
    assert values, f"{key}= missing from [Service]"
    assert len(values) == 1, f"{key}= set {len(values)} times"
    return values[0]


def exec_binary(command_line: str) -> str:
    return command_line.lstrip(EXEC_PREFIXES).split()[0]


def require(tool: str) -> str:
    path = shutil.which(tool)
    if path is None:
        pytest.skip(f"{tool} not found (systemd is not installed on this machine)")
    return path


def test_unit_has_required_settings() -> None:
    sections = parse_unit(UNIT)
    assert sections["Install"]["WantedBy"] == ["multi-user.target"]
    assert one("Type") == "notify"
    assert one("ExecStart") == "/usr/local/bin/sessiond run --config /etc/sessiond/sessiond.yaml"
    assert one("ExecReload") == "/bin/kill -HUP $MAINPID"
    assert one("WatchdogSec") == "30s"
    assert one("Restart") == "on-failure"
    assert one("KillSignal") == "SIGTERM"
    assert re.fullmatch(r"\d+s?", one("TimeoutStopSec"))
    for key in ("RuntimeDirectory", "StateDirectory", "ConfigurationDirectory"):
        assert one(key) == "sessiond"
    assert one("User") == "sessiond" or one("DynamicUser") == "yes"
    expected = {
        "ProtectSystem": "strict",
        "ProtectHome": "yes",
        "PrivateTmp": "yes",
        "PrivateDevices": "yes",
        "NoNewPrivileges": "yes",
        "CapabilityBoundingSet": "",
        "MemoryDenyWriteExecute": "yes",
        "SystemCallArchitectures": "native",
    }
    for key, value in expected.items():
        assert one(key) == value, key
    assert set(one("RestrictAddressFamilies").split()) == {"AF_UNIX", "AF_INET", "AF_INET6"}
    assert service()["SystemCallFilter"][0] == "@system-service"
    # Both would break the daemon, see the comments in the unit.
    assert service().get("PrivateUsers", ["no"]) == ["no"]
    assert "ProcSubset" not in service()


def test_unit_agrees_with_example_config_and_sysusers() -> None:
    text = CONFIG.read_text()
    config_path = one("ExecStart").split("--config", 1)[1].split()[0]
    assert config_path == f"/etc/{one('ConfigurationDirectory')}/{CONFIG.name}"
    assert re.search(rf"^  path: /run/{one('RuntimeDirectory')}/[\w.-]+\.sock$", text, re.M)
    assert re.search(rf"^  path: /var/lib/{one('StateDirectory')}/[\w.-]+\.db$", text, re.M)
    assert re.search(r"^  listen: 127\.0\.0\.1:9477\b", text, re.M)
    sysusers = [
        line.split()
        for line in SYSUSERS.read_text().splitlines()
        if line.strip() and not line.lstrip().startswith("#")
    ]
    assert [(entry[0], entry[1]) for entry in sysusers] == [("u", one("User"))]
    assert one("Group") == one("User")


def verify_root(tmp_path: Path, units: dict[str, str]) -> Path:
    """A temporary root for `systemd-analyze verify`: the host's unit directory (for the
    targets the units reference), ``units`` (name -> text) in /etc/systemd/system, a stub at
    the ExecStart path and copies of the host's other Exec* binaries (so a wrong path like
    /bin/kil still fails)."""
    root = tmp_path / "root"
    (root / "usr").mkdir(parents=True)
    for merged in ("bin", "sbin", "lib"):  # Debian 12 is merged-/usr
        (root / "usr" / merged).mkdir()
        (root / merged).symlink_to(f"usr/{merged}")
    host_units = next(
        (p for p in (Path("/usr/lib/systemd/system"), Path("/lib/systemd/system")) if p.is_dir()),
        None,
    )
    if host_units is None:
        pytest.skip("no systemd unit directory on this machine")
    shutil.copytree(host_units, root / "usr/lib/systemd/system", symlinks=True)
    unit_dir = root / "etc/systemd/system"
    unit_dir.mkdir(parents=True)
    for name, text in units.items():
        (unit_dir / name).write_text(text)

    svc = service()
    start = exec_binary(svc["ExecStart"][0])
    stub = root / start.lstrip("/")
    stub.parent.mkdir(parents=True, exist_ok=True)
    stub.write_text("#!/bin/sh\nexit 0\n")
    stub.chmod(0o755)
    for key, values in svc.items():
        if not key.startswith("Exec") or key == "ExecStart":
            continue
        for value in values:
            binary = exec_binary(value)
            assert os.access(binary, os.X_OK), f"{key}={binary}: not an executable on this host"
            target = root / binary.lstrip("/")
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy(binary, target)
    return root


def verify(root: Path, *names: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [require("systemd-analyze"), "verify", f"--root={root}", *names],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        env=man_env(MAN_DIR),
    )


def test_unit_verifies_cleanly(tmp_path: Path) -> None:
    """`systemd-analyze verify` prints nothing for the unit pair. It insists that every
    Exec*= binary exists, and /usr/local/bin/sessiond is only there after a pip install, so
    verify the units, unchanged, inside a temporary root (verify_root). The man pages of
    Documentation= must exist in deploy/man."""
    require("systemd-analyze")
    units = {UNIT.name: UNIT.read_text(), SOCKET_UNIT.name: SOCKET_UNIT.read_text()}
    proc = verify(verify_root(tmp_path, units), SOCKET_UNIT.name, UNIT.name)
    assert proc.stdout + proc.stderr == ""
    assert proc.returncode == 0


def test_the_postgresql_drop_in_verifies_with_the_unit(tmp_path: Path) -> None:
    """deploy/systemd/postgresql.conf (deploy/README.md, section 6) applies to the
    unit as a drop-in and verifies cleanly with it."""
    require("systemd-analyze")
    units = {UNIT.name: UNIT.read_text(), SOCKET_UNIT.name: SOCKET_UNIT.read_text()}
    root = verify_root(tmp_path, units)
    drop_in = root / "etc/systemd/system" / f"{UNIT.name}.d" / "postgresql.conf"
    drop_in.parent.mkdir()
    drop_in.write_text((SYSTEMD_DIR / "postgresql.conf").read_text())
    (root / "etc/sessiond").mkdir(parents=True)
    (root / "etc/sessiond/pgpassword").write_text("secret\n")
    proc = verify(root, SOCKET_UNIT.name, UNIT.name)
    assert proc.stdout + proc.stderr == ""
    assert proc.returncode == 0
    text = drop_in.read_text()
    assert "LoadCredential=pgpassword:/etc/sessiond/pgpassword" in text
    assert "IPAddressAllow=" in text


def without_socket_unit(text: str) -> str:
    """The service as its comments say to run it without sessiond.socket."""
    lines = [
        line for line in text.splitlines() if not re.fullmatch(r"Requires=sessiond\.socket", line)
    ]
    text = "\n".join(lines) + "\n"
    assert "After=network.target sessiond.socket\n" in text
    return text.replace("After=network.target sessiond.socket\n", "After=network.target\n")


def test_service_verifies_without_the_socket_unit(tmp_path: Path) -> None:
    """The unit's comments say how to run without sessiond.socket: that unit verifies alone."""
    require("systemd-analyze")
    text = without_socket_unit(UNIT.read_text())
    assert "sessiond.socket" not in [line for line in text.splitlines() if not line.startswith("#")]
    proc = verify(verify_root(tmp_path, {UNIT.name: text}), UNIT.name)
    assert proc.stdout + proc.stderr == ""
    assert proc.returncode == 0


def test_service_needs_the_socket_unit(tmp_path: Path) -> None:
    """Requires= is checked: without the socket unit, the shipped service does not verify."""
    require("systemd-analyze")
    proc = verify(verify_root(tmp_path, {UNIT.name: UNIT.read_text()}), UNIT.name)
    assert "sessiond.socket" in proc.stderr
    assert proc.returncode != 0


def test_socket_unit_agrees_with_the_service_and_the_config() -> None:
    sections = parse_unit(SOCKET_UNIT)
    sock = {key: values[-1] for key, values in sections["Socket"].items()}
    assert sections["Install"]["WantedBy"] == ["sockets.target"]
    assert sock["Accept"] == "no"
    assert sock["Service"] == UNIT.name
    assert sock["RemoveOnStop"] == "yes"
    text = CONFIG.read_text()
    (path,) = re.findall(r"^  path: (/run/\S+\.sock)$", text, re.M)
    assert sock["ListenStream"] == path
    assert path.startswith(f"/run/{one('RuntimeDirectory')}/")
    (mode,) = re.findall(r'^  mode: "(\d+)"', text, re.M)
    assert sock["SocketMode"] == mode
    assert sock["SocketUser"] == one("User")
    assert sock["SocketGroup"] == one("Group")
    unit = parse_unit(UNIT)["Unit"]
    assert unit["Requires"] == [SOCKET_UNIT.name]
    assert SOCKET_UNIT.name in unit["After"][0].split()
    # The socket file lives in the runtime directory: it must outlive a stopped service.
    assert one("RuntimeDirectoryPreserve") == "yes"


def man_env(manpath: Path) -> dict[str, str]:
    """`systemd-analyze verify` runs `man` for each man: page of Documentation= (on the host,
    not under --root): point man at the pages of this checkout."""
    return {**os.environ, "MANPATH": str(manpath), "MANPAGER": "cat"}


def test_verify_checks_the_documentation_pages(tmp_path: Path) -> None:
    """With no man pages to find, verify names the missing ones: the check above looks."""
    analyze = require("systemd-analyze")
    require("man")
    proc = subprocess.run(
        [analyze, "verify", str(UNIT)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        env=man_env(tmp_path),
    )
    for page in unit_values("Documentation"):
        assert f"Command 'man {page.removeprefix('man:')}' failed" in proc.stderr, proc.stderr


def unit_values(key: str) -> list[str]:
    """The space-separated values of a [Unit] key."""
    values = parse_unit(UNIT)["Unit"].get(key)
    assert values, f"{key}= missing from [Unit]"
    return [v for value in values for v in value.split()]


def test_documentation_names_the_shipped_man_pages() -> None:
    pages = unit_values("Documentation")
    assert pages == ["man:sessiond(8)", "man:sessiond.yaml(5)"]
    for page in pages:
        name, section = page.removeprefix("man:").rstrip(")").split("(")
        assert (MAN_DIR / f"man{section}" / f"{name}.{section}").is_file(), page


@pytest.mark.parametrize(
    ("unit", "section", "typo"),
    [(UNIT, "Service", "ProtectSytem=strict"), (SOCKET_UNIT, "Socket", "SocketMod=0660")],
    ids=["service", "socket"],
)
def test_verify_would_catch_a_broken_unit(
    tmp_path: Path, unit: Path, section: str, typo: str
) -> None:
    """The check above is not vacuous: the same setup reports unknown keys."""
    analyze = require("systemd-analyze")
    broken = tmp_path / unit.name
    broken.write_text(unit.read_text().replace(f"[{section}]\n", f"[{section}]\n{typo}\n"))
    proc = subprocess.run(
        [analyze, "verify", str(broken)], capture_output=True, text=True, timeout=60, check=False
    )
    assert "Unknown key" in proc.stderr and typo.split("=")[0] in proc.stderr


def test_security_exposure_at_most_2() -> None:
    analyze = require("systemd-analyze")
    proc = subprocess.run(
        [analyze, "security", "--offline=yes", "--no-pager", str(UNIT)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    match = re.search(r"Overall exposure level for sessiond\.service: (\d+(?:\.\d+)?)", proc.stdout)
    assert match, f"no exposure line in:\n{proc.stdout}\n{proc.stderr}"
    assert float(match.group(1)) <= 2.0, proc.stdout


def test_sysusers_entry_creates_user_and_group(tmp_path: Path) -> None:
    sysusers = require("systemd-sysusers")
    (tmp_path / "etc").mkdir()
    proc = subprocess.run(
        [sysusers, f"--root={tmp_path}", str(SYSUSERS)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    passwd = (tmp_path / "etc/passwd").read_text().splitlines()
    group = (tmp_path / "etc/group").read_text().splitlines()
    (user,) = [line.split(":") for line in passwd if line.startswith("sessiond:")]
    (grp,) = [line.split(":") for line in group if line.startswith("sessiond:")]
    assert user[3] == grp[2], "primary group of sessiond is the sessiond group"
    assert 0 < int(user[2]) < 1000, "a system uid"
    assert user[6].endswith("nologin")


def config_keys(text: str) -> dict[str, set[str]]:
    """The two levels of keys of the example config (stdlib only, no YAML parser)."""
    keys: dict[str, set[str]] = {}
    section: set[str] | None = None
    for line in text.splitlines():
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        if match := re.match(r"^([a-z_]+):\s*(#.*)?$", line):
            section = keys.setdefault(match.group(1), set())
        elif match := re.match(r"^  ([a-z_]+):", line):
            assert section is not None, line
            section.add(match.group(1))
    return keys


def test_example_config_has_every_spec_key() -> None:
    text = CONFIG.read_text()
    assert config_keys(text) == SPEC_CONFIG_KEYS
    assert re.search(r'^  mode: "0660"', text, re.M), "mode must be a quoted string"


def test_example_config_passes_check_config(daemon_env: dict[str, str]) -> None:
    """The daemon's CLI accepts the systemd example config."""
    proc = subprocess.run(
        [
            sys.executable,
            "-c",
            "import sys; from sessiond.cli import main; "
            "sys.argv = ['sessiond', 'check-config', '--config', sys.argv[1]]; sys.exit(main())",
            str(CONFIG),
        ],
        capture_output=True,
        text=True,
        env=daemon_env,
        timeout=60,
        check=False,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr


# A seccomp filter that emulates the unit's MemoryDenyWriteExecute=yes and, if the env var
# SECCOMP_ALLOW holds a JSON list of syscall numbers, its SystemCallFilter= allow list, with
# SystemCallArchitectures=native and SystemCallErrorNumber=EPERM (x86_64 only). MDWE: mmap with
# PROT_WRITE|PROT_EXEC, mprotect adding PROT_EXEC, shmat with SHM_EXEC fail with EPERM (and
# pkey_mprotect entirely). Installed with no_new_privs, then the command is exec'd under it, so
# the interpreter's start-up and every extension module load run filtered, as under systemd.
SANDBOX_EXEC = r"""
import ctypes, json, os, struct, sys
LD, JEQ, AND, RET = 0x20, 0x15, 0x54, 0x06
ALLOW, EPERM = 0x7FFF0000, 0x00050000 | 1
ARG2 = 16 + 2 * 8  # low 32 bits of seccomp_data.args[2]
allow = os.environ.get("SECCOMP_ALLOW")
prog = []
def op(code, k=0, jt=0, jf=0):
    prog.append(struct.pack("HBBI", code, jt, jf, k))
op(LD, 4); op(JEQ, 0xC000003E, 1, 0); op(RET, EPERM)  # AUDIT_ARCH_X86_64 only
op(LD, 0)
op(JEQ, 329, 0, 1); op(RET, EPERM)  # pkey_mprotect
for nr, mask in ((9, 6), (10, 4), (30, 0o100000)):  # mmap W|X, mprotect X, shmat SHM_EXEC
    op(JEQ, nr, 0, 5); op(LD, ARG2); op(AND, mask); op(JEQ, mask, 0, 1); op(RET, EPERM)
    op(RET, ALLOW)
if allow is None:
    op(RET, ALLOW)
else:
    for nr in json.loads(allow):
        op(JEQ, nr, 0, 1); op(RET, ALLOW)
    op(RET, EPERM)
class Fprog(ctypes.Structure):
    _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.c_char_p)]
libc = ctypes.CDLL(None, use_errno=True)
buf = ctypes.create_string_buffer(b"".join(prog))
fprog = Fprog(len(prog), ctypes.cast(buf, ctypes.c_char_p))
if libc.prctl(38, 1, 0, 0, 0) or libc.prctl(22, 2, ctypes.byref(fprog), 0, 0):
    print("cannot install seccomp filter:", os.strerror(ctypes.get_errno()), file=sys.stderr)
    sys.exit(3)
os.execv(sys.argv[1], sys.argv[1:])
"""

MDWE_PROBE = r"""
import asyncio, ctypes, importlib.util, json, mmap, os, sqlite3, sys, tempfile, urllib.request
tested, missing = [], []
def have(name):
    ok = importlib.util.find_spec(name) is not None
    (tested if ok else missing).append(name)
    return ok
try:
    mmap.mmap(-1, 4096, prot=mmap.PROT_READ | mmap.PROT_WRITE | mmap.PROT_EXEC)
    sys.exit("the filter is not active: a W+X mapping succeeded")
except OSError:
    pass
tmp = tempfile.mkdtemp()
db = sqlite3.connect(os.path.join(tmp, "sessions.db"))
assert db.execute("PRAGMA journal_mode=WAL").fetchone()[0] == "wal"
db.execute("CREATE TABLE s (k BLOB PRIMARY KEY, v BLOB)")
db.execute("INSERT INTO s VALUES (x'01', x'02')")
db.commit()
callback = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.c_int)(lambda x: x + 1)
assert callback(1) == 2
if have("hiredis"):
    import hiredis
    reader = hiredis.Reader()
    reader.feed(b"*2\r\n$3\r\nGET\r\n$1\r\nk\r\n")
    assert reader.gets() == [b"GET", b"k"]
if have("yaml"):
    import yaml
    assert yaml.load("a: [1, 2]", Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader))
if have("structlog"):
    import structlog
if have("prometheus_client"):
    import prometheus_client
    server, _thread = prometheus_client.start_http_server(0, addr="127.0.0.1")
    url = f"http://127.0.0.1:{server.server_port}/metrics"
    body = urllib.request.urlopen(url, timeout=10).read().decode()
    assert "process_resident_memory_bytes" in body, "process collector disabled"
    server.shutdown()
async def main():
    async def echo(reader, writer):
        writer.write(await reader.readline())
        await writer.drain()
        writer.close()
    path = os.path.join(tmp, "s.sock")
    server = await asyncio.start_unix_server(echo, path)
    reader, writer = await asyncio.open_unix_connection(path)
    writer.write(b"PING\n")
    assert await reader.readline() == b"PING\n"
    writer.close()
    server.close()
    if have("watchfiles"):
        import watchfiles
        stop = asyncio.Event()
        async def watch():
            async for _changes in watchfiles.awatch(tmp, stop_event=stop):
                stop.set()
        task = asyncio.create_task(watch())
        await asyncio.sleep(0.3)
        with open(os.path.join(tmp, "sessiond.yaml"), "w") as f:
            f.write("x")
        await asyncio.wait_for(task, 10)
if have("uvloop"):
    import uvloop
    uvloop.run(main())
else:
    asyncio.run(main())
print(json.dumps({"tested": tested, "missing": missing}))
"""


def test_native_deps_work_under_memory_deny_write_execute() -> None:
    if sys.platform != "linux" or platform.machine() != "x86_64":
        pytest.skip("the seccomp emulation uses x86_64 syscall numbers")
    proc = subprocess.run(
        [sys.executable, "-c", SANDBOX_EXEC, sys.executable, "-c", MDWE_PROBE],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    if proc.returncode == 3:
        pytest.skip(proc.stderr.strip())
    assert proc.returncode == 0, proc.stdout + proc.stderr
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert "uvloop" in result["tested"] or "hiredis" in result["tested"], result


def syscall_groups(analyze: str) -> dict[str, set[str]]:
    """systemd's syscall groups (@system-service, …) as `systemd-analyze syscall-filter`
    prints them: group -> members (syscall names and nested @groups)."""
    out = subprocess.run(
        [analyze, "syscall-filter", "--no-pager"],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    ).stdout
    groups: dict[str, set[str]] = {}
    members: set[str] | None = None
    for line in out.splitlines():
        if line.startswith("@"):
            members = groups.setdefault(line.strip(), set())
        elif line.startswith("    ") and not line.strip().startswith("#") and members is not None:
            members.add(line.strip())
    return groups


def unit_syscall_allowlist(analyze: str) -> set[str]:
    """The syscalls the unit's SystemCallFilter= lines allow (allow list, then ~ removals)."""
    groups = syscall_groups(analyze)

    def expand(name: str) -> set[str]:
        if not name.startswith("@"):
            return {name}
        return set().union(*(expand(member) for member in groups[name]))

    allowed: set[str] | None = None
    for value in service()["SystemCallFilter"]:
        deny = value.startswith("~")
        names = set().union(*(expand(token) for token in value.lstrip("~").split()))
        if deny:
            assert allowed is not None, "emulation supports an allow list first, then ~removals"
            allowed -= names
        else:
            allowed = names if allowed is None else allowed | names
    assert allowed
    return allowed


def syscall_numbers() -> dict[str, int]:
    for header in (
        Path("/usr/include/x86_64-linux-gnu/asm/unistd_64.h"),
        Path("/usr/include/asm/unistd_64.h"),
    ):
        if header.is_file():
            return {
                name: int(nr)
                for name, nr in re.findall(r"#define __NR_(\w+) (\d+)", header.read_text())
            }
    pytest.skip("no x86_64 syscall table (linux-libc-dev's asm/unistd_64.h)")


def wait_for(predicate: Callable[[], bool], what: str, timeout: float = 15) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.1)


def test_daemon_runs_under_the_units_syscall_filter_and_mdwe(daemon_launcher: Any) -> None:
    """The real daemon under an emulation of the unit's seccomp settings (SystemCallFilter=,
    SystemCallArchitectures=, MemoryDenyWriteExecute=): it starts, serves, writes its store,
    reloads on a file change and on SIGHUP, exports metrics and exits 0 on SIGTERM."""
    if sys.platform != "linux" or platform.machine() != "x86_64":
        pytest.skip("the seccomp emulation uses x86_64 syscall numbers")
    analyze = require("systemd-analyze")
    assert one("MemoryDenyWriteExecute") == "yes" and one("SystemCallArchitectures") == "native"
    assert one("SystemCallErrorNumber") == "EPERM"
    numbers = syscall_numbers()
    allowed = sorted(numbers[name] for name in unit_syscall_allowlist(analyze) if name in numbers)
    assert numbers["setuid"] not in allowed and numbers["read"] in allowed

    with daemon_launcher(
        wrapper=[sys.executable, "-c", SANDBOX_EXEC],
        extra_env={"SECCOMP_ALLOW": json.dumps(allowed)},
    ) as daemon:
        replies = daemon.traffic()
        assert replies.startswith(b"+PONG\r\n+OK\r\n$5\r\nalice\r\n$-1\r\n"), replies
        metrics = daemon.scrape()
        assert "process_resident_memory_bytes" in metrics, "process collector disabled"
        assert re.search(r"^sessiond_store_writes_total [1-9]", metrics, re.M), "no store write"

        with daemon.config.open("a") as config:
            config.write("cache:\n  max_sessions: 500\n")
        wait_for(
            lambda: "sessiond_cache_max_sessions 500.0" in daemon.scrape(), "reload on file change"
        )

        def reloads() -> float:
            match = re.search(
                r'^sessiond_config_reloads_total\{result="success"\} (\S+)', daemon.scrape(), re.M
            )
            return float(match.group(1)) if match else 0.0

        before = reloads()
        daemon.proc.send_signal(signal.SIGHUP)
        wait_for(lambda: reloads() > before, "reload on SIGHUP")

        daemon.proc.terminate()
        assert daemon.proc.wait(timeout=20) == 0, daemon.log()
        assert not daemon.socket_path.exists(), "socket file left behind"
        log = daemon.log()
        assert "Operation not permitted" not in log, log
        problems = [line for line in log.splitlines() if '"level": "error"' in line]
        assert problems == [], log
