"""Ablation: teachers with different EMA momenta (two parameter copies)."""
from artstyle_jax.method import config_lib


def get_config():
  config = config_lib.base_config(__file__, "paper")
  config.momentum_weak = 0.99
  config.momentum_style = 0.996
  return config
