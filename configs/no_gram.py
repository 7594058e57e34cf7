"""Ablation: both teachers, relation alignment only (Gram weights 0; the Gram terms are still
computed and logged, without gradient)."""
from configs import paper


def get_config():
  config = paper.get_config()
  config.loss_weights.gram_weak = 0.0
  config.loss_weights.gram_style = 0.0
  return config
