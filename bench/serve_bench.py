"""Serving benchmark: our inference API against `mlflow models serve` on the same model, on loopback, driven
by wrk in the same run (batch scoring is batch_bench.py's).

The model is the one `train_bench.py` trains on the demo year (300 rounds, depth 6), registered and
promoted to `champion`. Our service gets raw records (it encodes them and logs every answer durably before
replying). `mlflow models serve` runs twice, each time given the already encoded float matrix of the same
rows and logging nothing: on the model's XGBoost flavor (the usual way to serve an XGBoost model with
MLflow) and on its registered ONNX version. A second instance of our service answers with a `challenger` (a
copy of the same model) in shadow on every request, to measure what the shadow costs the served answers. All
servers run at once; each cell (rows per request,
connections) runs ``--seconds`` per contender, the contenders taking turns, ``--rounds`` times, and keeps each
one's median run. Run with ``make bench``.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import astuple, dataclass, field
from pathlib import Path
from typing import Any

import httpx

sys.path.insert(0, str(Path(__file__).parent))
from train_bench import PIPELINE, bench_training, prepare_split

TOKEN = "bench-token"
# The longest a run waits for the shadow to answer its backlog (20,000 rows at most) before the next run.
SHADOW_DRAIN_SECONDS = 120
# The share of requests above their p99.
P99_SHARE = 0.01
LUA = """
local f = assert(io.open(os.getenv("BODY_FILE"), "rb"))
wrk.method = "POST"; wrk.body = f:read("*a"); f:close()
wrk.headers["Content-Type"] = "application/json"
wrk.headers["Authorization"] = "Bearer " .. os.getenv("BENCH_TOKEN")
function done(summary, latency, requests)
  local e = summary.errors
  io.write(string.format('JSON {"requests":%d,"rps":%.2f,"p50_ms":%.3f,"p99_ms":%.3f,"errors":%d}\\n',
    summary.requests, summary.requests / (summary.duration / 1e6), latency:percentile(50) / 1000,
    latency:percentile(99) / 1000, e.status + e.connect + e.read + e.write + e.timeout))
end
"""


def ensure_wrk() -> str:
    found = shutil.which("wrk")
    if found:
        return found
    print("installing wrk (apt-get)", flush=True)
    subprocess.run(["apt-get", "update", "-qq"], check=True)
    subprocess.run(
        ["apt-get", "install", "-y", "-qq", "--no-install-recommends", "wrk"],
        check=True,
        env={**os.environ, "DEBIAN_FRONTEND": "noninteractive"},
    )
    return shutil.which("wrk") or "wrk"


def wait_for(url: str, process: subprocess.Popen[bytes], log: Path) -> None:
    deadline = time.monotonic() + 180
    while True:
        if process.poll() is not None:
            raise RuntimeError(log.read_text()[-3000:])
        try:
            httpx.get(url, timeout=2)
            return
        except httpx.TransportError:
            if time.monotonic() > deadline:
                raise RuntimeError(log.read_text()[-3000:]) from None
            time.sleep(0.5)


def start(contender: Contender, log: Path) -> subprocess.Popen[bytes]:
    with log.open("w") as sink:
        env = {**os.environ, **contender.env}
        process = subprocess.Popen(contender.command, stdout=sink, stderr=subprocess.STDOUT, env=env)
    url = contender.health
    wait_for(url, process, log)
    return process


def load(wrk: str, url: str, body: Any, connections: int, seconds: int, folder: Path) -> dict[str, float]:
    body_file = folder / "body.json"
    body_file.write_text(json.dumps(body))
    script = folder / "post.lua"
    script.write_text(LUA)
    threads = min(2, connections)
    env = {**os.environ, "BODY_FILE": str(body_file), "BENCH_TOKEN": TOKEN}
    command = [wrk, f"-t{threads}", f"-c{connections}", f"-d{seconds}s", "--latency", "-s", str(script), url]
    output = subprocess.run(command, env=env, capture_output=True, text=True, check=True).stdout
    line = next(line for line in output.splitlines() if line.startswith("JSON "))
    return dict(json.loads(line[5:]))


def promote_bench_model(job: Any, run_id: str) -> tuple[str, list[dict[str, Any]], Any]:
    """Packages and registers the benchmark's booster as `champion`; returns its version, sample records
    and their encoded matrix."""
    from flightplan.model import stages
    from flightplan.serving.inputs import json_records, request_fields
    from flightplan.tracking import client

    stages.evaluate(job, run_id)
    registered = stages.register(job, run_id, stages.package_onnx(job, run_id))
    work = stages.open_run(job, run_id)
    client(work.settings).set_registered_model_alias(registered["name"], "champion", registered["version"])
    test = work.frames.sides["test"].head(1000)
    records = json_records(test, list(request_fields(work.config)))
    matrix = work.frames.matrix("test")[0][:1000]
    return registered["version"], records, matrix


def shadowing_pipelines(version: str, folder: Path) -> Path:
    """A pipelines folder whose flights pipeline answers every request with its `challenger` in shadow too, and
    the challenger: a new registry version of the champion's model (the same version is not shadowed)."""
    import mlflow
    from flightplan.settings import load_settings
    from flightplan.tracking import client

    settings = load_settings()
    mlflow_client = client(settings)
    name = work_model_name()
    original = mlflow_client.get_model_version(name, version)
    copy = mlflow.register_model(original.source, name, tags=original.tags)
    mlflow_client.set_registered_model_alias(name, "challenger", str(copy.version))
    pipelines = folder / "pipelines-with-shadow"
    shutil.copytree(settings.pipelines_dir, pipelines)
    config = pipelines / f"{PIPELINE}.yaml"
    config.write_text(config.read_text() + "\ndeployment:\n  shadow: 1.0\n")
    return pipelines


def save_xgboost_flavor(booster: bytes, folder: Path) -> Path:
    """The same booster as an MLflow XGBoost model folder, as `mlflow.xgboost` users serve it."""
    import mlflow
    import xgboost as xgb

    target = folder / "xgboost-model"
    mlflow.xgboost.save_model(xgb.Booster(model_file=bytearray(booster)), str(target))
    return target


def work_model_name() -> str:
    from flightplan.config import load_pipeline
    from flightplan.settings import load_settings

    return load_pipeline(PIPELINE, load_settings().pipelines_dir).registered_model


@dataclass(frozen=True)
class Contender:
    """A server under test: how it starts, where it listens and the request of each size it gets."""

    command: list[str]
    url: str
    payloads: dict[int, tuple[str, Any]]  # rows per request: (path, body)
    env: dict[str, str] = field(default_factory=dict)  # besides this process's environment
    shadows: bool = False  # answers a challenger in shadow: its runs count the rows it skipped

    def shadow_state(self) -> ShadowState:
        """The shadow's counters so far, from one read of the service's metrics."""
        from flightplan.config import DeploymentSpec
        from flightplan.serving.metrics import SHADOW_SLICE_BUCKETS

        budget = DeploymentSpec().shadow_budget_ms / 1000
        if budget not in SHADOW_SLICE_BUCKETS:
            raise ValueError(f"the default shadow budget {budget} s is not a bound of the shadow's histograms")
        text = httpx.get(f"{self.url}/metrics", timeout=30).text
        within = f'le="{budget}"'
        slices, taken = "flightplan_shadow_slice_seconds", "flightplan_request_shadow_cpu_seconds"
        answer, commit = 'work="answer"', 'work="commit"'  # the slice histogram's label
        return ShadowState(
            served=metric_sum(text, "flightplan_routed_rows_total"),
            skipped=metric_sum(text, 'flightplan_shadow_rows_total{outcome="skipped"'),
            done=metric_sum(text, "flightplan_shadow_rows_total"),
            answer_slices=metric_sum(text, f"{slices}_count", answer),
            answer_slices_within=metric_sum(text, f"{slices}_bucket", within, answer),
            commit_slices=metric_sum(text, f"{slices}_count", commit),
            commit_slices_within=metric_sum(text, f"{slices}_bucket", within, commit),
            requests=metric_sum(text, f"{taken}_count"),
            requests_within=metric_sum(text, f"{taken}_bucket", within),
        )

    @property
    def health(self) -> str:
        return f"{self.url}/health" if Path(self.command[0]).name == "flightplan" else f"{self.url}/ping"


@dataclass(frozen=True)
class ShadowState:
    """Counters of a service with a shadow: rows served, rows the shadow skipped (the service too busy to answer
    them in its budget), rows it is done with (skipped, answered, refused or failed); slices of shadow work that
    answered rows and that committed them, and those of each kind within the default budget; API requests, and
    those during which shadow work took no more CPU time than the budget (the most it could have taken from them)."""

    served: float
    skipped: float
    done: float
    answer_slices: float
    answer_slices_within: float
    commit_slices: float
    commit_slices_within: float
    requests: float
    requests_within: float

    def __sub__(self, earlier: ShadowState) -> ShadowState:
        return ShadowState(*(now - then for now, then in zip(astuple(self), astuple(earlier), strict=True)))


def contenders(
    records: list[dict[str, Any]], matrix: Any, xgboost_model: Path, onnx_model: str, shadowing: Path
) -> dict[str, Contender]:
    """Our service (typed records, and the same rows as MLflow's column-oriented body; and, from the pipelines
    folder ``shadowing``, with its challenger in shadow) and `mlflow models serve` on the XGBoost flavor and on
    the ONNX version, each on a port of its own."""
    flightplan = str(Path(sys.executable).with_name("flightplan"))
    mlflow_bin = str(Path(sys.executable).with_name("mlflow"))
    ours = [flightplan, "serve", "--pipeline", PIPELINE, "--port", "8791", "--poll-seconds", "3600"]
    columns = [f"f{i}" for i in range(matrix.shape[1])]
    fields = sorted({name for record in records for name in record})
    split = {"dataframe_split": {"columns": fields, "data": [[r.get(f) for f in fields] for r in records]}}

    def peer(model: str, port: int) -> list[str]:
        return [mlflow_bin, "models", "serve", "-m", model, "--env-manager", "local", "--port", str(port)]

    def frame_body(rows: Any) -> dict[str, Any]:
        return {"dataframe_split": {"columns": columns, "data": rows.tolist()}}

    typed = {1: ("/v1/flights/predict", records[0]), 1000: ("/v1/flights/predict/batch", {"records": records})}
    return {
        "flightplan": Contender(ours, "http://127.0.0.1:8791", typed),
        "flightplan, challenger in shadow": Contender(
            [*ours[:-4], "--port", "8794", "--poll-seconds", "3600"],
            "http://127.0.0.1:8794",
            typed,
            # A log of its own: the two services writing one SQLite file would slow each other's commits.
            {"FLIGHTPLAN_PIPELINES_DIR": str(shadowing), "FLIGHTPLAN_PREDICTIONS_DB": f"sqlite:///{shadowing}/log.db"},
            shadows=True,
        ),
        # The same rows in MLflow's column-oriented body, as a client of `mlflow models serve` sends them.
        "flightplan, dataframe_split": Contender(
            ours, "http://127.0.0.1:8791", {1000: ("/v1/flights/invocations", split)}
        ),
        "mlflow models serve (xgboost)": Contender(
            peer(str(xgboost_model), 8792),
            "http://127.0.0.1:8792",
            {1: ("/invocations", frame_body(matrix[:1])), 1000: ("/invocations", frame_body(matrix))},
        ),
        "mlflow models serve (onnx)": Contender(
            peer(onnx_model, 8793),
            "http://127.0.0.1:8793",
            {1: ("/invocations", {"inputs": matrix[:1].tolist()}), 1000: ("/invocations", {"inputs": matrix.tolist()})},
        ),
    }


def measure_cells(
    wrk: str, entrants: dict[str, Contender], seconds: int, rounds: int, folder: Path
) -> list[dict[str, Any]]:
    """Each contender's figures per cell (rows per request, connections): the median run by req/s of ``rounds``,
    the contenders taking turns within each round, so that a slower minute of the machine hits them alike."""
    results: list[dict[str, Any]] = []
    for rows in (1, 1000):
        taking = {name: contender for name, contender in entrants.items() if rows in contender.payloads}
        for contender in taking.values():
            path, body = contender.payloads[rows]
            load(wrk, contender.url + path, body, 8, min(3, seconds), folder)  # warm-up
        for connections in (1, 8, 32):
            runs: dict[str, list[dict[str, float]]] = {name: [] for name in taking}
            for _ in range(rounds):
                for name, contender in taking.items():
                    runs[name].append(measured_run(wrk, contender, rows, connections, seconds, folder))
            for name, measured in runs.items():
                median = sorted(measured, key=lambda run: run["rps"])[len(measured) // 2]
                figures: dict[str, Any] = {
                    "contender": name, "rows": rows, "connections": connections, "rounds": rounds, **median,
                    "rows_per_s": median["rps"] * rows,
                    "p99_rounds_ms": [run["p99_ms"] for run in measured],  # in the order of the rounds
                }  # fmt: skip
                if entrants[name].shadows:
                    figures["requests_over_budget_rounds"] = [run["requests_over_budget"] for run in measured]
                results.append(figures)
                print(json.dumps(figures), flush=True)
    return results


def measured_run(
    wrk: str, contender: Contender, rows: int, connections: int, seconds: int, folder: Path
) -> dict[str, float]:
    """One run of a cell; for a service with a shadow, also the share of the rows served that it shadowed."""
    path, body = contender.payloads[rows]
    before = contender.shadow_state() if contender.shadows else None
    figures = load(wrk, contender.url + path, body, connections, seconds, folder)
    if before is not None:
        run = contender.shadow_state() - before
        figures["shadowed"] = 1 - run.skipped / run.served if run.served else 0.0
        for kind, slices, within in (
            ("answer", run.answer_slices, run.answer_slices_within),
            ("commit", run.commit_slices, run.commit_slices_within),
        ):
            figures[f"{kind}_slices"], figures[f"{kind}_slices_over_budget"] = slices, slices - within
        figures["requests_over_budget"] = 1 - run.requests_within / run.requests if run.requests else 0.0
        # The shadow's backlog is answered now that the service is quiet: before the next contender's run.
        deadline = time.monotonic() + SHADOW_DRAIN_SECONDS
        while run.done < run.served and time.monotonic() < deadline:
            time.sleep(0.2)
            run = contender.shadow_state() - before
    return figures


def metric_sum(text: str, prefix: str, *containing: str) -> float:
    """The sum of the Prometheus samples whose line starts with ``prefix`` (a name, or a name and labels) and
    holds each of ``containing``."""
    lines = (line for line in text.splitlines() if line.startswith(prefix) and all(part in line for part in containing))
    return sum(float(line.rsplit(" ", 1)[1]) for line in lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--home", type=Path, required=True)
    parser.add_argument("--seconds", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=3, help="runs of each cell; the median is kept")
    args = parser.parse_args()
    home = args.home.resolve()
    prepare_split(home)
    wrk = ensure_wrk()
    _, job, run_id = bench_training(rounds=300, repeats=1, with_spark=False)
    version, records, matrix = promote_bench_model(job, run_id)
    folder = Path(tempfile.mkdtemp(prefix="serve-bench-"))
    os.environ.update({"FLIGHTPLAN_HOME": str(home), "FLIGHTPLAN_API_TOKEN": TOKEN})
    # `mlflow models serve` runs `uvicorn` from PATH: the venv's, also when the venv is not activated.
    os.environ["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"
    from flightplan.model.registry import load_booster
    from flightplan.settings import load_settings

    onnx_model = f"models:/{work_model_name()}/{version}"
    xgboost_model = save_xgboost_flavor(load_booster(load_settings(), work_model_name(), version), folder)
    entrants = contenders(records, matrix, xgboost_model, onnx_model, shadowing_pipelines(version, folder))
    # Every server up at once (an idle one costs the others nothing), each started once.
    servers = {(*contender.command, *contender.env.values()): contender for contender in entrants.values()}
    processes = []
    try:
        for place, contender in enumerate(servers.values()):
            processes.append(start(contender, folder / f"server-{place}.log"))
        results = measure_cells(wrk, entrants, args.seconds, args.rounds, folder)
    finally:
        for process in processes:
            process.terminate()
            process.wait(60)
    print_table(results)
    print_shadow_cost(results)
    return 0


def print_shadow_cost(results: list[dict[str, Any]]) -> None:
    """What the challenger in shadow on every request costs the served answers, against the default budget
    (``deployment.shadow_budget_ms``: the longest a served request may wait for the shadow).

    The verdict reads the service's own measure: the share of requests during which shadow work took more CPU
    time than the budget (the most it could have taken from them), within the budget when that share is at most
    1% (their p99) in every round. Beside it, the served p99 against the same service without shadow, round by
    round (the two take turns within a round): where a request takes tens of milliseconds or queues, that
    difference is mostly the noise of either instance. Then the share of the rows served that the shadow answered
    rather than skipped, and the slices of shadow work longer than the budget, those that answered rows and those
    that committed them."""
    from flightplan.config import DeploymentSpec

    budget = DeploymentSpec().shadow_budget_ms
    by_cell = {(r["contender"], r["rows"], r["connections"]): r for r in results}
    print(f"\nshadow budget: {budget:g} ms of p99")
    columns = "p99 ms, no shadow | p99 ms, challenger in shadow | added p99 ms by round"
    waited = "requests with shadow CPU > budget, by round | p99 within budget"
    slices = "answer slices over budget | commit slices over budget"
    print(f"\n| rows/request | connections | {columns} | {waited} | rows shadowed | {slices} | req/s ratio |")
    print("|---:|---:|---:|---:|---|---|---|---:|---:|---:|---:|")
    for (name, rows, connections), shadowed in by_cell.items():
        if name == "flightplan, challenger in shadow":
            alone = by_cell[("flightplan", rows, connections)]
            ratio = f"{shadowed['rps'] / alone['rps']:.2f}" if alone["rps"] else "-"
            added = [s - a for s, a in zip(shadowed["p99_rounds_ms"], alone["p99_rounds_ms"], strict=True)]
            over = shadowed["requests_over_budget_rounds"]
            verdict = "yes" if max(over) <= P99_SHARE else "no" if min(over) > P99_SHARE else "rounds disagree"
            print(
                f"| {rows} | {connections} | {alone['p99_ms']:.2f} | {shadowed['p99_ms']:.2f} "
                f"| {' '.join(f'{each:+.1f}' for each in added)} | {' '.join(f'{each:.2%}' for each in over)} "
                f"| {verdict} | {shadowed['shadowed']:.0%} "
                f"| {shadowed['answer_slices_over_budget']:,.0f} of {shadowed['answer_slices']:,.0f} "
                f"| {shadowed['commit_slices_over_budget']:,.0f} of {shadowed['commit_slices']:,.0f} | {ratio} |"
            )


def print_table(results: list[dict[str, Any]]) -> None:
    """Each of flightplan's rows beside the peers' figures for the same rows per request and connections."""
    by_cell = {(r["contender"], r["rows"], r["connections"]): r for r in results}
    peers = [name for name in dict.fromkeys(r["contender"] for r in results) if not name.startswith("flightplan")]
    head = " | ".join(f"{peer} req/s | p50 ms | p99 ms | ratio" for peer in peers)
    print(f"\n| flightplan body | rows/request | connections | flightplan req/s | p50 ms | p99 ms | {head} |")
    print("|---|---:|---:|---:|---:|---:|" + "---:|" * 4 * len(peers))
    ours = [r for r in results if r["contender"].startswith("flightplan")]
    for r in sorted(ours, key=lambda r: (r["contender"], r["rows"], r["connections"])):
        body = "dataframe_split" if "dataframe_split" in r["contender"] else "typed records"
        body += ", challenger in shadow" if "shadow" in r["contender"] else ""
        cells = [f"{r['rps']:,.0f} | {r['p50_ms']:.2f} | {r['p99_ms']:.2f}"]
        for peer in peers:
            p = by_cell[(peer, r["rows"], r["connections"])]
            # A peer that answered nothing in the time given has no ratio (a smoke run's second of 1000-row requests).
            ratio = f"{r['rps'] / p['rps']:.1f}x" if p["rps"] else "-"
            cells.append(f"{p['rps']:,.0f} | {p['p50_ms']:.2f} | {p['p99_ms']:.2f} | {ratio}")
        print(f"| {body} | {r['rows']} | {r['connections']} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    raise SystemExit(main())
