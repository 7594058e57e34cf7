"""The demo: self-supervised pretraining on synthetic art styles, against the backbone it starts from.

  python -m artstyle_jax.demo --workdir=DIR [--config=configs/demo.py] [--config.key=value ...]

On the CPU of a laptop, in minutes (`synthetic_demo.run`): renders a procedural art-style dataset
into DIR/data, pretrains the student from config.init in DIR/pretrain (configs/demo.py: the
ImageNet EfficientNet-Lite0, the paper's regime) and, from a pretrained init, from a random one
in DIR/pretrain_random (workdirs as train.py writes them: run the command again after an
interruption and it resumes; a finished run is not repeated), evaluates each backbone as eval.py
would (the random initialisation, the init, and what pretraining made of each), prints them side
by side with the margin over the init, writes DIR/demo_results.json and leaves the pictures
(training curves, t-SNE maps, a retrieval sheet) and the exported backbone, whose paths it
prints last. configs/demo_scratch.py is the demo from a random ConvNeXt-atto on texture styles.

SIGTERM or SIGINT during pretraining saves a checkpoint and exits 0, as train.py does. Bad input
(an unknown config key, a config the demo cannot run) exits 1 with one error line.
"""
from absl import app
from absl import flags

from artstyle_jax import cli
from artstyle_jax.method import config_lib
from artstyle_jax.runs import synthetic_demo

DEFAULT_CONFIG = config_lib.packaged_config("demo.py")

cli.define_config_file("Demo config, default configs/demo.py; override keys as --config.key=value.",
                       default=str(DEFAULT_CONFIG))
_WORKDIR = cli.DEFINE_path("workdir", None, "Directory of the demo: data/, pretrain/, pretrain_random/ and "
                           "demo_results.json.")


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  if not _WORKDIR.value:
    cli.fail("--workdir is required")
  results = synthetic_demo.run(flags.FLAGS.config, _WORKDIR.value)
  if results is None:
    print(f"pretraining stopped before its last step; run the same command again to resume it from "
          f"{_WORKDIR.value}/{synthetic_demo.PRETRAIN_DIR}", flush=True)
    return
  print("\n" + synthetic_demo.closing_text(results, _WORKDIR.value), flush=True)


if __name__ == "__main__":
  cli.run(main)
