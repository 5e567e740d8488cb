"""The inference API as its own process on a free port, and the tokens of each scope a test gives it."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
from flightplan.settings import TOKEN_VARIABLES, ApiScope, Settings

REPOSITORY = Path(__file__).parents[2]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def scoped_tokens(token: str) -> dict[ApiScope, str]:
    """A test's token of each scope of the inference API: ``token`` predicts, the others bear their scope's name."""
    return {"predict": token, "feedback": f"{token}-feedback", "admin": f"{token}-admin"}


def token_environment(token: str) -> dict[str, str]:
    """The variables that give a service, or its clients, the tokens of ``scoped_tokens(token)``."""
    return {TOKEN_VARIABLES[scope]: value for scope, value in scoped_tokens(token).items()}


@contextmanager
def service_process(
    settings: Settings,
    token: str,
    poll_seconds: float,
    wait_ready: bool,
    env: dict[str, str] | None = None,
    pipelines: tuple[str, ...] | None = ("flights",),
    double: bool = False,
) -> Iterator[dict]:
    """`flightplan serve` for ``pipelines`` (None: every pipeline of the folder, followed) as its own process (in
    ``env``, by default this one's), on a free port; stopped at exit. ``double``: the service serves the model
    double (:mod:`tests.support.model_double`) instead of the registry's champions."""
    port = free_port()
    env = {**(os.environ if env is None else env), **token_environment(token), "FLIGHTPLAN_HOME": str(settings.home)}
    output = settings.home / f"serve-{port}.log"
    command = (
        [sys.executable, "-m", "tests.support.model_double"]
        if double
        else [str(Path(sys.executable).with_name("flightplan")), "serve"]
    )
    for pipeline in pipelines or ():
        command += ["--pipeline", pipeline]
    with output.open("w") as sink:
        process = subprocess.Popen(
            [*command, "--port", str(port), "--poll-seconds", str(poll_seconds)],
            env=env,
            cwd=REPOSITORY,
            stdout=sink,
            stderr=subprocess.STDOUT,
        )
    url = f"http://127.0.0.1:{port}"
    try:  # a service that never gets ready is stopped too, not left to outlive the session
        _wait_until_answering(url, process, output, wait_ready)
        yield {"url": url, "process": process, "output": output}
    finally:
        if process.poll() is None:
            process.terminate()
            process.wait(30)


def _wait_until_answering(url: str, process: subprocess.Popen[bytes], output: Path, ready: bool) -> None:
    """Until the service answers (``ready``: answers that it is ready), for at most 120 s."""
    deadline = time.monotonic() + 120
    while True:
        assert process.poll() is None, output.read_text()
        try:
            if httpx.get(f"{url}/ready").status_code == 200 or not ready:
                return
        except httpx.TransportError:
            pass
        assert time.monotonic() < deadline, output.read_text()
        time.sleep(0.5)
