"""Self-supervised dual-teacher pretraining (`pretraining.train_and_evaluate`).

  python -m artstyle_jax.train --config=configs/paper.py --workdir=DIR [--config.key=value ...]

Runs on one process or many (`--coordinator_address`, `--num_processes`, `--process_id` on
CPU/GPU clusters; on Cloud TPU VMs `jax.distributed.initialize()` finds its peers by itself).
Running again on a workdir resumes from its latest checkpoint, batch for batch. SIGTERM or
SIGINT saves a checkpoint and exits 0; a non-finite loss stops the run (exit 1) and keeps the
last good checkpoint; a lost peer of a multi-process run ends the others with one error line and
exit status 75, "run the same command again" (README, "Restarts"). Compiled programs are cached
in config.compilation_cache_dir, by default beside DIR. At the checkpoints, at most once a minute, and at the last step,
DIR/curves.png is redrawn from DIR/metrics-NNN.jsonl (a file per run of train on DIR).
"""
from absl import app
from absl import flags

from artstyle_jax import cli
from artstyle_jax.runs import pretraining
from artstyle_jax.runtime import multihost
from artstyle_jax.storage import checkpoints

cli.define_config_file("Training config file (configs/*.py).", required=True, lock_config=True)
_WORKDIR = cli.DEFINE_path("workdir", None, "Directory for checkpoints, metrics and the saved config.")
flags.mark_flag_as_required("workdir")
cli.define_distributed_flags()


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  cli.start_compilation_cache(flags.FLAGS.config, _WORKDIR.value)
  multihost.on_lost_peer(lambda: checkpoints.newest_checkpoint_note(_WORKDIR.value))
  pretraining.train_and_evaluate(flags.FLAGS.config, _WORKDIR.value)


if __name__ == "__main__":
  cli.run(main, distributed=True)
