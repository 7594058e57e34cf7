"""Every published default of Luo et al. (2025): ConvNeXt-Base, 352 px, batch 16, 25 epochs.

See artstyle_jax/METHOD.md. Keys are stable and overridable as `--config.key=value`.
"""
import ml_collections
from ml_collections import config_dict

from artstyle_jax.data import view_specs

# The published code normalises the student and style views with these (CIFAR-100's) constants.
STUDENT_STYLE_MEAN = (0.5071, 0.4867, 0.4408)
STUDENT_STYLE_STD = (0.2675, 0.2565, 0.2761)


def _normalisation(mean, std) -> ml_collections.ConfigDict:
  return ml_collections.ConfigDict({"mean": mean, "std": std})


def get_config() -> ml_collections.ConfigDict:
  config = ml_collections.ConfigDict()
  config.seed = 0

  config.model = ml_collections.ConfigDict()
  config.model.name = "convnext_base"
  config.model.dtype = "float32"  # compute dtype: 'float32' | 'bfloat16' (parameters stay float32)
  config.model.remat = False  # recompute each ConvNeXt block in the backward pass
  # What a recomputed block keeps (convnext.REMAT_POLICIES): 'nothing' (the whole block is
  # recomputed) or 'matmuls' (fc1's and fc2's outputs kept, the elementwise ops recomputed).
  config.model.remat_policy = "nothing"
  config.model.drop_path_rate = 0.0
  # Forms of the network's parts (models/forms.py); 'auto' follows the platform of the devices the
  # program compiles for. 7x7 depthwise convolution: 'conv' (grouped conv) or 'shift'; the blocks'
  # pointwise gradient: 'autodiff' or 'manual' (float32); stem and downsampling: 'conv' or 'matmul'.
  config.model.depthwise = "auto"
  config.model.mlp_grad = "auto"
  config.model.patchify = "auto"
  config.model.proj_hidden_dim = 2048
  config.model.proj_dim = 128
  # Backbone initialisation: a pretrained source for convnext_weights.load_pretrained, a path, or 'random'.
  config.init = "timm/convnext_base.fb_in22k_ft_in1k"

  config.image_size = 352
  config.batch_size = 16  # global, over all devices and hosts
  config.num_epochs = 25

  # Teachers. With equal momenta and share_teachers one parameter copy serves both teachers
  # (they stay bit-identical); otherwise each keeps its own. style_teacher=False drops the
  # style teacher, its view and its loss terms (ReSSL).
  config.momentum_weak = 0.99
  config.momentum_style = 0.99
  config.style_teacher = True
  config.share_teachers = True
  config.queue_size = 4096  # K, a multiple of batch_size

  config.loss = ml_collections.ConfigDict()
  config.loss.relation = "ressl"  # 'ressl' (relation alignment) | 'info_nce' (MoCo)
  config.loss.student_temp = 0.1
  config.loss.teacher_temp = 0.04
  config.loss.info_nce_temp = 0.2
  # L = sum of weight * term; the paper's 0.5 * (sum of the four terms).
  config.loss_weights = ml_collections.ConfigDict()
  config.loss_weights.rel_weak = 0.5
  config.loss_weights.rel_style = 0.5
  config.loss_weights.gram_weak = 0.5
  config.loss_weights.gram_style = 0.5

  config.optim = ml_collections.ConfigDict()
  config.optim.base_lr = 0.001
  # lr = base_lr * batch_size / reference_batch_size; at the paper's batch 16 it changes nothing.
  config.optim.linear_scaling = True
  config.optim.reference_batch_size = 16
  config.optim.schedule = "paper"  # 'paper' (with the jump to 0.1 * base after warm-up) | 'cosine'
  config.optim.warmup_epochs = 5
  config.optim.momentum = 0.9
  config.optim.weight_decay = 5e-4

  # Devices: the batch is split over all of them; parameters and optimiser state are sharded
  # over `fsdp` of them (the largest dimension that divides, for arrays of at least
  # fsdp_min_size elements), replicated when fsdp is 1.
  config.mesh = ml_collections.ConfigDict()
  config.mesh.fsdp = 1
  config.mesh.fsdp_min_size = 2**16

  config.dataset = ml_collections.ConfigDict()
  config.dataset.name = "wikiart"
  config.dataset.data_dir = config_dict.placeholder(str)
  config.dataset.train_split = "train"
  config.dataset.eval_split = "test"  # held-out split of the kNN monitor
  config.dataset.num_workers = 0  # Grain worker processes per host (0: threads in the trainer)
  config.dataset.num_threads = 4

  # The training program (train.py). num_steps 0 trains num_epochs epochs.
  config.num_steps = 0
  config.log_every_steps = 50
  config.checkpoint_every_steps = 1000
  config.keep_checkpoints = 3
  config.async_checkpointing = True
  # JAX's persistent compilation cache of train, finetune and eval: a directory (local or gs://),
  # 'off', or '' for WORKDIR/../compilation_cache, shared by the runs beside the workdir.
  config.compilation_cache_dir = ""
  config.knn_every_steps = 0  # 0: no kNN monitor during training
  config.knn_k = 20
  config.health = ml_collections.ConfigDict()
  # One warning when an effective rank of the features falls under this fraction of its first value.
  config.health.rank_warning_fraction = 0.25

  config.views = ml_collections.ConfigDict()
  config.views.student = _normalisation(STUDENT_STYLE_MEAN, STUDENT_STYLE_STD)
  config.views.weak = _normalisation(view_specs.IMAGENET_MEAN, view_specs.IMAGENET_STD)
  config.views.style = _normalisation(STUDENT_STYLE_MEAN, STUDENT_STYLE_STD)
  config.photometric_on_device = False
  return config
