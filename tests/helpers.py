"""What several test files share, written once: the repository's paths, small configs, tree and
number comparisons, file snapshots, the programs run as a user runs them, a tiny training workdir,
and the authors' PyTorch checkpoint.

Test files import from here (pytest puts tests/ on sys.path); no test file imports another.
Fixtures several files use are in conftest.py.
"""
import contextlib
import os
import pathlib
import socket
import subprocess
import sys
import textwrap

import jax
import jax.numpy as jnp
import numpy as np
import optax
import orbax.checkpoint as ocp

from artstyle_jax.method import config_lib
from artstyle_jax.method import optim
from artstyle_jax.method import sharding
from artstyle_jax.method import step as step_lib
from artstyle_jax.storage import checkpoints

# Paths.

REPO = pathlib.Path(__file__).resolve().parents[1]
CONFIGS = REPO / "configs"
FIXTURES = REPO / "tests" / "fixtures"


def config_path(name: str) -> str:
  """The absolute path of configs/NAME.py, as a string."""
  return str(CONFIGS / f"{name}.py")


def load_config(name: str, *overrides: str):
  """configs/NAME.py read and validated by config_lib.load, with `overrides` ('KEY=VALUE') applied."""
  return config_lib.load(config_path(name), list(overrides))


# Configs.

# The programs the tests start use the grouped-convolution form of the depthwise convolutions:
# the same function, tested equal to the 'shift' form by test_convnext.py, and at the tests' 64
# px it traces and compiles in a third less time (a warm start of 4 train steps: 25 s against
# 36 s), which is most of what each of those tests costs.
FAST_COMPILING = "model.depthwise=conv"

# The demo shortened (test_demo, test_wheel): two steps on 20 training images
# of 32 px, the whole program in a minute of CPU.
SHORT_DEMO = ("--config.synthetic.per_class=2", "--config.synthetic.test_per_class=1", "--config.synthetic.size=32",
              "--config.image_size=32", "--config.batch_size=8", "--config.num_steps=2", "--config.knn_k=4")
# The same for configs/demo_scratch.py's ConvNeXt (test_demo, test_demo_ablations), which compiles
# faster in the grouped convolution (an EfficientNet-Lite, configs/demo.py's, faster in the CPU's form).
SHORT_SCRATCH_DEMO = SHORT_DEMO + (f"--config.{FAST_COMPILING}",)

# The learning rate of small_step_config's tests: a cosine from 0.05, no warm-up, no scaling with
# the batch size.
PLAIN_COSINE = ("optim.schedule=cosine", "optim.warmup_epochs=0", "optim.base_lr=0.05", "optim.linear_scaling=False")


def tiny_data_config(data, *overrides: str):
  """configs/tiny.py on the dataset `data` ((data_dir, name), as the synthetic_data fixture gives
  it) in the FAST_COMPILING form, with `overrides` ('KEY=VALUE') applied."""
  data_dir, name = data
  return load_config("tiny", f"dataset.name={name}", f"dataset.data_dir={data_dir}", FAST_COMPILING, *overrides)


def small_step_config(*overrides: str, batch_size: int, queue_size: int, base: str = "tiny"):
  """configs/BASE.py shrunk for a train step that compiles quickly: 32 px images, `batch_size`,
  a queue of `queue_size` keys, a projection head of 32 then 16 units; then `overrides`."""
  return load_config(base, "image_size=32", f"batch_size={batch_size}", f"queue_size={queue_size}",
                     "model.proj_hidden_dim=32", "model.proj_dim=16", *overrides)


# Trees and numbers.

def assert_trees_equal(actual, expected) -> None:
  """Asserts that two pytrees have the same structure and bit-identical leaves (each leaf
  compared as a numpy array; a failure names the leaf's path)."""
  assert jax.tree.structure(actual) == jax.tree.structure(expected)
  for (path, a), e in zip(jax.tree_util.tree_leaves_with_path(actual), jax.tree.leaves(expected)):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(e), err_msg=jax.tree_util.keystr(path))


def relative_error(actual, expected) -> float:
  """max |actual - expected| / max |expected|, both taken as float32 arrays."""
  expected = np.asarray(expected, np.float32)
  return float(np.max(np.abs(np.asarray(actual, np.float32) - expected)) / np.max(np.abs(expected)))


def gradient_recorder() -> optax.GradientTransformation:
  """An optimiser that moves nothing and keeps, as its state, the gradient it was last given:
  a train step made with it returns, as the new state's `opt_state`, exactly the gradient the
  step computed (the tree `optimizer.update` received), so that a test can compare that gradient
  leaf by leaf with an independent one."""
  return optax.GradientTransformation(
      init=lambda params: jax.tree.map(jnp.zeros_like, params),
      update=lambda grads, state, params=None: (jax.tree.map(jnp.zeros_like, grads), grads))


# Files.

def file_stamps(root) -> dict[str, tuple[float, int]]:
  """{path: (modification time, size)} of every file under `root`: equal before and after a call
  when the call wrote, added and removed nothing there."""
  return {os.path.join(d, f): (os.path.getmtime(os.path.join(d, f)), os.path.getsize(os.path.join(d, f)))
          for d, _, fs in os.walk(root) for f in fs}


def file_contents(root) -> dict[str, bytes]:
  """{path relative to `root`: bytes} of every file under `root`."""
  contents = {}
  for d, _, fs in os.walk(root):
    for f in fs:
      with open(os.path.join(d, f), "rb") as file:
        contents[os.path.relpath(os.path.join(d, f), root)] = file.read()
  return contents


# Programs, run in a fresh Python process as a user runs them.

def program_env(env=None) -> dict[str, str]:
  """This process's environment (the compilation cache conftest.py set up included) with `env`'s
  entries set, an entry of None removed, and REPO first on PYTHONPATH: a program started from any
  directory imports this checkout's artstyle_jax."""
  environ = dict(os.environ)
  for key, value in (env or {}).items():
    if value is None:
      environ.pop(key, None)
    else:
      environ[key] = value
  others = [p for p in environ.get("PYTHONPATH", "").split(os.pathsep) if p and p != str(REPO)]
  environ["PYTHONPATH"] = os.pathsep.join([str(REPO), *others])
  return environ


def run_python(*args, cwd=REPO, env=None, timeout: float | None = 600, check: bool = False):
  """`python ARGS` run to its end from `cwd` in program_env(env), its stdout and stderr captured
  as text; raises subprocess.TimeoutExpired after `timeout` seconds, and CalledProcessError on a
  non-zero exit status if `check`. Returns the CompletedProcess."""
  return subprocess.run([sys.executable, *map(str, args)], cwd=cwd, env=program_env(env), capture_output=True,
                        text=True, timeout=timeout, check=check)


def run_program(program: str, *args, **kwargs):
  """`python -m artstyle_jax.PROGRAM ARGS` run by run_python (same keywords: cwd, env, timeout, check)."""
  return run_python("-m", f"artstyle_jax.{program}", *args, **kwargs)


def run_eval_weights(cwd, weights: str, data):
  """`eval --weights=WEIGHTS --workdir=out` run from `cwd` as a user there types it (the dataset
  `data`, (data_dir, name), by a path relative to cwd) at 64 px, k = 5, batch 8."""
  data_dir, name = data
  return run_program("eval", f"--weights={weights}", "--workdir=out", f"--config.dataset.name={name}",
                     f"--config.dataset.data_dir={os.path.relpath(data_dir, cwd)}", "--config.image_size=64",
                     "--config.knn_k=5", "--config.batch_size=8", cwd=cwd)


def start_program(program: str, *args, cwd=REPO, env=None, **popen_kwargs) -> subprocess.Popen:
  """`python -m artstyle_jax.PROGRAM ARGS` started from `cwd` in program_env(env) and left
  running; `popen_kwargs` (stdout, stderr, text ...) go to subprocess.Popen."""
  return subprocess.Popen([sys.executable, "-m", f"artstyle_jax.{program}", *map(str, args)], cwd=cwd,
                          env=program_env(env), **popen_kwargs)


def run_program_killed_after_step(program: str, step: int, *args, **kwargs):
  """`python -m artstyle_jax.PROGRAM ARGS` run by run_python (same keywords) in a process that
  kills itself with SIGKILL right after it has logged the training metrics of `step`
  (metric_writer.MetricWriter.write_train; the program must log that step): a kill -9 at a known
  point of the run instead of a signal raced against it from outside. The process's return code
  is then -9."""
  code = textwrap.dedent(f"""
      import os, runpy, signal, sys
      from artstyle_jax.storage import metric_writer
      write_train = metric_writer.MetricWriter.write_train
      def write_train_then_die(self, step, metrics):
        write_train(self, step, metrics)
        if step == {int(step)}:
          os.kill(os.getpid(), signal.SIGKILL)
      metric_writer.MetricWriter.write_train = write_train_then_die
      sys.argv = [{program!r}] + sys.argv[1:]
      runpy.run_module("artstyle_jax.{program}", run_name="__main__", alter_sys=True)
  """)
  return run_python("-c", code, *args, **kwargs)


def wait_all(processes, timeout):
  """Waits for every process (subprocess.Popen); kills those still running after `timeout` seconds in all."""
  try:
    for process in processes:
      process.wait(timeout=timeout)
  finally:
    for process in processes:
      if process.poll() is None:
        process.kill()
        process.wait()


@contextlib.contextmanager
def reserved_port():
  """A free TCP port of 127.0.0.1, held bound (with SO_REUSEPORT, not listening) until the block
  ends: no other process can take it meanwhile (an ordinary bind is refused), while a server that
  binds with SO_REUSEPORT, as gRPC (jax.distributed's coordinator) does by default, can use it.
  A port found free and released before use could be taken by anyone in between."""
  with socket.socket() as s:
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    s.bind(("127.0.0.1", 0))
    yield s.getsockname()[1]


# Training runs.

def tiny_train_flags(workdir, data, *overrides: str, config: str = "configs/tiny.py") -> list[str]:
  """The arguments of `python -m artstyle_jax.train` for configs/tiny.py on `data` ((data_dir,
  name)) in the FAST_COMPILING form: --config=`config` (by default relative to REPO, as a user
  there types it), --workdir=`workdir`, the dataset, then `overrides` ('--config.KEY=VALUE' or
  other flags)."""
  data_dir, name = data
  return [f"--config={config}", f"--workdir={workdir}", f"--config.dataset.name={name}",
          f"--config.dataset.data_dir={data_dir}", f"--config.{FAST_COMPILING}", *overrides]


def checkpoint_steps(workdir) -> list[int]:
  """The steps of the checkpoints in WORKDIR/checkpoints, ascending ([] when there is none)."""
  root = os.path.join(workdir, "checkpoints")
  return sorted(int(d) for d in os.listdir(root) if d.isdigit()) if os.path.isdir(root) else []


def restored_state(workdir, step):
  """The train state of WORKDIR's checkpoint of `step`, restored as orbax saved it."""
  path = os.path.join(workdir, "checkpoints", str(step), "state")
  return ocp.StandardCheckpointer().restore(path)


def shifted(params, step):
  """The backbone a checkpoint of make_workdir's `step` holds: `params` moved by 1e-3 * step."""
  return jax.tree.map(lambda x: x + 1e-3 * step, params)


def make_workdir(workdir, data, steps=(1, 2)):
  """A workdir of tiny_data_config(data) as training leaves it (less the data iterator, which
  eval does not read): config.json and, per step, the whole TrainState whose student backbone is
  `shifted(initial backbone, step)`. Returns (config, initial backbone)."""
  config = tiny_data_config(data)
  backbone, head = step_lib.build_backbone(config), step_lib.build_head(config)
  optimizer, _ = optim.create(config, 10)
  state, _ = step_lib.create_state(jax.random.PRNGKey(config.seed), config, backbone, head, optimizer,
                                   sharding.create_mesh())
  checkpoints.save_config(str(workdir), config)
  with checkpoints.manager(str(workdir)) as mngr:
    for step in steps:
      params = {**state.params, "backbone": shifted(state.params["backbone"], step)}
      checkpoints.save(mngr, step, state.replace(step=state.step + step, params=params), force=True)
    mngr.wait_until_finished()
  return config, state.params["backbone"]
