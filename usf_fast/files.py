"""Writing output files so that nothing is ever half-written: every file usf_fast writes (schedules,
summaries, samples, plots, images) goes to a new temporary file in the target's folder, created
exclusively under an unpredictable name (it never follows or reuses an existing path), is flushed
to disk, then renamed over the target in one step."""
from __future__ import annotations

import os
import tempfile
from typing import Callable

__all__ = ["atomic_write", "printable"]


def atomic_write(path, write: Callable[[object], None] | str | bytes) -> None:
    """Write `path` atomically. `write` is the text or bytes, or a function given an open binary
    file object to write into (e.g. `lambda f: fig.savefig(f, format="png")`)."""
    path = os.fspath(path)
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=folder, prefix="." + os.path.basename(path) + ".", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            if isinstance(write, str):
                f.write(write.encode("utf-8"))
            elif isinstance(write, (bytes, bytearray)):
                f.write(write)
            else:
                write(f)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise


def printable(text) -> str:
    """Text for a terminal: control characters (ANSI escapes, newlines in a name) shown escaped."""
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in str(text))
