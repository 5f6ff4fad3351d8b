"""What a benchmark ran on, and where its tables are kept (benchmarks/results/, committed)."""
from __future__ import annotations

import os
import platform
import time
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _memory_gib() -> float | None:
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemTotal:"):
                    return int(line.split()[1]) / 2 ** 20
    except OSError:
        pass
    return None


def describe() -> str:
    """One line per fact: CPU model, cores, memory, torch build and threads, load when measured."""
    import torch

    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    mem = _memory_gib()
    lines = [f"CPU: {_cpu_model()}, {cores} cores usable ({os.cpu_count()} logical)"
             + (f", {mem:.1f} GiB RAM" if mem else ""),
             f"torch {torch.__version__}, {torch.get_num_threads()} intra-op threads, "
             f"oneDNN {'on' if torch.backends.mkldnn.is_available() else 'off'}, "
             f"CUDA {'available' if torch.cuda.is_available() else 'not used'}; "
             f"Python {platform.python_version()}, {platform.system()} {platform.release()}"]
    if hasattr(os, "getloadavg"):
        lines.append("load average at start (1/5/15 min): " + " / ".join(f"{x:.2f}" for x in os.getloadavg()))
    return "\n".join(lines)


def save(name: str, text: str) -> Path:
    """Write a finished table to benchmarks/results/<name>.txt, stamped with the date."""
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / f"{name}.txt"
    path.write_text(f"# {time.strftime('%Y-%m-%d %H:%M %Z')}\n{text.rstrip()}\n", encoding="utf-8")
    return path
