"""Ablation: MoCo InfoNCE (temperature 0.2, the teacher's own key positive, the queue negative)
in place of the relation alignment loss, for both teachers; Gram terms unchanged."""
from configs import paper


def get_config():
  config = paper.get_config()
  config.loss.relation = "info_nce"
  return config
