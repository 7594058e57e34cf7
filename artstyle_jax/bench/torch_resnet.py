"""torchvision's ResNet-50 (v1.5) written in plain torch (no torchvision): the reference that
`models.resnet` is tested against and that `bench backbone --model=resnet50` times.

Module and parameter names are torchvision's (conv1, bn1, layer1.0.conv2, layer2.0.downsample.0,
...), so `state_dict()` is a torchvision ResNet-50 state dict without `fc`.
"""
from collections.abc import Sequence

import torch
from torch import nn


class Bottleneck(nn.Module):
  """1x1 -> 3x3 (stride) -> 1x1, BatchNorm after each, projection shortcut where shapes change."""

  def __init__(self, in_channels: int, width: int, stride: int):
    super().__init__()
    out_channels = width * 4
    self.conv1 = nn.Conv2d(in_channels, width, 1, bias=False)
    self.bn1 = nn.BatchNorm2d(width)
    self.conv2 = nn.Conv2d(width, width, 3, stride=stride, padding=1, bias=False)
    self.bn2 = nn.BatchNorm2d(width)
    self.conv3 = nn.Conv2d(width, out_channels, 1, bias=False)
    self.bn3 = nn.BatchNorm2d(out_channels)
    self.relu = nn.ReLU(inplace=True)
    self.downsample = None
    if stride != 1 or in_channels != out_channels:
      self.downsample = nn.Sequential(nn.Conv2d(in_channels, out_channels, 1, stride=stride, bias=False),
                                      nn.BatchNorm2d(out_channels))

  def forward(self, x: torch.Tensor) -> torch.Tensor:
    out = self.relu(self.bn1(self.conv1(x)))
    out = self.relu(self.bn2(self.conv2(out)))
    out = self.bn3(self.conv3(out))
    shortcut = x if self.downsample is None else self.downsample(x)
    return self.relu(out + shortcut)


class ResNet(nn.Module):
  """torchvision ResNet without avgpool and fc: `forward` returns the four stage outputs (NCHW)."""

  def __init__(self, stage_sizes: Sequence[int] = (3, 4, 6, 3)):
    super().__init__()
    self.conv1 = nn.Conv2d(3, 64, 7, stride=2, padding=3, bias=False)
    self.bn1 = nn.BatchNorm2d(64)
    self.relu = nn.ReLU(inplace=True)
    self.maxpool = nn.MaxPool2d(3, stride=2, padding=1)
    in_channels = 64
    for stage, (blocks, width) in enumerate(zip(stage_sizes, (64, 128, 256, 512))):
      layer = []
      for block in range(blocks):
        layer.append(Bottleneck(in_channels, width, 2 if stage > 0 and block == 0 else 1))
        in_channels = width * 4
      setattr(self, f"layer{stage + 1}", nn.Sequential(*layer))

  def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
    x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
    stages = []
    for layer in (self.layer1, self.layer2, self.layer3, self.layer4):
      x = layer(x)
      stages.append(x)
    return stages


def randomise_batch_norm(model: nn.Module, generator: torch.Generator) -> None:
  """Random affine parameters and running statistics in every BatchNorm (for tests and benches:
  a fresh model's identity statistics would hide a mistake in their use)."""
  with torch.no_grad():
    for module in model.modules():
      if isinstance(module, nn.BatchNorm2d):
        shape = module.running_mean.shape
        module.weight.copy_(0.5 + torch.rand(shape, generator=generator))
        module.bias.copy_(0.1 * torch.randn(shape, generator=generator))
        module.running_mean.copy_(0.1 * torch.randn(shape, generator=generator))
        module.running_var.copy_(0.5 + torch.rand(shape, generator=generator))
