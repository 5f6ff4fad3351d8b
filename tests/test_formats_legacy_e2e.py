"""The classic default workflow (v0.4 file, boolean seed control) runs headless on the tiny SD1
checkpoint and gives the image of the same graph written by hand in API format."""
from pathlib import Path

import numpy as np
from PIL import Image

from tests.sdnodes_env import (SD1_NAME, registry, sd_home, tiny_checkpoint_files,  # noqa: F401
                               txt2img_prompt)

CLASSIC = Path(__file__).parent / "workflows" / "classic_default_v0.4.json"


def test_classic_default_workflow_runs_like_its_api_twin(registry, sd_home):  # noqa: F811
    from graph.runner import Runner
    from nodes import folder_paths

    overrides = {"4.ckpt_name": SD1_NAME, "5.width": 64, "5.height": 64, "3.steps": 2}
    ui_run = Runner(registry).run(CLASSIC, overrides=overrides)
    twin = txt2img_prompt(size=64, steps=2, seed=156680208700286, cfg=8, positive=(
        "beautiful scenery nature glass bottle landscape, , purple galaxy bottle,"),
        negative="text, watermark", prefix="ComfyUI")
    api_run = Runner(registry).run(twin)
    (ui_png,) = ui_run.files(folder_paths)
    (api_png,) = api_run.files(folder_paths)
    with Image.open(ui_png) as a, Image.open(api_png) as b:
        assert a.size == (64, 64)
        assert np.array_equal(np.asarray(a), np.asarray(b))
