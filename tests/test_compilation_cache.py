"""The programs' persistent compilation cache: on by default, beside the workdir, read back by a
resumed run, and in a bucket too, as JAX's own monitoring events count it."""
import re
import textwrap

from artstyle_jax.runtime import compilation_cache
from helpers import REPO
from helpers import run_python
from helpers import tiny_train_flags

# The training program, counting JAX's compilation-cache events ('/jax/compilation_cache/...')
# and printing the counts as it exits.
COUNTING_TRAIN = textwrap.dedent("""
    import atexit, collections, runpy, sys
    import jax
    events = collections.Counter()
    jax.monitoring.register_event_listener(lambda event, **kwargs: events.update([event]))
    atexit.register(lambda: print("cache hits", events["/jax/compilation_cache/cache_hits"],
                                  "misses", events["/jax/compilation_cache/cache_misses"], file=sys.stderr))
    sys.argv = ["train"] + sys.argv[1:]
    runpy.run_module("artstyle_jax.train", run_name="__main__", alter_sys=True)
""")
# The environment as a user's: no cache directory or thresholds of the tests' own (conftest.py).
USERS_ENV = {"JAX_COMPILATION_CACHE_DIR": None, "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": None,
             "JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES": None}


def counted_train(cwd, *flags) -> tuple[int, int]:
  """Runs COUNTING_TRAIN with `flags` from `cwd`; returns its (cache hits, cache misses)."""
  result = run_python("-c", COUNTING_TRAIN, *flags, cwd=cwd, env=USERS_ENV, timeout=400)
  assert result.returncode == 0, result.stderr[-3000:]
  hits, misses = re.search(r"^cache hits (\d+) misses (\d+)$", result.stderr, re.M).groups()
  return int(hits), int(misses)


def test_the_cache_directory_is_beside_the_workdir():
  """The default directory is `compilation_cache` in the workdir's parent, local or in a bucket."""
  assert compilation_cache.beside("/runs/a") == "/runs/compilation_cache"
  assert compilation_cache.beside("/runs/a/") == "/runs/compilation_cache"
  assert compilation_cache.beside("gs://bucket/runs/a") == "gs://bucket/runs/compilation_cache"
  assert compilation_cache.beside("gs://bucket") == "gs://bucket/compilation_cache"


def test_a_resumed_run_reads_every_compiled_program_back_from_the_default_cache(tmp_path, synthetic_data):
  """A first run of train (no JAX_COMPILATION_CACHE_DIR) compiles its programs into
  runs/compilation_cache beside its workdir runs/a, every program kept however small (cache
  misses, no hits); the same command resumed reads every one of them back (hits, no miss)."""
  flags = tiny_train_flags("runs/a", synthetic_data, "--config.async_checkpointing=False",
                           config=REPO / "configs" / "tiny.py")
  hits, misses = counted_train(tmp_path, *flags, "--config.num_steps=1")
  assert hits == 0 and misses > 0
  entries = list((tmp_path / "runs" / "compilation_cache").iterdir())
  assert len(entries) >= misses

  assert counted_train(tmp_path, *flags, "--config.num_steps=2") == (misses, 0)


# A program compiled with the cache at sys.argv[1], printing JAX's hit and miss counts.
COUNTING_JIT = textwrap.dedent("""
    import collections, sys
    import jax
    import jax.numpy as jnp
    from artstyle_jax.runtime import compilation_cache
    events = collections.Counter()
    jax.monitoring.register_event_listener(lambda event, **kwargs: events.update([event]))
    compilation_cache.start(sys.argv[1])
    jax.block_until_ready(jax.jit(lambda x: x * 2 + 1)(jnp.ones(3)))
    print("cache hits", events["/jax/compilation_cache/cache_hits"],
          "misses", events["/jax/compilation_cache/cache_misses"])
""")


def test_a_cache_in_a_bucket_is_written_then_read_back(gcs):
  """With the cache at gs://BUCKET/compilation_cache (the GCS emulator), a first process only
  misses and writes its programs there as objects; a second reads every one back."""
  directory = f"{gcs.new_bucket('compiled')}/compilation_cache"
  env = {**gcs.env, **USERS_ENV}
  counts = []
  for _ in range(2):
    result = run_python("-c", COUNTING_JIT, directory, env=env, timeout=120)
    assert result.returncode == 0, result.stderr[-3000:]
    counts.append(tuple(map(int, re.search(r"^cache hits (\d+) misses (\d+)$", result.stdout, re.M).groups())))
  (_, misses), _ = counts
  assert misses > 0 and counts == [(0, misses), (misses, 0)]
  assert len(list((gcs.root / "compiled" / "compilation_cache").iterdir())) == misses
