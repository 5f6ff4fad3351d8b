"""CPU allocator tuning (diffusion.memory.tune_cpu_allocator): once tuned, a large tensor freed
and allocated again reuses heap pages instead of faulting in fresh zeroed ones; sampling on CPU
tunes it and gives free pages back afterwards; the setting can turn it off."""
import resource

import pytest
import torch

from diffusion import memory
from diffusion.noise import prepare_noise
from diffusion.sampling import sample
from sampling_fakes import GaussianModel, cond

glibc_only = pytest.mark.skipif(memory._glibc() is None, reason="needs glibc's mallopt/malloc_trim")


def _minor_faults() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt


def _faults_of_second_allocation(nbytes: int) -> int:
    torch.empty(nbytes // 4).fill_(1.0)  # allocate, touch, free
    before = _minor_faults()
    torch.empty(nbytes // 4).fill_(2.0)
    return _minor_faults() - before


@glibc_only
def test_freed_large_blocks_are_reused_without_page_faults():
    assert memory.tune_cpu_allocator()
    pages = (64 << 20) // 4096
    # untuned, the second 64 MiB block is a fresh mmap: one fault per 4 KiB page (16384)
    assert _faults_of_second_allocation(64 << 20) < pages // 10


def test_setting_off_leaves_the_allocator_alone(monkeypatch):
    monkeypatch.setattr(memory, "_MALLOC", {"libc": None, "tuned": False})
    assert memory.tune_cpu_allocator(memory.Settings(cpu_malloc_tuning=False)) is False
    assert memory._MALLOC["tuned"] is False
    memory.release_cpu_memory()  # nothing tuned: must not touch libc


def test_cpu_sampling_tunes_then_releases(monkeypatch):
    events = []
    monkeypatch.setattr(memory, "tune_cpu_allocator", lambda settings=None: events.append("tune"))
    monkeypatch.setattr(memory, "release_cpu_memory", lambda: events.append("release"))

    class Recording(GaussianModel):
        def apply_model(self, *args, **kwargs):
            events.append("step")
            return super().apply_model(*args, **kwargs)

    latent = torch.zeros(1, 4, 8, 8)
    sample(Recording(), prepare_noise(latent, 1), cond(0.4), cond(-0.2), 3.0, "euler", "normal", 2, latent)
    assert events[0] == "tune" and events[-1] == "release" and events.count("step") >= 2


def _rss_file_kib() -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("RssFile:"):
                return int(line.split()[1])
    pytest.skip("no RssFile in /proc/self/status")


@glibc_only
def test_page_out_drops_clean_mapped_pages_and_never_changes_data(tmp_path):
    import mmap

    values = torch.arange(4 << 20, dtype=torch.float32)  # 16 MiB
    path = tmp_path / "weights.bin"
    path.write_bytes(values.numpy().tobytes())
    with open(path, "rb") as f:
        mapped = mmap.mmap(f.fileno(), 0, flags=mmap.MAP_PRIVATE, prot=mmap.PROT_READ | mmap.PROT_WRITE)
    t = torch.frombuffer(mapped, dtype=torch.float32)
    clean, dirty = t[: 2 << 20], t[2 << 20:]
    dirty[::1024] = -1.0  # copy-on-write: these pages now exist only in memory
    expected = values.clone()
    expected[2 << 20:][::1024] = -1.0
    assert torch.equal(t, expected)  # every page resident
    before = _rss_file_kib()
    assert memory.page_out(clean) and memory.page_out(dirty)
    assert before - _rss_file_kib() >= 4 * 1024  # most of the clean 8 MiB left RSS
    assert torch.equal(t, expected)  # re-read from the file; modified pages kept their data
    anon = torch.randn(1 << 20)
    copy = anon.clone()
    memory.page_out(anon)
    assert torch.equal(anon, copy)
    del t, clean, dirty
    mapped.close()
