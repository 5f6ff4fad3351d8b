"""CPU allocator tuning (diffusion.memory.tune_cpu_allocator): raises glibc's mmap and trim
thresholds once, sampling on CPU tunes then gives free pages back, the setting can turn it off."""

import pytest
import torch

from diffusion import memory
from diffusion.sampling.noise import prepare_noise
from diffusion.sampling.ksampler import sample
from sampling_fakes import GaussianModel, cond

glibc_only = pytest.mark.skipif(memory._glibc() is None, reason="needs glibc's mallopt/malloc_trim")


class FakeLibc:
    """Records what the tuning asks of glibc. (Whether a given 64 MiB block then avoids page faults
    depends on where the kernel places the heap, which varies run to run with address-space
    randomisation; benchmarks/runtime.py measures the effect on real sampling.)"""

    def __init__(self, accept_large=True):
        self.calls = []
        self.accept_large = accept_large

    def mallopt(self, param, value):
        self.calls.append(("mallopt", param, value))
        return 0 if (param == -3 and value > (32 << 20) and not self.accept_large) else 1

    def malloc_trim(self, pad):
        self.calls.append(("malloc_trim", pad))
        return 1


@pytest.mark.parametrize("accept_large", [True, False])
def test_tuning_raises_the_thresholds_once_and_release_trims(monkeypatch, accept_large):
    libc = FakeLibc(accept_large)
    monkeypatch.setattr(memory, "_MALLOC", {"libc": libc, "tuned": False})
    assert memory.tune_cpu_allocator(memory.Settings(cpu_malloc_tuning=True))
    assert memory.tune_cpu_allocator()  # once per process
    mmap = [c for c in libc.calls if c[1] == -3]
    expected = [("mallopt", -3, memory.MALLOC_MMAP_THRESHOLD)]
    if not accept_large:  # glibc caps the threshold: fall back to its maximum
        expected.append(("mallopt", -3, 32 << 20))
    assert mmap == expected
    assert ("mallopt", -1, memory.MALLOC_TRIM_THRESHOLD) in libc.calls
    memory.release_cpu_memory()
    assert libc.calls[-1] == ("malloc_trim", 0)


@glibc_only
def test_real_glibc_accepts_the_tuning(monkeypatch):
    monkeypatch.setattr(memory, "_MALLOC", {"libc": None, "tuned": False})
    assert memory.tune_cpu_allocator()
    memory.release_cpu_memory()


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
