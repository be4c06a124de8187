"""The CLI as a person meets it: help with defaults and examples, one-line errors with exit status 2,
no flag silently ignored, readable outputs."""
import argparse
import re

import pytest

import usf_fast
from usf_fast.cli import build_parser, main
from usf_fast.search import preset_candidates
from usf_fast.search.report import plot_metric_vs_nfe
from usf_fast.search.space import schedule_key


def _commands():
    p = build_parser()
    sub = next(a for a in p._actions if isinstance(a, argparse._SubParsersAction))
    return p, sub.choices


def test_every_flag_has_help_and_a_default_the_help_names_is_the_real_one():
    """Where a help text writes its default out ("default 8"), it is the flag's default (or, for the
    search flags filled in from SearchConfig, SearchConfig's); the formatter adds the rest."""
    from usf_fast.cli.options import _search_defaults
    config = _search_defaults()
    _, commands = _commands()
    checked = 0
    for name, q in commands.items():
        for a in q._actions:
            if isinstance(a, argparse._HelpAction):
                continue
            assert a.help, f"{name} {a.option_strings or a.dest}: no help text"
            m = re.search(r"\(default:? ([\w.\-]+)", a.help)
            if not m or not a.option_strings:
                continue
            real = a.default if a.default is not None else (config.get(a.dest) if name == "search" else None)
            if isinstance(real, tuple):   # --samples / --samples2: SearchConfig.samples
                real = real[0 if a.dest == "samples" else 1]
            if real is None or isinstance(real, bool) or not isinstance(real, (int, float, str, tuple)):
                continue
            said = m.group(1).rstrip(".")
            same = (float(said) == float(real)) if isinstance(real, (int, float)) and said.replace(".", "", 1).isdigit() \
                else said == str(real)
            assert same, f"{name} {a.option_strings}: help says default {said}, it is {real}"
            checked += 1
    assert checked >= 8


def test_the_top_level_help_shows_examples(capsys):
    with pytest.raises(SystemExit) as e:
        main(["--help"])
    assert e.value.code == 0
    examples = [line for line in capsys.readouterr().out.splitlines() if line.strip().startswith("usf-fast ")]
    assert 3 <= len(examples) <= 5


@pytest.mark.parametrize("argv,needle", [
    (["search", "--budget"], "argument --budget: expected one argument"),
    (["sample", "--nfe", "x"], "argument --nfe: invalid int value: 'x'"),
    (["sample", "--preset", "nope"], "argument --preset: invalid choice: 'nope'"),
    (["frobnicate"], "invalid choice: 'frobnicate'"),
    (["search"], "the following arguments are required: --out"),
])
def test_an_argparse_error_is_one_line_and_exit_status_2(argv, needle, capsys):
    with pytest.raises(SystemExit) as e:
        main(argv)
    err = capsys.readouterr().err.strip().splitlines()
    assert e.value.code == 2 and len(err) == 1, err
    assert err[0].startswith("usf-fast") and ": error: " in err[0] and needle in err[0]


@pytest.fixture
def schedule_file(tmp_path):
    path = tmp_path / "s.json"
    usf_fast.presets.unipc(usf_fast.NoiseScheduleVP("linear"), 6).to_json(path)
    return path


@pytest.mark.parametrize("extra,needle", [
    (["--nfe", "4"], "--nfe 4: the schedule .* makes 6 model evaluations"),
    (["--preset", "ddim"], "--preset: only with a preset, not with --schedule"),
    (["--order", "2"], "--order: only with a preset"),
    (["--spacing", "karras"], "--spacing: only with a preset"),
])
def test_sample_with_a_schedule_file_refuses_what_it_would_ignore(schedule_file, extra, needle, capsys):
    assert main(["sample", "--model", "gmm-2d", "--schedule", str(schedule_file), "--num-samples", "4",
                 "--no-reference"] + extra) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and re.search(needle, err[0]), err


def test_sample_with_a_schedule_file_and_its_own_nfe_runs(schedule_file, capsys):
    assert main(["sample", "--model", "gmm-2d", "--schedule", str(schedule_file), "--nfe", "6", "--num-samples", "4",
                 "--no-reference"]) == 0


def test_no_reference_prints_no_reference_metric(capsys):
    assert main(["sample", "--model", "gmm-2d", "--num-samples", "16", "--nfe", "3", "--no-reference"]) == 0
    out = capsys.readouterr().out
    assert "ref_rmse" not in out and "nan" not in out and "frechet" in out


def _small_search(out, *extra):
    return main(["search", "--model", "gmm-2d", "--nfe", "3", "--budget", "8", "--samples", "8", "--samples2", "8",
                 "--heldout", "8", "--reference-nfe", "10", "--solve", "0", "--out", str(out), *extra])


def test_show_on_a_search_log_says_it_is_a_log(tmp_path, capsys):
    assert _small_search(tmp_path / "o") == 0
    capsys.readouterr()
    assert main(["show", str(tmp_path / "o" / "log_nfe3.jsonl")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "is a search log" in err[0] and "best_nfe3.json" in err[0]


def test_a_finished_search_leaves_no_lock_files_and_labels_its_winner(tmp_path, capsys):
    assert _small_search(tmp_path / "o") == 0
    files = sorted(p.name for p in (tmp_path / "o").iterdir())
    assert not [f for f in files if f.endswith(".lock")], files
    summary = (tmp_path / "o" / "summary.txt").read_text()
    best = next(line for line in summary.splitlines() if line.startswith("best: "))
    assert "prediction" in best or "[" in best   # what it is: a description or a preset with its spacing


def test_a_resume_with_other_settings_names_each_field_in_one_line(tmp_path, capsys):
    assert _small_search(tmp_path / "o") == 0
    capsys.readouterr()
    assert main(["search", "--model", "gmm-2d", "--nfe", "3", "--budget", "10", "--samples", "8", "--samples2", "8",
                 "--heldout", "16", "--reference-nfe", "10", "--solve", "0", "--out", str(tmp_path / "o"),
                 "--resume"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    assert "budget 8 in the log, 10 now" in err[0] and "heldout 8 in the log, 16 now" in err[0]
    assert len(err[0]) < 400


def test_a_second_resume_of_a_finished_search_reprints_it(tmp_path, capsys):
    assert _small_search(tmp_path / "o") == 0
    first = (tmp_path / "o" / "summary.txt").read_text()
    capsys.readouterr()
    assert _small_search(tmp_path / "o", "--resume") == 0
    again = (tmp_path / "o" / "summary.txt").read_text()
    assert first.splitlines()[:3] == again.splitlines()[:3]   # the table of every NFE: the same numbers


@pytest.mark.parametrize("nfe", [2, 3, 4])
def test_presets_that_coincide_are_listed_once(nfe):
    cands = preset_candidates(usf_fast.NoiseScheduleVP("linear"), nfe)
    keys = [schedule_key(s) for _, s in cands]
    assert len(keys) == len(set(keys))
    assert len({lbl for lbl, _ in cands}) == len(cands)


def test_a_single_nfe_plot_has_labelled_axes(tmp_path):
    from usf_fast.search.s3 import SearchResult
    s = usf_fast.presets.unipc(usf_fast.NoiseScheduleVP("linear"), 5)
    r = SearchResult(best=s, best_metric=0.1, best_source="search", nfe=5,
                     table=[("searched (data prediction, orders 1-2-3-3-3)", 0.1), ("unipc [logSNR]", 0.2),
                            ("ddim [logSNR]", 0.5)], best_preset=("unipc [logSNR]", 0.2), evaluations=1,
                     new_evaluations=1, seconds=0.0)
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    seen = {}
    real_savefig = plt.Figure.savefig

    def spy(fig, *a, **k):
        ax = fig.axes[0]
        seen.update(x=ax.get_xlabel(), y=ax.get_ylabel(), title=ax.get_title(),
                    ticks=[t.get_text() for t in ax.get_yticklabels()])
        return real_savefig(fig, *a, **k)
    plt.Figure.savefig = spy
    try:
        plot_metric_vs_nfe({5: r}, str(tmp_path / "m.png"), "ref")
    finally:
        plt.Figure.savefig = real_savefig
    assert "ref" in seen["x"] and "NFE 5" in seen["title"]
    assert any("S3 search" in t for t in seen["ticks"]) and any("unipc" in t for t in seen["ticks"])


def test_info_prints_the_versions_it_runs_with(capsys):
    from importlib.metadata import version
    assert main(["info"]) == 0
    out = capsys.readouterr().out
    for dist in ("torch", "numpy", "diffusers", "transformers"):
        assert f"{dist} {version(dist)}" in out
