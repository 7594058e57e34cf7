"""Networks: the ConvNeXt, ResNet, EfficientNet-Lite and ViT backbones, the projection head, and
weight import and export.

- `convnext`, `resnet`, `efficientnet_lite`, `vit`, `heads`: the networks (`vit`: DINOv2's and
  CLIP's image towers).
- `forms`: which form of each ConvNeXt part a program computes, chosen for its platform.
- `cpu/`: the ConvNeXt's CPU-only forms (C++ kernels, hand-written gradients).
- `torch_weights` (reading torch files, one error type, the layouts' rules read both ways),
  `torch_legacy_format` (torch's legacy files, read without torch), `convnext_weights` (timm,
  transformers, the hub), `resnet_weights` (the public self-supervised checkpoints' layouts,
  torchvision's and transformers'), `efficientnet_lite_weights` (the reference's state dicts, the
  ImageNet weights packages), `vit_weights` (DINOv2 and CLIP from and to transformers' files),
  `authors_checkpoint` (the authors' training checkpoints).
- `backbones.load_backbone(source)`: the one way to get a backbone a user names.

Imports `storage` (paths as users type them), `data` and `runtime` at most.
"""
from artstyle_jax.models.backbones import BackboneError
from artstyle_jax.models.backbones import load_backbone
from artstyle_jax.models.backbones import model_name
from artstyle_jax.models.backbones import num_parameters
from artstyle_jax.models.backbones import RANDOM_PREFIX
