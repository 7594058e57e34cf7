"""The authors' PyTorch checkpoint for the tests, written with torch exactly as the authors' code
writes it: their model (student `net.net`, teachers `encoder_k.net` and `encoder_style.net` with
timm features-only ConvNeXt keys, heads `head_q/k/style` with `linear` and `out`, buffers `queue`
(D, K) and `queue_ptr`), a torch SGD over `model.parameters()` after one step, and the epoch. The
student is the timm fixture (ConvNeXt depths (1, 1, 2, 1), dims (8, 16, 24, 32)), the teachers
perturbed copies.
"""
import contextlib

import numpy as np
import pytest
from safetensors.numpy import load_file
import torch
from torch import nn
import torch.nn.functional as F

from artstyle_jax.method import config_lib
from artstyle_jax.models import convnext
from helpers import config_path
from helpers import FIXTURES

AUTHORS_DEPTHS, AUTHORS_DIMS = (1, 1, 2, 1), (8, 16, 24, 32)
# The heads' hidden and output widths, the queue's length and its pointer, the checkpoint's epoch.
AUTHORS_HIDDEN, AUTHORS_PROJ, AUTHORS_QUEUE, AUTHORS_PTR = 16, 8, 16, 8
AUTHORS_EPOCH = 3
AUTHORS_SIZE = "convnext_test_fixture"  # The name the authors' fixture ConvNeXt is registered under.
AUTHORS_OVERRIDES = ("batch_size=4", "image_size=32")


@contextlib.contextmanager
def authors_size_registered():
  """Makes the fixture's ConvNeXt a named size while the block runs, as convnext_atto ...
  convnext_xlarge are."""
  with pytest.MonkeyPatch.context() as patch:
    patch.setitem(convnext.SIZES, AUTHORS_SIZE, (AUTHORS_DEPTHS, AUTHORS_DIMS))
    yield


def authors_paper_config(*overrides):
  """configs/paper.py made small for the authors' fixture checkpoint, with `overrides`."""
  return config_lib.load(config_path("paper"), AUTHORS_OVERRIDES + overrides)


class LayerNorm2d(nn.LayerNorm):
  """timm's LayerNorm2d: LayerNorm over the channels of an NCHW map."""

  def forward(self, x):
    return F.layer_norm(x.permute(0, 2, 3, 1), self.normalized_shape, self.weight, self.bias, self.eps
                        ).permute(0, 3, 1, 2)


class Mlp(nn.Module):
  """A ConvNeXt block's pointwise MLP (fc1, GELU, fc2)."""

  def __init__(self, dim):
    super().__init__()
    self.fc1, self.fc2 = nn.Linear(dim, 4 * dim), nn.Linear(4 * dim, dim)

  def forward(self, x):
    return self.fc2(F.gelu(self.fc1(x)))


class Block(nn.Module):
  """A timm ConvNeXt block: depthwise 7x7, LayerNorm, MLP, layer scale, residual."""

  def __init__(self, dim):
    super().__init__()
    self.conv_dw = nn.Conv2d(dim, dim, 7, padding=3, groups=dim)
    self.norm = nn.LayerNorm(dim, eps=1e-6)
    self.mlp = Mlp(dim)
    self.gamma = nn.Parameter(torch.ones(dim))

  def forward(self, x):
    y = self.mlp(self.norm(self.conv_dw(x).permute(0, 2, 3, 1))) * self.gamma
    return x + y.permute(0, 3, 1, 2)


class Stage(nn.Module):
  """A timm ConvNeXt stage: a downsampling (when the width changes), then its blocks."""

  def __init__(self, in_dim, dim, depth):
    super().__init__()
    if in_dim != dim:
      self.downsample = nn.Sequential(LayerNorm2d(in_dim, eps=1e-6), nn.Conv2d(in_dim, dim, 2, stride=2))
    self.blocks = nn.Sequential(*[Block(dim) for _ in range(depth)])

  def forward(self, x):
    return self.blocks(self.downsample(x) if hasattr(self, "downsample") else x)


class FeaturesOnlyConvNeXt(nn.Module):
  """timm's ConvNeXt as `features_only=True` builds it: modules stem_0, stem_1, stages_0 ..."""

  def __init__(self):
    super().__init__()
    self.stem_0 = nn.Conv2d(3, AUTHORS_DIMS[0], 4, stride=4)
    self.stem_1 = LayerNorm2d(AUTHORS_DIMS[0], eps=1e-6)
    for i, (depth, dim) in enumerate(zip(AUTHORS_DEPTHS, AUTHORS_DIMS)):
      setattr(self, f"stages_{i}", Stage(AUTHORS_DIMS[max(i - 1, 0)], dim, depth))

  def forward(self, x):
    x, features = self.stem_1(self.stem_0(x)), []
    for i in range(len(AUTHORS_DEPTHS)):
      x = getattr(self, f"stages_{i}")(x)
      features.append(x)
    return features


class Encoder(nn.Module):
  """The authors' encoder: the features-only ConvNeXt as `net`."""

  def __init__(self):
    super().__init__()
    self.net = FeaturesOnlyConvNeXt()


class MoCoHead(nn.Module):
  """The authors' projection head: linear, ReLU, out, L2-normalised."""

  def __init__(self):
    super().__init__()
    self.linear, self.out = nn.Linear(AUTHORS_DIMS[-1], AUTHORS_HIDDEN), nn.Linear(AUTHORS_HIDDEN, AUTHORS_PROJ)

  def forward(self, x):
    return F.normalize(self.out(F.relu(self.linear(x))), dim=1)


class AuthorsModel(nn.Module):
  """The published model's module names and buffers."""

  def __init__(self):
    super().__init__()
    self.net, self.head_q = Encoder(), MoCoHead()
    self.encoder_k, self.head_k = Encoder(), MoCoHead()
    self.encoder_style, self.head_style = Encoder(), MoCoHead()
    self.register_buffer("queue", F.normalize(torch.randn(AUTHORS_PROJ, AUTHORS_QUEUE), dim=0))
    self.register_buffer("queue_ptr", torch.tensor([AUTHORS_PTR], dtype=torch.long))


def timm_features_only_state_dict():
  """The timm fixture's backbone tensors under the features-only names (stem.0 -> stem_0, ...)."""
  timm = load_file(FIXTURES / "timm_convnext_small_random.safetensors")
  renamed = {}
  for key, value in timm.items():
    if key.startswith("head."):
      continue
    for module in ("stem", "stages"):
      if key.startswith(module + "."):
        key = key.replace(f"{module}.", f"{module}_", 1)
    renamed[key] = torch.from_numpy(value)
  return renamed


def write_authors_checkpoint(path, *, identical_teachers=False, student_only_optimizer=False, transform=None):
  """torch.saves {'model', 'optimizer', 'epoch'} as the authors' training loop does; returns the model
  and the torch optimizer.

  The optimizer makes one SGD step with learning rate 0: the student keeps the timm fixture's
  weights, and every student tensor but head_q.out.bias (frozen for this step, as a tensor that
  never received a gradient) gets its momentum buffer `grad + weight_decay * weight`.
  `identical_teachers`: teacher S a copy of teacher W; `student_only_optimizer`: the SGD given
  the student's parameters alone; `transform`: applied to the checkpoint before it is saved.
  """
  torch.manual_seed(0)
  model = AuthorsModel()
  model.net.net.load_state_dict(timm_features_only_state_dict())
  with torch.no_grad():
    for seed, encoder in ((1, model.encoder_k), (2 - identical_teachers, model.encoder_style)):
      generator = torch.Generator().manual_seed(seed)
      for teacher, student in zip(encoder.net.parameters(), model.net.net.parameters()):
        teacher.copy_(student + 0.01 * torch.randn(student.shape, generator=generator))
    if identical_teachers:
      model.head_style.load_state_dict(model.head_k.state_dict())
  for module in (model.encoder_k, model.head_k, model.encoder_style, model.head_style):
    module.requires_grad_(False)
  model.head_q.out.bias.requires_grad_(False)
  parameters = (list(model.net.parameters()) + list(model.head_q.parameters()) if student_only_optimizer
                else model.parameters())
  optimizer = torch.optim.SGD(parameters, lr=0.0, momentum=0.9, weight_decay=5e-4)
  images = torch.from_numpy(np.load(FIXTURES / "timm_convnext_small_random_io.npz")["input_nchw"])
  z = model.head_q(model.net.net(images)[-1].mean(dim=(2, 3)))
  (z @ model.queue).logsumexp(dim=1).mean().backward()
  optimizer.step()
  checkpoint = {"model": model.state_dict(), "optimizer": optimizer.state_dict(), "epoch": AUTHORS_EPOCH}
  if transform is not None:
    checkpoint = transform(checkpoint)
  torch.save(checkpoint, path)
  return model, optimizer
