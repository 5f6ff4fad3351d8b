"""The classic txt2img graph against diffusers' StableDiffusionPipeline holding the same random weights.

The tiny SD1 checkpoint is converted with diffusers' own single-file converters
(benchmarks/txt2img.py:diffusers_pipeline). Both run Euler with CFG over the same sigmas: ours from
the "normal" scheduler, diffusers' EulerDiscreteScheduler given those sigmas explicitly (with
"leading" spacing so its initial noise is scaled by sqrt(1 + sigma_max^2), as COMPAT §10 requires).
At 4 steps the "normal" timesteps are whole numbers (999, 666, 333, 0), so both UNets see the same t.
"""
from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from tests import sdnodes_reference as ref
from tests.sdnodes_env import SD1_NAME, CaptureLatent, registry, sd_home, tiny_checkpoint_files  # noqa: F401
from tests.sdnodes_env import txt2img_prompt

pytest.importorskip("diffusers")


def test_txt2img_graph_matches_diffusers_pipeline(registry, sd_home, tiny_checkpoint_files):  # noqa: F811
    from diffusers import EulerDiscreteScheduler
    from safetensors.torch import load_file

    from benchmarks.txt2img import diffusers_pipeline
    from graph.runner import Runner
    from nodes import folder_paths

    prompt = txt2img_prompt(seed=7, steps=4, cfg=5.0, positive="a red apple", negative="blurry")
    prompt["cap"] = {"class_type": "SDNodesCaptureLatent", "inputs": {"samples": ["3", 0], "label": "parity"}}
    result = Runner(registry).run(prompt)
    ours = CaptureLatent.seen["parity"]["samples"]

    pipe = diffusers_pipeline(load_file(str(tiny_checkpoint_files["sd1"])))
    pipe.scheduler = EulerDiscreteScheduler.from_config(pipe.scheduler.config, timestep_spacing="leading")
    with torch.inference_mode():
        latents = pipe("a red apple", negative_prompt="blurry", height=64, width=64, guidance_scale=5.0,
                       sigmas=ref.normal_sigmas(4).tolist(), generator=torch.manual_seed(7),
                       output_type="latent").images
        theirs = latents / pipe.vae.config.scaling_factor
        image = (pipe.vae.decode(theirs).sample / 2 + 0.5).clamp(0, 1).permute(0, 2, 3, 1)

    # |latent| reaches ~250 here; diffusers' float32 sigma table differs from ours in the 7th digit.
    torch.testing.assert_close(ours, theirs, atol=5e-3, rtol=1e-4)
    saved = np.asarray(Image.open(result.files(folder_paths)[0])).astype(int)
    expected = (image[0].numpy() * 255.0).astype(np.uint8).astype(int)  # SaveImage truncates
    assert np.abs(saved - expected).max() <= 1
