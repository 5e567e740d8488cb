"""Ingestion benchmark: a large CSV drop → validated, typed, joined Parquet, against pyarrow read + write of
the same file measured in the same run.

The file is built by repeating the demo year of the flights pipeline until it has ``--rows`` rows, and
dropped into one landing day. Each contender runs in its own process, so its peak memory is its own and
every Spark figure includes what a fresh Airflow task pays. Run with ``make bench``.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from datetime import date, timedelta
from pathlib import Path

DAY = date(2013, 1, 1)
PIPELINE = "flights"


def build_drop(home: Path, rows: int) -> Path:
    """The landing file of the benchmark day (kept between runs) and the pipeline's dimension files."""
    from flightplan.config import load_pipeline
    from flightplan.dev.replay import replay
    from flightplan.layout import Layout
    from flightplan.settings import load_settings

    os.environ["FLIGHTPLAN_HOME"] = str(home)
    settings = load_settings()
    layout = Layout(settings, load_pipeline(PIPELINE, settings.pipelines_dir))
    target = layout.landing / DAY.isoformat() / f"{PIPELINE}-x{rows}.csv"
    if target.exists():
        return target
    year = home / "year"
    os.environ["FLIGHTPLAN_DATA_ROOT"] = str(year)
    year_layout = Layout(load_settings(), layout.config)
    replay(year_layout, DAY, DAY + timedelta(days=365))
    del os.environ["FLIGHTPLAN_DATA_ROOT"]
    header, bodies = b"", []
    for day_file in sorted(year_layout.landing.glob("*/*.csv")):
        header, _, body = day_file.read_bytes().partition(b"\n")
        bodies.append(body)
    year_body = b"".join(bodies)
    year_rows = year_body.count(b"\n")
    target.parent.mkdir(parents=True, exist_ok=True)
    partial = target.with_suffix(".partial")
    with partial.open("wb") as out:
        out.write(header + b"\n")
        written = 0
        while written < rows:
            take = min(year_rows, rows - written)
            out.write(year_body if take == year_rows else b"\n".join(year_body.split(b"\n")[:take]) + b"\n")
            written += take
    partial.replace(target)
    for dimension in layout.config.dimensions:
        layout.dimension(dimension).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(year_layout.dimension(dimension), layout.dimension(dimension))
    shutil.rmtree(year)
    return target


def run_pyarrow(csv_path: Path, out: Path) -> dict[str, float]:
    import pyarrow.csv as pcsv
    import pyarrow.parquet as pq

    started = time.perf_counter()
    table = pcsv.read_csv(csv_path)
    pq.write_table(table, out / "pyarrow.parquet")
    return {"pyarrow read_csv + write_table": time.perf_counter() - started}


def run_flightplan(home: Path, engine: str) -> dict[str, float]:
    os.environ["FLIGHTPLAN_HOME"] = str(home)
    from flightplan.config import load_pipeline
    from flightplan.data.ingest import ingest
    from flightplan.layout import Layout
    from flightplan.settings import load_settings

    settings = load_settings()
    layout = Layout(settings, load_pipeline(PIPELINE, settings.pipelines_dir))
    figures = {}
    started = time.perf_counter()
    spark = None
    if engine == "spark":
        from flightplan.spark import get_spark

        spark = get_spark(settings, "flightplan-bench")
        figures["spark session start"] = time.perf_counter() - started
    manifest = json.loads(ingest(layout, DAY, DAY + timedelta(days=1), spark=spark, engine=engine).read_text())
    figures[f"flightplan ingest, {engine} engine, first run" + (" (incl. session start)" if spark else "")] = (
        time.perf_counter() - started
    )
    started = time.perf_counter()
    ingest(layout, DAY, DAY + timedelta(days=1), spark=spark, engine=engine)
    figures[f"flightplan ingest, {engine} engine, re-run in the same process"] = time.perf_counter() - started
    figures["rows"] = manifest["rows_total"]
    figures["quarantined"] = manifest["quarantined_total"]
    return figures


def process_tree_peak_mib() -> float:
    """Peak resident memory of this process and every live descendant (the Spark JVM and its Python
    workers), summed: an upper bound of what the contender held at once."""
    return trees_peak_mib(lambda pid, _: pid == os.getpid())


def trees_peak_mib(is_root: Callable[[int, str], bool]) -> float:
    """Peak resident memory (VmHWM) of the live processes that ``is_root(pid, cmdline)`` picks and of all their
    descendants, summed."""
    processes: dict[int, tuple[int, str]] = {}
    for proc in Path("/proc").glob("[0-9]*"):
        try:
            parent = int((proc / "stat").read_text().rsplit(")", 1)[1].split()[1])
            processes[int(proc.name)] = (parent, (proc / "cmdline").read_bytes().decode(errors="replace"))
        except OSError:
            continue
    tree = {pid for pid, (_, cmdline) in processes.items() if is_root(pid, cmdline)}
    frontier = list(tree)
    while frontier:
        parent = frontier.pop()
        children = [pid for pid, (ppid, _) in processes.items() if ppid == parent and pid not in tree]
        tree.update(children)
        frontier.extend(children)
    total_kib = 0
    for pid in tree:
        try:
            status = Path(f"/proc/{pid}/status").read_text()
        except OSError:
            continue
        total_kib += next((int(line.split()[1]) for line in status.splitlines() if line.startswith("VmHWM:")), 0)
    return total_kib / 1024


def contender(name: str, csv_path: Path, home: Path) -> dict[str, float]:
    """Run one contender in a fresh interpreter; its timings plus its peak resident memory."""
    result = subprocess.run(
        [sys.executable, __file__, "--contender", name, "--csv", str(csv_path), "--home", str(home)],
        check=True,
        capture_output=True,
        text=True,
    )
    return json.loads(result.stdout.strip().splitlines()[-1])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rows", type=int, default=10_000_000)
    parser.add_argument("--home", type=Path, default=Path(".flightplan/bench"))
    parser.add_argument("--contender", choices=["pyarrow", "local", "spark"])
    parser.add_argument("--csv", type=Path)
    args = parser.parse_args()
    home = args.home.resolve()

    if args.contender:
        if args.contender == "pyarrow":
            scratch = home / "pyarrow-out"
            scratch.mkdir(parents=True, exist_ok=True)
            figures = run_pyarrow(args.csv, scratch)
            shutil.rmtree(scratch)
        else:
            figures = run_flightplan(home, args.contender)
        figures["peak memory MiB"] = process_tree_peak_mib()
        print(json.dumps(figures))
        return 0

    csv_path = build_drop(home, args.rows)
    size_mb = csv_path.stat().st_size / 1e6
    print(f"input: {csv_path} ({args.rows:,} rows, {size_mb:,.0f} MB), {os.cpu_count()} cores")
    peer = contender("pyarrow", csv_path, home)
    baseline = peer["pyarrow read_csv + write_table"]
    rows = [("pyarrow read_csv + write_table (peer)", baseline, peer["peak memory MiB"])]
    for engine in ("local", "spark"):
        figures = contender(engine, csv_path, home)
        if figures["rows"] + figures["quarantined"] != args.rows:
            raise SystemExit(f"{engine}: {figures['rows']} rows + {figures['quarantined']} quarantined != {args.rows}")
        for name, value in figures.items():
            if name.startswith(("flightplan", "spark session")):
                rows.append((name, value, figures["peak memory MiB"]))
    print(f"\n{'contender':<66} {'seconds':>8} {'vs pyarrow':>10} {'peak MiB':>9}")
    for name, seconds, memory in rows:
        print(f"{name:<66} {seconds:>8.1f} {seconds / baseline:>10.2f} {memory:>9,.0f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
