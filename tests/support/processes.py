"""The processes a test session started that outlive it. The session marks its environment, which every process
it starts inherits (the stack, a scheduler, its workers and their tasks, all built on ``os.environ``); a process
that sets its title (setproctitle, as Airflow's executor workers do) overwrites what /proc shows of its
environment, but its output still goes to a log under the session's temporary folders. At the session's end,
any process but the session's own and its ancestors that carries the mark, or writes under those folders, was
left running."""

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


def _started_by_the_session(proc: Path, entry: bytes, roots: tuple[Path, ...]) -> bool:
    if entry in (proc / "environ").read_bytes().split(b"\0"):
        return True
    for fd in ("0", "1", "2"):
        try:
            target = Path(os.readlink(proc / "fd" / fd))
        except OSError:
            continue
        if any(target.is_relative_to(root) for root in roots):
            return True
    return False


def leftovers(mark: str, roots: tuple[Path, ...] = ()) -> list[str]:
    """``pid command`` of each live process, other than this one and its ancestors, that carries ``mark`` or
    reads or writes a file under one of ``roots`` on its standard streams."""
    entry = f"{MARK}={mark}".encode()
    spared = _ancestors(os.getpid())
    found = []
    for proc in Path("/proc").glob("[0-9]*"):
        pid = int(proc.name)
        try:
            if pid in spared or _stat(pid)[0] in ("Z", "X") or not _started_by_the_session(proc, entry, roots):
                continue
            command = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace").strip()
        except OSError:
            continue  # ended meanwhile, or not ours to read
        found.append(f"{pid} {command[:200]}")
    return sorted(found)


def wait_for_leftovers(mark: str, roots: tuple[Path, ...], grace_seconds: float = 30) -> list[str]:
    """The leftovers still there after a grace period for what is stopping now (a SIGTERM being handled)."""
    deadline = time.monotonic() + grace_seconds
    while (found := leftovers(mark, roots)) and time.monotonic() < deadline:
        time.sleep(1)
    return found
