"""`usf-fast search --model diffusers:DIR` and `usf-fast generate` end to end on a tiny random
Stable-Diffusion-like pipeline saved with save_pretrained (offline, small budget), and the
searched schedule in that pipeline = usf_fast.sample on the wrapped network."""
import os

import pytest
import torch
from tiny_pipelines import sd_pipeline

import usf_fast
from usf_fast.adapters.diffusers import USFScheduler
from usf_fast.adapters.pipeline import load_pipeline, pipeline_model
from usf_fast.cli import main


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    root = tmp_path_factory.mktemp("pipe")
    sd_pipeline().save_pretrained(root / "sd")
    (root / "prompts.txt").write_text("ab\n\ncd\n")
    return root


def _cli(capsys, *argv):
    code = main([str(a) for a in argv])
    out = capsys.readouterr()
    return code, out.out, out.err


def test_search_and_generate_on_a_saved_pipeline(saved, capsys, tmp_path):
    out = tmp_path / "search"
    code, stdout, err = _cli(capsys, "search", "--model", f"diffusers:{saved / 'sd'}", "--prompts", saved / "prompts.txt",
                             "--guidance", 4, "--height", 16, "--width", 16, "--nfe", 3, "--budget", 8,
                             "--samples", 4, "--samples2", 4, "--heldout", 4, "--max-batch", 8, "--reference-nfe", 20,
                             "--solve", 2, "--solve-samples", 4, "--solve-teacher", 10, "--device", "cpu", "--out", out)
    assert code == 0, err
    assert "network rows" in stdout and "held-out ref metric" in stdout
    best = usf_fast.Schedule.from_json(out / "best.json")
    assert best.nfe == 3
    # the searched schedule in the pipeline = usf_fast.sample on the wrapped network, same noise
    pipe = load_pipeline(str(saved / "sd"))
    pm = pipeline_model(pipe, prompts=["ab"], guidance=4.0, height=16, width=16)
    noise = torch.randn(1, *pm.shape, generator=torch.Generator().manual_seed(1))
    pipe.scheduler = USFScheduler.from_config(pipe.scheduler.config, schedule=best)
    with torch.no_grad():
        got = pipe(["ab"], height=16, width=16, num_inference_steps=best.nfe, guidance_scale=4.0, latents=noise,
                   output_type="latent").images
        want = usf_fast.sample(pm.model, best, noise)
    assert float((got - want).norm() / want.norm()) < 1e-5

    gen = tmp_path / "gen"
    code, stdout, err = _cli(capsys, "generate", "--model", f"diffusers:{saved / 'sd'}", "--schedule", out / "best.json",
                             "--prompt", "ab", "--guidance", 4, "--height", 16, "--width", 16, "--num-images", 2,
                             "--device", "cpu", "--out", gen, "--compare", "unipc")
    assert code == 0, err
    assert sorted(os.listdir(gen)) == ["compare.png", "image_0.png", "image_1.png"]


@pytest.mark.parametrize("argv,match", [
    (lambda d, t: ["search", "--model", f"diffusers:{t}", "--out", t / "o"], "no model_index.json there"),
    (lambda d, t: ["search", "--model", f"diffusers:{t / 'nope'}", "--out", t / "o"], "not a folder"),
    (lambda d, t: ["search", "--model", f"diffusers:{d / 'sd'}", "--prompts", t / "empty.txt", "--out", t / "o"],
     "no prompts in it"),
    (lambda d, t: ["search", "--model", f"diffusers:{d / 'sd'}", "--prompts", d / "prompts.txt", "--max-batch", 0,
                   "--out", t / "o"], "--max-batch 0: must be a positive integer"),
    (lambda d, t: ["search", "--model", f"diffusers:{d / 'sd'}", "--prompts", d / "prompts.txt", "--samples", 3,
                   "--out", t / "o"], "--samples 3: must be a multiple of the 2 prompts"),
    (lambda d, t: ["generate", "--model", f"diffusers:{d / 'sd'}", "--schedule", t / "gmm.json", "--prompt", "ab",
                   "--out", t / "g"], "schedule was made for noise schedule"),
    (lambda d, t: ["generate", "--model", f"diffusers:{d / 'sd'}", "--schedule", t / "gmm.json", "--prompt", "ab",
                   "--compare", "nope", "--out", t / "g"], "--compare 'nope': must be one of"),
])
def test_bad_input_is_one_line_and_exit_status_2(saved, capsys, tmp_path, argv, match):
    (tmp_path / "empty.txt").write_text("\n \n")
    usf_fast.presets.unipc(usf_fast.NoiseScheduleVP("linear"), 3).to_json(tmp_path / "gmm.json")
    code, _, err = _cli(capsys, *argv(saved, tmp_path))
    assert code == 2 and match in err and len(err.strip().splitlines()) == 1, err


def test_library_errors_name_parameters_and_the_cli_names_flags(saved, capsys, tmp_path):
    """Issue "The diffusers and ComfyUI adapters", point 7: adapters.pipeline's errors named CLI flags
    (--max-batch, --prompts) to Python callers; they name the parameter, the CLI its flag."""
    from usf_fast.adapters.pipeline import ParameterError, read_prompts
    pipe = load_pipeline(str(saved / "sd"))
    with pytest.raises(ParameterError, match=r"^max_batch=0: must be a positive integer"):
        pipeline_model(pipe, prompts=["ab"], max_batch=0)
    with pytest.raises(ParameterError, match=r"^prompts: StableDiffusionPipeline is a text-to-image pipeline"):
        pipeline_model(pipe)
    with pytest.raises(ParameterError, match=r"^path='.*nope': not a folder"):
        load_pipeline(str(tmp_path / "nope"))
    (tmp_path / "empty.txt").write_text("\n")
    with pytest.raises(ParameterError, match=r"^path='.*empty.txt': no prompts in it"):
        read_prompts(str(tmp_path / "empty.txt"))
    code, _, err = _cli(capsys, "search", "--model", f"diffusers:{saved / 'sd'}", "--prompts", saved / "prompts.txt",
                        "--height", 13, "--out", tmp_path / "o")
    assert code == 2 and "--height 13: must be a positive multiple of" in err and "\n" not in err.strip()
