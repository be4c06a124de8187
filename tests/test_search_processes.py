"""A search in other processes: killed and resumed, torchrun against one process, a dead peer, the log read back."""
import json
import os
import re
import signal
import subprocess
import sys
import time

import pytest

import usf_fast
from usf_fast.models.mixture import gmm_2d
from usf_fast.search import s3_search

NS = usf_fast.NoiseScheduleVP("linear")
MODEL2D = gmm_2d().as_model(NS)
SMALL = dict(budget=60, samples=(32, 64), heldout=128, per_generation=8, proposals=64, population=8, progress=False,
             solve=0)   # the S3 search alone


CLI = [sys.executable, "-m", "usf_fast.cli", "search", "--model", "gmm-2d", "--nfe", "3", "--budget", "120",
       "--samples", "32", "--samples2", "64", "--heldout", "128", "--seed", "3", "--solve", "2", "--solve-samples", "16"]


def _evals(path):
    lines = [json.loads(l) for l in open(path).read().splitlines() if l.strip()]
    return [(r["key"], r["fidelity"]) for r in lines if r.get("type") == "eval"]


def test_killed_search_resumes_without_losing_or_repeating_evaluations(tmp_path):
    full, killed = tmp_path / "full", tmp_path / "killed"
    subprocess.run(CLI + ["--out", str(full)], check=True, capture_output=True, env=_env())
    proc = subprocess.Popen(CLI + ["--out", str(killed)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=_env())
    log = killed / "log_nfe3.jsonl"
    deadline = time.time() + 120
    while time.time() < deadline:
        if log.exists() and len(_evals(log)) >= 40:
            break
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    n_before = len(_evals(log))
    assert 40 <= n_before < len(_evals(full / "log_nfe3.jsonl")), "the kill came too late to test anything"
    r = subprocess.run(CLI + ["--out", str(killed), "--resume"], capture_output=True, text=True, env=_env())
    assert r.returncode == 0, r.stderr
    ev = _evals(log)
    assert len(ev) == len(set(ev))                      # nothing evaluated twice
    assert set(ev) == set(_evals(full / "log_nfe3.jsonl"))  # nothing lost: same evaluations as uninterrupted
    assert json.load(open(killed / "best.json")) == json.load(open(full / "best.json"))


def _close(a, b, rel=1e-9):
    """Equal JSON values, numbers to `rel` (the solve stage's sums run in another order over processes)."""
    if isinstance(a, dict):
        return isinstance(b, dict) and a.keys() == b.keys() and all(_close(a[k], b[k], rel) for k in a)
    if isinstance(a, list):
        return isinstance(b, list) and len(a) == len(b) and all(_close(x, y, rel) for x, y in zip(a, b))
    if isinstance(a, float) and isinstance(b, (int, float)) and not isinstance(b, bool):
        return abs(a - b) <= rel * max(1.0, abs(a), abs(b))
    return a == b


def _solve_rows(out):
    line = next(l for l in (out / "summary.txt").read_text().splitlines() if l.startswith("network rows run now"))
    return int(re.search(r"solve ([\d,]+)", line).group(1).replace(",", ""))


def test_torchrun_two_processes_equal_one_process(tmp_path):
    """The S³ stages' evaluations are the same chunks whatever the processes; the solve stage splits
    its noise over them (each runs half the rows) and sums the fits, so the solved schedules equal one
    process's to rounding."""
    one, two = tmp_path / "one", tmp_path / "two"
    subprocess.run(CLI + ["--out", str(one)], check=True, capture_output=True, env=_env())
    r = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                        "-m", "usf_fast.cli"] + CLI[3:] + ["--out", str(two)], capture_output=True, text=True, env=_env())
    assert r.returncode == 0, r.stderr   # whole: a failing rank's own message comes before torchrun's report
    best = json.load(open(one / "best.json"))
    assert any(st.get("weights") for st in best["steps"]), "the test needs a solved schedule to win"
    assert _close(json.load(open(two / "best.json")), best)
    ev1, ev2 = sorted(_evals(one / "log_nfe3.jsonl")), sorted(_evals(two / "log_nfe3.jsonl"))
    assert [e for e in ev2 if "weights" not in e[0]] == [e for e in ev1 if "weights" not in e[0]]
    assert _close([[json.loads(k), f] for k, f in ev2 if "weights" in k],
                  [[json.loads(k), f] for k, f in ev1 if "weights" in k])
    # the solve stage's rows are split, not run by each process (the sum over both = one process's)
    assert _solve_rows(two) == _solve_rows(one) > 0


def _env():
    env = dict(os.environ)
    env["OMP_NUM_THREADS"] = "1"
    return env


def test_read_evaluations_returns_the_logged_evaluations(tmp_path):
    from usf_fast.search.log import read_evaluations
    log = tmp_path / "log.jsonl"
    r = s3_search(MODEL2D, 3, seed=4, log_path=log, **SMALL)
    every = read_evaluations(log)
    assert len(every) == r.new_evaluations and all(e["type"] == "eval" for e in every)
    s1 = read_evaluations(log, "s1")
    assert s1 and all(e["fidelity"] == "s1" for e in s1) and len(s1) < len(every)
    assert s1 == [e for e in every if e["fidelity"] == "s1"]        # in the search's order
    lines = log.read_text().splitlines()
    log.write_text("\n".join(lines[:3] + ["{not json"] + lines[3:]) + "\n")
    with pytest.raises(ValueError, match="line 4 is corrupt"):
        read_evaluations(log)


def test_a_dead_peer_is_one_clear_line_not_a_hang(tmp_path):
    """Two processes of a distributed search (as torchrun starts them); rank 1 dies at its first
    network call. Rank 0 reports it in one line naming --dist-timeout and exits with status 2."""
    import socket
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    procs = []
    for rank in (0, 1):
        env = dict(_env(), MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), WORLD_SIZE="2", RANK=str(rank),
                   LOCAL_RANK=str(rank), PYTHONPATH=os.pathsep.join([os.path.dirname(__file__),
                                                                     os.environ.get("PYTHONPATH", "")]))
        procs.append(subprocess.Popen(
            [sys.executable, "-m", "usf_fast.cli", "search", "--model", "dead_peer:model", "--nfe", "3",
             "--budget", "8", "--samples", "8", "--samples2", "8", "--heldout", "8", "--device", "cpu",
             "--solve", "0", "--dist-timeout", "30", "--out", str(tmp_path / "out")],
            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
    out0 = procs[0].communicate(timeout=120)
    procs[1].communicate(timeout=30)
    assert procs[1].returncode == 3
    assert procs[0].returncode == 2, out0[1][-2000:]
    assert "a peer process of this torchrun job is gone or stalled" in out0[1] and "Traceback" not in out0[1]
