"""Ablation: MoCo InfoNCE (temperature 0.2, the teacher's own key positive, the queue negative)
in place of the relation alignment loss, for both teachers; Gram terms unchanged."""
from artstyle_jax.method import config_lib


def get_config():
  config = config_lib.base_config(__file__, "paper")
  config.loss.relation = "info_nce"
  return config
