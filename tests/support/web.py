"""The stack the browser tests drive."""

from __future__ import annotations

import dataclasses
import re
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


def chart(page: str, name: str) -> str:
    """The markup of the Models page's chart ``name`` (its ``<svg>``), empty when the page has none."""
    start = page.find(f"data-chart='{name}'")
    return "" if start < 0 else page[start : page.index("</svg>", start)]


def plotted(markup: str) -> list[float]:
    """The values of a chart's points, series after series."""
    return [float(value) for value in re.findall(r"data-value='([^']*)'", markup)]
