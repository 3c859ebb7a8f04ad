"""``<run>/log.txt``: the run's log lines, with their time, also written to a file (rank 0), as REPA users expect.

A resumed run appends to the file, so it holds the whole history of the run folder.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

LOG_FILE = "log.txt"


@contextmanager
def log_to_file(run_dir: Path, enabled: bool) -> Iterator[None]:
    """While inside, the ``haste`` logger's records also go to ``run_dir/log.txt`` (when ``enabled``: rank 0)."""
    if not enabled:
        yield
        return
    run_dir.mkdir(parents=True, exist_ok=True)
    handler = logging.FileHandler(run_dir / LOG_FILE, mode="a", encoding="utf-8")
    handler.setFormatter(logging.Formatter("[%(asctime)s] %(message)s", datefmt="%Y-%m-%d %H:%M:%S"))
    handler.setLevel(logging.INFO)
    logger = logging.getLogger("haste")
    logger.addHandler(handler)
    try:
        yield
    except Exception as exc:  # the file says why the run stopped (the terminal shows it through the launcher)
        handler.emit(logging.makeLogRecord({"msg": f"stopped: {type(exc).__name__}: {exc}", "levelno": logging.ERROR}))
        raise
    finally:
        logger.removeHandler(handler)
        handler.close()
