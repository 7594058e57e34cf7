"""A workdir's backbone for timm, transformers, torchvision or this package (`exporting.export`).

  python -m artstyle_jax.export --workdir=W --format=timm|transformers|torchvision|safetensors --out=DIR
      [--step=N] [--which=student|weak_teacher|style_teacher]

W is a pretraining workdir (its checkpoint's student by default, the network the paper evaluates;
or a teacher) or a fine-tuning workdir (its backbone); the newest checkpoint that reads back
unless --step. DIR gets model.safetensors, the files its library reads beside it and README.md,
a model card (architecture, parameters, input size and normalisation, the training, the
evaluation results found in W/eval/, how to load it). W and DIR may be gs:// paths. A refused
export (no checkpoint, an unknown format, a format that cannot hold the backbone such as
torchvision for a ConvNeXt, a DIR that is not empty) exits 1 with one error line and writes nothing.
"""
from absl import app
from absl import flags

from artstyle_jax import cli
from artstyle_jax.runs import exporting
from artstyle_jax.runs import saved_run

_WORKDIR = cli.DEFINE_path("workdir", None, "A pretraining or fine-tuning workdir (config.json and checkpoints/).")
_FORMAT = flags.DEFINE_string("format", None, f"One of {', '.join(exporting.FORMATS)}.")
_OUT = cli.DEFINE_path("out", None, "The directory to write: new or empty.")
_STEP = flags.DEFINE_integer("step", None, "Checkpoint step to export; default the newest that reads back.")
_WHICH = flags.DEFINE_string("which", "student", f"The network of the state: {', '.join(saved_run.NETWORKS)}.")
flags.mark_flags_as_required(["workdir", "format", "out"])


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  backbone = exporting.export(_WORKDIR.value, _FORMAT.value, _OUT.value, network=_WHICH.value, step=_STEP.value)
  print(f"wrote the {backbone.network} of step {backbone.step} ({backbone.model_name}) as {_FORMAT.value} to "
        f"{_OUT.value}", flush=True)


if __name__ == "__main__":
  cli.run(main)
