"""Writes the procedural art-style dataset as a class-per-folder tree.

  python -m artstyle_jax.data.synthetic --out=DIR --per_class=N --size=S [--seed=K]
      [--test_per_class=M] [--val_per_class=V] [--kind=textures|scenes]

Prints the number of images written per split.
"""
import time

from absl import app
from absl import flags

from artstyle_jax.data import synthetic
from artstyle_jax.storage import paths

_OUT = flags.DEFINE_string("out", None, "Output directory.", required=True)
_PER_CLASS = flags.DEFINE_integer("per_class", None, "Training images per style.", required=True, lower_bound=1)
_SIZE = flags.DEFINE_integer("size", None, "Image side in pixels.", required=True, lower_bound=16)
_SEED = flags.DEFINE_integer("seed", 0, "Seed of every image's generator.")
_TEST_PER_CLASS = flags.DEFINE_integer("test_per_class", None, "Test images per style (default: per_class // 4, "
                                       "at least 1).", lower_bound=0)
_VAL_PER_CLASS = flags.DEFINE_integer("val_per_class", 0, "Validation images per style (0: no valid/ split).",
                                      lower_bound=0)

_KIND = flags.DEFINE_enum("kind", "textures", synthetic.KINDS, "textures: the demo's ten styles; scenes: the same "
                          "scenes painted in ten overlapping handlings (the headroom set).")


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  out = paths.resolve(_OUT.value)
  start = time.perf_counter()
  written = synthetic.write_tree(out, per_class=_PER_CLASS.value, size=_SIZE.value, seed=_SEED.value,
                                 test_per_class=_TEST_PER_CLASS.value, val_per_class=_VAL_PER_CLASS.value,
                                 kind=_KIND.value)
  total = sum(written.values())
  print(f"wrote {written} ({total} images, {len(synthetic.styles_of(_KIND.value))} styles, {_SIZE.value} px) to {out} "
        f"in {time.perf_counter() - start:.2f} s")


if __name__ == "__main__":
  app.run(main)
