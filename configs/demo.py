"""The CPU demo (python -m artstyle_jax.demo): the paper's method, made small enough to pretrain
from scratch in minutes on two CPU cores and still beat the random initialisation it starts from.

Every value that differs from paper.py is set below, with the reason.
"""
import ml_collections
from ml_collections import config_dict

from artstyle_jax import config_lib


def get_config() -> ml_collections.ConfigDict:
  config = config_lib.base_config(__file__, "paper")

  # The smallest ConvNeXt (3.4M parameters instead of Base's 88M) with a head of 512 hidden units
  # instead of 2048, so that a step takes a fraction of a second on a CPU.
  config.model.name = "convnext_atto"
  config.model.proj_hidden_dim = 512
  # From scratch: the demo shows what the self-supervised pretraining adds to a random
  # initialisation (and needs no download).
  config.init = "random"

  # The dataset, rendered by artstyle_jax.data.synthetic into WORKDIR/data (the demo sets
  # dataset.name and dataset.data_dir): ten texture-defined styles instead of WikiArt.
  config.dataset.name = config_dict.placeholder(str)
  config.synthetic = ml_collections.ConfigDict()
  config.synthetic.per_class = 100  # training images per style
  config.synthetic.test_per_class = 30
  config.synthetic.size = 96  # side of the rendered images, in pixels
  config.synthetic.seed = 0

  # 64 px views instead of 352 (a 30th of the pixels).
  config.image_size = 64
  config.batch_size = 8
  # 256 keys: the last 16 steps' teacher keys (two per image), a quarter of the training images.
  config.queue_size = 256

  # From scratch, SGD needs a far higher rate than the paper's 0.001 for fine-tuning a pretrained
  # backbone; the continuous cosine keeps it after the warm-up instead of dropping to a tenth.
  config.num_epochs = 8
  config.optim.warmup_epochs = 1
  config.optim.base_lr = 0.3
  config.optim.schedule = "cosine"

  config.log_every_steps = 100
  config.checkpoint_every_steps = 200
  return config
