"""Ablation: one (weak) teacher and the relation loss alone, i.e. ReSSL.

No style teacher, no style view, no Gram terms. The relation term has weight 1 (ReSSL's loss,
not halved) and the queue receives the weak teacher's keys only, B per step.
"""
from artstyle_jax.method import config_lib


def get_config():
  config = config_lib.base_config(__file__, "paper")
  config.style_teacher = False
  config.loss_weights.rel_weak = 1.0
  config.loss_weights.rel_style = 0.0
  config.loss_weights.gram_weak = 0.0
  config.loss_weights.gram_style = 0.0
  return config
