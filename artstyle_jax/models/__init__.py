"""Networks: the ConvNeXt and ResNet backbones, the projection head, and weight import.

`load_backbone(source)` is the one way to get a backbone a user names (models/backbones.py).
"""
from artstyle_jax.models.backbones import RANDOM_PREFIX
from artstyle_jax.models.backbones import BackboneError
from artstyle_jax.models.backbones import load_backbone
from artstyle_jax.models.backbones import model_name
from artstyle_jax.models.backbones import num_parameters
