"""A local plugin (listed under a recipe's `plugins:`) that writes what each rank saw when training ended."""

import gc
import hashlib
import json
import logging

from haste_core import hookimpl
from haste_core.interfaces import Teacher

_terminated = {}
_messages = []


class _Recorder(logging.Handler):
    def emit(self, record: logging.LogRecord) -> None:
        _messages.append(record.getMessage())


# Record this rank's own log lines (ranks other than 0 print only warnings), from plugin load on.
logging.getLogger("haste").addHandler(_Recorder(level=logging.INFO))
logging.getLogger("haste").setLevel(logging.INFO)


@hookimpl
def haste_alignment_terminated(run, step, alignment, reason):
    _terminated[alignment] = step


@hookimpl
def haste_train_end(run):
    gc.collect()
    digest = hashlib.sha256()
    for tensor in run.student.state_dict().values():
        digest.update(tensor.detach().cpu().numpy().tobytes())
    report = {
        "rank": run.rank,
        "world_size": run.world_size,
        "step": run.step,
        "terminated": _terminated,
        "teachers_alive": sum(Teacher in type(obj).__mro__ for obj in gc.get_objects()),
        "trained_the_teacher": any("digits_vit: training on" in message for message in _messages),
        "student_sha256": digest.hexdigest(),
        "error": repr(run.error) if run.error else None,
    }
    (run.run_dir / f"rank_{run.rank}.json").write_text(json.dumps(report))
