"""One run per run folder: an exclusive lock, held by rank 0 for the life of the run.

A second command on the same folder (resubmitted by hand or by a scheduler while the first still trains, or two
runs started at the same moment) is refused before it reads or writes anything, with the holder's PID and host.
The lock is ``flock`` on ``<run_dir>/.haste.lock``; the kernel drops it when the holder exits, however it exits
(kill -9 included), so a stale lock never blocks a resume. The file stays (removing it while another process
waits on it would let two processes hold two different locks).
"""

from __future__ import annotations

import fcntl
import os
import socket
import time
from pathlib import Path
from typing import IO

from haste_core.errors import RunFolderError

LOCK_FILE = ".haste.lock"


class RunLock:
    """The held lock of one run folder; ``release`` (or the process ending) frees it."""

    def __init__(self, path: Path, handle: IO[str], created: bool) -> None:
        self.path, self._handle, self.created = path, handle, created

    @classmethod
    def acquire(cls, run_dir: Path) -> RunLock:
        """Take the lock of ``run_dir`` (creating the folder), or raise ``RunFolderError`` naming the holder."""
        run_dir = Path(run_dir)
        created = not run_dir.exists()
        try:
            run_dir.mkdir(parents=True, exist_ok=True)
        except (FileExistsError, NotADirectoryError):
            raise RunFolderError(
                f"{run_dir} (or a folder above it) is a file, not a folder; nothing was written. Choose another "
                "run.output_dir or run.name."
            ) from None
        except OSError as exc:
            raise RunFolderError(
                f"cannot create {run_dir} ({(exc.strerror or str(exc)).lower()}); nothing was written. Choose a "
                "run.output_dir you can write to."
            ) from None
        path = run_dir / LOCK_FILE
        try:
            handle = open(path, "a+")  # noqa: SIM115 (held open for the life of the run); "a+": no truncation yet
        except OSError as exc:
            raise RunFolderError(
                f"cannot write in {run_dir} ({(exc.strerror or str(exc)).lower()}); nothing was written. Choose a "
                "run.output_dir you can write to."
            ) from None
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.seek(0)
            holder = handle.read().strip() or "a process that has not written its name yet"
            handle.close()
            raise RunFolderError(
                f"{run_dir} is in use by another haste run ({holder}); nothing was read or written. Wait for it "
                "to finish or stop it (it saves and exits on SIGTERM), or choose another run.name."
            ) from None
        handle.seek(0)
        handle.truncate()
        started = time.strftime("%Y-%m-%d %H:%M:%S %Z")
        handle.write(f"pid {os.getpid()} on host {socket.gethostname()}, since {started}\n")
        handle.flush()
        return cls(path, handle, created)

    def release(self, remove_new_folder: bool = False) -> None:
        """Free the lock; with ``remove_new_folder``, a run folder this lock created and nothing else wrote to is
        removed too (a run refused before writing anything leaves no trace)."""
        if self._handle.closed:
            return
        self._handle.truncate(0)
        if remove_new_folder and self.created and [p.name for p in self.path.parent.iterdir()] == [LOCK_FILE]:
            self.path.unlink()
            self.path.parent.rmdir()
        fcntl.flock(self._handle, fcntl.LOCK_UN)
        self._handle.close()
