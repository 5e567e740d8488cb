"""Nothing left running: a stack process killed while its group lives on (as a LocalExecutor scheduler's workers
do) has that group stopped with its successor, and the test session's own check finds what outlives it."""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from flightplan.dev.stack import Process, StackError, launch, running_pid, stop
from flightplan.settings import load_settings

from tests.support.processes import MARK, leftovers

# A child that sets its title (which overwrites what /proc shows of its environment), ignores SIGTERM and would
# wait forever: an executor's idle worker.
IDLE_WORKER = (
    "import setproctitle, signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); "
    "setproctitle.setproctitle('worker <idle>'); time.sleep(600)"
)
LEADER_WITH_A_STUBBORN_CHILD = 'trap \'\' TERM; "$2" -c "$3" & echo $! > "$1"; wait'


def group_members(group: int) -> list[int]:
    members = []
    for proc in Path("/proc").glob("[0-9]*"):
        try:
            state = proc.joinpath("stat").read_text().rsplit(")", 1)[1].split()[0]
            if os.getpgid(int(proc.name)) == group and state != "Z":
                members.append(int(proc.name))
        except (OSError, ProcessLookupError):
            continue
    return members


def wait_until_gone(group: int, seconds: float = 10) -> list[int]:
    deadline = time.monotonic() + seconds
    while (members := group_members(group)) and time.monotonic() < deadline:
        time.sleep(0.1)
    return members


def test_a_killed_leaders_group_is_stopped_with_its_successor(tmp_path: Path) -> None:
    settings = load_settings({"FLIGHTPLAN_HOME": str(tmp_path)})
    env = {**os.environ, "FLIGHTPLAN_HOME": str(tmp_path)}
    child_pid_file = tmp_path / "child.pid"
    command = ["bash", "-c", LEADER_WITH_A_STUBBORN_CHILD, "worker", str(child_pid_file), sys.executable, IDLE_WORKER]
    worker = Process("worker", command, None)
    first = launch(settings, worker, env)
    deadline = time.monotonic() + 10
    while not child_pid_file.exists() or not child_pid_file.read_text().strip():
        assert time.monotonic() < deadline, "the leader did not start its child"
        time.sleep(0.05)
    child = int(child_pid_file.read_text())

    deadline = time.monotonic() + 10
    while b"FLIGHTPLAN_HOME" in Path(f"/proc/{child}/environ").read_bytes():
        assert time.monotonic() < deadline, "the child did not set its title"
        time.sleep(0.05)
    os.kill(first, signal.SIGKILL)  # as the fault tests kill a scheduler
    os.waitpid(first, 0)
    assert group_members(first) == [child]  # the orphan lives on in the dead leader's group

    second = launch(settings, worker, env)  # a new scheduler takes over
    assert second != first and running_pid(settings, "worker") == second
    assert group_members(first) == [child]  # what the orphan still runs may finish: nothing is killed yet

    assert stop(settings, "worker", grace_seconds=1) == second
    assert wait_until_gone(first) == [] and wait_until_gone(second) == []
    assert not (settings.home / "stack" / "worker.orphans").exists()


def test_the_sessions_check_names_a_process_that_outlives_it(tmp_path: Path) -> None:
    """Found by the mark in its environment, or, once it has set its title, by the log it writes under the
    session's folders; a process with neither is not the session's."""
    mark = f"check-{os.getpid()}"
    marked = subprocess.Popen(["sleep", "600"], env={**os.environ, MARK: mark}, start_new_session=True)
    with (tmp_path / "worker.log").open("w") as log:
        titled = subprocess.Popen([sys.executable, "-c", IDLE_WORKER], stdout=log, start_new_session=True)
    try:
        deadline = time.monotonic() + 10
        while leftovers(mark, (tmp_path,)) != sorted([f"{marked.pid} sleep 600", f"{titled.pid} worker <idle>"]):
            assert time.monotonic() < deadline, leftovers(mark, (tmp_path,))
            time.sleep(0.05)
        assert leftovers(f"{mark}-other", (tmp_path / "elsewhere",)) == []
    finally:
        for process in (marked, titled):
            process.kill()
            process.wait()
    assert leftovers(mark, (tmp_path,)) == []


def test_stop_of_a_process_that_never_ran_does_nothing(tmp_path: Path) -> None:
    settings = load_settings({"FLIGHTPLAN_HOME": str(tmp_path)})
    assert stop(settings, "worker", grace_seconds=1) is None


def test_a_process_is_not_started_on_a_port_another_answers_nor_without_its_secret_file(tmp_path: Path) -> None:
    """Either would pass for a healthy start: the other listener's answers for its own, or a Spark Connect server
    serving without its token."""
    settings = load_settings({"FLIGHTPLAN_HOME": str(tmp_path)})
    env = {**os.environ, "FLIGHTPLAN_HOME": str(tmp_path)}
    sleeper = [sys.executable, "-c", "import time; time.sleep(600)"]
    with socket.socket() as other:
        other.bind(("127.0.0.1", 0))
        other.listen()
        taken = f"tcp://127.0.0.1:{other.getsockname()[1]}"
        with pytest.raises(StackError, match=re.escape(f"something else already answers {taken}")):
            launch(settings, Process("server", sleeper, taken), env)
    token = tmp_path / "token"
    with pytest.raises(StackError, match=re.escape(f"{token} missing or empty")):
        launch(settings, Process("server", sleeper, None, secret_files={"TOKEN": token}), env)
    token.write_text("\n")
    with pytest.raises(StackError, match=re.escape(f"{token} missing or empty")):
        launch(settings, Process("server", sleeper, None, secret_files={"TOKEN": token}), env)
    assert running_pid(settings, "server") is None
    token.write_text("a value\n")
    pid = launch(settings, Process("server", sleeper, None, secret_files={"TOKEN": token}), env)
    try:
        assert b"TOKEN=a value\x00" in Path(f"/proc/{pid}/environ").read_bytes()
    finally:
        stop(settings, "server")
