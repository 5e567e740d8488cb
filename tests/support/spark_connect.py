"""A Spark Connect server of the embedded stack (`flightplan up spark`) on a free port, and what a process needs
to connect to it. A process that has connected cannot start a Spark of its own (Spark's Connect mode is
process-wide), so the tests' own process never connects: the DAGs' tasks and the subprocesses of a test do."""

from __future__ import annotations

import os
import secrets
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from flightplan.secrets import write_owner_only
from flightplan.settings import load_settings

from tests.support.service import free_port


@contextmanager
def spark_connect_server(home: Path) -> Iterator[dict[str, str]]:
    """Starts the stack's server with ``home`` as its home; yields the environment of a client, stops it at exit."""
    from flightplan.dev.stack import launch, spark_connect_server, stop, wait_ready
    from flightplan.spark import connect_token_file

    url = f"sc://localhost:{free_port()}"
    environment = {key: value for key, value in os.environ.items() if key != "FLIGHTPLAN_SPARK_REMOTE"}
    environment |= {"FLIGHTPLAN_HOME": str(home), "FLIGHTPLAN_SPARK_SERVER": url}
    settings = load_settings(environment)
    token = secrets.token_urlsafe(32)
    write_owner_only(connect_token_file(settings), token)
    [server] = spark_connect_server(settings)
    try:
        launch(settings, server, environment)
        wait_ready(settings, [server])
        yield {"FLIGHTPLAN_SPARK_REMOTE": url, "SPARK_CONNECT_AUTHENTICATE_TOKEN": token}
    finally:
        stop(settings, server.name)
