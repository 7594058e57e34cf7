"""The front door of the programs: what each does before its own work, and how it fails.

A program defines its flags when its module is imported and ends with `cli.run(main)`, which
1. parses the command line (`parse_flags`): a bad flag, an unknown config key or a value of the
   wrong type is one error line;
2. lets the host's allocator keep freed memory (`host_memory.keep_freed_memory`), before JAX
   starts its backend;
3. with `distributed=True`, joins a multi-process run (`join_distributed`);
4. sets up logging (`program_logging.setup`): the program's lines as plain lines, of the
   libraries' only what a user can act on;
5. runs `main(argv)`, where an error of `USER_ERRORS` (input the program cannot use, a failure
   whose message says what a user needs to know) is one line `error: ...` and exit status 1.

The benchmarks are commands of one program (`python -m artstyle_jax.bench NAME`); each parses
its own flags with `parse_command`.
"""
from collections.abc import Callable, Sequence
import functools
import pathlib
import sys
import types
from typing import Any, NoReturn

from absl import app
from absl import flags
import jax
import ml_collections
from ml_collections import config_flags

from artstyle_jax.storage import checkpoints
from artstyle_jax.method import config_lib
from artstyle_jax.runtime import host_memory
from artstyle_jax.runtime import program_logging
from artstyle_jax.runs import pretraining
from artstyle_jax.data import images
from artstyle_jax.models import backbones
from artstyle_jax.models import torch_weights

USER_ERRORS = (config_lib.ConfigError, checkpoints.WorkdirError, checkpoints.SaveError, FileNotFoundError,
               backbones.BackboneError, torch_weights.CheckpointError, images.BadImageError, pretraining.TrainingError)
# What absl and config_flags raise for a command line they cannot apply.
_PARSE_ERRORS = (flags.Error, AttributeError, KeyError, TypeError, ValueError)
_CONFIG_PREFIX = "--config."


def fail(message: Any) -> NoReturn:
  """Ends the program with the one line `error: <message>` on stderr and exit status 1."""
  print(f"error: {message}", file=sys.stderr)
  sys.exit(1)


def _first_line(error: BaseException) -> str:
  text = str(error).strip()
  return text.splitlines()[0] if text else type(error).__name__


def config_overrides(argv: Sequence[str]) -> list[str]:
  """The `--config.key=value` arguments among `argv`, as "key=value" (`config_lib.override`'s)."""
  return [arg[len(_CONFIG_PREFIX):] for arg in argv if arg.startswith(_CONFIG_PREFIX)]


def override_keys(argv: Sequence[str]) -> tuple[str, ...]:
  """The keys of the `--config.key=value` arguments among `argv`."""
  return tuple(override.split("=", 1)[0] for override in config_overrides(argv))


def check_override_keys(config: ml_collections.ConfigDict, argv: Sequence[str], where: str) -> None:
  """Fails on the first `--config.key=value` of `argv` whose key `config` (read from `where`) lacks."""
  for key in override_keys(argv):
    if not config_lib.has_key(config, key):
      fail(f"unknown config key {key!r}: {where} has no such key")


def _read_config_file(config_file: str) -> ml_collections.ConfigDict:
  """The config `--config=config_file` gives, without overrides; fails when it cannot be read."""
  if not pathlib.Path(config_file.split(":", 1)[0]).is_file():
    fail(f"no config file {config_file}")
  flag_values = flags.FlagValues()
  argv = ["cli", f"--config={config_file}"]
  config_flags.DEFINE_config_file("config", flag_values=flag_values, sys_argv=argv)
  try:
    flag_values(argv)
  except _PARSE_ERRORS as e:
    fail(f"config file {config_file}: {_first_line(e)}")
  return flag_values.config


def parse_flags(argv: list[str], *, default_config: str | None = None) -> list[str]:
  """absl's parsing of `argv` into `flags.FLAGS`; a flag it cannot apply is one error line.

  For a program with a config file flag (`--config`, `config_flags.DEFINE_config_file`), the
  config is read first and each `--config.key=value` checked against it, so that an unknown key
  is named as such. Such a flag is defined without a default, `default_config` standing in for
  it here: config_flags applies the overrides to a default as the flag is defined, when a
  program's module is imported, where an unknown key could only raise.
  """
  if "config" in flags.FLAGS:
    given = [arg.split("=", 1)[1] for arg in argv[1:] if arg.startswith("--config=")]
    config_file = given[-1] if given else default_config
    if config_file is not None:
      check_override_keys(_read_config_file(config_file), argv[1:], config_file)
      if not given:
        argv = [argv[0], f"--config={config_file}", *argv[1:]]
  try:
    return flags.FLAGS(argv)
  except _PARSE_ERRORS as e:
    fail(_first_line(e))


def parse_command(argv: Sequence[str], flag_values: flags.FlagValues, doc: str) -> types.SimpleNamespace:
  """Parses a command's `argv` into its own `flag_values` (a process may run several commands):
  `--help` prints `doc` and the flags; a bad flag or an argument that is no flag is one error line.

  Returns:
    The flags' values by name, a '-' in a name read as '_' (`--image-size`: `.image_size`).
  """
  if "--help" in argv[1:] or "-h" in argv[1:]:
    print(f"{doc}\n{flag_values.get_help()}")
    sys.exit(0)
  try:
    remaining = flag_values(list(argv))
  except _PARSE_ERRORS as e:
    fail(_first_line(e))
  if len(remaining) > 1:
    fail(f"unexpected arguments: {remaining[1:]}")
  return types.SimpleNamespace(**{name.replace("-", "_"): flag_values[name].value for name in flag_values})


def define_distributed_flags() -> None:
  """--coordinator_address, --num_processes and --process_id: a multi-process run outside Cloud TPU."""
  flags.DEFINE_string("coordinator_address", None, "host:port of process 0, for multi-process runs outside "
                      "Cloud TPU.")
  flags.DEFINE_integer("num_processes", None, "Number of processes of a multi-process run.")
  flags.DEFINE_integer("process_id", None, "This process's index in a multi-process run.")


def tpu_cluster() -> str | None:
  """The Cloud TPU cluster this process runs in as jax.distributed's own detection finds it:
  'gketpu' (GKE, from TPU_WORKER_HOSTNAMES or TPU_PROCESS_ADDRESSES) or 'gcetpu' (a TPU VM or
  pod slice, from its metadata server); None anywhere else. Both ask only on a Cloud TPU VM (jax
  found TPU chips and libtpu at import), so a CPU or GPU host makes no network request."""
  from jax._src.clusters import cloud_tpu_cluster  # jax's detection has no public entry point

  for cluster in (cloud_tpu_cluster.GkeTpuCluster, cloud_tpu_cluster.GceTpuCluster):
    if cluster.is_env_present():
      return cluster.name
  return None


def join_distributed() -> None:
  """Joins a multi-process run: the one the flags of `define_distributed_flags` describe (when
  the program has them and --coordinator_address is given, as on GPU clusters), else, on a Cloud
  TPU VM or pod slice, the slice's (`tpu_cluster`: every host one process, found by JAX). A
  CPU or GPU host without those flags runs alone."""
  coordinator = flags.FLAGS["coordinator_address"].value if "coordinator_address" in flags.FLAGS else None
  if coordinator is not None:
    jax.distributed.initialize(coordinator_address=coordinator, num_processes=flags.FLAGS.num_processes,
                               process_id=flags.FLAGS.process_id)
  elif (cluster := tpu_cluster()) is not None:
    jax.distributed.initialize(cluster_detection_method=cluster)


def run(main: Callable[[list[str]], None], *, flags_parser: Callable[[list[str]], list[str]] | None = None,
        default_config: str | None = None, distributed: bool = False, verbosity: int | None = None) -> None:
  """Runs the program `main(argv)` as the module docstring says.

  Args:
    flags_parser: a parser in place of `parse_flags`, for a program whose flags depend on others.
    default_config: the config file of --config when the command line gives none.
    distributed: join a multi-process run before JAX starts.
    verbosity: absl's verbosity (`program_logging.setup`), by default INFO on process 0.
  """
  def start(argv: list[str]) -> None:
    host_memory.keep_freed_memory()  # Before JAX starts its backend.
    if distributed:
      join_distributed()
    program_logging.setup(verbosity)
    try:
      main(argv)
    except USER_ERRORS as e:
      fail(e)

  app.run(start, flags_parser=flags_parser or functools.partial(parse_flags, default_config=default_config))
