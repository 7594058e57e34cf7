"""Training curves of one or more runs in one PNG (`pictures.curves`).

  python -m artstyle_jax.plot --workdir=DIR [--compare=DIR2 ...] [--out=PNG]

Draws the loss terms, the total, the learning rate, the gradient norm and the kNN monitor of
DIR's metrics files (metrics-NNN.jsonl, one per run of train on it) against step, and with
--compare those of other workdirs overlaid (an ablation beside its baseline). Training draws
DIR/curves.png itself at every checkpoint; this program draws the same from any workdir,
finished, running or copied from elsewhere. The default output is
DIR/curves.png alone, DIR/curves_compare.png with --compare. A workdir without config.json or
metrics files: one error line, exit 1, nothing written.
"""
from absl import app
from etils import epath

from artstyle_jax import cli
from artstyle_jax.pictures import curves

COMPARE_FILE = "curves_compare.png"

_WORKDIR = cli.DEFINE_path("workdir", None, "Workdir of a training run (config.json, metrics-NNN.jsonl).",
                             required=True)
_COMPARE = cli.DEFINE_multi_path("compare", [], "Workdirs of other runs to overlay; repeat the flag for each.")
_OUT = cli.DEFINE_path("out", None, "The PNG to write; default DIR/curves.png, or DIR/curves_compare.png "
                         "with --compare.")


def output_path(workdir: str, compare: list[str], out: str | None) -> str:
  """Where the picture goes: `out`, else the default in `workdir` (see the module docstring)."""
  if out:
    return out
  return str(epath.Path(workdir) / (COMPARE_FILE if compare else curves.CURVES_FILE))


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  out = output_path(_WORKDIR.value, _COMPARE.value, _OUT.value)
  curves.write_curves([_WORKDIR.value, *_COMPARE.value], out)
  print(out)


if __name__ == "__main__":
  cli.run(main)
