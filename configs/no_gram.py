"""Ablation: both teachers, relation alignment only (Gram weights 0; the Gram terms are still
computed and logged, without gradient)."""
from artstyle_jax.method import config_lib


def get_config():
  config = config_lib.base_config(__file__, "paper")
  config.loss_weights.gram_weak = 0.0
  config.loss_weights.gram_style = 0.0
  return config
