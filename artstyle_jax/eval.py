"""Evaluation of a trained student: weighted kNN and a linear probe on its pooled features.

  python -m artstyle_jax.eval --workdir=DIR [--step=N] [--mode=fast|paper|baseline] [--augmented_copies=N]
      [--random_init] [--embedding] [--label_fractions=F,... --shots=S,... --label_seeds=N]
      [--config.key=value ...]
  python -m artstyle_jax.eval --weights=SOURCE --workdir=OUT --config.dataset.name=NAME
      --config.dataset.data_dir=DIR [--mode=...] [--embedding] [--config.key=value ...]

The student's backbone is restored from the workdir's checkpoint (the latest, or --step) and
frozen, then evaluated as `runs.evaluation` describes: the kNN and the --mode linear probe
(`evaluators.probes`: 'fast', 'paper' or 'baseline'; --probe_learning_rate, --probe_momentum,
--probe_weight_decay, --probe_init_stddev, --paper_epochs and --paper_batch_size set any of the
paper and baseline probes' values).

External backbones: with --weights=SOURCE (`models.load_backbone`: a hub id such as
timm/convnext_base.fb_in22k_ft_in1k, a ConvNeXt .safetensors file, an authors' .pth, a ResNet-50
checkpoint of MoCo, SwAV, MMSelfSup, torchvision, ..., a directory of a DINOv2 or CLIP model's
transformers files, or random:MODEL) no training run is needed: the config is configs/paper.py
with the --config overrides (dataset.name and dataset.data_dir at least). A ResNet is normalised
with the ImageNet constants unless views.student is overridden; a DINOv2 or CLIP ViT with its
own constants at its own image size (`models.vit_weights`) unless views.student or image_size is
overridden (the size then rounded to a multiple of the patch); a ConvNeXt with the paper's
student constants. Results go to OUT/eval/, with the config used.

Few labels: --label_fractions (e.g. 0.01,0.1,1.0: that share of every class's training images,
at least one) and --shots (e.g. 1,5,10 images per class), each drawn --label_seeds times (default
3), score the kNN and the fast linear probe fitted on those labels only, on the same features
(`evaluators.label_efficiency`): label_efficiency.json and a table.

`--config.key=value` overrides the workdir's saved config.json, e.g. `dataset.data_dir` when the
dataset moved, or `dataset.eval_split=validation`; keys that fix the model's shapes cannot change.
`--random_init` evaluates the untrained backbone of `config.seed` (the student's initialisation
when config.init is 'random') instead of a checkpoint, as a baseline.

Outputs (process 0), in DIR/eval/ (DIR/eval/random_init/ with --random_init), each tagged with
the checkpoint step inside:
  knn.json, knn_confusion.png                 `metrics.classification_results` plus the settings,
                                              the test features' retrieval of training images
                                              (precision@k, mAP@k: `evaluators.retrieval`)
  linear_<mode>.json, linear_<mode>_confusion.png
each JSON and table with the test features' effective rank and first-PC share (`evaluators.health`)
  linear_head.npz                             the probe for predict (`runs.head_file`)
  label_efficiency.json                       with --label_fractions or --shots: mean and std per setting
  embedding.png                               with --embedding: t-SNE map of the test features
and the tables on stdout. A refused evaluation (no checkpoint, no such step, a missing dataset)
exits 1 with one error line before anything is written.
"""
import sys

from absl import app
from absl import flags
from absl import logging

from artstyle_jax import cli
from artstyle_jax.evaluators import probes
from artstyle_jax.method import config_lib
from artstyle_jax.pictures import embedding_map
from artstyle_jax.runs import evaluation
from artstyle_jax.runs import saved_run
from artstyle_jax.storage import checkpoints

WEIGHTS_CONFIG = config_lib.packaged_config("paper.py")

_WORKDIR = cli.DEFINE_path("workdir", None, "Workdir of a training run (config.json and checkpoints/); with "
                             "--weights, the directory for the results.")
_WEIGHTS = flags.DEFINE_string("weights", None, "Evaluate this backbone instead of a training run's "
                               "(models.load_backbone: a hub id, a .safetensors / .pth file, a DINOv2 or CLIP "
                               "transformers directory, random:MODEL); the "
                               "config is configs/paper.py with the --config overrides.")
_STEP = flags.DEFINE_integer("step", None, "Checkpoint step to evaluate; default the latest.")
_MODE = flags.DEFINE_enum("mode", "fast", probes.MODES, "Linear probe: 'fast' (features once, fitted on device), "
                          "'paper' (artstyle_jax/METHOD.md's protocol) or 'baseline' (the paper's baselines' "
                          "protocol).")
_AUGMENTED_COPIES = flags.DEFINE_integer("augmented_copies", 0, "Fast mode: augmented passes over the training "
                                         "split.", lower_bound=0)
_RANDOM_INIT = flags.DEFINE_bool("random_init", False, "Evaluate the random initialisation of config.seed instead "
                                 "of a checkpoint (results in DIR/eval/random_init/).")
cli.define_probe_flags()
cli.define_label_flags()
_EMBEDDING = flags.DEFINE_bool("embedding", False, f"Also draw the test split's features as a t-SNE map, "
                               f"DIR/eval/{embedding_map.EMBEDDING_FILE}.")
_BATCH_SIZE = flags.DEFINE_integer("batch_size", None, "Images per feature-extraction step, a multiple of the "
                                   "device count; default config.batch_size rounded up to one.", lower_bound=1)


def parse_flags(argv: list[str]) -> list[str]:
  """absl's flags, then `--config.key=value` overrides of the saved config of --workdir (of
  configs/paper.py with --weights): that config is only known once --workdir is, hence two passes."""
  try:
    remaining = flags.FLAGS(argv, known_only=True)
  except flags.Error as e:
    cli.fail(e)
  if not _WORKDIR.value:
    cli.fail("--workdir is required")
  if _WEIGHTS.value:
    if _RANDOM_INIT.value or _STEP.value is not None:
      cli.fail("--weights evaluates one backbone: --random_init and --step belong to a training run's workdir "
               "(a random backbone is --weights=random:MODEL)")
    config, where = config_lib.base_config(str(WEIGHTS_CONFIG), "paper"), str(WEIGHTS_CONFIG)
  else:
    try:
      config = saved_run.saved_config(_WORKDIR.value)
    except checkpoints.WorkdirError as e:
      cli.fail(e)
    where = f"{_WORKDIR.value}/{checkpoints.CONFIG_FILE}"
  cli.define_config(remaining, config, where, "The workdir's saved config; override keys as --config.key=value.")
  return cli.parse_flags(remaining)


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  cli.start_compilation_cache(flags.FLAGS.config, _WORKDIR.value)
  options = {"mode": _MODE.value, "augmented_copies": _AUGMENTED_COPIES.value, "batch_size": _BATCH_SIZE.value,
             "embedding": _EMBEDDING.value, "label_plan": cli.label_plan(),
             **cli.probe_flag_options()}
  if _WEIGHTS.value:
    out = saved_run.eval_dir(_WORKDIR.value)
    evaluation.evaluate_weights(_WEIGHTS.value, flags.FLAGS.config, out, overridden=cli.override_keys(sys.argv[1:]),
                              **options)
  else:
    out = saved_run.eval_dir(_WORKDIR.value, _RANDOM_INIT.value)
    evaluation.evaluate_workdir(_WORKDIR.value, flags.FLAGS.config, step=_STEP.value, random_init=_RANDOM_INIT.value,
                              **options)
  logging.info("results written to %s", out)


if __name__ == "__main__":
  cli.run(main, flags_parser=parse_flags, distributed=True)
