"""The front door of the programs: what each does before its own work, and how it fails.

A program defines its flags when its module is imported and ends with `cli.run(main)`, which
1. parses the command line (`parse_flags`): a bad flag, an unknown config key or a value of the
   wrong type is one error line;
2. lets the host's allocator keep freed memory (`host_memory.keep_freed_memory`), before JAX
   starts its backend;
3. with `distributed=True`, joins a multi-process run (`multihost.start`, with the flags of
   `define_distributed_flags` where the program has them);
4. sets up logging (`program_logging.setup`): the program's lines as plain lines, of the
   libraries' only what a user can act on;
5. runs `main(argv)`, where an error of `USER_ERRORS` (input the program cannot use, a failure
   whose message says what a user needs to know) is one line `error: ...` and exit status 1. In a
   multi-process run, a lost peer is one line `error: ...` and exit status
   `multihost.RESTART_EXIT_CODE` (75: run the same command again), whatever the program was doing.

The benchmarks are commands of one program (`python -m artstyle_jax.bench NAME`); each parses
its own flags with `parse_command`.
"""
from collections.abc import Callable, Sequence
import dataclasses
import pathlib
import sys
import types
from typing import Any, NoReturn

from absl import app
from absl import flags
import ml_collections
from ml_collections import config_flags

from artstyle_jax.data import images
from artstyle_jax.data import sources
from artstyle_jax.evaluators import label_efficiency
from artstyle_jax.evaluators import linear_probe
from artstyle_jax.evaluators import probes
from artstyle_jax.method import config_lib
from artstyle_jax.method import health
from artstyle_jax.models import backbones
from artstyle_jax.models import torch_weights
from artstyle_jax.runtime import compilation_cache
from artstyle_jax.runtime import host_memory
from artstyle_jax.runtime import multihost
from artstyle_jax.runtime import program_logging
from artstyle_jax.storage import checkpoints
from artstyle_jax.storage import failures
from artstyle_jax.storage import paths

USER_ERRORS = (config_lib.ConfigError, sources.DatasetError, checkpoints.WorkdirError, checkpoints.SaveError,
               FileNotFoundError, backbones.BackboneError, torch_weights.CheckpointError, images.BadImageError,
               health.TrainingError)
# What absl and config_flags raise for a command line they cannot apply.
_PARSE_ERRORS = (flags.Error, AttributeError, KeyError, TypeError, ValueError)
_CONFIG_PREFIX = "--config."


@dataclasses.dataclass(frozen=True)
class _ConfigFileFlag:
  """What `define_config_file` declared: the flag is defined when the command line is parsed."""
  help: str
  default: str | None
  required: bool
  lock_config: bool


_config_file_flag: _ConfigFileFlag | None = None
_config_file_read: str | None = None


def fail(message: Any) -> NoReturn:
  """Ends the program with the one line `error: <message>` on stderr and exit status 1."""
  print(f"error: {message}", file=sys.stderr)
  sys.exit(1)


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
  except (*_PARSE_ERRORS, OSError, SyntaxError) as e:
    fail(f"config file {config_file}: {failures.first_line(e)}")
  return flag_values.config


def define_config_file(help: str, *, default: str | None = None, required: bool = False,  # noqa: A002
                       lock_config: bool = False) -> None:
  """Declares the program's `--config=FILE` (a configs/*.py file, `default` when the command line
  names none) with its `--config.key=value` overrides; the program reads it as `flags.FLAGS.config`.

  The flag is defined by `parse_flags`, from the command line: the file is read once, an unknown
  key is named as such, and only then does absl apply the overrides (config_flags, defining the
  flag at import, would read the file there and could only raise on an unknown key)."""
  global _config_file_flag
  _config_file_flag = _ConfigFileFlag(help, default, required, lock_config)


def config_file() -> str | None:
  """The file of the `define_config_file` flag that `parse_flags` read: the one --config named,
  else the declared default; None before parsing or without such a flag."""
  return _config_file_read


def define_config(argv: list[str], config: ml_collections.ConfigDict, where: str, help: str,  # noqa: A002
                  *, lock_config: bool = False) -> None:
  """Defines `flags.FLAGS.config` as `config` (read from `where`) with the overrides `argv` gives;
  fails on the first `--config.key=value` whose key `config` lacks."""
  check_override_keys(config, argv[1:], where)
  try:
    config_flags.DEFINE_config_dict("config", config, help, lock_config=lock_config, sys_argv=argv)
  except _PARSE_ERRORS as e:
    fail(failures.first_line(e))


def parse_flags(argv: list[str]) -> list[str]:
  """absl's parsing of `argv` into `flags.FLAGS`; a flag it cannot apply is one error line.

  A program's `define_config_file` flag is defined here first: the file `--config=FILE` names
  (else the declared default) is read once and each `--config.key=value` checked against it.
  """
  global _config_file_read
  if _config_file_flag is not None and "config" not in flags.FLAGS:
    declared = _config_file_flag
    given = [arg.split("=", 1)[1] for arg in argv[1:] if arg.startswith("--config=")]
    config_file = given[-1] if given else declared.default
    if config_file is None:
      config_flags.DEFINE_config_file("config", None, declared.help)
      if declared.required:
        flags.mark_flag_as_required("config")
    else:
      _config_file_read = config_file
      argv = [arg for arg in argv if not arg.startswith("--config=")]
      define_config(argv, _read_config_file(config_file), config_file,
                    declared.help, lock_config=declared.lock_config)
  try:
    return flags.FLAGS(argv)
  except _PARSE_ERRORS as e:
    fail(failures.first_line(e))


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
    fail(failures.first_line(e))
  if len(remaining) > 1:
    fail(f"unexpected arguments: {remaining[1:]}")
  return types.SimpleNamespace(**{name.replace("-", "_"): flag_values[name].value for name in flag_values})


def define_distributed_flags() -> None:
  """--coordinator_address, --num_processes and --process_id: a multi-process run outside Cloud TPU."""
  flags.DEFINE_string("coordinator_address", None, "host:port of process 0, for multi-process runs outside "
                      "Cloud TPU.")
  flags.DEFINE_integer("num_processes", None, "Number of processes of a multi-process run.")
  flags.DEFINE_integer("process_id", None, "This process's index in a multi-process run.")
  flags.DEFINE_float("peer_timeout_s", multihost.PEER_TIMEOUT_S, "Multi-process runs: a process silent this long "
                     f"is lost, and its peers exit {multihost.RESTART_EXIT_CODE} (restart me).", lower_bound=1)


def _join_distributed() -> None:
  """`multihost.start` with the flags of `define_distributed_flags`, where the program has them."""
  if "coordinator_address" in flags.FLAGS:
    multihost.start(flags.FLAGS.coordinator_address, flags.FLAGS.num_processes, flags.FLAGS.process_id,
                    flags.FLAGS.peer_timeout_s)
  else:
    multihost.start()


def start_compilation_cache(config: ml_collections.ConfigDict, workdir: str) -> str | None:
  """JAX's persistent compilation cache (`compilation_cache.start`) in config.compilation_cache_dir:
  a directory (relative to the current one, or gs://...), 'off', or '' for the default beside
  `workdir` (`compilation_cache.beside`); a config saved before the key existed takes the default.
  Call it before the first compile. Returns the directory in use, None when the cache is off."""
  configured = config.get("compilation_cache_dir") or ""
  if configured and configured != compilation_cache.OFF:
    configured = paths.resolve(configured)
  return compilation_cache.start(configured or compilation_cache.beside(workdir))


class _PathParser(flags.ArgumentParser):
  """absl parser of a path flag: the value `paths.resolve`d as it is parsed (defaults too)."""

  def parse(self, argument: Any) -> str | None:
    return paths.resolve(argument)

  def flag_type(self) -> str:
    return "path"


def DEFINE_path(name: str, default: str | None, help: str, flag_values: flags.FlagValues = flags.FLAGS,  # noqa: N802,A002
                **kwargs) -> flags.FlagHolder:
  """A string flag whose value is `paths.resolve`d: absolute against the directory the program started in."""
  return flags.DEFINE(_PathParser(), name, default, help, flag_values, serializer=flags.ArgumentSerializer(),
                      **kwargs)


def DEFINE_multi_path(name: str, default: list[str] | None, help: str,  # noqa: N802,A002
                      flag_values: flags.FlagValues = flags.FLAGS, **kwargs) -> flags.FlagHolder:
  """A repeatable path flag (--name=a --name=b), each value `paths.resolve`d."""
  return flags.DEFINE_multi(_PathParser(), flags.ArgumentSerializer(), name, default, help, flag_values, **kwargs)


def define_probe_flags() -> None:
  """The paper and baseline probes' flags, of the programs that evaluate (eval, compare)."""
  flags.DEFINE_integer("paper_epochs", linear_probe.PAPER_EPOCHS, "Paper and baseline modes: epochs.", lower_bound=1)
  flags.DEFINE_integer("paper_batch_size", probes.PAPER_BATCH_SIZE, "Paper and baseline modes: batch size.",
                       lower_bound=1)
  flags.DEFINE_float("probe_learning_rate", None, "Paper and baseline modes: base learning rate; default "
                     f"{linear_probe.PAPER_LEARNING_RATE} (paper), {probes.BASELINE_LEARNING_RATE} (baseline).")
  flags.DEFINE_float("probe_momentum", None, f"Nesterov momentum; default {linear_probe.PAPER_MOMENTUM}.")
  flags.DEFINE_float("probe_weight_decay", None, "Weight decay; default 0.")
  flags.DEFINE_float("probe_init_stddev", None, f"Initial weights' stddev; default {linear_probe.PAPER_INIT_STDDEV}.")


def probe_flag_options() -> dict[str, Any]:
  """`evaluation.evaluate_backbone`'s probe options from the flags of `define_probe_flags` and --mode."""
  values = flags.FLAGS
  return {"paper_epochs": values.paper_epochs, "paper_batch_size": values.paper_batch_size,
          "probe": probes.probe_options(values.mode, values.probe_learning_rate, values.probe_momentum,
                                        values.probe_weight_decay, values.probe_init_stddev)}


def define_label_flags() -> None:
  """--label_fractions, --shots and --label_seeds, of the programs that evaluate (eval, compare)."""
  flags.DEFINE_list("label_fractions", [], "Few-label evaluation: fractions of every class's training labels, "
                    "e.g. 0.01,0.1,1.0 (rounded up to at least one image per class).")
  flags.DEFINE_list("shots", [], "Few-label evaluation: training images per class, e.g. 1,5,10.")
  flags.DEFINE_integer("label_seeds", label_efficiency.DEFAULT_SEEDS, "Few-label evaluation: draws of every "
                       "setting (label seeds 0 .. N-1).", lower_bound=1)


def label_plan() -> label_efficiency.Plan | None:
  """`label_efficiency.make_plan` of the flags of `define_label_flags`."""
  return label_efficiency.make_plan(flags.FLAGS.label_fractions, flags.FLAGS.shots, flags.FLAGS.label_seeds)


def run(main: Callable[[list[str]], None], *, flags_parser: Callable[[list[str]], list[str]] | None = None,
        distributed: bool = False, verbosity: int | None = None) -> None:
  """Runs the program `main(argv)` as the module docstring says.

  Args:
    flags_parser: a parser in place of `parse_flags`, for a program whose flags depend on others.
    distributed: join a multi-process run before JAX starts.
    verbosity: absl's verbosity (`program_logging.setup`), by default INFO on process 0.
  """
  def start(argv: list[str]) -> None:
    host_memory.keep_freed_memory()  # Before JAX starts its backend.
    if distributed:
      _join_distributed()
    program_logging.setup(verbosity)
    try:
      main(argv)
    except USER_ERRORS as e:
      multihost.await_lost_peer()  # An error may be a lost peer's: that verdict ends the process first.
      fail(e)
    except Exception:
      multihost.await_lost_peer()
      raise

  app.run(start, flags_parser=flags_parser or parse_flags)
