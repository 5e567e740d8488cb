"""The Models, Data and Label queue pages: a FastAPI app that the Airflow plugin mounts inside the Airflow UI.

The app knows nothing of Airflow: the plugin hands it ``current_user`` (a FastAPI dependency that answers the
logged-in user as a ``Visitor`` or refuses the request) and ``trigger_dag`` (which starts a DAG run as that user
through Airflow's REST API, so every gate of the deployment DAG still applies). Every route, the report and
Data Docs files included, depends on ``current_user``, and each asks the visitor's permissions on the DAGs of the
pipeline it shows or changes: reading needs read access to every DAG of the pipeline, a label needs edit access
to its data_engineering DAG (the label step turns it into training data), a deploy needs the right to run its
deployment DAG."""

# No `from __future__ import annotations`: FastAPI reads the route signatures, which name dependencies
# local to create_ui, and postponed annotations could not be resolved.

import html
from collections.abc import Awaitable, Callable
from datetime import date
from pathlib import Path
from typing import Annotated, Any, Literal, Protocol

from fastapi import Depends, FastAPI, Form, HTTPException, Query, Request
from fastapi.responses import FileResponse, HTMLResponse, RedirectResponse

from flightplan.layout import Layout
from flightplan.model.features import label_problem
from flightplan.orchestration import dag_id
from flightplan.settings import Settings, load_settings

TriggerDag = Callable[[Request, str, dict[str, Any]], Awaitable[str]]
# The newest run of each DAG id asked for (state, run id, run type, start), as the signed-in user may see them.
LatestRuns = Callable[[Request, list[str]], Awaitable[dict[str, dict[str, Any]]]]
PAGE_ROWS = 50
Access = Literal["read", "edit", "run"]


class Visitor(Protocol):
    """The signed-in user as the pages need them: a name, and what the platform's authorization lets them do."""

    @property
    def name(self) -> str: ...

    def may(self, access: Access, dag_ids: list[str]) -> bool:
        """Whether the user has ``access`` to every one of ``dag_ids``."""
        ...


STYLE = """
body{font-family:system-ui,sans-serif;margin:1.5rem;color:#1b1f24}
table{border-collapse:collapse;margin:.5rem 0 1.5rem}td,th{border:1px solid #d0d7de;padding:.3rem .6rem;text-align:left}
th{background:#f6f8fa}.hold,.success{color:#1a7f37}.retrain,.failed{color:#cf222e}.undecided,.running{color:#9a6700}
.card{display:inline-block;vertical-align:top;border:1px solid #d0d7de;border-radius:6px;
  padding:.6rem 1rem;margin:0 1rem 1rem 0;max-width:24rem}
.metrics{margin:.4rem 0}.metrics td{border:none;padding:.05rem .8rem .05rem 0}
nav a{margin-right:1rem}
"""


def _e(value: Any) -> str:
    return html.escape(str(value))


def _page(title: str, body: str) -> HTMLResponse:
    return HTMLResponse(
        f"<!doctype html><html><head><meta charset='utf-8'><title>{_e(title)}</title><style>{STYLE}</style></head>"
        f"<body><h1>{_e(title)}</h1>{body}</body></html>"
    )


def _table(header: list[str], rows: list[list[str]]) -> str:
    head = "".join(f"<th>{_e(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{cell}</td>" for cell in row) + "</tr>" for row in rows)
    return f"<table><tr>{head}</tr>{body}</table>"


# The reports and Data Docs are other tools' HTML carrying values that clients sent. On Airflow's origin their
# scripts would act as the signed-in user; a sandbox without allow-same-origin gives each page an opaque origin of
# its own (no Airflow cookie or storage, no same-origin request), where it still draws.
SANDBOXED = {
    "Content-Security-Policy": "sandbox allow-scripts allow-popups allow-downloads",
    "X-Content-Type-Options": "nosniff",
}


def _file_inside(root: Path, relative: str) -> tuple[Path, tuple[str, ...]]:
    """The file ``relative`` names inside ``root``, never outside it, and its parts relative to ``root`` once every
    `..` and link is resolved: what a permission is checked on, whatever the request spelled."""
    try:
        top = root.resolve()
        path = (root / relative).resolve()
        found = path.is_file() and path.is_relative_to(top)
    except (OSError, ValueError):  # a NUL byte, a name too long
        found = False
    if not found:
        raise HTTPException(404, "no such file")
    return path, path.relative_to(top).parts


def create_ui(
    current_user: Callable[..., Any],
    trigger_dag: TriggerDag,
    latest_runs: LatestRuns,
    settings: Settings | None = None,
) -> FastAPI:
    from starlette.concurrency import run_in_threadpool

    from flightplan.config import available_pipelines, load_pipeline
    from flightplan.monitoring.stages import drifted_columns
    from flightplan.orchestration import STAGES, scan_pipelines
    from flightplan.ui import views

    settings = settings or load_settings()
    app = FastAPI(title="flightplan", dependencies=[Depends(current_user)], docs_url=None, redoc_url=None)
    User = Annotated[Visitor, Depends(current_user)]

    def pipeline_dags(pipeline: str) -> list[str]:
        return [dag_id(pipeline, stage) for stage in STAGES]

    def require(user: Visitor, access: Access, dag_ids: list[str]) -> None:
        if not user.may(access, dag_ids):
            raise HTTPException(403, f"user '{user.name}' has no {access} access to {', '.join(dag_ids)}")

    def readable(user: Visitor, pipeline: str) -> Layout:
        """The pipeline's layout, for a user who may read all its DAGs."""
        require(user, "read", pipeline_dags(pipeline))
        return layout(pipeline)

    def layout(pipeline: str) -> Layout:
        if pipeline not in available_pipelines(settings.pipelines_dir):
            raise HTTPException(404, f"no pipeline '{pipeline}'")
        return Layout(settings, load_pipeline(pipeline, settings.pipelines_dir))

    def prefix(request: Request) -> str:
        return str(request.scope.get("root_path", "")).rstrip("/")

    def last_runs_table(name: str, runs: dict[str, dict[str, Any]]) -> str:
        rows = []
        for stage in STAGES:
            dag = dag_id(name, stage)
            run = runs.get(dag)
            link = f"<a href='{_e(settings.airflow_url)}/dags/{_e(dag)}' target='_top'>{_e(dag)}</a>"
            if run is None:
                rows.append([link, "no run yet", "", ""])
                continue
            state = str(run.get("state"))
            rows.append(
                [link, f"<span class='{_e(state)}'>{_e(state)}</span>", _e(run.get("run_type")), _e(run["dag_run_id"])]
            )
        return "<h3>Last runs</h3>" + _table(["DAG", "state", "started by", "run"], rows)

    @app.get("/", response_class=HTMLResponse)
    async def models(request: Request, user: User) -> HTMLResponse:
        base = prefix(request)
        parts = [f"<p>Signed in as {_e(user.name)}.</p>"]
        scan = scan_pipelines(settings.pipelines_dir)
        for path, error in scan.errors.items():
            if user.may("read", pipeline_dags(Path(path).stem)):
                parts.append(f"<h2>{_e(Path(path).stem)} <small>(does not load)</small></h2><pre>{_e(error)}</pre>")
        shown = {name: config for name, config in scan.configs.items() if user.may("read", pipeline_dags(name))}
        runs = await latest_runs(request, [dag for name in shown for dag in pipeline_dags(name)])
        for name, config in shown.items():
            found = await run_in_threadpool(views.overview, Layout(settings, config))
            parts.append(f"<h2>{_e(name)} <small>({_e(found.model)})</small></h2>")
            parts.append(
                f"<nav><a href='{base}/pipelines/{name}/data'>Data</a>"
                f"<a href='{base}/pipelines/{name}/label-queue'>Label queue</a>"
                + "".join(
                    f"<a href='{base}/data-docs/{_e(p)}'>GX validation {_e(p.split('/')[-3])}</a>"
                    for p in found.validations[:1]
                )
                + (f"<a href='{base}/data-docs/index.html'>GX Data Docs</a>" if found.data_docs else "")
                + "".join(
                    f"<a href='{base}/files/{_e(p)}'>profile {_e(p.split('/')[-2])}</a>" for p in found.profiles[:3]
                )
                + "".join(
                    f"<a href='{_e(url)}' target='_top'>MLflow: {_e(t)}</a>" for t, url in found.experiments.items()
                )
                + "</nav>"
            )
            if not found.versions:
                parts.append("<p>No model registered yet.</p>")
            for card in found.versions:
                # The primary metric first; the test set's size is a count, not a score.
                ordered = sorted(card.metrics.items(), key=lambda item: item[0] != found.primary_metric)
                metrics = "".join(
                    f"<tr><td>test {_e(k)}</td><td>{f'{v:,.0f}' if k == 'rows' else f'{v:.4f}'}</td></tr>"
                    for k, v in ordered
                )
                run = f"<a href='{_e(card.mlflow_url)}' target='_top'>training run</a>" if card.mlflow_url else ""
                parts.append(
                    f"<div class='card'><b>{_e(card.alias)}</b>: version {_e(card.version)} {run}"
                    f"<table class='metrics'>{metrics}</table><small>{_e(card.reason)}</small></div>"
                )
            if found.all_versions and user.may("run", [dag_id(name, "deployment")]):
                options = "".join(f"<option>{_e(v)}</option>" for v in found.all_versions)
                parts.append(
                    f"<form method='post' action='{base}/pipelines/{name}/deploy'>Deploy version "
                    f"<select name='version'>{options}</select> because <input name='reason' required> "
                    "<button>Deploy (through the deployment DAG and its gates)</button></form>"
                )
            rows = []
            for check in found.checks:
                decision = check["decision"]
                score = check["performance"].get(found.primary_metric)
                links = " ".join(
                    f"<a href='{base}/files/{_e(path)}'>{_e(kind.split('_')[0])}</a>"
                    for kind, path in check["reports"].items()
                    if kind.endswith("_html")
                )
                rows.append(
                    [
                        _e(f"{check['window']['start'][:16]} → {check['window']['end'][:16]}"),
                        _e(check["model_version"]),
                        _e(f"{check['rows']:,} ({check['labeled_rows']:,} labeled)"),
                        _e(f"{check['drift_share']:.0%}: " + ", ".join(drifted_columns(check))),
                        _e("-" if score is None else f"{score:.4f}"),
                        f"<span class='{_e(decision['outcome'])}'>{_e(decision['outcome'])}</span>: "
                        + _e(decision["reason"]),
                        links,
                    ]
                )
            header = ["window", "version", "rows", "drift", found.primary_metric, "decision", "reports"]
            parts.append("<h3>Monitoring</h3>" + (_table(header, rows) if rows else "<p>No check yet.</p>"))
            parts.append(last_runs_table(name, runs))
        return _page("Models", "".join(parts))

    @app.post("/pipelines/{pipeline}/deploy", response_class=HTMLResponse)
    async def deploy(
        request: Request, pipeline: str, user: User, version: Annotated[str, Form()], reason: Annotated[str, Form()]
    ) -> HTMLResponse:
        deployment = dag_id(pipeline, "deployment")
        readable(user, pipeline)
        require(user, "run", [deployment])
        conf = {"version": version, "reason": f"{reason} (deployed by {user.name} from the Models page)"}
        run_id = await trigger_dag(request, deployment, conf)
        return _page(
            "Deployment started",
            f"<p>Run <b>{_e(run_id)}</b> of {_e(deployment)} deploys version {_e(version)} of {_e(pipeline)}: "
            f"its comparison, approval and smoke test decide.</p><a href='{prefix(request)}/'>Back to Models</a>",
        )

    @app.get("/pipelines/{pipeline}/data", response_class=HTMLResponse)
    def data(
        request: Request, pipeline: str, user: User, day: date | None = None, page: Annotated[int, Query(ge=0)] = 0
    ) -> HTMLResponse:
        found = readable(user, pipeline)
        base = f"{prefix(request)}/pipelines/{pipeline}/data"
        counts = views.daily_counts(found)
        rows = [
            [f"<a href='{base}?day={_e(index)}'>{_e(index)}</a>", *(_e(f"{v:,}") for v in values)]
            for index, values in zip(counts.index, counts.to_numpy().tolist(), strict=True)
        ]
        body = _table(["day", *counts.columns], rows) if rows else "<p>No curated rows yet.</p>"
        if day:
            frame, total = views.curated_rows(found, day, page, PAGE_ROWS)
            cells = [[_e(v) for v in row] for row in frame.astype(str).to_numpy().tolist()]
            pages = " ".join(
                f"<a href='{base}?day={_e(day)}&page={p}'>{p + 1}</a>"
                for p in range((total + PAGE_ROWS - 1) // PAGE_ROWS)
            )
            body += f"<h2>{_e(day)}: {total:,} rows, page {page + 1}</h2><p>{pages}</p>" + _table(
                list(frame.columns), cells
            )
        return _page(f"Data: {pipeline}", body)

    @app.get("/pipelines/{pipeline}/label-queue", response_class=HTMLResponse)
    def queue(request: Request, pipeline: str, user: User) -> HTMLResponse:
        found = readable(user, pipeline)
        config = found.config
        action = f"{prefix(request)}/pipelines/{pipeline}/label-queue"
        may_label = user.may("edit", [dag_id(pipeline, "data_engineering")])
        rows = []
        for item in views.label_queue(settings, config, PAGE_ROWS):
            inputs = ", ".join(f"{k}={v}" for k, v in list(item["inputs"].items())[:8])
            rows.append(
                [
                    _e(item["created_at"]),
                    _e(item["model_version"]),
                    _e(item["prediction"]),
                    _e("-" if item["probability"] is None else f"{item['probability']:.3f}"),
                    f"<small>{_e(inputs)}</small>",
                    f"<form method='post' action='{action}'><input type='hidden' name='prediction_id' "
                    f"value='{_e(item['id'])}'><input name='label' size='6' required><button>Set</button></form>"
                    if may_label
                    else "",
                ]
            )
        header = ["answered", "version", "prediction", "probability", "inputs", f"true {config.label.name}"]
        body = (
            "<p>Answers the model was least sure of, with no ground truth yet. A label set here is stored as feedback "
            "with your name, and the next label step uses it.</p>"
        )
        return _page(f"Label queue: {pipeline}", body + (_table(header, rows) if rows else "<p>Nothing to label.</p>"))

    @app.post("/pipelines/{pipeline}/label-queue")
    def set_label(
        request: Request,
        pipeline: str,
        user: User,
        prediction_id: Annotated[str, Form()],
        label: Annotated[str, Form()],
    ) -> RedirectResponse:
        from flightplan.serving.store import create_store_engine, record_feedback

        config = readable(user, pipeline).config
        require(user, "edit", [dag_id(pipeline, "data_engineering")])
        try:
            value: Any = {"binary": int, "regression": float}.get(config.label.task, str)(label.strip())
        except ValueError:
            value = label
        expected = label_problem(config.label.task, [], value)
        if expected is not None:
            raise HTTPException(422, f"label {label[:100]!r} of prediction {prediction_id[:64]!r}: expected {expected}")
        engine = create_store_engine(settings.predictions_db_url)
        try:
            stored, _ = record_feedback(engine, pipeline, {prediction_id: value}, source=f"airflow-ui:{user.name}")
        finally:
            engine.dispose()
        if not stored:
            raise HTTPException(404, f"no prediction '{prediction_id}' of {pipeline}")
        return RedirectResponse(f"{prefix(request)}/pipelines/{pipeline}/label-queue", status_code=303)

    def sandboxed_file(
        user: Visitor, root: Path, relative: str, pipelines_of: Callable[[tuple[str, ...]], list[str]]
    ) -> FileResponse:
        """A file of ``root`` served sandboxed to a user who may read every pipeline it shows. A user who may not
        gets the answer of a missing file, so that pipeline names cannot be probed."""
        path, parts = _file_inside(root, relative)
        pipelines = pipelines_of(parts)
        known = set(available_pipelines(settings.pipelines_dir))
        if not (set(pipelines) <= known and all(user.may("read", pipeline_dags(p)) for p in pipelines)):
            raise HTTPException(404, "no such file")
        return FileResponse(path, headers=SANDBOXED)

    def report_pipelines(parts: tuple[str, ...]) -> list[str]:
        return list(parts[:1])  # <pipeline>/<kind>/...

    def data_docs_pipelines(parts: tuple[str, ...]) -> list[str]:
        # A pipeline's own pages are validations/<pipeline>/... and expectations/<pipeline>.html (the suite bears the
        # pipeline's name); the rest of the site (its index, its assets) lists every pipeline.
        if len(parts) > 1 and parts[0] in ("validations", "expectations"):
            return [Path(parts[1]).stem]
        return available_pipelines(settings.pipelines_dir)

    @app.get("/files/{relative:path}")
    def report_file(relative: str, user: User) -> FileResponse:
        return sandboxed_file(user, settings.reports_root, relative, report_pipelines)

    @app.get("/data-docs/{relative:path}")
    def data_docs(relative: str, user: User) -> FileResponse:
        return sandboxed_file(user, views.data_docs_index(settings).parent, relative, data_docs_pipelines)

    return app
