"""Attention backends agree with a float64 softmax(QK^T/sqrt(d))V reference (tolerance 1e-5 float32)."""
import math

import pytest
import torch

from diffusion.models import attention as attn

TOL = 1e-5


def reference(q, k, v, heads, mask=None):
    b, nq, c = q.shape
    d = c // heads
    qh, kh, vh = (t.double().reshape(b, t.shape[1], heads, d).transpose(1, 2) for t in (q, k, v))
    scores = qh @ kh.transpose(-1, -2) / math.sqrt(d)
    if mask is not None:
        m = mask if mask.ndim == 4 else (mask[:, None] if mask.ndim == 3 else mask[None, None])
        scores = scores.masked_fill(~m, float("-inf")) if m.dtype == torch.bool else scores + m.double()
    out = scores.softmax(-1) @ vh
    return out.transpose(1, 2).reshape(b, nq, c).float()


def _qkv(b=2, nq=37, nk=11, heads=4, d=8, seed=0):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(b, nq, heads * d, generator=g), torch.randn(b, nk, heads * d, generator=g),
            torch.randn(b, nk, heads * d, generator=g))


@pytest.mark.parametrize("backend", attn.available_backends())
def test_backends_match_reference(backend):
    q, k, v = _qkv()
    out = attn.attention(q, k, v, 4, backend=backend)
    assert (out - reference(q, k, v, 4)).abs().max() < TOL


@pytest.mark.parametrize("backend", attn.available_backends())
def test_masks(backend):
    q, k, v = _qkv(nq=9, nk=9)
    causal = torch.ones(9, 9, dtype=torch.bool).tril()
    out = attn.attention(q, k, v, 4, mask=causal, backend=backend)
    assert (out - reference(q, k, v, 4, causal)).abs().max() < TOL
    additive = torch.randn(2, 9, 9)
    out = attn.attention(q, k, v, 4, mask=additive, backend=backend)
    assert (out - reference(q, k, v, 4, additive)).abs().max() < TOL


def test_sliced_bounds_chunk_and_still_matches(monkeypatch):
    # A budget of 3 score rows forces many chunks, including a ragged last one.
    q, k, v = _qkv(nq=50, nk=13)
    monkeypatch.setattr(attn, "SLICE_BYTES", 2 * 4 * 13 * 4 * 3)
    calls = []
    real = torch.matmul
    monkeypatch.setattr(torch, "matmul", lambda a, b: calls.append(a.shape) or real(a, b))
    out = attn.attention(q, k, v, 4, backend="sliced")
    monkeypatch.setattr(torch, "matmul", real)
    assert max(s[-2] for s in calls) <= 3
    assert (out - reference(q, k, v, 4)).abs().max() < TOL


def test_sliced_half_precision_close_to_reference():
    q, k, v = (t.to(torch.bfloat16) for t in _qkv())
    out = attn.attention(q, k, v, 4, backend="sliced")
    assert out.dtype == torch.bfloat16
    assert (out.float() - reference(q, k, v, 4)).abs().max() < 3e-2


def test_set_backend_is_global_and_validated():
    before = attn.get_backend()
    try:
        attn.set_backend("sliced")
        assert attn.get_backend() == "sliced"
        with pytest.raises(ValueError, match="unknown attention backend 'flash9'"):
            attn.set_backend("flash9")
    finally:
        attn.set_backend(before)


def test_xformers_request_falls_back_on_cpu():
    q, k, v = _qkv()
    out = attn.attention(q, k, v, 4, backend="xformers")
    assert (out - reference(q, k, v, 4)).abs().max() < TOL


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("backend", attn.available_backends())
def test_cuda_fp16_backends(backend):
    q, k, v = (t.cuda().half() for t in _qkv())
    out = attn.attention(q, k, v, 4, backend=backend)
    assert (out.float().cpu() - reference(*(t.float().cpu() for t in (q, k, v)), 4)).abs().max() < 1e-2
