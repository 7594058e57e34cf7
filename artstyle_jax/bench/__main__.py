"""Dispatches `python -m artstyle_jax.bench NAME ...` to `artstyle_jax.bench.NAME.main(argv)`.

Each benchmark prints human-readable lines and, last, one JSON line with its figures.
"""
import importlib
import sys

from absl import flags

from artstyle_jax.runtime import host_memory

BENCHMARKS = ("backbone", "step", "memory", "cost", "data", "profile", "suite")


def main(argv: list[str]) -> int:
  host_memory.keep_freed_memory()  # Before JAX starts its backend.
  flags.FLAGS.mark_as_parsed()  # Each benchmark parses its own flags; Grain's workers read the global ones.
  if len(argv) < 2 or argv[1] not in BENCHMARKS:
    print(f"usage: python -m artstyle_jax.bench {{{','.join(BENCHMARKS)}}} [flags...]", file=sys.stderr)
    return 2
  module = importlib.import_module(f"artstyle_jax.bench.{argv[1]}")
  return module.main([f"artstyle_jax.bench {argv[1]}"] + argv[2:]) or 0


if __name__ == "__main__":
  sys.exit(main(sys.argv))
