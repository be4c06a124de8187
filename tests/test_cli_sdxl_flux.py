"""`usf-fast search/generate --model diffusers:DIR` on tiny saved SDXL and FLUX pipelines (issue "The
diffusers and ComfyUI adapters", finding 9: the CLI refused both). The searched schedule in the
pipeline equals usf_fast.sample on the network the search ran on — the same text embeddings, SDXL's
pooled embedding and size micro-conditioning, FLUX's packed latents, ids and embedded guidance."""
import os

import pytest
import torch
from tiny_pipelines import flux_text_pipeline, sdxl_text_pipeline

import usf_fast
from usf_fast.adapters.diffusers import USFScheduler
from usf_fast.adapters.pipeline import load_pipeline, pipeline_model
from usf_fast.cli import main

SIZE = {"sdxl": 64, "flux": 32}


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    root = tmp_path_factory.mktemp("pipes")
    sdxl_text_pipeline().save_pretrained(root / "sdxl")
    flux_text_pipeline().save_pretrained(root / "flux")
    (root / "prompts.txt").write_text("ab\ncd\n")
    return root


def _cli(capsys, *argv):
    code = main([str(a) for a in argv])
    out = capsys.readouterr()
    return code, out.out, out.err


@pytest.mark.parametrize("kind,guidance", [("sdxl", 4.0), ("flux", None)])
def test_search_and_generate_on_saved_sdxl_and_flux(saved, capsys, tmp_path, kind, guidance):
    size = SIZE[kind]
    out = tmp_path / "search"
    g = ["--guidance", guidance] if guidance is not None else []
    code, stdout, err = _cli(capsys, "search", "--model", f"diffusers:{saved / kind}", "--prompts", saved / "prompts.txt",
                             *g, "--height", size, "--width", size, "--nfe", 3, "--budget", 8, "--samples", 4,
                             "--samples2", 4, "--heldout", 4, "--max-batch", 8, "--reference-nfe", 16, "--device", "cpu",
                             "--solve", 2, "--solve-samples", 4, "--solve-teacher", 8, "--out", out)
    assert code == 0, err
    best = usf_fast.Schedule.from_json(out / "best.json")
    used = best.meta["pipeline"]["guidance"]
    assert used == (guidance if kind == "sdxl" else 3.5)   # FLUX-dev: the pipeline's default embedded guidance
    pipe = load_pipeline(str(saved / kind))
    pm = pipeline_model(pipe, prompts=["ab"], guidance=guidance, height=size, width=size)
    noise = torch.randn(1, *pm.shape, generator=torch.Generator().manual_seed(1))
    sched = USFScheduler.from_config(pipe.scheduler.config, schedule=best)
    pipe.scheduler = sched
    latents = sched.first_input(noise) if kind == "flux" else noise
    with torch.no_grad():
        got = pipe(["ab"], height=size, width=size, num_inference_steps=best.nfe, guidance_scale=used, latents=latents,
                   output_type="latent").images
        want = usf_fast.sample(pm.model, best, noise)
    if kind == "flux":   # FluxPipeline hands back the packed latents
        got = got.reshape(want.shape)
    assert float((got - want).norm() / want.norm()) < 1e-5

    gen = tmp_path / "gen"
    code, stdout, err = _cli(capsys, "generate", "--model", f"diffusers:{saved / kind}", "--schedule", out / "best.json",
                             "--prompt", "ab", "--num-images", 2, "--device", "cpu", "--out", gen, "--compare", "unipc")
    assert code == 0, err
    assert sorted(os.listdir(gen)) == ["compare.png", "image_0.png", "image_1.png"]


def test_flux_schnell_refuses_a_guidance(saved):
    pipe = load_pipeline(str(saved / "flux"))
    pipe.transformer.register_to_config(guidance_embeds=False)
    with pytest.raises(ValueError, match="guidance=4.0: this FLUX transformer has no guidance embedding"):
        pipeline_model(pipe, prompts=["ab"], guidance=4.0, height=32, width=32)
    # no guidance, or 1.0 (what generate passes for a schedule searched without one): runs
    for g in (None, 1.0):
        assert pipeline_model(pipe, prompts=["ab"], guidance=g, height=32, width=32).guidance is None
