"""SearchConfig: every option validated by name, defaults that replace() cannot freeze, and the
identity a resumed search must share with its log."""
import json

import pytest
import torch

from usf_fast.models import embedded_model
from usf_fast.search import SearchConfig, SearchSpace, s3_search
from usf_fast.search.log import SearchLog

MODEL = embedded_model("gmm-2d")


def test_the_screen_default_follows_the_predictor_through_replace():
    gp = SearchConfig(nfe=4)
    assert gp.screen is None and gp.screen_for_picks == gp.proposals
    assert gp.replace(predictor="improve").screen_for_picks == 4
    assert gp.replace(proposals=64).screen_for_picks == 64
    assert SearchConfig(nfe=4, screen=2).replace(predictor="gp").screen_for_picks == 2


@pytest.mark.parametrize("kw,match", [
    ({"nfe": 0}, "nfe=0: must be an integer >= 1"),
    ({"predictor": "mlp"}, "predictor='mlp': must be one of improve, metric, gp"),
    ({"per_generation": 0}, "per_generation=0: must be a positive integer"),
    ({"population": -1}, "population=-1: must be a positive integer"),
    ({"samples": (256,)}, r"samples=\(256,\): must be two or three positive integers"),
    ({"samples": (8, 16, 32), "stage_split": 0.5}, r"stage_split=0.5: must be the fraction .* 2 number\(s\) for 3 stages"),
    ({"samples": (8, 16, 32), "stage_split": (0.9, 0.6)}, r"stage_split=\(0.9, 0.6\): must be .* increasing"),
    ({"stage_split": 1.5}, r"stage_split=1.5: must be the fraction"),
    ({"stage_split": 1.0}, r"stage_split=1.0: must be the fraction .* in \(0, 1\)"),   # a last stage of no evaluations
    ({"samples": (8, 16, 32), "stage_split": (0.5, 1.0)}, r"stage_split=\(0.5, 1.0\): must be"),
    ({"heldout": 0}, "heldout=0: must be a positive integer"),
    ({"max_minutes": float("nan")}, "max_minutes=nan: must be a finite number >= 0"),
    ({"screen": 0}, "screen=0: must be a positive integer"),
    ({"finalists": 0}, "finalists=0: must be a positive integer"),
    ({"heldout_presets": 0}, "heldout_presets=0: must be a positive integer"),
    ({"heldout_presets": 2.5}, "heldout_presets=2.5: must be a positive integer"),
])
def test_bad_options_name_the_field(kw, match):
    with pytest.raises(ValueError, match=match):
        SearchConfig(**{"nfe": 4, **kw})


def test_an_unknown_search_option_is_a_clear_error():
    with pytest.raises(ValueError, match=r"s3_search: unknown option\(s\) \['budgett'\]; the options are"):
        s3_search(MODEL, 4, budgett=10)


def test_the_identity_is_a_readable_dict_of_what_decides_the_evaluations():
    c = SearchConfig(nfe=4, seed=3, budget=40, device="cpu", chunk=2)
    ident = c.identity(SearchSpace(MODEL.noise_schedule, 4), "ref")
    assert json.loads(json.dumps(ident)) == ident
    assert ident["nfe"] == 4 and ident["seed"] == 3 and ident["settings"]["budget"] == 40
    assert "chunk" not in ident["settings"] and "device" not in ident["settings"]   # where, not what
    assert c.replace(chunk=8, device="cpu").identity(SearchSpace(MODEL.noise_schedule, 4), "ref") == ident


def test_a_log_from_before_the_settings_header_is_refused_with_what_to_do(tmp_path):
    log = tmp_path / "log.jsonl"
    log.write_text(json.dumps({"type": "header", "nfe": 4, "seed": 0, "metric": "ref", "space": "(1, 2)"}) + "\n")
    with pytest.raises(ValueError, match="written by an older usf_fast .* delete it"):
        SearchLog(log, {"nfe": 4, "seed": 0, "metric": "ref", "settings": {}}, resume=True)


@pytest.mark.parametrize("other,key", [
    (lambda: embedded_model("gmm-2d", __import__("usf_fast").NoiseScheduleVP("cosine")), "model"),
    (lambda: embedded_model("gmm-image"), "shape"),
])
def test_another_models_log_is_never_resumed(tmp_path, other, key):
    log = tmp_path / "log.jsonl"
    small = dict(budget=20, samples=(8, 16), heldout=16, proposals=32, progress=False, log_path=log, solve=0)
    s3_search(MODEL, 3, **small)
    with pytest.raises(ValueError, match=f"written by a search with other settings: {key}[ .]"):
        s3_search(other(), 3, resume=True, **small)


def test_a_log_of_another_dtype_is_never_resumed(tmp_path):
    """The search's dtype (its evaluations' and the solve stage's student's precision) is part of
    what a log was written with: a float64 search's log does not resume in float32."""
    log = tmp_path / "log.jsonl"
    small = dict(budget=20, samples=(8, 16), heldout=16, proposals=32, progress=False, log_path=log, solve=0)
    s3_search(MODEL, 3, dtype=torch.float64, **small)
    with pytest.raises(ValueError, match="written by a search with other settings: dtype torch.float64 in the log"):
        s3_search(MODEL, 3, resume=True, **small)


def test_one_search_per_log_at_a_time(tmp_path):
    log = tmp_path / "log.jsonl"
    header = {"nfe": 3, "seed": 0, "metric": "ref", "settings": {}}
    first = SearchLog(log, header)
    with pytest.raises(ValueError, match="is in use by another running search"):
        SearchLog(log, header, resume=True)
    first.close()
    SearchLog(log, header, resume=True).close()   # free again once the first is done


def test_a_log_of_another_network_with_the_same_noise_schedule_is_refused(tmp_path):
    """The header fingerprints the network (one fixed test call): the same noise schedule,
    parameterisation and shape with another network is not the same search."""
    import usf_fast
    from usf_fast.models import embedded_model
    from usf_fast.search import s3_search
    model = embedded_model("gmm-2d")
    opts = dict(budget=8, samples=(8, 8), heldout=8, progress=False, log_path=tmp_path / "log.jsonl", solve=0)
    s3_search(model, 2, **opts)
    other = usf_fast.DiffusionModel(lambda x, t: 1.1 * model.net(x, t), model.noise_schedule, model.prediction,
                                    model.time_input, data_mean=model.data_mean, sample_shape=model.sample_shape)
    with pytest.raises(ValueError, match="other settings: model: another network"):
        s3_search(other, 2, resume=True, **opts)
    assert s3_search(model, 2, resume=True, **opts).cost["total"] == 1   # the same network resumes


@pytest.mark.parametrize("opts", [{"extra_points": True}, {"singlestep": True}, {"extra_points": True, "singlestep": True},
                                  {"implicit": True}, {"implicit": True, "extra_points": True, "singlestep": True}])
def test_decision_space_options_give_valid_schedules_of_the_exact_nfe(opts):
    import numpy as np

    import usf_fast
    from usf_fast.search import SearchSpace
    ns = usf_fast.NoiseScheduleVP("linear")
    space = SearchSpace(ns, 5, **opts)
    rng = np.random.default_rng(0)
    s = space.seeds()[5]
    seen_extra = seen_back = seen_implicit = 0
    pop = [s]
    for k in range(300):
        s = space.mutate(s, rng) if k % 3 else space.crossover(s, pop[int(rng.integers(len(pop)))], rng)
        pop.append(s)
        # exact NFE counted by the schedule's own evaluation list (an implicit corrector's point twice)
        assert s.nfe == 5 and len(s.evaluation_points()) == 5 and len(space.encode(s)) == space.encoding_size
        assert len(s.steps) == 5 + s.afs - sum(st.corrector == "implicit" for st in s.steps)
        usf_fast.program.step_weights(s, ns)   # valid and well-conditioned
        seen_extra += any(len(st.points) > st.order - 1 for st in s.steps)
        seen_back += any(st.start < i - 1 for i, st in enumerate(s.steps, 1))
        seen_implicit += any(st.corrector == "implicit" for st in s.steps)
    assert (seen_extra > 0) == opts.get("extra_points", False) and (seen_back > 0) == opts.get("singlestep", False)
    assert (seen_implicit > 0) == opts.get("implicit", False)


def test_the_options_are_part_of_the_search_identity(tmp_path):
    from usf_fast.models import embedded_model
    from usf_fast.search import SearchSpace, s3_search
    model = embedded_model("gmm-2d")
    opts = dict(budget=8, samples=(8, 8), heldout=8, progress=False, log_path=tmp_path / "log.jsonl", solve=0)
    res = s3_search(model, 3, space=SearchSpace(model.noise_schedule, 3, extra_points=True), **opts)
    assert res.best.nfe == 3
    with pytest.raises(ValueError, match="other settings: extra_points true in the log, \\(unset\\) now"):
        s3_search(model, 3, resume=True, **opts)



def test_stages_and_the_held_out_table_are_part_of_the_identity():
    space = SearchSpace(MODEL.noise_schedule, 3)
    three = SearchConfig(nfe=3, samples=(8, 16, 32), stage_split=(0.5, 0.8), finalists=2, heldout_presets=5)
    settings = three.identity(space, "ref")["settings"]
    assert settings["samples"] == [8, 16, 32] and settings["stage_split"] == [0.5, 0.8]
    assert settings["finalists"] == 2 and settings["heldout_presets"] == 5
    assert "stage_split" not in SearchConfig(nfe=3).identity(space, "ref")["settings"]


def test_an_implicit_toggle_keeps_every_later_steps_relative_start():
    """Splitting or dropping a step moves the later steps; their explicit starts (singlestep) move
    with them, so a singlestep start stays one and a plain start stays plain."""
    import numpy as np

    import usf_fast
    space = SearchSpace(usf_fast.NoiseScheduleVP("linear"), 6, singlestep=True, extra_points=True, implicit=True)
    rng = np.random.default_rng(1)

    class Pick:   # the step to drop and where to split, chosen by the test
        def __init__(self, j):
            self.j = j

        def choice(self, others):
            return self.j if self.j in others else others[0]

        def uniform(self, a, b):
            return 0.5

    checked = 0
    for _ in range(300):
        s = space.random(rng)
        for _ in range(int(rng.integers(1, 8))):
            s = space.mutate(s, rng)
        steps, u = list(s.steps), list(space.fractions(s)[1:-1])
        i = int(rng.integers(0, len(steps) - 1))
        if steps[i].corrector == "implicit":    # split: old step m >= i is new step m + 1
            new, _ = space._toggle_implicit(steps, u, i, Pick(0))
            pairs = [(m, m + 1) for m in range(i, len(steps))]
        else:                                   # drop step j: old step m > j is new step m - 1
            j = next((k for k in range(len(steps) - 1) if k != i), None)
            if j is None:
                continue
            new, _ = space._toggle_implicit(steps, u, i, Pick(j))
            pairs = [(m, m - 1) for m in range(j + 1, len(steps))]
        for m_old, m_new in pairs:   # (a start at point 0 cannot move before it)
            if steps[m_old].start is not None and steps[m_old].start + m_new - m_old >= 0:
                assert m_old - steps[m_old].start == m_new - new[m_new].start
                checked += 1
    assert checked > 50
