"""The deployment gate's rows: none that a compared version learned from."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
from flightplan.config import load_pipeline
from flightplan.deployment.stages import learned_rows
from flightplan.manifests import Interval, SplitManifest, SplitSide
from flightplan.settings import PACKAGE_PIPELINES_DIR

CONFIG = load_pipeline("flights", PACKAGE_PIPELINES_DIR, {"source.key": ["carrier", "flight", "time_hour"]})
HOUR = pd.Timestamp("2013-12-30T10:00:00Z")
RECENT = pa.schema(
    [
        ("carrier", pa.string()),
        ("flight", pa.int64()),
        ("time_hour", pa.timestamp("us", "UTC")),
        ("arr_delay", pa.float64()),
    ]
)
# The same columns as another writer may type them: other widths, units and encodings.
WRITTEN = pa.schema(
    [
        ("carrier", pa.large_string()),
        ("flight", pa.int32()),
        ("time_hour", pa.timestamp("ns", "UTC")),
        ("arr_delay", pa.float32()),
    ]
)


def recent(schema: pa.Schema = RECENT) -> pa.Table:
    """Six labeled rows as the gate reads them, one with its flight number missing."""
    hours = [HOUR] * 5 + [HOUR + pd.Timedelta(hours=1)]
    return pa.table(
        {
            "carrier": ["UA", "UA", "AA", "AA", "B6", "B6"],
            "flight": [1, 2, 1, None, 7, 7],
            "time_hour": hours,
            "arr_delay": [1.0, 2.0, 3.0, 4.0, 5.0, 6.0],
        },
        schema=schema,
    )


def split(root: Path, sides: dict[str, list[int]]) -> Path:
    """A split whose sides hold the given rows of ``recent()``, typed as another writer would."""
    paths = {}
    for side in ("train", "validation", "test"):
        folder = root / f"split={side}"
        folder.mkdir(parents=True)
        pq.write_table(recent(WRITTEN).take(pa.array(sides.get(side, []), pa.int64())), folder / "part-0.parquet")
        paths[side] = str(folder)
    empty = SplitSide.model_validate({"rows": 0, "from": None, "to": None, "classes": {}, "fingerprint": "-"})
    manifest = SplitManifest(
        pipeline="flights", split_id=root.name, strategy="stratified", fractions={}, seed=42,
        window=Interval(start=HOUR.date(), end=HOUR.date()), label="delayed", time_column="time_hour",
        sides=dict.fromkeys(paths, empty), paths=paths, fingerprint="-", config_hash="-",
    )  # fmt: skip
    return manifest.write(root / "manifest.json")


def test_rows_either_version_trained_or_stopped_on_are_found(tmp_path: Path) -> None:
    challenger = split(tmp_path / "challenger", {"train": [0], "validation": [3], "test": [2]})
    champion = split(tmp_path / "champion", {"train": [4], "test": [1, 5]})
    learned = learned_rows(CONFIG, recent(), [challenger, champion, challenger])
    # The same carrier and flight an hour later, or another flight in the same hour, are other rows; a row with
    # its flight number missing matches the same row.
    assert learned.tolist() == [True, False, False, True, True, False]


def test_without_any_learned_row_no_row_is_found(tmp_path: Path) -> None:
    only_tested = split(tmp_path / "time", {"test": [0, 1, 2, 3, 4, 5]})
    assert not learned_rows(CONFIG, recent(), [only_tested]).any()
