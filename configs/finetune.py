"""Supervised fine-tuning of a whole backbone plus a linear classifier (python -m artstyle_jax.finetune).

The recipe follows the ConvNeXt paper's fine-tuning (Liu et al. 2022, appendix A: AdamW, cosine
decay after a linear warm-up, label smoothing 0.1) kept simple: one lower learning rate for the
backbone instead of layer-wise decay, and the linear probe's augmentation only (RandomResizedCrop,
scale 0.2-1, and a horizontal flip; no RandAugment, Mixup, CutMix, stochastic depth or EMA).
Images, batch and dataset keys are configs/paper.py's; --weights names the backbone.
"""
import ml_collections

from artstyle_jax.method import config_lib


def get_config() -> ml_collections.ConfigDict:
  config = config_lib.base_config(__file__, "paper")
  config.num_epochs = 30
  config.optim.schedule = "cosine"
  config.optim.base_lr = 1e-3  # the classifier's peak rate at reference_batch_size, AdamW
  config.optim.warmup_epochs = 1
  config.optim.weight_decay = 0.05  # AdamW's decoupled decay, on kernels only (not biases, norms)
  config.log_every_steps = 50
  config.checkpoint_every_steps = 500

  config.finetune = ml_collections.ConfigDict()
  config.finetune.backbone_lr_scale = 0.1  # the backbone's rate relative to the classifier's
  config.finetune.label_smoothing = 0.1
  config.finetune.classifier_init_stddev = 0.01  # N(0, stddev) kernel, zero bias
  config.finetune.adam_b2 = 0.999
  return config
