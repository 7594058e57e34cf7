"""Ablation: teachers with different EMA momenta (two parameter copies)."""
from configs import paper


def get_config():
  config = paper.get_config()
  config.momentum_weak = 0.99
  config.momentum_style = 0.996
  return config
