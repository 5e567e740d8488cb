"""The `flightplan` command."""

from __future__ import annotations

import argparse
import json
import shlex
import sys
from datetime import date
from pathlib import Path

from flightplan.config import ConfigError, available_pipelines, load_pipeline
from flightplan.data.partitions import interval_key
from flightplan.layout import Layout
from flightplan.settings import airflow_environment, api_token, load_settings, token_file


def _layout(pipeline: str) -> Layout:
    settings = load_settings()
    return Layout(settings, load_pipeline(pipeline, settings.pipelines_dir))


def replay(args: argparse.Namespace) -> int:
    from flightplan.replay import replay as replay_days

    layout = _layout(args.pipeline)
    counts = replay_days(layout, args.start, args.end)
    print(f"replayed {sum(counts.values()):,} rows over {len(counts)} days into {layout.landing}")
    return 0


def traffic(args: argparse.Namespace) -> int:
    from flightplan.replay import replay_traffic

    layout = _layout(args.pipeline)
    sent = replay_traffic(layout, args.start, args.end, args.batch_rows, args.feedback_share)
    print(
        f"{sent['answered']:,} of {sent['rows']:,} labeled rows answered by {layout.settings.service_url}, "
        f"{sent['labeled']:,} true labels sent back"
    )
    return 0


def check(args: argparse.Namespace) -> int:
    settings = load_settings()
    names = args.pipelines or available_pipelines(settings.pipelines_dir)
    failed = 0
    for name in names:
        try:
            config = load_pipeline(name, settings.pipelines_dir)
        except ConfigError as err:
            print(err, file=sys.stderr)
            failed += 1
            continue
        features = len(config.features.numeric) + len(config.features.categorical) + len(config.features.derived)
        label = f"label '{config.label.name}' ({config.label.task})"
        print(f"{config.name}: {len(config.all_columns)} columns, {features} features, {label}, {config.fingerprint()}")
    return 1 if failed else 0


def airflow_env(args: argparse.Namespace) -> int:
    for key, value in airflow_environment(load_settings(), args.dags.resolve(), args.plugins.resolve()).items():
        print(f"export {key}={shlex.quote(value)}")
    return 0


def summary(args: argparse.Namespace) -> int:
    """Where a data-engineering run left its results, and what they say."""
    layout = _layout(args.pipeline)
    key = interval_key(args.start, args.end)
    ingest = json.loads(layout.manifest("ingest", key).read_text())
    validation = json.loads(layout.manifest("validate", key).read_text())
    labeled = json.loads(layout.manifest("label", key).read_text())
    latest = json.loads((layout.splits / "latest.json").read_text())
    split = json.loads(Path(latest["manifest"]).read_text())
    print(f"\n{layout.name}: {args.start} to {args.end} (end excluded)")
    files, quarantined = len(ingest["files"]), ingest["quarantined_total"]
    print(f"  ingested      {ingest['rows_total']:>9,} rows from {files} files, {quarantined:,} quarantined")
    print(f"  validated     {'passed' if validation['success'] else 'FAILED'}")
    unlabeled = labeled["quarantined_total"]
    print(f"  labeled       {labeled['rows_total']:>9,} rows, {unlabeled:,} without a label (quarantined)")
    for side in ("train", "validation", "test"):
        stats = split["sides"][side]
        print(f"  {side:<13} {stats['rows']:>9,} rows  {stats['from']} .. {stats['to']}  classes {stats['classes']}")
    print(f"\n  Data Docs       {validation['data_docs']}")
    print(f"  profile page    {layout.reports('profile') / key / 'profile.html'}")
    print(f"  split manifest  {latest['manifest']}")
    print(f"  quarantine      {ingest['quarantine']}")
    _print_challenger(layout)
    _print_service(layout)
    return 0


def _print_service(layout: Layout) -> None:
    """The champion the service answers with, three recent records through it, and where its docs are."""
    import httpx

    from flightplan.model.registry import CHAMPION, alias_version
    from flightplan.serving.deploy import recent_records, service_client

    settings = layout.settings
    champion = alias_version(settings, layout.config.registered_model, CHAMPION)
    if champion is None:
        return
    print(f"\n  champion      version {champion}, served at {settings.service_url}")
    recent, records = recent_records(layout, 3)
    try:
        with service_client(settings) as http:
            response = http.post(f"/v1/{layout.name}/predict/batch", json={"records": records})
        response.raise_for_status()
    except httpx.HTTPError as err:
        print(f"  (the service does not answer: {err}; start it with `flightplan service start --pipeline ...`)")
        return
    answer = response.json()
    truth = recent[layout.config.label.name].tolist()
    for record, prediction, label in zip(records, answer["predictions"], truth, strict=True):
        shown = ", ".join(f"{k}={record[k]}" for k in list(record)[:4])
        print(
            f"  {shown} → {prediction['prediction']} (p={prediction['probability']:.3f}, "
            f"version {answer['model_version']}, true {label})"
        )
    print(f"\n  API docs        {settings.service_url}/docs   (bearer token in {token_file(settings)})")
    print("  stop it with    make down")


def _print_challenger(layout: Layout) -> None:
    """The model the last model-engineering run registered, and where to look at it in MLflow."""
    from flightplan.model.registry import CHALLENGER
    from flightplan.tracking import client, model_experiment

    mlflow_client = client(layout.settings)
    name = layout.config.registered_model
    if not mlflow_client.search_registered_models(f"name = '{name}'"):
        return
    version = mlflow_client.get_model_version_by_alias(name, CHALLENGER)
    run = mlflow_client.get_run(version.tags["flightplan.run_id"])
    parity = json.loads((layout.model_run(run.info.run_id) / "parity.json").read_text())
    metrics = run.data.metrics
    primary = layout.config.primary_metric
    print(f"\n  model         {name} version {version.version} (alias {CHALLENGER}), MLflow run {run.info.run_id}")
    print(f"  test {primary:<8} {metrics[f'test_{primary}']:.4f}  (validation {metrics[f'validation_{primary}']:.4f})")
    print(f"  ONNX parity   max |difference| {parity['max_abs_diff']:.2e} on {parity['rows']:,} test rows")
    print(
        f"\n  MLflow UI       {sys.executable.rsplit('/', 1)[0]}/mlflow ui --backend-store-uri "
        f"{layout.settings.mlflow_tracking_uri} --port 5000  →  http://127.0.0.1:5000"
    )
    print(f"  experiment      {model_experiment(layout.config)} (compare runs), model {name} in Models")


def serve(args: argparse.Namespace) -> int:
    """Runs the inference API until SIGTERM/SIGINT (in-flight requests finish and are logged first)."""
    import logging

    import uvicorn

    from flightplan.serving.app import ServiceOptions, create_app

    settings = load_settings()
    token = api_token(settings)
    if token is None and not args.no_auth:
        print(
            "set FLIGHTPLAN_API_TOKEN to the bearer token clients must send (or run `flightplan service start`, "
            f"which generates one in {token_file(settings)}), or pass --no-auth to serve without authentication "
            "(local use only)",
            file=sys.stderr,
        )
        return 2
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    options = ServiceOptions(args.pipeline, None if args.no_auth else token, args.poll_seconds)
    app = create_app(settings, options)
    uvicorn.run(app, host=args.host, port=args.port, access_log=False, log_level="info", timeout_graceful_shutdown=30)
    return 0


def _alive(pid: int) -> bool:
    import os

    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def service(args: argparse.Namespace) -> int:
    """Starts `flightplan serve` in the background (a token generated if none is set), or stops it."""
    import os
    import secrets
    import signal
    import subprocess
    import time

    import httpx

    settings = load_settings()
    folder = settings.home / "serving"
    pid_file = folder / "service.pid"
    running = int(pid_file.read_text()) if pid_file.exists() else None
    if running is not None and not _alive(running):
        running = None
    if args.action == "stop":
        if running is not None:
            os.kill(running, signal.SIGTERM)
            for _ in range(300):
                if not _alive(running):
                    break
                time.sleep(0.1)
            print(f"stopped the inference service (pid {running})")
        pid_file.unlink(missing_ok=True)
        return 0
    if running is not None:
        print(f"the inference service is already running (pid {running}) at {settings.service_url}")
        return 0
    folder.mkdir(parents=True, exist_ok=True)
    if api_token(settings) is None:
        # Created readable by its owner only, never for a moment by anyone else.
        handle = os.open(token_file(settings), os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(handle, "w") as out:
            out.write(secrets.token_urlsafe(32))
    port = str(httpx.URL(settings.service_url).port or 80)
    command = [sys.executable, "-m", "flightplan.cli", "serve", "--port", port]
    for pipeline in args.pipeline:
        command += ["--pipeline", pipeline]
    with (folder / "service.log").open("a") as log_file:
        process = subprocess.Popen(command, stdout=log_file, stderr=subprocess.STDOUT, start_new_session=True)
    pid_file.write_text(str(process.pid))
    for _ in range(600):
        if process.poll() is not None:
            print((folder / "service.log").read_text()[-3000:], file=sys.stderr)
            return 1
        try:
            httpx.get(f"{settings.service_url}/health", timeout=1)
            break
        except httpx.TransportError:
            time.sleep(0.2)
    print(f"inference service running (pid {process.pid}) at {settings.service_url}, log {folder / 'service.log'}")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="flightplan", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)

    def with_interval(command: argparse.ArgumentParser) -> None:
        command.add_argument("--pipeline", required=True)
        command.add_argument("--start", type=date.fromisoformat, required=True, help="first day, YYYY-MM-DD")
        command.add_argument("--end", type=date.fromisoformat, required=True, help="day after the last day")

    cmd = commands.add_parser("replay", help="drop a dataset into the landing zone as daily CSV files")
    with_interval(cmd)
    cmd.set_defaults(run=replay)
    cmd = commands.add_parser("traffic", help="send labeled days to the inference API, then their true labels")
    with_interval(cmd)
    cmd.add_argument("--batch-rows", type=int, default=500, help="records per request")
    cmd.add_argument("--feedback-share", type=float, default=1.0, help="share of answers whose label is sent back")
    cmd.set_defaults(run=traffic)
    cmd = commands.add_parser("check", help="validate pipeline configs")
    cmd.add_argument("pipelines", nargs="*")
    cmd.set_defaults(run=check)
    cmd = commands.add_parser("airflow-env", help="print the environment of the embedded Airflow")
    cmd.add_argument("--dags", type=Path, default=Path("dags"))
    cmd.add_argument("--plugins", type=Path, default=Path("plugins"))
    cmd.set_defaults(run=airflow_env)
    cmd = commands.add_parser("summary", help="print where a data-engineering run left its results")
    with_interval(cmd)
    cmd.set_defaults(run=summary)
    cmd = commands.add_parser("serve", help="serve the champion model of pipelines over HTTP")
    cmd.add_argument("--pipeline", action="append", required=True, help="repeat to serve several pipelines")
    cmd.add_argument("--host", default="127.0.0.1")
    cmd.add_argument("--port", type=int, default=8000)
    cmd.add_argument("--poll-seconds", type=float, default=10.0, help="how often to check the champion alias")
    cmd.add_argument("--no-auth", action="store_true", help="serve without a bearer token (local use only)")
    cmd.set_defaults(run=serve)
    cmd = commands.add_parser("service", help="start or stop the inference service in the background")
    cmd.add_argument("action", choices=["start", "stop"])
    cmd.add_argument("--pipeline", action="append", default=[], help="pipelines to serve (start)")
    cmd.set_defaults(run=service)
    args = parser.parse_args(argv)
    try:
        return int(args.run(args))
    except ConfigError as err:
        print(err, file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
