"""Reading TAESD files (madebyollin/taesd): one `nn.Sequential` per file, keys are layer indices.

The width and the number of latent channels are read from the weights; every name and shape is
checked against the network before it is built.
"""
from __future__ import annotations

import torch
from torch import nn

from diffusion.loading.config import TAESDConfig, TAESDError
from diffusion.loading.files import read_state_dict
from diffusion.models.taesd import ENCODER_BLOCKS, VARIANT_FORMATS, TAESDVAE, build_decoder, build_encoder


def detect_taesd_config(sd: dict, part: str) -> TAESDConfig:
    """Width and latent channels of an encoder or decoder state dict."""
    if part == "decoder":
        key = "1.weight"
        if key not in sd:
            raise TAESDError(f"TAESD decoder state dict is missing key '{key}'")
        return TAESDConfig(latent_channels=sd[key].shape[1], width=sd[key].shape[0])
    if part == "encoder":
        first, last = "0.weight", f"{1 + sum(ENCODER_BLOCKS) + len(ENCODER_BLOCKS) - 1}.weight"
        for key in (first, last):
            if key not in sd:
                raise TAESDError(f"TAESD encoder state dict is missing key '{key}'")
        return TAESDConfig(latent_channels=sd[last].shape[0], width=sd[first].shape[0])
    raise ValueError(f"part must be 'encoder' or 'decoder', got {part!r}")


def load_part(sd: dict, part: str) -> nn.Sequential:
    """Build the encoder or decoder from its state dict, checking every name and shape."""
    cfg = detect_taesd_config(sd, part)
    with torch.device("meta"):
        net = build_encoder(cfg) if part == "encoder" else build_decoder(cfg)
    expected = net.state_dict()
    for key, ref in expected.items():
        if key not in sd:
            raise TAESDError(f"TAESD {part} state dict is missing key '{key}'")
        if tuple(sd[key].shape) != tuple(ref.shape):
            raise TAESDError(f"TAESD {part} weight '{key}' has shape {list(sd[key].shape)}, expected "
                             f"{list(ref.shape)} for {cfg}")
    extra = sorted(set(sd) - set(expected))
    if extra:
        raise TAESDError(f"TAESD {part} state dict has unexpected key '{extra[0]}' "
                         f"(is this the {'decoder' if part == 'encoder' else 'encoder'} file?)")
    net.load_state_dict({k: sd[k] for k in expected}, assign=True)
    return net.float().eval().requires_grad_(False)


def load_file(path, part: str) -> nn.Sequential:
    sd, _ = read_state_dict(path)
    try:
        return load_part(sd, part)
    except TAESDError as e:
        raise TAESDError(f"{path}: {e}") from e


def load_taesd_vae(encoder_path, decoder_path, variant: str = "taesd", device=None) -> TAESDVAE:
    """VAELoader entry: both halves of a TAESD variant (taesd, taesdxl, taesd3, taef1)."""
    if variant not in VARIANT_FORMATS:
        raise ValueError(f"unknown TAESD variant {variant!r}; choose one of {', '.join(VARIANT_FORMATS)}")
    fmt = VARIANT_FORMATS[variant]()
    enc = load_file(encoder_path, "encoder") if encoder_path else None
    dec = load_file(decoder_path, "decoder") if decoder_path else None
    for name, net, idx in (("encoder", enc, -1), ("decoder", dec, 1)):
        channels = None if net is None else (net[idx].out_channels if name == "encoder" else net[idx].in_channels)
        if channels is not None and channels != fmt.latent_channels:
            raise TAESDError(f"{variant} {name} has {channels} latent channels, expected {fmt.latent_channels}")
    return TAESDVAE(enc, dec, fmt, device=device)
