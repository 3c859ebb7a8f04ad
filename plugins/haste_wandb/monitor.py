"""Weights & Biases monitor: a run's metrics, sample grids, attention pictures, histograms, termination events
and resolved recipe in a wandb run (rank 0 only). Needs the extra ``pip install 'haste-diffusion[wandb]'``.

Off unless ``HASTE_WANDB`` is set: to the wandb project's name (``1`` means project ``haste``). wandb's own
variables apply as usual: ``WANDB_MODE=offline`` records without an account or network (``wandb sync`` uploads
later), ``WANDB_ENTITY``, ``WANDB_API_KEY``, ``WANDB_DIR`` (default ``<run>/``, so the files sit in
``<run>/wandb/``). The wandb run is named after ``run.name``, its config is the resolved recipe, and its id is
kept in ``<run>/wandb/run_id`` so that a resumed haste run continues the same wandb run.

It never stops or fails training: without an API key (and without ``WANDB_MODE``) it records offline rather than
wait at wandb's login prompt; if wandb cannot start online within ``HASTE_WANDB_TIMEOUT`` seconds (default 30) it
records offline instead; and any later wandb error switches the monitor off with one warning. Scalars
are the tags of ``haste_step_end``; images go under ``samples/ema`` and ``attention/<label>/<pair>``;
``haste_histograms`` become wandb histograms; each termination is the summary entry ``termination/<label>``
("step S: reason") beside the scalar ``termination/fired/<label>``.
"""

from __future__ import annotations

import logging
import netrc
import os
import secrets
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from haste_core import RunContext, hookimpl

log = logging.getLogger("haste")

DEFAULT_PROJECT = "haste"
DEFAULT_TIMEOUT_S = 30.0

_runs: dict[Path, Any] = {}  # haste run folder -> wandb run, for the runs of this process


def project() -> str | None:
    """The wandb project named by ``HASTE_WANDB``, or None when the monitor is off."""
    value = os.environ.get("HASTE_WANDB", "").strip()
    if value.lower() in ("", "0", "false", "no", "off"):
        return None
    return DEFAULT_PROJECT if value.lower() in ("1", "true", "yes", "on") else value


def has_credentials() -> bool:
    """True when wandb would find an API key (``WANDB_API_KEY`` or a netrc entry for its host), so that going
    online cannot stop at an interactive login prompt."""
    if os.environ.get("WANDB_API_KEY"):
        return True
    host = urlparse(os.environ.get("WANDB_BASE_URL") or "https://api.wandb.ai").hostname
    try:
        return netrc.netrc(os.environ.get("NETRC")).authenticators(host or "") is not None
    except (OSError, netrc.NetrcParseError):
        return False


def _start(run: RunContext, name: str) -> Any:
    import wandb

    folder = run.run_dir / "wandb"
    folder.mkdir(parents=True, exist_ok=True)
    id_file = folder / "run_id"
    run_id = id_file.read_text().strip() if id_file.is_file() else secrets.token_hex(4)
    id_file.write_text(run_id + "\n")
    timeout = float(os.environ.get("HASTE_WANDB_TIMEOUT", DEFAULT_TIMEOUT_S))
    options = {
        "project": name,
        "name": run.recipe.run.name,
        "id": run_id,
        "resume": "allow",
        "config": run.recipe.to_dict(),
        "dir": os.environ.get("WANDB_DIR") or str(run.run_dir),
    }
    if not os.environ.get("WANDB_MODE") and not has_credentials():
        log.warning("wandb: no API key (wandb login, or WANDB_API_KEY): recording offline; upload with wandb sync")
        return wandb.init(**options, mode="offline", settings=wandb.Settings(console="off"))
    try:
        return wandb.init(**options, settings=wandb.Settings(init_timeout=timeout, console="off"))
    except Exception as exc:  # unreachable, no credentials: keep the record locally instead
        log.warning(f"wandb could not start online ({type(exc).__name__}: {exc}); recording offline instead")
        options["id"] = secrets.token_hex(4)  # the failed attempt still holds the first id in this process
        id_file.write_text(options["id"] + "\n")
        return wandb.init(**options, mode="offline", reinit="create_new", settings=wandb.Settings(console="off"))


def _call(run: RunContext, action: Any) -> None:
    """Run ``action(wandb_run)`` for this haste run; a wandb error turns the monitor off, training goes on."""
    wandb_run = _runs.get(run.run_dir)
    if wandb_run is None:
        return
    try:
        action(wandb_run)
    except Exception as exc:
        _runs.pop(run.run_dir, None)
        log.warning(f"wandb monitor stopped after an error ({type(exc).__name__}: {exc}); training goes on")


def _image(picture: Any) -> Any:
    import wandb

    return wandb.Image(picture.permute(1, 2, 0).cpu().numpy())


@hookimpl
def haste_train_start(run: RunContext) -> None:
    name = project()
    if not run.is_main or name is None:
        return
    try:
        _runs[run.run_dir] = _start(run, name)
    except ImportError:
        log.warning("HASTE_WANDB is set but wandb is not installed: pip install 'haste-diffusion[wandb]'")
    except Exception as exc:
        log.warning(f"wandb monitor off: wandb could not start ({type(exc).__name__}: {exc}); training goes on")


@hookimpl
def haste_step_end(run: RunContext, step: int, metrics: dict[str, float]) -> None:
    if metrics:
        _call(run, lambda wandb_run: wandb_run.log(dict(metrics), step=step))


@hookimpl
def haste_histograms(run: RunContext, step: int, histograms: dict[str, Any]) -> None:
    def log_histograms(wandb_run: Any) -> None:
        import wandb

        data = {tag: wandb.Histogram(values.detach().float().cpu().numpy()) for tag, values in histograms.items()}
        wandb_run.log(data, step=step)

    _call(run, log_histograms)


@hookimpl
def haste_samples_saved(run: RunContext, step: int, grid: Any, path: Path) -> None:
    _call(run, lambda wandb_run: wandb_run.log({"samples/ema": _image(grid)}, step=step))


@hookimpl
def haste_images(run: RunContext, step: int, images: dict[str, Any]) -> None:
    _call(run, lambda wandb_run: wandb_run.log({tag: _image(p) for tag, p in images.items()}, step=step))


@hookimpl
def haste_alignment_terminated(run: RunContext, step: int, alignment: str, reason: str) -> None:
    def record(wandb_run: Any) -> None:
        wandb_run.summary[f"termination/{alignment}"] = f"step {step}: {reason}"

    _call(run, record)


@hookimpl
def haste_train_end(run: RunContext) -> None:
    wandb_run = _runs.pop(run.run_dir, None)
    if wandb_run is None:
        return
    try:
        wandb_run.finish(exit_code=0 if run.error is None else 1)
    except Exception as exc:
        log.warning(f"wandb could not finish the run ({type(exc).__name__}: {exc})")
