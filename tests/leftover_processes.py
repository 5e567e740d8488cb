"""The processes a test session started that outlive it. The session marks its environment, which every process
it starts inherits (the stack, a scheduler, its workers and their tasks, all built on ``os.environ``): at its end,
any process but the session's own and its ancestors that still carries the mark was left running."""

from __future__ import annotations

import os
import time
from pathlib import Path

MARK = "FLIGHTPLAN_TEST_SESSION"


def mark_session() -> str:
    """Marks this process's environment (and so its children's) with a value of its own; returns it."""
    value = f"{os.getpid()}-{_stat(os.getpid())[2]}"
    os.environ[MARK] = value
    return value


def _stat(pid: int) -> tuple[str, int, int]:
    """A process's state, parent and start time (clock ticks since boot), from /proc/<pid>/stat."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return fields[0], int(fields[1]), int(fields[19])


def _ancestors(pid: int) -> set[int]:
    found = set()
    while pid > 1:
        found.add(pid)
        pid = _stat(pid)[1]
    return found


def leftovers(mark: str) -> list[str]:
    """``pid command`` of each live process, other than this one and its ancestors, that carries ``mark``."""
    entry = f"{MARK}={mark}".encode()
    spared = _ancestors(os.getpid())
    found = []
    for proc in Path("/proc").glob("[0-9]*"):
        pid = int(proc.name)
        try:
            if pid in spared or _stat(pid)[0] in ("Z", "X"):
                continue
            if entry not in (proc / "environ").read_bytes().split(b"\0"):
                continue
            command = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace").strip()
        except OSError:
            continue  # ended meanwhile, or not ours to read
        found.append(f"{pid} {command[:200]}")
    return sorted(found)


def wait_for_leftovers(mark: str, grace_seconds: float = 30) -> list[str]:
    """The leftovers still there after a grace period for what is stopping now (a SIGTERM being handled)."""
    deadline = time.monotonic() + grace_seconds
    while (found := leftovers(mark)) and time.monotonic() < deadline:
        time.sleep(1)
    return found
