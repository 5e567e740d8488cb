"""The stack the browser tests drive."""

from __future__ import annotations

import dataclasses
from pathlib import Path

from flightplan.settings import Settings


@dataclasses.dataclass(frozen=True)
class WebStack:
    settings: Settings  # its URLs, homes and stores
    token: str  # the inference API's bearer token
    password: str  # the Airflow admin's
    trials: int  # what the trigger form asks model_engineering for
    screenshots: Path

    @property
    def pipeline(self) -> str:
        return "flights"
