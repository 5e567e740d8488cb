"""The `flightplan` command."""

from __future__ import annotations

import argparse
import re
import shlex
import sys
from collections.abc import Callable
from datetime import date
from pathlib import Path
from typing import NamedTuple

from flightplan.config import ConfigError, available_pipelines, load_pipeline
from flightplan.data.partitions import interval_key
from flightplan.dev.stack import COMPONENTS
from flightplan.layout import Layout
from flightplan.manifests import IngestManifest, LabelManifest, LatestSplit, SplitManifest, ValidationManifest
from flightplan.orchestration import dag_id
from flightplan.settings import TOKEN_VARIABLES, Settings, airflow_environment, api_tokens, load_settings, token_file


def _layout(pipeline: str) -> Layout:
    settings = load_settings()
    return Layout(settings, load_pipeline(pipeline, settings.pipelines_dir))


def init(args: argparse.Namespace) -> int:
    from flightplan.scaffold import InitError, draft

    settings = load_settings()
    name = args.name or re.sub(r"[^a-z0-9_]+", "_", args.data.stem.lower()).strip("_")
    output = args.output or settings.pipelines_dir / f"{name}.yaml"
    if output.exists() and not args.force:
        print(f"{output} exists: pass --force to replace it", file=sys.stderr)
        return 1
    try:
        drafted = draft(args.data, args.target, name, output, args.task, args.time_column, args.key, args.delimiter)
    except InitError as err:
        print(f"flightplan init: {err}", file=sys.stderr)
        return 1
    config = drafted.config
    features = len(config.features.numeric) + len(config.features.categorical) + len(config.features.derived)
    print(f"wrote {output}: {drafted.rows:,} rows, {len(config.source.columns)} columns, {features} features")
    print(f"  label '{config.label.name}' ({config.label.task}), split {config.split.strategy}")
    for column, reason in drafted.excluded.items():
        print(f"  left out {column}: {reason}")
    print(
        f"next: review {output}; Airflow lists its DAGs within a parse interval: trigger "
        f"{dag_id(name, 'data_engineering')}"
        + (" (a snapshot: no dates needed)" if config.source.snapshot else " with a 'start' and an 'end' date")
    )
    return 0


def replay(args: argparse.Namespace) -> int:
    from flightplan.dev.replay import replay as replay_days

    layout = _layout(args.pipeline)
    counts = replay_days(layout, args.start, args.end)
    print(f"replayed {sum(counts.values()):,} rows over {len(counts)} days into {layout.landing}")
    return 0


def traffic(args: argparse.Namespace) -> int:
    from flightplan.dev.replay import replay_traffic

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
    ingest = IngestManifest.read(layout.manifest("ingest", key))
    validation = ValidationManifest.read(layout.manifest("validate", key))
    labeled = LabelManifest.read(layout.manifest("label", key))
    latest = LatestSplit.read(layout.splits / "latest.json")
    split = SplitManifest.read(Path(latest.manifest))
    print(f"\n{layout.name}: {args.start} to {args.end} (end excluded)")
    files, quarantined = len(ingest.files), ingest.quarantined_total
    print(f"  ingested      {ingest.rows_total:>9,} rows from {files} files, {quarantined:,} quarantined")
    if ingest.days_kept:
        print(
            f"  kept          {len(ingest.days_kept)} day(s) without landing files as they were: "
            + ", ".join(map(str, ingest.days_kept))
        )
    print(f"  validated     {'passed' if validation.success else 'FAILED'}")
    unlabeled = labeled.quarantined_total
    print(f"  labeled       {labeled.rows_total:>9,} rows, {unlabeled:,} without a label (quarantined)")
    for side in ("train", "validation", "test"):
        stats = split.sides[side]
        print(f"  {side:<13} {stats.rows:>9,} rows  {stats.first} .. {stats.last}  classes {stats.classes}")
    print(f"\n  Data Docs       {validation.data_docs}")
    print(f"  profile page    {layout.reports('profile') / key / 'profile.html'}")
    print(f"  split manifest  {latest.manifest}")
    print(f"  quarantine      {ingest.quarantine}")
    from flightplan.dev.demo import summarize_models

    summarize_models(layout.settings, layout)
    return 0


def serve(args: argparse.Namespace) -> int:
    """Runs the inference API until SIGTERM/SIGINT (in-flight requests finish and are logged first)."""
    import logging

    from flightplan.serving.app import ServiceOptions, create_app, run_service

    settings = load_settings()
    tokens = api_tokens(settings)
    if "predict" not in tokens and not args.no_auth:
        print(
            "set FLIGHTPLAN_API_TOKEN to the bearer token clients must send to predict (or run `flightplan up`, "
            f"which generates one in {token_file(settings)}), or pass --no-auth to serve without authentication "
            "(local use only)",
            file=sys.stderr,
        )
        return 2
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if not args.no_auth:
        for scope in TOKEN_VARIABLES.keys() - tokens.keys():
            logging.warning("no %s: the %s routes answer 403", TOKEN_VARIABLES[scope], scope)
    options = ServiceOptions(args.pipeline, None if args.no_auth else tokens, args.poll_seconds)
    run_service(create_app(settings, options), args.host, args.port)
    return 0


def airflow_passwords(args: argparse.Namespace) -> int:
    """Writes the passwords of the Airflow users (AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS) from AIRFLOW_PASSWORDS
    where the simple auth manager reads them, before the API server starts (the compose stack's api-server)."""
    import os

    from flightplan.dev.airflow_rest import PASSWORDS_FILE
    from flightplan.dev.stack import StackError, write_airflow_passwords
    from flightplan.secrets import user_names

    users = user_names(os.environ.get("AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS", ""))
    configured_file = os.environ.get("AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE")
    path = Path(configured_file) if configured_file else load_settings().airflow_home / PASSWORDS_FILE
    try:
        write_airflow_passwords(path, users, os.environ.get("AIRFLOW_PASSWORDS", ""))
    except StackError as err:
        print(err, file=sys.stderr)
        return 2
    print(f"wrote the passwords of {len(users)} Airflow user(s) to {path} (owner-only)")
    return 0


def dotenv(args: argparse.Namespace) -> int:
    """Writes the compose stack's `.env` from `.env.example`, every secret freshly generated, owner-only."""
    from flightplan.secrets import fresh_dotenv, write_owner_only

    if not args.example.is_file():
        print(f"{args.example} is missing: the template the .env is written from", file=sys.stderr)
        return 1
    try:
        write_owner_only(args.output, fresh_dotenv(args.example.read_text()), replace=args.force)
    except FileExistsError:
        print(f"{args.output} exists: pass --force to replace it (and every secret in it)", file=sys.stderr)
        return 1
    print(f"wrote {args.output} (owner-only) with fresh secrets from {args.example}")
    return 0


def check_secrets(args: argparse.Namespace) -> int:
    """Refuses the compose stack's secrets in this process's environment that are empty, placeholders, short,
    invalid or reused (the compose stack's secrets-check service, before any service that uses one starts)."""
    import os

    from flightplan.secrets import SECRETS, secret_problems

    problems = secret_problems(os.environ)
    for problem in problems:
        print(f"refused: {problem}", file=sys.stderr)
    if problems:
        print("`make dotenv` generates a .env with fresh secrets", file=sys.stderr)
        return 1
    print(f"the {len(SECRETS)} secrets are set, long enough and distinct")
    return 0


def up(args: argparse.Namespace) -> int:
    """Starts the embedded stack (or the components named) in the background."""
    from flightplan.dev.stack import StackError, status
    from flightplan.dev.stack import up as start_stack

    settings = load_settings()
    try:
        start_stack(settings, args.dags.resolve(), args.plugins.resolve(), args.components)
    except StackError as err:
        print(f"{err}\n(what did start still runs: `flightplan down` stops it)", file=sys.stderr)
        return 1
    _print_status(settings, status(settings))
    return 0


def down(args: argparse.Namespace) -> int:
    from flightplan.dev.stack import StackError
    from flightplan.dev.stack import down as stop_stack

    try:
        stopped = stop_stack(load_settings(), args.components)
    except StackError as err:
        print(err, file=sys.stderr)
        return 2
    for name, pid in stopped.items():
        print(f"{name:<22} {'stopped (pid ' + str(pid) + ')' if pid else 'was not running'}")
    return 0


def stack_status(args: argparse.Namespace) -> int:
    from flightplan.dev.stack import status

    found = status(load_settings())
    _print_status(load_settings(), found)
    return 0 if all(found.values()) else 1


def _print_status(settings: Settings, found: dict[str, int | None]) -> None:
    from flightplan.dev.stack import stack_dir

    urls = {
        "spark-connect": settings.spark_server,
        "airflow-api-server": settings.airflow_url,
        "mlflow": settings.mlflow_ui_url,
        "service": settings.service_url,
    }
    for name, pid in found.items():
        where = f"  {urls[name]}" if name in urls and pid else ""
        print(f"{name:<22} {'running (pid ' + str(pid) + ')' if pid else 'stopped'}{where}")
    print(f"logs under {stack_dir(settings)}")


def demo(args: argparse.Namespace) -> int:
    """Starts the stack, runs the demo loop through it and prints what happened."""
    import os

    from flightplan.dev.demo import DemoFailed, DemoPlan, Progress, run_demo, summarize, summarize_models
    from flightplan.dev.stack import StackError, stack_airflow_environment
    from flightplan.dev.stack import up as start_stack

    layout = _layout(args.pipeline)
    settings = layout.settings
    dags, plugins = args.dags.resolve(), args.plugins.resolve()
    progress = Progress(lambda line: print(line, flush=True))
    try:
        with progress.step("the stack: Airflow, the MLflow UI, the inference service"):
            start_stack(settings, dags, plugins)
        env = {**os.environ, **stack_airflow_environment(settings, dags, plugins)}
        record = run_demo(settings, layout, DemoPlan(args.pipeline, args.start, args.middle, args.end), env, progress)
    except (StackError, DemoFailed) as err:
        print(err, file=sys.stderr)
        return 1
    summarize(settings, layout, record)
    summarize_models(settings, layout)
    return 0


class Command(NamedTuple):
    """A subcommand: its line in `flightplan --help`, the function it runs, and what adds its arguments."""

    help_text: str
    run: Callable[[argparse.Namespace], int]
    add_arguments: Callable[[argparse.ArgumentParser], None]


def _no_arguments(command: argparse.ArgumentParser) -> None:
    pass


def _interval_arguments(command: argparse.ArgumentParser) -> None:
    command.add_argument("--pipeline", required=True)
    command.add_argument("--start", type=date.fromisoformat, required=True, help="first day, YYYY-MM-DD")
    command.add_argument("--end", type=date.fromisoformat, required=True, help="day after the last day")


def _folder_arguments(command: argparse.ArgumentParser) -> None:
    command.add_argument("--dags", type=Path, default=Path("dags"), help="the DAGs folder")
    command.add_argument("--plugins", type=Path, default=Path("plugins"), help="the Airflow plugins folder")


def _init_arguments(command: argparse.ArgumentParser) -> None:
    command.add_argument("data", type=Path, help="a CSV or Parquet file, or a folder of them (daily drops: YYYY-MM-DD)")
    command.add_argument("--target", required=True, help="the column to predict")
    command.add_argument("--name", help="pipeline name; the file's name if unset")
    command.add_argument(
        "--task", choices=["binary", "multiclass", "regression"], help="inferred from the target if unset"
    )
    command.add_argument("--time-column", help="when each record happened: the split becomes time-based")
    command.add_argument("--key", action="append", help="a column that identifies a record (repeat for several)")
    command.add_argument("--delimiter", default=",", help="CSV field delimiter")
    command.add_argument("--output", type=Path, help="where to write the YAML; the pipelines folder if unset")
    command.add_argument("--force", action="store_true", help="replace an existing file")


def _traffic_arguments(command: argparse.ArgumentParser) -> None:
    _interval_arguments(command)
    command.add_argument("--batch-rows", type=int, default=500, help="records per request")
    command.add_argument("--feedback-share", type=float, default=1.0, help="share of answers whose label is sent back")


def _check_arguments(command: argparse.ArgumentParser) -> None:
    command.add_argument("pipelines", nargs="*")


def _serve_arguments(command: argparse.ArgumentParser) -> None:
    command.add_argument(
        "--pipeline",
        action="append",
        help="serve only this pipeline (repeat for several); by default every pipeline of the folder, followed as "
        "YAMLs are added, edited and removed",
    )
    command.add_argument("--host", default="127.0.0.1")
    command.add_argument("--port", type=int, default=8000)
    command.add_argument("--poll-seconds", type=float, default=10.0, help="how often to check the champion alias")
    command.add_argument("--no-auth", action="store_true", help="serve without a bearer token (local use only)")


def _stack_arguments(command: argparse.ArgumentParser) -> None:
    command.add_argument("components", nargs="*", help=f"some of: {', '.join(COMPONENTS)}; all when none is named")
    _folder_arguments(command)


def _dotenv_arguments(command: argparse.ArgumentParser) -> None:
    command.add_argument("--output", type=Path, default=Path(".env"), help="the file to write (owner-only)")
    command.add_argument("--example", type=Path, default=Path(".env.example"), help="the template it is written from")
    command.add_argument("--force", action="store_true", help="replace an existing file")


def _demo_arguments(command: argparse.ArgumentParser) -> None:
    _interval_arguments(command)
    command.add_argument("--middle", type=date.fromisoformat, required=True, help="first day of the traffic half")
    _folder_arguments(command)


COMMANDS = {
    "init": Command("profile a data file and write a pipeline YAML for it", init, _init_arguments),
    "replay": Command("drop a dataset into the landing zone as daily CSV files", replay, _interval_arguments),
    "traffic": Command("send labeled days to the inference API, then their true labels", traffic, _traffic_arguments),
    "check": Command("validate pipeline configs", check, _check_arguments),
    "airflow-env": Command("print the environment of the embedded Airflow", airflow_env, _folder_arguments),
    "summary": Command("print where a data-engineering run left its results", summary, _interval_arguments),
    "serve": Command("serve the champion model of pipelines over HTTP", serve, _serve_arguments),
    "up": Command("start the embedded stack in the background", up, _stack_arguments),
    "down": Command("stop it", down, _stack_arguments),
    "airflow-passwords": Command(
        "write the Airflow users' passwords from AIRFLOW_PASSWORDS", airflow_passwords, _no_arguments
    ),
    "dotenv": Command("write the compose stack's .env with fresh secrets", dotenv, _dotenv_arguments),
    "check-secrets": Command(
        "refuse empty, placeholder, short, invalid or reused secrets", check_secrets, _no_arguments
    ),
    "status": Command("which processes of the embedded stack run", stack_status, _no_arguments),
    "demo": Command("the whole loop on a pipeline's demo data, through the running stack", demo, _demo_arguments),
}


def build_parser() -> argparse.ArgumentParser:
    """The `flightplan` command with a subcommand for each entry of ``COMMANDS``, in its order."""
    parser = argparse.ArgumentParser(prog="flightplan", description=__doc__)
    subcommands = parser.add_subparsers(dest="command", required=True)
    for name, command in COMMANDS.items():
        command.add_arguments(subcommands.add_parser(name, help=command.help_text))
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return COMMANDS[args.command].run(args)
    except ConfigError as err:
        print(err, file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
