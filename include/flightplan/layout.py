"""Where each dataset of a pipeline lives. Every stage reads and writes through here, so the folder
structure is written down once."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from flightplan.config import DimensionSpec, PipelineConfig, load_pipeline
from flightplan.settings import Settings, load_settings


def open_pipeline(pipeline: str, overrides: dict[str, Any] | None = None) -> tuple[Settings, PipelineConfig, Layout]:
    """The settings of this process, a pipeline's config (with overrides) and its layout: where a stage starts."""
    settings = load_settings()
    config = load_pipeline(pipeline, settings.pipelines_dir, overrides)
    return settings, config, Layout(settings, config)


@dataclass(frozen=True)
class Layout:
    settings: Settings
    config: PipelineConfig

    @property
    def name(self) -> str:
        return self.config.name

    @property
    def landing(self) -> Path:
        return self.settings.data_root / self.config.landing_dir

    @property
    def snapshot(self) -> Path | None:
        """The snapshot file or folder of a snapshot source (a relative path is under the data root)."""
        path = self.config.snapshot_path
        return None if path is None else self.settings.data_root / Path(path).expanduser()

    def dimension(self, dimension: DimensionSpec) -> Path:
        return self.settings.data_root / dimension.path.format(pipeline=self.name)

    def dataset(self, stage: str) -> Path:
        """A date-partitioned dataset written by one stage: curated, wrangled or labeled."""
        return self.settings.data_root / stage / self.name

    def quarantine(self, stage: str) -> Path:
        return self.settings.data_root / "quarantine" / self.name / stage

    def staging(self, stage: str, key: str) -> Path:
        """Scratch space for one stage and interval, on the same file system as the datasets so that
        finished partitions move into place by rename."""
        return self.settings.data_root / "_staging" / self.name / stage / key

    def lock(self, stage: str, key: str) -> Path:
        """The lock file that one attempt at a stage and interval holds while it stages and publishes; kept, so that
        every attempt locks the same file."""
        return self.settings.data_root / "_locks" / self.name / stage / f"{key}.lock"

    @property
    def splits(self) -> Path:
        return self.settings.data_root / "splits" / self.name

    def model_run(self, run_id: str) -> Path:
        """Working files of one model-engineering run (frames, feature map, booster, reports)."""
        return self.settings.data_root / "models" / self.name / run_id

    def manifest(self, stage: str, key: str) -> Path:
        return self.settings.data_root / "manifests" / self.name / stage / f"{key}.json"

    def reports(self, kind: str) -> Path:
        return self.settings.reports_root / self.name / kind
