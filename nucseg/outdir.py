"""Output directories: one writer at a time, and no temp files left behind by a killed run.

Every command that writes into a directory claims it first (`claim`):
- the directory is created (a file in its way is one clear error);
- an advisory lock (`.nucseg.lock`, fcntl.flock, removed at the end) keeps a second nucseg
  process out of it with a clear message; the kernel drops the lock when its process dies,
  even by kill -9 (the next run then finds the file and takes the lock);
- a directory this command created and left empty (it failed before writing) is removed;
- holding the lock, temp files that a killed run left (`.<name>.<random>.part<suffix>`, the
  names nucseg.io.atomic_path uses) are removed: no live writer can own them.
"""
from __future__ import annotations

import contextlib
import os
import re
from pathlib import Path
from typing import Iterator

from nucseg.io import InputError

LOCK_NAME = ".nucseg.lock"
# atomic_path's temp names: "." + final name + "." + mkstemp's 8 random chars + ".part" + suffix
TEMP_NAME = re.compile(r"^\..+\.[A-Za-z0-9_]{8}\.part(\.[^./]+)?$")


def stale_temp_files(directory, depth: int = 2) -> list[Path]:
    """Temp files of atomic writes under `directory` (its sub-directories to `depth`)."""
    directory = Path(directory)
    found = []
    for root, dirs, files in os.walk(directory):
        level = len(Path(root).relative_to(directory).parts)
        if level >= depth:
            dirs[:] = []
        found += [Path(root) / f for f in files if TEMP_NAME.match(f)]
    return sorted(found)


def _make_dir(directory: Path) -> None:
    for path in (directory, *directory.parents):    # name the file that is in the way
        if path.exists() and not path.is_dir():
            raise InputError(path, "exists and is not a directory (output directory "
                                   f"{directory})")
    directory.mkdir(parents=True, exist_ok=True)
    if not os.access(directory, os.W_OK | os.X_OK):
        raise InputError(directory, "output directory is not writable")


@contextlib.contextmanager
def claim(directory, log=None) -> Iterator[list[Path]]:
    """Create and lock `directory` for this process, remove stale temp files; yields the
    removed paths. A directory another nucseg process holds is an InputError."""
    directory = Path(directory)
    created = not directory.exists()
    _make_dir(directory)
    try:
        import fcntl
    except ImportError:             # not POSIX: no lock, cleanup only of what we can tell
        fcntl = None
    handle = open(directory / LOCK_NAME, "a+", encoding="utf-8")
    try:
        if fcntl is not None:
            try:
                fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                raise InputError(directory, "another nucseg process is writing into this "
                                            "directory; wait for it to finish or choose "
                                            "another output directory") from None
        removed = []
        for path in stale_temp_files(directory):
            path.unlink(missing_ok=True)
            removed.append(path)
        if removed and log is not None:
            log(f"removed {len(removed)} temp file(s) left by an interrupted run in {directory}")
        yield removed
    finally:
        (directory / LOCK_NAME).unlink(missing_ok=True)    # while still holding the lock
        handle.close()              # closing releases the lock
        if created and not any(directory.iterdir()):
            directory.rmdir()       # failed before writing anything: leave no empty folder


def same_settings_or_refuse(directory, file_name: str, settings: dict, resume: bool,
                            write: bool = True) -> None:
    """Keep a resumable command's settings in `directory/file_name`; on --resume refuse
    settings that differ from the first run's, saying exactly what differs (as `train
    --resume` refuses changed options), so one directory never mixes two option sets.
    `write=False` only checks (call again with write=True once the work is sure to start)."""
    import yaml

    from nucseg.io import atomic_path

    path = Path(directory) / file_name
    settings = yaml.safe_load(yaml.safe_dump(settings, sort_keys=True))   # plain types
    if resume and path.is_file():
        try:
            before = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
        except (OSError, UnicodeDecodeError, yaml.YAMLError):
            before = None
        if not isinstance(before, dict):
            raise InputError(path, "unreadable settings of the first run; remove the file to "
                                   "resume anyway")
        keys = sorted(set(before) | set(settings))
        diffs = [f"{k}: {before.get(k)!r} -> {settings.get(k)!r}" for k in keys
                 if before.get(k) != settings.get(k)]
        if diffs:
            raise InputError(directory, "--resume with other settings than the first run in "
                                        "this directory (" + "; ".join(diffs) + "); repeat them "
                                        "or write to a new directory")
        return
    if not write:
        return
    with atomic_path(path) as tmp:
        tmp.write_text(yaml.safe_dump(settings, sort_keys=True), encoding="utf-8")
