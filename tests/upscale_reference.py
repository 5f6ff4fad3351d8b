"""An independent RRDBNet (ESRGAN / Real-ESRGAN generator) in Real-ESRGAN's key layout, for the
upscale-model tests: tiny random copies are saved as upscale model files, the full-size one gives the
public RealESRGAN_x4plus key table (on the meta device)."""
from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F


class DenseBlock(nn.Module):
    """Five 3x3 convolutions, each seeing the block input and every earlier output; residual x 0.2."""

    def __init__(self, feat: int, grow: int):
        super().__init__()
        for i in range(5):
            setattr(self, f"conv{i + 1}", nn.Conv2d(feat + i * grow, grow if i < 4 else feat, 3, 1, 1))

    def forward(self, x):
        feats = [x]
        for i in range(4):
            feats.append(F.leaky_relu(getattr(self, f"conv{i + 1}")(torch.cat(feats, 1)), 0.2))
        return self.conv5(torch.cat(feats, 1)) * 0.2 + x


class ResidualInResidual(nn.Module):
    def __init__(self, feat: int, grow: int):
        super().__init__()
        self.rdb1, self.rdb2, self.rdb3 = (DenseBlock(feat, grow) for _ in range(3))

    def forward(self, x):
        return self.rdb3(self.rdb2(self.rdb1(x))) * 0.2 + x


class RRDBNet(nn.Module):
    """x4: two nearest x2 upsamplings, each followed by a convolution."""

    def __init__(self, feat: int = 64, blocks: int = 23, grow: int = 32, channels: int = 3):
        super().__init__()
        self.conv_first = nn.Conv2d(channels, feat, 3, 1, 1)
        self.body = nn.Sequential(*(ResidualInResidual(feat, grow) for _ in range(blocks)))
        self.conv_body = nn.Conv2d(feat, feat, 3, 1, 1)
        self.conv_up1 = nn.Conv2d(feat, feat, 3, 1, 1)
        self.conv_up2 = nn.Conv2d(feat, feat, 3, 1, 1)
        self.conv_hr = nn.Conv2d(feat, feat, 3, 1, 1)
        self.conv_last = nn.Conv2d(feat, channels, 3, 1, 1)

    def forward(self, x):
        feat = self.conv_first(x)
        feat = feat + self.conv_body(self.body(feat))
        for conv in (self.conv_up1, self.conv_up2):
            feat = F.leaky_relu(conv(F.interpolate(feat, scale_factor=2, mode="nearest")), 0.2)
        return self.conv_last(F.leaky_relu(self.conv_hr(feat), 0.2))

    # Receptive field radius in input pixels of the tiny (1-block) network: 1 + 15 + 1 convolutions at
    # the input size, four more after the upsamplings (each < 1 input pixel): below 19.
    TINY_RADIUS = 19


def tiny_rrdbnet(seed: int = 0) -> RRDBNet:
    torch.manual_seed(seed)
    net = RRDBNet(feat=8, blocks=1, grow=32).eval()  # spandrel assumes 32 growth channels
    with torch.no_grad():  # more detail than the default init, centred on grey: the 0..1 clamp rarely bites
        net.conv_last.weight.mul_(10.0)
        net.conv_last.bias.zero_()
        mean = net(torch.rand(1, 3, 16, 16, generator=torch.Generator().manual_seed(seed))).mean(dim=(0, 2, 3))
        net.conv_last.bias.copy_(0.5 - mean)
    return net
