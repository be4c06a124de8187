"""The `usf-fast` command line."""
import json
import subprocess
import sys

import pytest
import torch

import usf_fast
from usf_fast.cli import main


def test_presets_lists_every_preset(capsys):
    assert main(["presets"]) == 0
    out = capsys.readouterr().out
    for name in usf_fast.presets.PRESETS:
        assert name in out


def test_sample_prints_nfe_and_metrics_and_writes_files(tmp_path, capsys):
    out, sched, png = tmp_path / "s.pt", tmp_path / "s.json", tmp_path / "s.png"
    assert main(["sample", "--model", "gmm-2d", "--num-samples", "200", "--nfe", "4", "--out", str(out),
                 "--save-schedule", str(sched), "--plot", str(png)]) == 0
    text = capsys.readouterr().out
    assert "NFE 4" in text and "ref_rmse" in text and "frechet" in text
    saved = torch.load(out)
    assert saved["samples"].shape == (200, 2) and saved["nfe"] == 4
    assert usf_fast.Schedule.from_json(sched).nfe == 4
    assert png.stat().st_size > 1000


def test_sample_from_schedule_file_and_show(tmp_path, capsys):
    path = tmp_path / "s.json"
    usf_fast.presets.dpm_solver_pp(usf_fast.NoiseScheduleVP("linear"), 6, order=3).to_json(path)
    assert main(["sample", "--schedule", str(path), "--num-samples", "20", "--no-reference"]) == 0
    assert "NFE 6" in capsys.readouterr().out
    assert main(["show", str(path)]) == 0
    assert len(capsys.readouterr().out.strip().splitlines()) == 2 + 6


def test_sample_with_preset_options(capsys):
    assert main(["sample", "--model", "gmm-2d", "--preset", "dpm_solver_pp", "--order", "3", "--spacing", "karras",
                 "--option", "afs=true", "--nfe", "5", "--num-samples", "50", "--no-reference"]) == 0
    assert "AFS" in capsys.readouterr().out


def test_compare_prints_a_table(capsys):
    assert main(["compare", "--model", "gmm-2d", "--nfe", "4,6", "--spacings", "logSNR", "--num-samples", "64"]) == 0
    out = capsys.readouterr().out
    assert "best at NFE 4" in out and "unipc order=3 variant=bh2" in out


@pytest.mark.parametrize("argv,match", [
    (["sample", "--preset", "unipc", "--option", "ordr=2", "--no-reference"], "unknown option"),
    (["sample", "--schedule", "/nonexistent.json"], "No such file"),
    (["sample", "--nfe", "0", "--no-reference"], "nfe=0 is too small"),
])
def test_bad_cli_input_is_one_clear_line(capsys, argv, match):
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert match in err and "Traceback" not in err


def test_console_script_is_installed():
    r = subprocess.run([sys.executable, "-m", "usf_fast.cli", "presets"], capture_output=True, text=True)
    assert r.returncode == 0 and "unipc" in r.stdout


def test_info_lists_backends(capsys):
    assert main(["info"]) == 0
    out = capsys.readouterr().out
    for name in ("torch", "cpu", "triton", "cuda"):
        assert name in out
    assert "auto picks" in out


def test_sample_with_explicit_backend(capsys):
    assert main(["sample", "--model", "gmm-2d", "--num-samples", "20", "--backend", "torch", "--no-reference"]) == 0
    assert "backend torch" in capsys.readouterr().out


@pytest.mark.parametrize("argv,match", [
    (["search", "--nfe", "0", "--out", "OUT"], "--nfe 0: must be >= 1"),
    (["search", "--model", "nosuchpkg.mod:make", "--out", "OUT"], "cannot load"),
    (["search", "--model", "cifar10", "--out", "OUT"], "use an embedded model"),
    (["search", "--metric", "fid", "--out", "OUT", "--budget", "5"], "needs fid_stats="),
    (["search", "--device", "gpu0", "--out", "OUT"], "--device 'gpu0': use auto, cpu, cuda or cuda:N"),
    (["search", "--chunk", "0", "--out", "OUT", "--budget", "5"], "--chunk 0: must be >= 1"),
    (["search", "--finalists", "0", "--out", "OUT"], "--finalists 0: must be >= 1"),
    (["search", "--heldout-presets", "some", "--out", "OUT"], "--heldout-presets some: must be 'all' or an integer >= 1"),
    (["search", "--heldout-presets", "²", "--out", "OUT"], "--heldout-presets ²: must be 'all' or an integer >= 1"),
    (["search", "--samples3", "0", "--out", "OUT"], "--samples3 0: must be >= 1"),
    (["search", "--stage-split", "0.5,0.9", "--out", "OUT"], "(a third stage needs --samples3)"),
    (["search", "--samples3", "64", "--stage-split", "0.9,0.5", "--out", "OUT"], "must be two increasing fractions"),
    (["search", "--stage-split", "half", "--out", "OUT"], "--stage-split half: must be one fraction"),
])
def test_bad_search_input_is_one_clear_line(tmp_path, capsys, argv, match):
    argv = [str(tmp_path / "o") if a == "OUT" else a for a in argv]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert match in err and "Traceback" not in err


@pytest.mark.skipif(torch.cuda.is_available(), reason="the error of a machine without a GPU")
def test_search_on_cuda_without_a_gpu_is_one_clear_line(tmp_path, capsys):
    assert main(["search", "--device", "cuda", "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert "--device cuda: no CUDA GPU is visible here" in err and "Traceback" not in err


def test_search_predictor_choices_are_the_searchs():
    """The CLI lists the predictors literally (importing the search at start-up would slow every
    command); they must stay the ones `s3_search` accepts, with the same default."""
    from usf_fast.cli import build_parser
    from usf_fast.search import SearchConfig
    from usf_fast.search.config import PREDICTORS
    search = build_parser()._subparsers._group_actions[0].choices["search"]
    action = next(a for a in search._actions if a.dest == "predictor")
    assert sorted(action.choices) == sorted(PREDICTORS)
    assert action.default == SearchConfig.predictor


def test_search_flag_defaults_are_search_configs():
    """The CLI reads SearchConfig's defaults (usf_fast.search.config); what it fills in is theirs."""
    import dataclasses

    from usf_fast.cli import build_parser
    from usf_fast.search import SearchConfig
    from usf_fast.cli.options import _fill_search_defaults
    d = {f.name: f.default for f in dataclasses.fields(SearchConfig)}
    args = build_parser().parse_args(["search", "--out", "x"])
    _fill_search_defaults(args)
    split = d["stage_split"] if isinstance(d["stage_split"], tuple) else (d["stage_split"],)
    assert (args.budget, args.samples, args.samples2, args.samples3) == (d["budget"], *d["samples"][:2],
                                                                         (d["samples"][2:] or (None,))[0])
    assert tuple(float(v) for v in args.stage_split.split(",")) == split
    assert (args.heldout, args.finalists, args.reference_nfe) == (d["heldout"], d["finalists"], d["reference_nfe"])
    assert args.heldout_presets == ("all" if d["heldout_presets"] is None else str(d["heldout_presets"]))
    assert args.reference_dtype == str(d["reference_dtype"]).replace("torch.", "")


def test_thorough_is_the_earlier_defaults_and_explicit_flags_win():
    from usf_fast.cli import build_parser
    from usf_fast.cli.options import _fill_search_defaults
    args = build_parser().parse_args(["search", "--out", "x", "--thorough", "--budget", "50"])
    _fill_search_defaults(args)
    assert (args.budget, args.samples, args.samples2, args.heldout, args.heldout_presets, args.reference_nfe) == \
        (50, 256, 1024, 1024, "all", 200)
    # a flag given with the value of today's default is the user's too
    args = build_parser().parse_args(["search", "--out", "x", "--thorough", "--heldout-presets", "8", "--samples", "96"])
    _fill_search_defaults(args)
    assert (args.heldout_presets, args.samples, args.samples2) == ("8", 96, 1024)
    # three stages without --stage-split: 0.6,0.9
    args = build_parser().parse_args(["search", "--out", "x", "--samples3", "512"])
    _fill_search_defaults(args)
    assert args.stage_split == "0.6,0.9"


def test_quick_is_search_quick_and_explicit_flags_win(capsys):
    from usf_fast.cli import build_parser
    from usf_fast.cli.options import _fill_search_defaults
    from usf_fast.search.config import QUICK
    args = build_parser().parse_args(["search", "--out", "x", "--quick", "--solve", "10"])
    _fill_search_defaults(args)
    assert (args.budget, args.samples, args.samples2, args.heldout, args.heldout_presets, args.solve,
            args.solve_samples) == (QUICK["budget"], *QUICK["samples"], QUICK["heldout"], str(QUICK["heldout_presets"]), 10,
                                    QUICK["solve_samples"])
    assert main(["search", "--out", "x", "--quick", "--thorough"]) == 2
    assert "--thorough, --quick: give one of them" in capsys.readouterr().err
    assert main(["search", "--out", "x", "--solve", "-1"]) == 2
    assert "--solve -1: must be >= 0" in capsys.readouterr().err
    assert main(["search", "--out", "x", "--solve-presets", "-1"]) == 2
    assert "--solve-presets -1: must be >= 0" in capsys.readouterr().err
    args = build_parser().parse_args(["search", "--out", "x", "--quick"])
    _fill_search_defaults(args)
    assert (args.solve_presets, args.solve_teacher) == (QUICK.get("solve_presets", 0), QUICK.get("solve_teacher", 50))
    assert main(["search", "--out", "x", "--solve", "4", "--solve-teacher", "0"]) == 2
    assert "--solve-teacher 0: must be >= 1" in capsys.readouterr().err
    # settings of a solve stage that is off would do nothing: refused by name
    for off in (["--solve", "0"], ["--s3-only"], ["--thorough"]):
        assert main(["search", "--out", "x", *off, "--solve-presets", "2", "--solve-samples", "64"]) == 2
        assert ("--solve-presets 2, --solve-samples 64: settings of the solve stage, which is off"
                in capsys.readouterr().err)
    assert main(["search", "--out", "x", "--solve-finalists", "-1"]) == 2
    assert "--solve-finalists -1: must be >= 0" in capsys.readouterr().err
    assert main(["search", "--out", "x", "--solve-finalists", "0", "--solve-presets", "0"]) == 2
    assert "--solve-finalists 0, --solve-presets 0: the solve stage would fit nothing" in capsys.readouterr().err
    args = build_parser().parse_args(["search", "--out", "x", "--solve-finalists", "0"])
    _fill_search_defaults(args)
    assert (args.solve_finalists, args.solve_presets) == (0, 1)
    assert main(["search", "--out", "x", "--solve", "0", "--no-solve-other-prediction"]) == 2
    assert "--no-solve-other-prediction: settings of the solve stage, which is off" in capsys.readouterr().err
    assert main(["search", "--out", "x", "--solve-presets", "0", "--solve-other-prediction"]) == 2
    assert ("--solve-other-prediction: about the presets the solve stage fits, and --solve-presets 0 fits none"
            in capsys.readouterr().err)
    for flags, want in (([], True), (["--no-solve-other-prediction"], False), (["--quick"], False),
                        (["--quick", "--solve-other-prediction"], True)):
        args = build_parser().parse_args(["search", "--out", "x", *flags])
        _fill_search_defaults(args)
        assert args.solve_other_prediction is want, flags
    assert QUICK["solve_other_prediction"] is False
    # --solve 0 alone turns the stage off, the presets it would have solved with it (with --quick too);
    # a solve stage turned on over --s3-only / --thorough solves the best preset too, as the default does
    for flags, want in ((["--solve", "0"], (0, 0)), (["--quick", "--solve", "0"], (0, 0)),
                        (["--s3-only", "--solve", "50"], (50, 1)), (["--thorough", "--solve", "50"], (50, 1)),
                        (["--quick", "--solve-presets", "0"], (QUICK["solve"], 0))):
        args = build_parser().parse_args(["search", "--out", "x", *flags])
        _fill_search_defaults(args)
        assert (args.solve, args.solve_presets) == want, flags


def test_the_default_search_has_the_solve_stage_and_s3_only_is_the_search_alone(capsys):
    """The defaults since 2026-12-05 solve the best finalist and the best preset; --s3-only gives
    the S3 search alone (search.S3_ONLY, the defaults before), and a flag given wins."""
    from usf_fast.cli import build_parser
    from usf_fast.cli.options import _fill_search_defaults
    from usf_fast.search.config import S3_ONLY, SearchConfig
    args = build_parser().parse_args(["search", "--out", "x"])
    _fill_search_defaults(args)
    d = SearchConfig(nfe=5)
    assert (args.budget, args.heldout, args.solve, args.solve_presets, args.solve_samples) == \
        (d.budget, d.heldout, d.solve, 1, d.solve_samples) and d.solve >= 1 and d.presets_solved == 1
    args = build_parser().parse_args(["search", "--out", "x", "--s3-only", "--budget", "100"])
    _fill_search_defaults(args)
    assert (args.budget, args.samples, args.samples2, args.heldout, args.heldout_presets, args.solve,
            args.solve_presets) == (100, *S3_ONLY["samples"], S3_ONLY["heldout"], str(S3_ONLY["heldout_presets"]), 0, 0)
    assert main(["search", "--out", "x", "--s3-only", "--quick"]) == 2
    assert "--s3-only, --quick: give one of them" in capsys.readouterr().err


def test_a_log_of_the_old_defaults_says_to_resume_it_with_s3_only(tmp_path, capsys):
    """A search log written by the S3-only defaults (before 2026-12-05), resumed with today's
    defaults, is refused with one line that names --s3-only; resumed with --s3-only it is read back."""
    out = tmp_path / "o"
    small = ["search", "--model", "gmm-2d", "--nfe", "2", "--reference-nfe", "5", "--chunk", "64", "--out", str(out)]
    assert main(small + ["--s3-only", "--budget", "314", "--samples", "4", "--samples2", "4", "--heldout", "8"]) == 0
    capsys.readouterr()
    # the old defaults' own numbers in the header (written here with small samples, then edited to the old values)
    log = out / "log_nfe2.jsonl"
    lines = log.read_text().splitlines()
    head = json.loads(lines[0])
    head["settings"].update(samples=[96, 256], heldout=512)
    log.write_text("\n".join([json.dumps(head)] + lines[1:]) + "\n")
    assert main(small + ["--resume"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "resume it with --s3-only" in err[0]


def test_a_log_of_the_one_prediction_default_says_how_to_resume_it(tmp_path, capsys):
    """A log of the defaults before the solve stage fitted the other prediction (96 trials, one
    prediction), resumed with today's defaults, is refused with one line that says which flags
    resume it; resumed with them it is read back."""
    out = tmp_path / "o"
    small = ["search", "--model", "gmm-2d", "--nfe", "2", "--reference-nfe", "5", "--chunk", "64", "--budget", "8",
             "--samples", "4", "--samples2", "4", "--heldout", "8", "--solve-samples", "8", "--solve-teacher", "5",
             "--out", str(out)]
    assert main(small + ["--solve", "96", "--no-solve-other-prediction"]) == 0
    capsys.readouterr()
    assert main(small + ["--resume"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "resume it with --solve 96 --no-solve-other-prediction" in err[0]
    assert main(small + ["--resume", "--solve", "96", "--no-solve-other-prediction"]) == 0


def test_the_help_of_quick_and_thorough_shows_what_they_set(capsys):
    """--quick's, --s3-only's and --thorough's help is written from search.QUICK / S3_ONLY / THOROUGH:
    it cannot drift."""
    from usf_fast.cli.options import _flag_text
    from usf_fast.search.config import QUICK, S3_ONLY, THOROUGH
    assert f"--budget {QUICK['budget']} " in _flag_text(QUICK) and f"--solve {QUICK['solve']}" in _flag_text(QUICK)
    assert f"--heldout {THOROUGH['heldout']} " in _flag_text(THOROUGH)
    with pytest.raises(SystemExit):
        main(["search", "--help"])
    out = " ".join(capsys.readouterr().out.split()).replace("--no- ", "--no-")   # argparse wraps after a hyphen
    assert _flag_text(QUICK) in out and _flag_text(THOROUGH) in out and _flag_text(S3_ONLY) in out
    assert "--solve 0" in _flag_text(S3_ONLY) and "--solve-samples" not in _flag_text(S3_ONLY)
    assert "--no-solve-other-prediction" in _flag_text(QUICK) and "other-prediction" not in _flag_text(THOROUGH)


def test_a_quick_search_from_the_cli_learns_weights(tmp_path, capsys):
    """--quick learns weights; the other prediction's solve (on by default) and --no-solve-other-prediction
    reach the search (its log's settings)."""
    from usf_fast.search.config import QUICK
    small = ["search", "--model", "gmm-2d", "--nfe", "4", "--budget", "12", "--samples", "8", "--samples2",
             "16", "--heldout", "32", "--solve", "6", "--solve-samples", "16"]
    for flags, other in ((["--quick"], QUICK["solve_other_prediction"]), ([], True),
                         (["--no-solve-other-prediction"], False)):
        out = tmp_path / ("q" + "".join(flags))
        assert main(small + flags + ["--out", str(out)]) == 0
        assert "learned weights" in (out / "summary.txt").read_text()
        head = json.loads((out / "log_nfe4.jsonl").read_text().splitlines()[0])
        assert head["settings"]["solve"].get("other_prediction", False) is other, flags


def test_search_with_three_stages_and_every_space_option_from_the_cli(tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["search", "--model", "gmm-2d", "--nfe", "4", "--budget", "100", "--samples", "8", "--samples2", "16",
                 "--samples3", "32", "--stage-split", "0.7,0.9", "--heldout", "32", "--finalists", "2",
                 "--heldout-presets", "5", "--reference-nfe", "50", "--extra-points", "--singlestep-starts",
                 "--implicit-corrector", "--solve", "0", "--out", str(out)]) == 0
    summary = (out / "summary.txt").read_text()
    assert "stage3" in summary
    # --finalists 2 (a finalist that is a preset is listed under its preset label)
    assert sum(line.strip().startswith("searched (") for line in summary.splitlines()) <= 2
    header = json.loads((out / "log_nfe4.jsonl").read_text().splitlines()[0])
    assert header["settings"]["samples"] == [8, 16, 32] and header["settings"]["implicit"] is True
    assert header["settings"]["heldout_presets"] == 5 and header["settings"]["finalists"] == 2


def test_search_with_a_factory_model_writes_best_json(tmp_path, capsys, monkeypatch):
    mod = tmp_path / "my_models.py"
    mod.write_text("import usf_fast\nfrom usf_fast.models.mixture import gmm_2d\n"
                   "def make():\n    return gmm_2d().as_model(usf_fast.NoiseScheduleVP('linear'))\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    out = tmp_path / "run"
    assert main(["search", "--model", "my_models:make", "--shape", "2", "--nfe", "3", "--budget", "60",
                 "--samples", "16", "--samples2", "32", "--heldout", "64", "--solve", "3", "--solve-samples", "16",
                 "--out", str(out)]) == 0
    assert usf_fast.Schedule.from_json(out / "best.json").nfe == 3
    assert (out / "metric_vs_nfe.png").exists() and (out / "schedule.png").exists()
    assert "improvement" in capsys.readouterr().out


def test_sample_digits_writes_an_image_grid(tmp_path, capsys):
    png = tmp_path / "digits.png"
    assert main(["sample", "--model", "digits", "--num-samples", "100", "--nfe", "5", "--no-reference",
                 "--grid", str(png), "--grid-size", "16"]) == 0
    text = capsys.readouterr().out
    assert "NFE 5" in text and "digits feature network" in text and "nll" not in text
    import matplotlib.image
    img = matplotlib.image.imread(png)
    assert img.shape[0] > 100 and img.shape[1] > 100
    # the digits model exists on VP linear only: another noise schedule is one clear error line
    assert main(["sample", "--model", "digits", "--noise-schedule", "cosine", "--no-reference"]) == 2
    assert "trained on NoiseScheduleVP('linear') only" in capsys.readouterr().err


# ---- the door: frictions a new user met --------------------------------------------------------

def test_submodules_are_reachable_after_a_bare_import():
    code = "import usf_fast; print(usf_fast.models.embedded_model('gmm-2d').sample_shape, usf_fast.models.EMBEDDED_MODELS['digits'][1])"
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith("(2,)")


def test_presets_prints_whole_descriptions(capsys):
    assert main(["presets"]) == 0
    for line in capsys.readouterr().out.splitlines():
        if line.split(" ")[0] in usf_fast.presets.PRESETS:
            assert line.rstrip().endswith("."), line


def test_sample_says_what_it_computes_before_the_reference_solve(capsys):
    assert main(["sample", "--model", "gmm-2d", "--num-samples", "20", "--nfe", "4"]) == 0
    out = capsys.readouterr().out
    assert out.index("NFE 4") < out.index("computing the high-accuracy reference") < out.index("ref_rmse")


def test_resume_of_a_multi_nfe_search_starts_the_nfe_a_killed_run_never_reached(tmp_path, capsys):
    out = tmp_path / "run"
    args = ["search", "--model", "gmm-2d", "--budget", "30", "--samples", "16", "--samples2", "32",
            "--heldout", "32", "--solve", "2", "--solve-samples", "16", "--out", str(out)]
    assert main(args + ["--nfe", "3"]) == 0          # as if killed before NFE 4 began
    assert main(args + ["--nfe", "3,4", "--resume"]) == 0
    summary = (out / "summary.txt").read_text()
    assert "NFE 4:" in summary and "run now" in summary
    assert usf_fast.Schedule.from_json(out / "best.json").nfe == 4


def test_resume_where_there_is_no_log_at_all_is_one_clear_line(tmp_path, capsys):
    assert main(["search", "--model", "gmm-2d", "--nfe", "3,4", "--out", str(tmp_path / "typo"), "--resume"]) == 2
    assert "--resume: no search log (log_nfe<N>.jsonl)" in capsys.readouterr().err
