"""deploy/README.md's metric table says which `operation` labels sessiond_store_errors_total
has: exactly those a live daemon exports (all of them at 0 from the start), and every
operation the daemon's code counts an error under is one of them."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parents[2]
GUIDE = REPO_ROOT / "deploy" / "README.md"
DAEMON = REPO_ROOT / "daemon" / "sessiond"


def documented_operations() -> list[str]:
    (row,) = [
        line
        for line in GUIDE.read_text().splitlines()
        if line.startswith("| `sessiond_store_errors_total` |")
    ]
    labels = row.split("|")[3]
    assert labels.strip().startswith("`operation`:"), row
    # The label values: backticked words right after the label name or a "), " / "; ".
    return re.findall(r"(?:`operation`: |\), )`(\w+)`", labels)


def counted_operations() -> set[str]:
    """String literals the code counts a store error under."""
    found: set[str] = set()
    for path in DAEMON.rglob("*.py"):
        text = path.read_text()
        found |= set(re.findall(r'stats(?:\.store)?\.error\(\s*"(\w+)"', text))
    return found


def test_documented_store_error_operations_are_the_exported_ones(live_stack: Any) -> None:
    scraped = re.findall(
        r'^sessiond_store_errors_total\{operation="(\w+)"\} 0\.0$',
        live_stack.daemon.scrape(),
        re.M,
    )
    assert sorted(documented_operations()) == sorted(scraped)


def test_every_counted_store_error_operation_is_documented() -> None:
    counted = counted_operations()
    assert counted, "found no store error counting in daemon/sessiond: update this test"
    assert counted <= set(documented_operations())
