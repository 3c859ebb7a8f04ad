"""A CSV monitor: the metrics of every logging step as one row of ``<run_dir>/metrics.csv`` (rank 0 only).

An observer: it registers no component and changes nothing about training, so adding or removing it does not
make a resumed run a different run. A resumed run appends to the file.
"""

from __future__ import annotations

import csv

from haste_core import RunContext, hookimpl

FILE = "metrics.csv"


@hookimpl
def haste_step_end(run: RunContext, step: int, metrics: dict[str, float]) -> None:
    if not run.is_main or not metrics:
        return
    path = run.run_dir / FILE
    new = not path.is_file()
    with path.open("a", newline="") as handle:
        writer = csv.writer(handle)
        if new:
            writer.writerow(["step", "tag", "value"])
        writer.writerows([step, tag, value] for tag, value in metrics.items())
