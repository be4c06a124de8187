"""`budget` bounds every search evaluation (the preset seeds and each stage's re-evaluations
included), a too-small budget is one clear error, the progress bar counts the whole search in
network rows, and a finished search is read back from its log instead of replayed."""
import json

import pytest

import usf_fast.search.s3 as s3
from usf_fast.cli import main
from usf_fast.models import embedded_model
from usf_fast.search import S3Search, SearchConfig, s3_search
from usf_fast.search.log import read_evaluations

MODEL = embedded_model("gmm-2d")
SMALL = dict(samples=(8, 16), heldout=16, proposals=32, population=8, per_generation=4, solve=0)   # S3 alone


@pytest.mark.parametrize("budget", [4, 16, 40])
def test_the_budget_bounds_every_counted_evaluation_seeds_included(tmp_path, budget):
    log = tmp_path / "log.jsonl"
    r = s3_search(MODEL, 4, budget=budget, log_path=log, progress=False, **SMALL)
    counted = [e for e in read_evaluations(log) if e["stage"] != "final"]
    assert r.evaluations <= budget and len(counted) <= budget
    seeds = [e for e in counted if e["stage"] == "seed"]
    assert 1 <= len(seeds) <= SearchConfig(nfe=4, budget=budget, **SMALL).stage_ends()[0]


def test_fewer_seeds_than_presets_are_the_best_by_the_gaussian_probe():
    search = S3Search(MODEL, SearchConfig(nfe=4, budget=8, progress=False, **SMALL))
    every = search.space.seeds()
    chosen = search.seeds()
    assert len(chosen) == SearchConfig(nfe=4, budget=8, **SMALL).stage_ends()[0] == 6 < len(every)
    key = s3.schedule_key
    err = {key(s): float(search.probe_of(s, key(s)).mean()) for s in every}
    worst_chosen = max(err[key(s)] for s in chosen)
    assert sum(e < worst_chosen for e in err.values()) <= len(chosen) - 1   # none better was left out


@pytest.mark.parametrize("kw", [{"budget": 1}, {"budget": 2, "samples": (8, 16, 32), "stage_split": (0.5, 0.9)}])
def test_a_budget_too_small_for_the_stages_is_refused_naming_the_smallest(kw):
    c = dict(SMALL, **kw)
    with pytest.raises(ValueError, match=r"budget=\d+: too small for \d stages .* give budget >= \d+"):
        SearchConfig(nfe=4, **c)


def test_a_budget_too_small_is_one_line_in_the_cli(tmp_path, capsys):
    assert main(["search", "--model", "gmm-2d", "--nfe", "3", "--budget", "1", "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("usf-fast search: error: budget=1: too small"), err
    assert not (tmp_path / "o").exists()   # refused before anything is written


def test_the_progress_bar_counts_the_whole_search_in_rows_against_the_printed_bound(monkeypatch, tmp_path):
    bars = []

    class Bar:
        def __init__(self, total, **kw):
            self.total, self.n, self.first_total = total, 0, total
            bars.append(self)

        def update(self, k):
            self.n += k

        def close(self):
            pass
    monkeypatch.setattr(s3, "tqdm", Bar)
    r = s3_search(MODEL, 4, budget=12, log_path=tmp_path / "log.jsonl", progress=True, **SMALL)
    (bar,) = bars
    # every row the network ran after the one-row check, the held-out table and the references included
    assert bar.n == r.cost["total"] - 1
    assert r.cost["heldout"] > 0 and r.cost["reference"] > 0
    assert bar.n <= bar.first_total   # the printed estimate bounds it


def test_a_finished_search_is_read_back_without_replaying_it(tmp_path, monkeypatch):
    opts = dict(SMALL, budget=24, log_path=tmp_path / "log.jsonl", progress=False)
    first = s3_search(MODEL, 4, **opts)
    monkeypatch.setattr(S3Search, "evolve", lambda *a, **k: pytest.fail("a finished search was replayed"))
    again = s3_search(MODEL, 4, resume=True, **opts)
    assert again.new_evaluations == 0 and again.cost["total"] == 1   # the network check only
    assert again.best.to_dict() == first.best.to_dict() and again.table == first.table
    assert (again.best_metric, again.best_preset, again.best_label) == (first.best_metric, first.best_preset,
                                                                          first.best_label)


def test_a_search_cut_short_by_max_minutes_is_continued_not_read_back(tmp_path):
    opts = dict(SMALL, budget=60, log_path=tmp_path / "log.jsonl", progress=False)
    cut = s3_search(MODEL, 4, max_minutes=0, **opts)
    records = [json.loads(line) for line in (tmp_path / "log.jsonl").read_text().splitlines()]
    assert not any(r.get("type") == "result" for r in records)
    done = s3_search(MODEL, 4, resume=True, **opts)
    assert done.evaluations == 60 > cut.evaluations


def test_no_lock_file_is_left_after_a_finished_search(tmp_path):
    s3_search(MODEL, 3, budget=8, log_path=tmp_path / "log.jsonl", progress=False, **SMALL)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["log.jsonl"]


def test_a_damaged_result_line_is_a_clear_error(tmp_path):
    opts = dict(SMALL, budget=8, log_path=tmp_path / "log.jsonl", progress=False)
    s3_search(MODEL, 3, **opts)
    lines = (tmp_path / "log.jsonl").read_text().splitlines()
    lines[-1] = json.dumps({"type": "result", "best": "not a schedule"})
    (tmp_path / "log.jsonl").write_text("\n".join(lines) + "\n")
    with pytest.raises(ValueError, match="its result line is damaged"):
        s3_search(MODEL, 3, resume=True, **opts)


def test_a_stage_split_of_one_is_one_line_in_the_cli_not_a_hang(tmp_path, capsys):
    assert main(["search", "--model", "gmm-2d", "--stage-split", "1", "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--stage-split 1: must be one fraction in (0, 1)" in err[0], err
