"""comfy.model_management for custom node packs: devices, cache release and interrupts, backed by
diffusion.memory and graph.progress."""
from __future__ import annotations

import torch

from diffusion import memory
from graph import progress
from graph.contract import InterruptProcessing

# Packs catch this by name; it is the exception our executor treats as an interrupt.
InterruptProcessingException = InterruptProcessing


def get_torch_device():
    return memory.get_torch_device()


def unet_offload_device():
    return memory.offload_device()


def intermediate_device():
    """Where nodes hand tensors to each other: the CPU, the GPU itself under --gpu-only."""
    if memory.get_settings().vram_mode == "gpu_only":
        return memory.get_torch_device()
    return torch.device("cpu")


def soft_empty_cache(force: bool = False) -> None:
    """Give cached, unused GPU memory back to the driver (models stay loaded)."""
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
        torch.cuda.ipc_collect()


def throw_exception_if_processing_interrupted() -> None:
    progress.check_interrupt()


def processing_interrupted() -> bool:
    run = progress.current_node()
    return run is not None and run.interrupt_flag.is_set()


def interrupt_current_processing(value: bool = True) -> None:
    """Ask the running prompt to stop (value False withdraws the request); nothing runs: no-op."""
    run = progress.current_node()
    if run is not None:
        (run.interrupt_flag.set if value else run.interrupt_flag.clear)()
