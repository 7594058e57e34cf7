"""configs/paper.py sized for a TPU slice: 32 images per chip, the learning rate scaled linearly.

  --config=configs/paper_pod.py:CHIPS   (default 16: a v4-32 slice, 16 chips; v5e-32: 32)

The batch is per chip: global batch_size = 32 x CHIPS (512 on 16 chips), so every chip holds the
same work whatever the slice; the paper's 16 would give a 16-chip slice one image per chip and
not split over more than 16. 32 per chip in bfloat16 needs 9.8 GiB without remat (XLA's memory
analysis for a v5e chip, README's Performance section), within a v4 (32 GiB) or v5e (16 GiB) chip.

Learning rate: linear scaling from the paper's batch 16 and base rate 0.001 (optim.linear_scaling,
reference_batch_size 16): 0.001 x 512 / 16 = 0.032 on 16 chips. With the paper's rate kept, a
512-batch epoch makes 32 times fewer updates of the same size, so the 25 epochs would move the
weights far less than the paper's run did; linear scaling keeps the update per epoch, and SGD
with momentum follows the small-batch run under it up to batches of several thousand when the
rate is warmed up (Goyal et al. 2017), which the paper's 5 warm-up epochs do. To keep 0.001:
--config.optim.linear_scaling=False.

The queue keeps the paper's K = 4096 keys, rounded up to a multiple of the global batch (a queue
advances one batch at a time). Input for a TPU host: 8 Grain worker processes, the photometric
augmentations on the device (the host sends uint8 crops and their per-image parameters),
bfloat16 compute.
"""
import math

from artstyle_jax.method import config_lib

PER_CHIP_BATCH = 32
PAPER_QUEUE_SIZE = 4096


def get_config(chips: str = "16"):
  config = config_lib.base_config(__file__, "paper")
  num_chips = int(chips)
  config.batch_size = PER_CHIP_BATCH * num_chips
  config.queue_size = math.ceil(PAPER_QUEUE_SIZE / config.batch_size) * config.batch_size
  config.optim.linear_scaling = True
  config.optim.reference_batch_size = 16
  config.model.dtype = "bfloat16"
  config.photometric_on_device = True
  config.dataset.num_workers = 8
  config.checkpoint_every_steps = 500
  return config
