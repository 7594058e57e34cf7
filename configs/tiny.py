"""A small, fast variant for tests and CPU runs: ConvNeXt-atto from scratch, 64 px, batch 8."""
from artstyle_jax.method import config_lib


def get_config():
  config = config_lib.base_config(__file__, "paper")
  config.model.name = "convnext_atto"
  config.model.proj_hidden_dim = 512
  config.init = "random"
  config.image_size = 64
  config.batch_size = 8
  config.num_epochs = 2
  config.optim.warmup_epochs = 1
  config.queue_size = 256
  return config
