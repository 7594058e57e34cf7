"""A small, fast variant for tests and CPU runs: ConvNeXt-atto from scratch, 64 px, batch 8."""
from configs import paper


def get_config():
  config = paper.get_config()
  config.model.name = "convnext_atto"
  config.model.proj_hidden_dim = 512
  config.init = "random"
  config.image_size = 64
  config.batch_size = 8
  config.num_epochs = 2
  config.optim.warmup_epochs = 1
  config.queue_size = 256
  return config
