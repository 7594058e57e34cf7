"""Reading and checking training configs (configs/*.py, shipped as artstyle_jax/configs: see
`packaged_config`) before anything is built or compiled.

Programs read the file once (`cli.define_config_file`) and the runs they call `validate` the
config before they build anything; `load(path, overrides)` does both for code without absl flags
(tests, notebooks).
`validate` also makes the config's paths absolute (`resolve_paths`), so that a config saved in
a workdir means the same to a program started from any directory.
"""
from collections.abc import Mapping, Sequence
import importlib.resources
import importlib.util
import os
import pathlib
from typing import Any

from absl import flags
import jax.numpy as jnp
import ml_collections
from ml_collections import config_flags

from artstyle_jax.method import optim
from artstyle_jax.models import convnext
from artstyle_jax.models import efficientnet_lite
from artstyle_jax.models import forms
from artstyle_jax.storage import paths

DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}
RELATION_LOSSES = ("ressl", "info_nce")
LOSS_TERMS = ("rel_weak", "rel_style", "gram_weak", "gram_style")


class ConfigError(ValueError):
  """A config value that training cannot use."""


def _require(condition: bool, message: str) -> None:
  if not condition:
    raise ConfigError(message)


def resolve_paths(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """Makes `config`'s paths absolute against the current directory, in place; returns it.

  dataset.data_dir always (gs:// stays), compilation_cache_dir when it names a directory, init
  when it names a local file or directory (not a Hugging Face hub id such as
  'timm/convnext_base.fb_in22k_ft_in1k', nor 'random').
  """
  config.dataset.data_dir = paths.resolve(config.dataset.data_dir)
  if config.get("compilation_cache_dir") not in (None, "", "off"):
    config.compilation_cache_dir = paths.resolve(config.compilation_cache_dir)
  if config.init != "random" and os.path.exists(os.path.expanduser(config.init)):
    config.init = paths.resolve(config.init)
  return config


def validate(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """Checks a training config and makes its paths absolute (`resolve_paths`); returns it, or
  raises ConfigError saying what is wrong."""
  resolve_paths(config)
  _require(config.batch_size > 0, f"batch_size must be positive, got {config.batch_size}")
  _require(config.queue_size > 0 and config.queue_size % config.batch_size == 0,
           f"queue_size (K={config.queue_size}) must be a positive multiple of the global batch_size "
           f"({config.batch_size}): the queue ring advances by one batch of keys at a time. "
           f"Try --config.queue_size={max(1, round(config.queue_size / config.batch_size)) * config.batch_size}.")
  _require(config.image_size > 0 and config.image_size % 32 == 0,
           f"image_size must be a positive multiple of 32 (the ConvNeXt stride), got {config.image_size}")
  _require(config.num_epochs > 0, f"num_epochs must be positive, got {config.num_epochs}")
  _require(0 <= config.optim.warmup_epochs < config.num_epochs,
           f"optim.warmup_epochs ({config.optim.warmup_epochs}) must be in [0, num_epochs={config.num_epochs})")
  _require(config.optim.schedule in optim.SCHEDULES,
           f"optim.schedule must be one of {optim.SCHEDULES}, got {config.optim.schedule!r}")
  model_names = tuple(convnext.SIZES) + tuple(efficientnet_lite.SIZES)
  _require(config.model.name in model_names, f"model.name must be one of {model_names}, got {config.model.name!r}")
  _require(config.model.name in convnext.SIZES or not config.model.remat,
           f"model.remat is for a ConvNeXt; {config.model.name} runs without it")
  _require(config.model.remat_policy in convnext.REMAT_POLICIES,
           f"model.remat_policy must be one of {tuple(convnext.REMAT_POLICIES)}, got {config.model.remat_policy!r}")
  _require(config.model.dtype in DTYPES, f"model.dtype must be one of {tuple(DTYPES)}, got {config.model.dtype!r}")
  requested = requested_forms(config)
  for part, choices in (("depthwise", forms.DEPTHWISE_FORMS), ("mlp_grad", forms.MLP_GRAD_FORMS),
                        ("patchify", forms.PATCHIFY_FORMS)):
    _require(requested[part] in (forms.AUTO,) + choices,
             f"model.{part} must be one of {(forms.AUTO,) + choices}, got {requested[part]!r}")
  _require(requested["mlp_grad"] != "manual" or config.model.dtype == "float32",
           f"model.mlp_grad='manual' computes in float32; model.dtype is {config.model.dtype}")
  _require(config.loss.relation in RELATION_LOSSES,
           f"loss.relation must be one of {RELATION_LOSSES}, got {config.loss.relation!r}")
  for name in ("momentum_weak", "momentum_style"):
    _require(0.0 <= config[name] <= 1.0, f"{name} must be in [0, 1], got {config[name]}")
  weights = {term: config.loss_weights[term] for term in LOSS_TERMS}
  _require(all(w >= 0 for w in weights.values()), f"loss_weights must be non-negative, got {weights}")
  _require(any(w > 0 for w in weights.values()), "at least one of loss_weights must be positive")
  if not config.style_teacher:
    _require(weights["rel_style"] == 0 and weights["gram_style"] == 0,
             "style_teacher=False needs loss_weights.rel_style = loss_weights.gram_style = 0")
  for view in ("student", "weak", "style"):
    norm = config.views[view]
    _require(len(norm.mean) == 3 and len(norm.std) == 3 and all(s > 0 for s in norm.std),
             f"views.{view} needs 3 means and 3 positive stds, got mean={norm.mean} std={norm.std}")
  _require(config.mesh.fsdp >= 1, f"mesh.fsdp must be at least 1, got {config.mesh.fsdp}")
  return config


def requested_forms(config: ml_collections.ConfigDict) -> dict[str, str]:
  """{'depthwise', 'mlp_grad', 'patchify'} -> the form config.model asks for, 'auto' for a key a
  config saved before it existed lacks (`forms.resolve` takes them)."""
  return {part: config.model.get(part, forms.AUTO) for part in ("depthwise", "mlp_grad", "patchify")}


def compute_dtype(config: ml_collections.ConfigDict) -> jnp.dtype:
  """The activation dtype named by `config.model.dtype`."""
  return DTYPES[config.model.dtype]


def packaged_config(name: str) -> pathlib.Path:
  """The config file `name` ('demo.py') shipped in the package, the programs' defaults.

  `artstyle_jax/configs` links to the repository's top-level `configs/` in a clone (so an editable
  install and a run from the clone read the files users edit) and holds copies in a wheel or a
  `pip install .`; either way it is the package's own directory, found wherever it is installed.
  """
  return pathlib.Path(importlib.resources.files("artstyle_jax") / "configs" / name)


def base_config(config_file: str, name: str) -> ml_collections.ConfigDict:
  """`get_config()` of `<name>.py` in the directory of `config_file`, for configs derived from
  another (`base_config(__file__, "paper")`); works whatever the working directory. Without such a
  file there (a user's own config outside the clone), the packaged `<name>.py`."""
  path = pathlib.Path(config_file).with_name(f"{name}.py")
  if not path.is_file():
    path = packaged_config(path.name)
  spec = importlib.util.spec_from_file_location(f"artstyle_jax_configs_{name}", path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config()


def has_key(config: ml_collections.ConfigDict, dotted: str) -> bool:
  """Whether `config` has the (possibly nested, 'a.b.c') key that `--config.a.b.c=v` would set."""
  for part in dotted.split("."):
    if not isinstance(config, ml_collections.ConfigDict) or part not in config:
      return False
    config = config[part]
  return True


def flatten(tree: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
  """{'a.b.c': leaf} of a nested mapping (a config's `to_dict()`), keys as `--config.a.b.c` names them."""
  flat = {}
  for key, value in tree.items():
    if isinstance(value, Mapping):
      flat.update(flatten(value, f"{prefix}{key}."))
    else:
      flat[prefix + key] = value
  return flat


def total_steps(config: ml_collections.ConfigDict, *, steps_per_epoch: int) -> int:
  """The step a training run ends at: config.num_steps, or when 0, num_epochs epochs of
  `steps_per_epoch` steps (`pipeline.steps_per_epoch` of the training split)."""
  return config.num_steps or config.num_epochs * steps_per_epoch


def load(path: str, overrides: Sequence[str] = ()) -> ml_collections.ConfigDict:
  """Reads a config file as `--config=path --config.k=v ...` would, then validates it.

  Args:
    path: a configs/*.py file, optionally with `:argument` for its get_config.
    overrides: strings "key=value", e.g. "batch_size=32" or "loss_weights.gram_weak=0".
  """
  argv = ["config_lib", f"--config={path}"] + [f"--config.{o}" for o in overrides]
  flag_values = flags.FlagValues()
  config_flags.DEFINE_config_file("config", flag_values=flag_values, sys_argv=argv)
  flag_values(argv)
  return validate(flag_values.config)


def override(config: ml_collections.ConfigDict, overrides: Sequence[str]) -> ml_collections.ConfigDict:
  """A copy of `config` with overrides "key=value" applied as `--config.key=value` would be.

  Raises:
    ConfigError: a key the config lacks, or a value of the wrong type.
  """
  argv = ["config_lib"] + [f"--config.{o}" for o in overrides]
  flag_values = flags.FlagValues()
  config_flags.DEFINE_config_dict("config", config.copy_and_resolve_references(), flag_values=flag_values,
                                  sys_argv=argv)
  try:
    flag_values(argv)
  except (flags.Error, AttributeError, KeyError, TypeError, ValueError) as e:
    raise ConfigError(str(e).strip().splitlines()[0]) from e
  return flag_values.config
