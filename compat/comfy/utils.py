"""comfy.utils for custom node packs: progress bars, image resizing and model file loading."""
from __future__ import annotations

from diffusion import resample
from diffusion.loading.files import load_pickle, read_safetensors
from graph import progress

# ComfyUI's switch for the samplers' console bars; packs read and set it.
PROGRESS_BAR_ENABLED = True


def _report_to_running_node(value, total, preview, node_id=None):
    # ComfyUI's hook takes preview as (format, PIL image, max size); ours wants the image.
    if isinstance(preview, tuple) and len(preview) >= 2:
        preview = preview[1]
    progress.report_progress(value, total, preview)


# What every new ProgressBar calls as hook(value, total, preview, node_id=...). Packs may wrap it.
PROGRESS_BAR_HOOK = _report_to_running_node


def set_progress_bar_global_hook(function) -> None:
    global PROGRESS_BAR_HOOK
    PROGRESS_BAR_HOOK = function


def set_progress_bar_enabled(enabled: bool) -> None:
    global PROGRESS_BAR_ENABLED
    PROGRESS_BAR_ENABLED = enabled


class ProgressBar(progress.ProgressBar):
    """comfy.utils.ProgressBar(total, node_id=None): update(n) / update_absolute(value, total, preview)
    report the running node's progress (and raise if the prompt was interrupted)."""

    def __init__(self, total: int, node_id=None):
        super().__init__(total)
        self.node_id = node_id
        self.hook = PROGRESS_BAR_HOOK  # taken at creation, as ComfyUI does

    def _emit(self, preview) -> None:
        if self.hook is not None:
            self.hook(self.current, self.total, preview, node_id=self.node_id)


def common_upscale(samples, width: int, height: int, upscale_method: str, crop: str):
    """Resize [B, C, H, W] with "nearest-exact", "bilinear", "area", "bicubic", "bislerp" or
    "lanczos"; crop "center" cuts to the target aspect first (the core Upscale nodes' resize)."""
    return resample.resize(samples, int(width), int(height), upscale_method, crop)


def lanczos(samples, width: int, height: int):
    return resample.lanczos(samples, int(width), int(height))


def load_torch_file(ckpt, safe_load: bool = False, device=None, return_metadata: bool = False):
    """A model file's tensors: .safetensors/.sft read directly, anything else with
    torch.load(weights_only=True) whatever `safe_load` says (we never unpickle arbitrary objects).
    A pickle holding {"state_dict": ...} gives the inner dict, as ComfyUI does."""
    path = str(ckpt)
    if path.lower().endswith((".safetensors", ".sft")):
        sd, metadata = read_safetensors(path)
    else:
        sd, metadata = load_pickle(path), None
        if isinstance(sd, dict) and "state_dict" in sd:
            sd = sd["state_dict"]
    if device is not None:
        sd = {k: v.to(device) if hasattr(v, "to") else v for k, v in sd.items()}
    return (sd, metadata) if return_metadata else sd
