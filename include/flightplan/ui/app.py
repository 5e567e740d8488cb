"""The Models, Data and Label queue pages: a FastAPI app that the Airflow plugin mounts inside the Airflow UI.

The app knows nothing of Airflow: the plugin hands it ``current_user`` (a FastAPI dependency that answers the
logged-in user as a ``Visitor`` or refuses the request) and ``trigger_dag`` (which starts a DAG run as that user
through Airflow's REST API, so every gate of the deployment DAG still applies). Every route, the report and
Data Docs files included, depends on ``current_user``, and each asks the visitor's permissions on the DAGs of the
pipeline it shows or changes: reading needs read access to every DAG of the pipeline, a label needs edit access
to its data_engineering DAG (the label step turns it into training data), a deploy needs the right to run its
deployment DAG."""

# No `from __future__ import annotations`: FastAPI reads the route signatures, which name dependencies
# local to the functions that add the routes, and postponed annotations could not be resolved.

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import date
from pathlib import Path
from typing import Annotated, Any, Literal, Protocol

from fastapi import Depends, FastAPI, Form, HTTPException, Query, Request
from fastapi.responses import FileResponse, HTMLResponse, RedirectResponse
from jinja2 import Environment, PackageLoader, StrictUndefined
from starlette.concurrency import run_in_threadpool

from flightplan.config import PipelineConfig, available_pipelines, load_pipeline, scan_pipelines
from flightplan.features import label_problem
from flightplan.layout import Layout
from flightplan.orchestration import STAGES, dag_id
from flightplan.settings import Settings, load_settings
from flightplan.ui import charts, views

# A FastAPI dependency that answers the signed-in user as a Visitor, or refuses the request.
CurrentUser = Callable[..., Any]
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


# Autoescaped: the pages print pipeline files' errors, registry tags and predictions' inputs, values that clients
# sent among them. StrictUndefined makes a name a template misspells an error rather than an empty cell.
TEMPLATES = Environment(
    loader=PackageLoader("flightplan.ui"),
    autoescape=True,
    undefined=StrictUndefined,
    trim_blocks=True,
    lstrip_blocks=True,
)


def _prefix(request: Request) -> str:
    """Where the app is mounted (``/flightplan`` in Airflow), for links back into it."""
    return str(request.scope.get("root_path", "")).rstrip("/")


def _render(template: str, request: Request, **context: Any) -> HTMLResponse:
    return HTMLResponse(TEMPLATES.get_template(template).render(base=_prefix(request), **context))


def _pipeline_dags(pipeline: str) -> list[str]:
    return [dag_id(pipeline, stage) for stage in STAGES]


def _require(user: Visitor, access: Access, dag_ids: list[str]) -> None:
    if not user.may(access, dag_ids):
        raise HTTPException(403, f"user '{user.name}' has no {access} access to {', '.join(dag_ids)}")


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


@dataclass(frozen=True)
class Site:
    """What the routes share: the settings, and the plugin's ways to start DAG runs and read their states as the
    signed-in user."""

    settings: Settings
    trigger_dag: TriggerDag
    latest_runs: LatestRuns

    def pipelines(self) -> list[str]:
        return available_pipelines(self.settings.pipelines_dir)

    def readable(self, user: Visitor, pipeline: str) -> Layout:
        """The pipeline's layout, for a user who may read all its DAGs."""
        _require(user, "read", _pipeline_dags(pipeline))
        if pipeline not in self.pipelines():
            raise HTTPException(404, f"no pipeline '{pipeline}'")
        return Layout(self.settings, load_pipeline(pipeline, self.settings.pipelines_dir))

    def sandboxed_file(
        self, user: Visitor, root: Path, relative: str, pipelines_of: Callable[[tuple[str, ...]], list[str]]
    ) -> FileResponse:
        """A file of ``root`` served sandboxed to a user who may read every pipeline it shows. A user who may not
        gets the answer of a missing file, so that pipeline names cannot be probed."""
        path, parts = _file_inside(root, relative)
        pipelines = pipelines_of(parts)
        if not (
            set(pipelines) <= set(self.pipelines()) and all(user.may("read", _pipeline_dags(p)) for p in pipelines)
        ):
            raise HTTPException(404, "no such file")
        return FileResponse(path, headers=SANDBOXED)

    def data_docs_pipelines(self, parts: tuple[str, ...]) -> list[str]:
        # A pipeline's own pages are validations/<pipeline>/... and expectations/<pipeline>.html (the suite bears the
        # pipeline's name); the rest of the site (its index, its assets) lists every pipeline.
        if len(parts) > 1 and parts[0] in ("validations", "expectations"):
            return [Path(parts[1]).stem]
        return self.pipelines()


def _report_pipelines(parts: tuple[str, ...]) -> list[str]:
    return list(parts[:1])  # <pipeline>/<kind>/...


@dataclass(frozen=True)
class PipelineModels:
    """One pipeline's part of the Models page."""

    name: str
    overview: views.Overview
    may_deploy: bool  # it has versions, and the user may run its deployment DAG
    last_runs: list[tuple[str, dict[str, Any] | None]]  # each DAG of the pipeline and its newest run, if any


async def _pipeline_models(
    site: Site, user: Visitor, name: str, config: PipelineConfig, runs: dict[str, dict[str, Any]]
) -> PipelineModels:
    found = await run_in_threadpool(views.overview, Layout(site.settings, config))
    return PipelineModels(
        name=name,
        overview=found,
        may_deploy=bool(found.all_versions) and user.may("run", [dag_id(name, "deployment")]),
        last_runs=[(dag, runs.get(dag)) for dag in _pipeline_dags(name)],
    )


def _metric_rows(card: views.VersionCard, primary_metric: str) -> list[tuple[str, str]]:
    """A version's test metrics, shown: the primary metric first; the test set's size is a count, not a score."""
    ordered = sorted(card.metrics.items(), key=lambda item: item[0] != primary_metric)
    return [(metric, f"{value:,.0f}" if metric == "rows" else f"{value:.4f}") for metric, value in ordered]


def _label_value(task: str, label: str, prediction_id: str) -> Any:
    """The label typed as the task's labels are, or a 422 saying what the task expects."""
    try:
        value: Any = {"binary": int, "regression": float}.get(task, str)(label.strip())
    except ValueError:
        value = label
    expected = label_problem(task, [], value)
    if expected is not None:
        raise HTTPException(422, f"label {label[:100]!r} of prediction {prediction_id[:64]!r}: expected {expected}")
    return value


def _record_label(settings: Settings, pipeline: str, prediction_id: str, value: Any, user: Visitor) -> bool:
    """Stores the label as the user's feedback on the prediction; whether the prediction log has that prediction."""
    from flightplan.prediction_log import create_store_engine, record_feedback

    engine = create_store_engine(settings.predictions_db_url)
    try:
        stored, _ = record_feedback(engine, pipeline, {prediction_id: value}, source=f"airflow-ui:{user.name}")
    finally:
        engine.dispose()
    return bool(stored)


def create_ui(
    current_user: CurrentUser,
    trigger_dag: TriggerDag,
    latest_runs: LatestRuns,
    settings: Settings | None = None,
) -> FastAPI:
    """The pages' app; the plugin hands it its links to Airflow (see the module's docstring)."""
    site = Site(settings or load_settings(), trigger_dag, latest_runs)
    app = FastAPI(title="flightplan", dependencies=[Depends(current_user)], docs_url=None, redoc_url=None)
    _add_models_routes(app, site, current_user)
    _add_data_routes(app, site, current_user)
    _add_label_queue_routes(app, site, current_user)
    _add_file_routes(app, site, current_user)
    return app


def _add_models_routes(app: FastAPI, site: Site, current_user: CurrentUser) -> None:
    """The Models page, and the deployment its form starts."""
    User = Annotated[Visitor, Depends(current_user)]

    @app.get("/", response_class=HTMLResponse)
    async def models(request: Request, user: User) -> HTMLResponse:
        scan = scan_pipelines(site.settings.pipelines_dir)
        broken = [
            (Path(path).stem, error)
            for path, error in scan.errors.items()
            if user.may("read", _pipeline_dags(Path(path).stem))
        ]
        shown = [name for name in scan.configs if user.may("read", _pipeline_dags(name))]
        runs = await site.latest_runs(request, [dag for name in shown for dag in _pipeline_dags(name)])
        pipelines = [await _pipeline_models(site, user, name, scan.configs[name], runs) for name in shown]
        return _render(
            "models.html",
            request,
            user=user,
            broken=broken,
            pipelines=pipelines,
            airflow_url=site.settings.airflow_url,
            metric_rows=_metric_rows,
            charts=views.charts,
            verdict=views.verdict,
            svg=charts.svg,
        )

    @app.post("/pipelines/{pipeline}/deploy", response_class=HTMLResponse)
    async def deploy(
        request: Request, pipeline: str, user: User, version: Annotated[str, Form()], reason: Annotated[str, Form()]
    ) -> HTMLResponse:
        deployment = dag_id(pipeline, "deployment")
        site.readable(user, pipeline)
        _require(user, "run", [deployment])
        conf = {"version": version, "reason": f"{reason} (deployed by {user.name} from the Models page)"}
        run_id = await site.trigger_dag(request, deployment, conf)
        return _render(
            "deployed.html", request, run_id=run_id, deployment=deployment, version=version, pipeline=pipeline
        )


def _add_data_routes(app: FastAPI, site: Site, current_user: CurrentUser) -> None:
    """The Data page: a pipeline's curated rows counted per day, and a day's rows a page at a time."""
    User = Annotated[Visitor, Depends(current_user)]

    @app.get("/pipelines/{pipeline}/data", response_class=HTMLResponse)
    def data(
        request: Request, pipeline: str, user: User, day: date | None = None, page: Annotated[int, Query(ge=0)] = 0
    ) -> HTMLResponse:
        found = site.readable(user, pipeline)
        counts = views.daily_counts(found)
        days = list(zip(counts.index, counts.to_numpy().tolist(), strict=True))
        context: dict[str, Any] = {
            "pipeline": pipeline,
            "count_columns": list(counts.columns),
            "days": days,
            "day": day,
        }
        if day:
            frame, total = views.curated_rows(found, day, page, PAGE_ROWS)
            context |= {
                "page": page,
                "total": total,
                "page_count": (total + PAGE_ROWS - 1) // PAGE_ROWS,
                "columns": list(frame.columns),
                "rows": frame.astype(str).to_numpy().tolist(),
            }
        return _render("data.html", request, **context)


def _add_label_queue_routes(app: FastAPI, site: Site, current_user: CurrentUser) -> None:
    """The Label queue page, and the labels its forms set (feedback that the next label step adds to the data)."""
    User = Annotated[Visitor, Depends(current_user)]

    @app.get("/pipelines/{pipeline}/label-queue", response_class=HTMLResponse)
    def label_queue(request: Request, pipeline: str, user: User) -> HTMLResponse:
        config = site.readable(user, pipeline).config
        return _render(
            "label_queue.html",
            request,
            pipeline=pipeline,
            label=config.label.name,
            items=views.label_queue(site.settings, config, PAGE_ROWS),
            may_label=user.may("edit", [dag_id(pipeline, "data_engineering")]),
        )

    @app.post("/pipelines/{pipeline}/label-queue")
    def set_label(
        request: Request,
        pipeline: str,
        user: User,
        prediction_id: Annotated[str, Form()],
        label: Annotated[str, Form()],
    ) -> RedirectResponse:
        config = site.readable(user, pipeline).config
        _require(user, "edit", [dag_id(pipeline, "data_engineering")])
        value = _label_value(config.label.task, label, prediction_id)
        if not _record_label(site.settings, pipeline, prediction_id, value, user):
            raise HTTPException(404, f"no prediction '{prediction_id}' of {pipeline}")
        return RedirectResponse(f"{_prefix(request)}/pipelines/{pipeline}/label-queue", status_code=303)


def _add_file_routes(app: FastAPI, site: Site, current_user: CurrentUser) -> None:
    """The reports and Data Docs pages, which other tools wrote."""
    User = Annotated[Visitor, Depends(current_user)]

    @app.get("/files/{relative:path}")
    def report_file(relative: str, user: User) -> FileResponse:
        return site.sandboxed_file(user, site.settings.reports_root, relative, _report_pipelines)

    @app.get("/data-docs/{relative:path}")
    def data_docs(relative: str, user: User) -> FileResponse:
        return site.sandboxed_file(
            user, views.data_docs_index(site.settings).parent, relative, site.data_docs_pipelines
        )
