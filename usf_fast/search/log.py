"""Append-only JSON-lines log of a search: a header line, then one line per real evaluation, and
when the search has run to its end a last line with its result (a resumed finished search reads it
back instead of replaying the search). The solve stage adds a line per solved schedule
(`"type": "solved"`: the key of the schedule it started from, its trials, the solved schedule), read
back on resume instead of solving again.

Lines are written with flush + fsync, so a killed search loses at most the line being written;
on resume a truncated last line is dropped (and cut from the file) and every complete line is
reused, so no evaluation is lost or repeated.
"""
from __future__ import annotations

import fcntl
import json
import math
import os
import warnings

from .config import S3_ONLY

__all__ = ["SearchLog", "read_evaluations"]


class SearchLog:
    def __init__(self, path: str | os.PathLike | None, header: dict, resume: bool = False, writer: bool = True):
        self.path = None if path is None else os.fspath(path)
        self.header = header
        self.writer = writer
        self.records: list[dict] = []
        self.result: dict | None = None   # the finished search's result record, if the log has one
        self.solved: dict[str, dict] = {}   # the solve stage's finished schedules, by the solved schedule's key
        self._lock = None
        if self.path is None:
            return
        if writer:
            self._take_lock()
        exists = os.path.exists(self.path) and os.path.getsize(self.path) > 0
        if not resume and not writer:
            return  # other processes of a torchrun job: rank 0 creates and checks the log
        if resume:
            if not exists:
                raise ValueError(f"resume: log {self.path} is missing or empty; nothing to resume "
                                 "(run without --resume to start a new search)")
            self._read()
        elif exists:
            raise ValueError(f"log {self.path} already exists; pass --resume to continue that search "
                             "or choose another --out")
        elif writer:
            os.makedirs(os.path.dirname(os.path.abspath(self.path)), exist_ok=True)
            self._append(dict(header, type="header"))

    def _take_lock(self) -> None:
        """One search per log: an exclusive lock on `<log>.lock`, held until `close` (or the end of
        the process), so two runs on one --out never both append."""
        os.makedirs(os.path.dirname(os.path.abspath(self.path)), exist_ok=True)
        fd = os.open(self.path + ".lock", os.O_CREAT | os.O_RDWR, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(fd)
            raise ValueError(f"log {self.path} is in use by another running search; wait for it to finish "
                             "(then --resume) or choose another --out") from None
        self._lock = fd

    def close(self, finished: bool = False) -> None:
        """Release the lock (the log itself is closed after every line); `finished`: the search
        ended normally, so the lock file goes too (a killed search's stays, harmless: a lock is
        taken on it, its presence means nothing)."""
        if self._lock is not None:
            if finished:
                try:
                    os.unlink(self.path + ".lock")   # while held: no other process holds it now
                except OSError:
                    pass
            fcntl.flock(self._lock, fcntl.LOCK_UN)
            os.close(self._lock)
            self._lock = None

    def __del__(self):
        self.close()

    def _read(self):
        parsed, tail, good_bytes = _parse(self.path)
        if tail.strip():
            warnings.warn(f"log {self.path}: dropping an unfinished last line (the search was killed while "
                          "writing it); that evaluation will be redone", RuntimeWarning, stacklevel=3)
        head = {k: v for k, v in parsed[0].items() if k != "type"}
        if "settings" not in head:
            raise ValueError(f"log {self.path}: written by an older usf_fast (its header has no settings); it cannot be "
                             "resumed by this version: delete it (or its --out folder) or choose another --out")
        differ = [d for key in ("nfe", "seed", "metric", "settings", "shape", "model")
                  if not _same(key, head.get(key), self.header.get(key))
                  for d in _differences(key, head.get(key), self.header.get(key))]
        if differ:
            theirs, mine = head.get("settings") or {}, self.header.get("settings") or {}
            old = ("solve" not in theirs and "solve" in mine
                   and (theirs.get("budget"), theirs.get("samples"), theirs.get("heldout"))
                   == (S3_ONLY["budget"], list(S3_ONLY["samples"]), S3_ONLY["heldout"]))
            solve_theirs, solve_mine = theirs.get("solve") or {}, mine.get("solve") or {}
            one = ("other_prediction" not in solve_theirs and solve_mine.get("other_prediction")
                   and solve_theirs.get("trials") == 96 and solve_theirs.get("presets"))
            hint = (" (it looks like a log of the defaults before 2026-12-05, the S3 search alone: resume it with "
                    "--s3-only, s3_search(..., **S3_ONLY))" if old else
                    " (it looks like a log of the defaults before the solve stage fitted the other prediction, 96 "
                    "trials for one prediction: resume it with --solve 96 --no-solve-other-prediction, "
                    "s3_search(..., solve=96, solve_other_prediction=False))" if one else "")
            raise ValueError(f"log {self.path}: written by a search with other settings: {'; '.join(differ)}; resume "
                             f"with the log's settings{hint}, or choose another --out for a new search")
        self.records = [r for r in parsed[1:] if r.get("type") == "eval"]
        self.solved = {r["key"]: r for r in parsed[1:] if r.get("type") == "solved"}
        results = [r for r in parsed[1:] if r.get("type") == "result"]
        self.result = results[-1] if results else None
        if tail.strip() and self.writer:
            with open(self.path, "r+b") as f:
                f.truncate(good_bytes)

    def _append(self, record: dict):
        if self.path is None or not self.writer:
            return
        with open(self.path, "a") as f:
            f.write(json.dumps(record, allow_nan=False) + "\n")
            f.flush()
            os.fsync(f.fileno())

    def add(self, key: str, schedule: dict, fidelity: str, metric: float, seconds: float, stage: str):
        rec = {"type": "eval", "key": key, "schedule": schedule, "fidelity": fidelity,
               "metric": metric if math.isfinite(metric) else None, "seconds": round(seconds, 6), "stage": stage}
        self.records.append(rec)
        self._append(rec)

    def add_solved(self, key: str, trials: int, solved: dict, seconds: float) -> None:
        """A schedule the solve stage finished: `key` the schedule it started from, `trials` the
        Nelder–Mead trials it was given, `solved` the result (read back on resume, not solved again)."""
        rec = {"type": "solved", "key": key, "trials": trials, "schedule": solved, "seconds": round(seconds, 6)}
        self.solved[key] = rec
        self._append(rec)

    def finish(self, result: dict) -> None:
        """Record the finished search's result (read back by `result` on resume)."""
        rec = dict(result, type="result")
        self.result = rec
        self._append(rec)

    def cached(self) -> dict[tuple[str, str], float]:
        return {(r["key"], r["fidelity"]): (math.inf if r["metric"] is None else float(r["metric"]))
                for r in self.records}


def _parse(path) -> tuple[list[dict], bytes, int]:
    """(header and records, the unfinished text after the last newline, the bytes before it) of a
    log file. A corrupt complete line, or a file without a header, is a ValueError naming it."""
    if os.path.isdir(path):
        raise ValueError(f"log {path}: is a folder, not a search log")
    with open(path, "rb") as f:
        raw = f.read()
    lines = raw.split(b"\n")
    tail = lines[-1]               # the text after the last newline is an unfinished write
    parsed = []
    for n, line in enumerate(lines[:-1], 1):
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
        except json.JSONDecodeError as e:
            raise ValueError(f"log {path}: line {n} is corrupt ({e.msg}); fix or remove that line to resume") from None
        except (RecursionError, UnicodeDecodeError):
            raise ValueError(f"log {path}: line {n} is corrupt (not a JSON record); fix or remove that line") from None
        why = _bad_record(rec, first=not parsed)
        if why:
            raise ValueError(f"log {path}: line {n} is corrupt ({why}); fix or remove that line to resume")
        parsed.append(rec)
    if not parsed or parsed[0].get("type") != "header":
        raise ValueError(f"log {path}: no header line; not a usf_fast search log")
    return parsed, tail, len(raw) - len(tail)


def _same(key: str, theirs, mine) -> bool:
    """Header fields agree; the network's output fingerprint to 1e-3 (another device's rounding is
    the same network), and logs written before it existed are compared without it."""
    if key != "model" or not isinstance(theirs, dict) or not isinstance(mine, dict):
        return theirs == mine
    a, b = dict(theirs), dict(mine)
    fa, fb = a.pop("output", None), b.pop("output", None)
    if a != b:
        return False
    if fa is None:
        return True
    try:
        return len(fa) == len(fb) and all(x == y if x is None or y is None else abs(x - y) <= 1e-3 * max(1.0, abs(x), abs(y))
                                          for x, y in zip(fa, fb))
    except TypeError:
        return False


def _differences(name: str, theirs, mine) -> list[str]:
    """'field: X in the log, Y now' for each leaf where two header values differ (a field only one
    of them has counts as a difference)."""
    if isinstance(theirs, dict) and isinstance(mine, dict):
        out = []
        for k in list(theirs) + [k for k in mine if k not in theirs]:
            if theirs.get(k, "(unset)") != mine.get(k, "(unset)") and not (name == "model" and k == "output"):
                out += _differences(k if name == "settings" else f"{name}.{k}", theirs.get(k, "(unset)"),
                                    mine.get(k, "(unset)"))
        if name == "model" and not out:   # only the network's output fingerprint differs
            return [f"model: another network (its output on a test input differs: {theirs.get('output')} in the log, "
                    f"{mine.get('output')} now)"]
        return out
    return [f"{name} {_short(theirs)} in the log, {_short(mine)} now"]


def _short(v) -> str:
    text = json.dumps(v) if not isinstance(v, str) else v
    return text if len(text) <= 60 else text[:57] + "..."


def _finite(v) -> bool:
    try:
        return math.isfinite(v)
    except OverflowError:   # an integer beyond float range
        return False


def _bad_record(rec, first: bool) -> str | None:
    """What is wrong with a parsed log line, or None. Evaluations need a key, a fidelity, a
    schedule object and a metric that is a finite number or null (+inf: the samples had NaN/inf);
    a NaN metric is a damaged line, never a value."""
    if not isinstance(rec, dict):
        return f"a JSON {type(rec).__name__}, not an object"
    if not first and rec.get("type") == "solved":
        ok = (isinstance(rec.get("key"), str) and isinstance(rec.get("schedule"), dict)
              and isinstance(rec.get("trials"), int) and not isinstance(rec.get("trials"), bool))
        return None if ok else "a solved schedule without a valid key, schedule or trials"
    if first or rec.get("type") != "eval":
        return None
    for field, kind in (("key", str), ("fidelity", str), ("schedule", dict)):
        if not isinstance(rec.get(field), kind):
            return f"an evaluation without a valid {field!r}"
    m = rec.get("metric")
    if m is not None and (isinstance(m, bool) or not isinstance(m, (int, float)) or not _finite(m)):
        return f"metric={str(m)[:30]}: must be a finite number or null"
    return None


def read_evaluations(path, fidelity: str | None = None) -> list[dict]:
    """The evaluation records of a search log in the order the search made them (those of one
    fidelity, e.g. "s1", if given), whatever search wrote it; an unfinished last line is skipped."""
    parsed, _, _ = _parse(path)
    return [r for r in parsed[1:] if r.get("type") == "eval" and (fidelity is None or r["fidelity"] == fidelity)]
