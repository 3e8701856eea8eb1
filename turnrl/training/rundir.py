"""The run directory's contract: one live run at a time, and no run silently replaced.

A run directory (``run.output_dir``) belongs to one run. :class:`RunLock`
holds an exclusive ``fcntl.flock`` on ``<run_dir>/.turnrl.lock`` (the holder's
pid written in it) for the life of a run, so a second trainer on the same
directory fails at once with the holder's pid instead of interleaving its
metrics with the first. The lock dies with its process (the kernel drops it),
so a killed run never leaves the directory locked.

:func:`claim_fresh` refuses a directory that already holds something unless
asked to overwrite; overwriting removes the previous run's files
(:data:`RUN_FILES`) together, so its checkpoints can never be resumed into the
new run's metrics. :func:`clean_stale_temps` removes the temporary folders of
checkpoint saves killed half-way (safe only while holding the lock: no live
process can be writing them).

On resume, :func:`config_changes` lists what differs between the checkpoint's
config and the current one, and :func:`breaking` the changes that would make
the resumed run differ from an uninterrupted one; ``config_history.jsonl``
records every accepted change.
"""

from __future__ import annotations

import errno
import fcntl
import json
import os
import shutil
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import structlog

log = structlog.get_logger(__name__)

LOCK_NAME = ".turnrl.lock"
HISTORY_NAME = "config_history.jsonl"
# What a run writes into its directory; overwriting removes all of it, together.
RUN_FILES = (
    "config.json",
    HISTORY_NAME,
    "metrics.jsonl",
    "metrics.png",
    "eval_samples.jsonl",
    "checkpoints",
    "final",
    "best",
    ".best.tmp",  # KeepBest's folders while it replaces best/
    ".best.old",
    "eval",
)
# Settings a resumed run may change without leaving the uninterrupted run's path:
# how long it runs, what it reports and where, and evaluation (which never feeds
# back into training; its early stopping only ends it sooner). A dotted key matches
# itself and everything under it.
HARMLESS = (
    "profile",
    "run.output_dir",
    "run.max_steps",
    "run.log_every",
    "run.progress",
    "run.plot",
    "run.save_final",
    "run.checkpoint_every",
    "run.keep_checkpoints",
    "run.overwrite",
    "generation.weights",  # where generation reads the weights; it samples the same
    "optim.auto_lr_scale",  # acts only through optim.lr, which is compared as resolved
    "mismatch.measure",  # metrics only; the update is the same
    "wandb",
    "eval",
    "base_dir",  # where an experiment's code was found; its targets are compared themselves
)


class RunDirError(RuntimeError):
    """The run directory cannot be used: it holds another run, is locked, or is not writable."""


class RunLock:
    """An exclusive lock on a run directory, held from :meth:`acquire` to :meth:`release`.

    Args:
        run_dir: The run directory (created if missing).
    """

    def __init__(self, run_dir: str | Path) -> None:
        self.run_dir = Path(run_dir)
        self.path = self.run_dir / LOCK_NAME
        self._fd: int | None = None

    @property
    def held(self) -> bool:
        """Whether this object holds the lock."""
        return self._fd is not None

    def acquire(self) -> None:
        """Take the lock, or fail at once.

        Raises:
            RunDirError: Another live process (named by pid) or another open
                Trainer of this process holds it, or the directory cannot be
                created or written.
        """
        ensure_writable(self.run_dir)
        while self._fd is None:
            try:
                fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            except OSError as e:  # a read-only file system, a lock file we may not open
                raise RunDirError(
                    f"cannot write to run directory {self.run_dir} ({e.strerror or e}); choose "
                    "another run.output_dir or fix its permissions"
                ) from None
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError as e:
                if e.errno in (errno.EAGAIN, errno.EACCES):
                    os.close(fd)
                    raise RunDirError(self._held_message()) from None
                # Some network file systems have no flock: run unprotected rather than not at all.
                log.warning("run_dir_not_locked", run_dir=str(self.run_dir), reason=str(e))
            # The holder before us may have removed the file between our open and our
            # lock: then we locked an orphan, and must lock the file now at the path.
            try:
                same = os.stat(self.path).st_ino == os.fstat(fd).st_ino
            except FileNotFoundError:
                same = False
            if not same:
                os.close(fd)
                continue
            os.ftruncate(fd, 0)
            os.write(fd, f"{os.getpid()}\n".encode())
            self._fd = fd

    def release(self) -> None:
        """Remove the lock file and drop the lock (a no-op when not held)."""
        if self._fd is None:
            return
        try:
            self.path.unlink(missing_ok=True)
        finally:
            os.close(self._fd)  # closing the descriptor drops the flock
            self._fd = None

    def __del__(self) -> None:
        if self._fd is not None:  # a Trainer dropped without close(): let the directory go
            os.close(self._fd)
            self._fd = None

    def _held_message(self) -> str:
        try:
            pid = self.path.read_text(encoding="utf-8").strip() or "unknown"
        except OSError:
            pid = "unknown"
        if pid == str(os.getpid()):
            return (
                f"run directory {self.run_dir} is in use by another Trainer of this process "
                f"(pid {pid}); call its close() (train() does) before starting another on it"
            )
        return (
            f"run directory {self.run_dir} is in use by a live run (pid {pid}); wait for it to "
            "end, stop it, or write this run elsewhere (run.output_dir)"
        )


def preflight(run_dir: str | Path, *, resume: bool, overwrite: bool) -> None:
    """The run-directory checks a Trainer makes, made before slow work such as a warm-start.

    Raises:
        RunDirError: The directory is not writable, in use by a live run, or
            (unless resuming or overwriting) not empty.
    """
    lock = RunLock(run_dir)
    lock.acquire()
    lock.release()
    if not resume:
        check_fresh(run_dir, overwrite=overwrite)


def ensure_writable(run_dir: str | Path) -> None:
    """Create ``run_dir`` if needed and check that it is a writable directory.

    Raises:
        RunDirError: It is a file, or it cannot be created or written.
    """
    run_dir = Path(run_dir)
    if run_dir.exists() and not run_dir.is_dir():
        raise RunDirError(f"run.output_dir {run_dir} is a file, not a directory; choose another")
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise RunDirError(
            f"cannot create run directory {run_dir}: {e.strerror or e}; choose another "
            "run.output_dir"
        ) from None
    if not os.access(run_dir, os.W_OK | os.X_OK):
        raise RunDirError(
            f"run directory {run_dir} is not writable; choose another run.output_dir or fix "
            "its permissions"
        )


def check_usable(run_dir: str | Path) -> None:
    """Check, without creating anything, that ``run_dir`` could be a run directory.

    Raises:
        RunDirError: It is a file, or the directory (or the nearest existing
            parent it would be created in) is not writable.
    """
    run_dir = Path(run_dir).absolute()
    if run_dir.exists() and not run_dir.is_dir():
        raise RunDirError(f"run.output_dir {run_dir} is a file, not a directory; choose another")
    existing = next(p for p in (run_dir, *run_dir.parents) if p.exists())
    if not existing.is_dir() or not os.access(existing, os.W_OK | os.X_OK):
        raise RunDirError(
            f"run.output_dir {run_dir} cannot be written ({existing} is not a writable "
            "directory); choose another run.output_dir or fix its permissions"
        )


def contents(run_dir: str | Path) -> list[str]:
    """Names in ``run_dir`` other than the lock file, sorted (empty if it does not exist)."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        return []
    return sorted(p.name for p in run_dir.iterdir() if p.name != LOCK_NAME)


def check_fresh(run_dir: str | Path, *, overwrite: bool) -> list[str]:
    """Refuse a non-empty ``run_dir`` unless ``overwrite``; returns what is there.

    Raises:
        RunDirError: The directory holds files and ``overwrite`` is False.
    """
    found = contents(run_dir)
    if found and not overwrite:
        shown = ", ".join(found[:5]) + (", ..." if len(found) > 5 else "")
        raise RunDirError(
            f"run directory {run_dir} is not empty ({shown}); continue that run with --resume "
            "(Trainer(resume=True)), write this one elsewhere (run.output_dir), or replace it "
            "with --overwrite (run.overwrite=true)"
        )
    return found


def claim_fresh(run_dir: str | Path, *, overwrite: bool) -> None:
    """Make ``run_dir`` ready for a new run (hold its lock first).

    With ``overwrite`` the previous run's files (:data:`RUN_FILES`) are removed
    together; files a run does not write are left alone.

    Raises:
        RunDirError: The directory is not empty and ``overwrite`` is False.
    """
    run_dir = Path(run_dir)
    found = check_fresh(run_dir, overwrite=overwrite)
    removed = [name for name in RUN_FILES if name in found]
    for name in removed:
        target = run_dir / name
        if target.is_dir() and not target.is_symlink():
            shutil.rmtree(target)
        else:
            target.unlink()
    if removed:
        log.warning("run_dir_overwritten", run_dir=str(run_dir), removed=removed)


def clean_stale_temps(checkpoints: str | Path) -> list[str]:
    """Remove the temporary folders of checkpoint saves that never finished.

    Call it only while holding the run's lock: then no live process is writing them.

    Returns:
        The names removed.
    """
    root = Path(checkpoints)
    if not root.is_dir():
        return []
    stale = [p for p in root.iterdir() if p.name.startswith(".step-") and p.is_dir()]
    for path in stale:
        shutil.rmtree(path, ignore_errors=True)
    if stale:
        log.info("stale_checkpoint_temps_removed", names=[p.name for p in stale])
    return [p.name for p in stale]


def config_changes(recorded: Mapping[str, Any], current: Mapping[str, Any]) -> dict[str, list]:
    """``{dotted.key: [recorded, current]}`` for every setting that differs.

    Only the sections ``current`` has are compared: a script's training config
    resuming a ``turnrl train`` checkpoint (which also records the environment,
    scenarios and rewards) is compared on the training settings.
    """
    recorded = {k: v for k, v in recorded.items() if k in current}
    old, new = _flatten(recorded), _flatten(current)
    return {
        k: [old.get(k), new.get(k)]
        for k in sorted(old.keys() | new.keys())
        if old.get(k) != new.get(k)
    }


def breaking(changes: Mapping[str, Any]) -> dict[str, Any]:
    """The changes that make a resumed run differ from the uninterrupted one."""
    return {k: v for k, v in changes.items() if not _harmless(k)}


def check_resume_target(run_dir: str | Path, checkpoint: Path, *, overwrite: bool) -> list[Path]:
    """Check that resuming ``checkpoint`` into ``run_dir`` mixes no two runs.

    A checkpoint of another run may be continued in an empty directory (or,
    with ``overwrite``, one whose run is replaced). A checkpoint of this run
    that is not its latest abandons the later ones: allowed with ``overwrite``.

    Returns:
        The later checkpoints to delete once the checkpoint has loaded.

    Raises:
        RunDirError: The directory holds another run, or later checkpoints,
            and ``overwrite`` is False.
    """
    from turnrl.training.checkpoint import list_checkpoints, step_of

    if checkpoint.resolve().parent.parent != Path(run_dir).resolve():
        check_fresh(run_dir, overwrite=overwrite)
        return []
    later = [c for c in list_checkpoints(run_dir) if step_of(c) > step_of(checkpoint)]
    if later and not overwrite:
        raise RunDirError(
            f"checkpoints after {checkpoint.name} exist ({', '.join(c.name for c in later)}); "
            "resuming from it would mix two futures of the run. Resume the latest, or pass "
            "--overwrite (run.overwrite=true) to delete the later ones"
        )
    return later


def record_resume(
    run_dir: str | Path,
    checkpoint: Path,
    step: int,
    changes: dict[str, list],
    *,
    forced: bool,
    abandoned: list[Path],
) -> None:
    """Make the run directory tell the resumed run's story (after the checkpoint loaded).

    Deletes the ``abandoned`` checkpoints and the metrics logged after ``step``
    (by the run that went on past the checkpoint), makes room when continuing
    another run's checkpoint, and appends the config changes to
    ``config_history.jsonl``.
    """
    from turnrl.logging import read_metrics

    run_dir = Path(run_dir)
    own_run = checkpoint.resolve().parent.parent == run_dir.resolve()
    if not own_run:
        claim_fresh(run_dir, overwrite=True)  # checked empty, or to overwrite, before loading
    for path in abandoned:
        shutil.rmtree(path)
    metrics_file = run_dir / "metrics.jsonl"
    if own_run and metrics_file.exists() and metrics_file.read_text(encoding="utf-8").strip():
        kept = [r for r in read_metrics(run_dir) if r["step"] <= step]
        metrics_file.write_text("".join(json.dumps(r) + "\n" for r in kept), encoding="utf-8")
    if changes or not own_run:
        record = {"step": step, "checkpoint": str(checkpoint), "changes": changes, "forced": forced}
        line = json.dumps({"time": time.strftime("%Y-%m-%dT%H:%M:%S%z"), **record})
        with (run_dir / HISTORY_NAME).open("a", encoding="utf-8") as f:
            f.write(line + "\n")


def _harmless(key: str) -> bool:
    return any(key == h or key.startswith(h + ".") for h in HARMLESS)


def _flatten(data: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    flat: dict[str, Any] = {}
    for key, value in data.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping) and value:
            flat |= _flatten(value, name + ".")
        else:
            flat[name] = value
    return flat
