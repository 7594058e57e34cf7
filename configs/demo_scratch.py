"""The demo from scratch (python -m artstyle_jax.demo --config=configs/demo_scratch.py), and the
base of python -m artstyle_jax.tools.demo_ablations: the paper's method, made small enough to
pretrain ConvNeXt-atto from a random initialisation in minutes on two CPU cores and still beat
the initialisation it starts from, on the synthetic textures (README, "Learning rate and feature
collapse"). configs/demo.py pretrains from ImageNet weights instead, as the paper does.

Every value that differs from paper.py is set below, with the reason.
"""
import ml_collections
from ml_collections import config_dict

from artstyle_jax.method import config_lib


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
  config.synthetic.kind = "textures"  # `data.synthetic.KINDS`
  config.synthetic.per_class = 100  # training images per style
  # 100 test images per style: the margin over the random initialisation is a few points, and with
  # 1000 test images its standard error is about 1.5 points (about 2.5 with 300).
  config.synthetic.test_per_class = 100
  config.synthetic.size = 96  # side of the rendered images, in pixels
  config.synthetic.seed = 0

  # 64 px views instead of 352 (a 30th of the pixels).
  config.image_size = 64
  # Batch 32: on two CPU cores a step of 32 costs less than four of 8 (same margin, tried both).
  config.batch_size = 32
  # 512 keys: the last 8 steps' teacher keys (two per image), half the training images.
  config.queue_size = 512

  # The paper's rate and schedule (base 0.001, linearly scaled to 0.002 at batch 32; a tenth of it
  # after the warm-up), over 8 epochs with 1 of warm-up instead of 25 with 5. A from-scratch peak of
  # 0.6 collapses the features to rank 2 (README, "Learning rate and feature collapse"): the rank
  # falls as the rate rises, and no other setting tried (Gram terms, temperatures, queue, warm-up,
  # image size) changed it.
  config.num_epochs = 8
  config.optim.warmup_epochs = 1
  config.log_every_steps = 25
  config.checkpoint_every_steps = 100
  return config
