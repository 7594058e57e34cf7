"""linear_head.npz: the linear probe an evaluation leaves for prediction, written and read here.

Its arrays (`HEAD_KEYS`): the head (kernel (C, K) float32, bias (K,) float32) for raw pooled
features, and what prediction needs to make those features: the backbone's checkpoint step (-1
for a random initialisation), the probe's mode, the eval transform (image_size, crop_fraction,
mean, std) and the class names in label order; for an external backbone, its `--weights` source
and the seed of a random one ('' and config.seed for a workdir's).
"""
import os
from typing import NamedTuple, Optional

import ml_collections
import numpy as np

from artstyle_jax.data import geometry
from artstyle_jax.data import view_specs
from artstyle_jax.data import views
from artstyle_jax.models import heads
from artstyle_jax.runs import saved_run
from artstyle_jax.storage import checkpoints

HEAD_FILE = "linear_head.npz"
HEAD_KEYS = ("kernel", "bias", "class_names", "model_name", "step", "mode", "image_size", "crop_fraction",
             "mean", "std", "weights", "seed")


class Head(NamedTuple):
  """The probe an evaluation saved, and how its input features are made."""
  params: heads.LinearHead  # {'kernel': (C, K), 'bias': (K,)} float32
  class_names: list[str]
  model_name: str
  step: int  # checkpoint step of the backbone; -1: the random initialisation of config.seed
  transform: views.EvalView
  weights: str  # the --weights source of an external backbone (`models.load_backbone`); '' for a workdir's
  seed: int  # the seed of a random initialisation


def head_arrays(head: heads.LinearHead, config: ml_collections.ConfigDict, class_names: list[str], mode: str,
                step: Optional[int], model_name: Optional[str] = None,
                weights: Optional[str] = None) -> dict[str, np.ndarray]:
  """The contents of linear_head.npz (`HEAD_KEYS`); model_name defaults to config.model.name."""
  mean, std = view_specs.student_normalisation(config)
  return {
      "kernel": np.asarray(head["kernel"], np.float32),
      "bias": np.asarray(head["bias"], np.float32),
      "class_names": np.asarray(class_names, np.str_),
      "model_name": np.asarray(model_name or config.model.name),
      "step": np.asarray(-1 if step is None else step, np.int64),
      "mode": np.asarray(mode),
      "image_size": np.asarray(config.image_size, np.int64),
      "crop_fraction": np.asarray(geometry.EVAL_CROP_FRACTION, np.float64),
      "mean": np.asarray(mean, np.float64),
      "std": np.asarray(std, np.float64),
      "weights": np.asarray(weights or ""),
      "seed": np.asarray(config.seed, np.int64),
  }


def write(directory: str | os.PathLike, arrays: dict[str, np.ndarray]) -> None:
  """Writes `head_arrays`' arrays as directory/linear_head.npz (a local directory)."""
  np.savez(os.path.join(directory, HEAD_FILE), **arrays)


def load(workdir: str) -> Head:
  """The linear head the evaluation of `workdir` left (`saved_run.eval_dir`).

  Raises:
    WorkdirError: eval has not been run on the workdir, or an older eval wrote the file.
  """
  path = saved_run.eval_dir(workdir) / HEAD_FILE
  if not path.exists():
    raise checkpoints.WorkdirError(f"{workdir} has no linear head ({path}): run "
                                   f"`python -m artstyle_jax.eval --workdir={workdir}` first")
  with path.open("rb") as f, np.load(f, allow_pickle=False) as saved:
    missing = [key for key in HEAD_KEYS if key not in saved]
    if missing:
      raise checkpoints.WorkdirError(f"{path} lacks {', '.join(missing)} (an older eval wrote it): run "
                                     f"`python -m artstyle_jax.eval --workdir={workdir}` again")
    arrays = {key: saved[key] for key in HEAD_KEYS}
  transform = views.EvalView(int(arrays["image_size"]), tuple(arrays["mean"]), tuple(arrays["std"]),
                             crop_fraction=float(arrays["crop_fraction"]))
  return Head(params={"kernel": arrays["kernel"], "bias": arrays["bias"]},
              class_names=[str(name) for name in arrays["class_names"]], model_name=str(arrays["model_name"]),
              step=int(arrays["step"]), transform=transform, weights=str(arrays["weights"]),
              seed=int(arrays["seed"]))
