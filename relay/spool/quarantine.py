"""Moving an unreadable spool aside, so a corrupt file never becomes a crash loop."""

from __future__ import annotations

import os
import time
from pathlib import Path

QUARANTINE_DIR = "quarantine"
CORRUPT_MARKER = "spool.db-corrupt"  # written when corruption is found while running
_SUFFIXES = ("", "-wal", "-shm", "-journal", "-corrupt")


def quarantine(db_path: Path) -> Path:
    """Move the database and its companion files to `quarantine/<timestamp>/`; return it."""
    stamp = time.strftime("%Y%m%dT%H%M%S", time.gmtime())
    target = db_path.parent / QUARANTINE_DIR / stamp
    n = 1
    while target.exists():
        n += 1
        target = db_path.parent / QUARANTINE_DIR / f"{stamp}-{n}"
    target.mkdir(parents=True, mode=0o700)
    for suffix in _SUFFIXES:
        src = db_path.with_name(db_path.name + suffix)
        if src.exists():
            os.replace(src, target / src.name)
    _fsync_dir(db_path.parent)
    return target


def list_quarantined(directory: Path) -> list[str]:
    """Quarantined spool folders, oldest first, relative to the spool directory."""
    root = directory / QUARANTINE_DIR
    if not root.is_dir():
        return []
    return sorted(f"{QUARANTINE_DIR}/{p.name}" for p in root.iterdir() if p.is_dir())


def _fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
