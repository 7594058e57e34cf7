"""Networks: the ConvNeXt and ResNet backbones, the projection head, and weight import.

- `convnext`, `resnet`, `heads`: the networks.
- `forms`: which form of each ConvNeXt part a program computes, chosen for its platform.
- `cpu/`: the ConvNeXt's CPU-only forms (C++ kernels, hand-written gradients).
- `torch_weights` (reading torch files, one error type), `convnext_weights` (timm, transformers,
  the hub), `resnet_weights` (the public self-supervised checkpoints' layouts),
  `authors_checkpoint` (the authors' training checkpoints).
- `backbones.load_backbone(source)`: the one way to get a backbone a user names.
"""
from artstyle_jax.models.backbones import RANDOM_PREFIX
from artstyle_jax.models.backbones import BackboneError
from artstyle_jax.models.backbones import load_backbone
from artstyle_jax.models.backbones import model_name
from artstyle_jax.models.backbones import num_parameters
