"""Training metrics to TensorBoard event files, JSONL files and the console (process 0 only).

Each start of the train program on a workdir (the first, and every resume) writes its records to
its own file, `metrics-<start>.jsonl` (001, 002, ...): a resumed run never touches the records
of an earlier start. An object store (gs://) cannot append to an object, and an object is only
there once its upload has finished, so there the file is uploaded whole at each `flush` (train
calls it before each checkpoint) and at `close`: a run killed at any point keeps every record up
to its last checkpoint. On a local disk each record is written as it comes. `read_records` gives
the records of all starts in the order they ran.
"""
import contextlib
import json
import re
import sys
import time
from typing import Any, Mapping

from etils import epath
import jax
import numpy as np
import tqdm

from artstyle_jax.storage import paths

START_FILE = "metrics-{start:03d}.jsonl"
_START = re.compile(r"^metrics-(\d+)\.jsonl$")
# The one file of workdirs trained before metrics were kept per start: read as the first start's.
LEGACY_FILE = "metrics.jsonl"
TENSORBOARD_DIR = "tb"
HEALTH_PREFIX = "health/"  # feature-health signals: in TensorBoard and the JSONL file, not on the console line


def _summary_writer(logdir: str):
  """tensorboardX's SummaryWriter for `logdir`, imported without torch.

  tensorboardX imports torch when it is installed (2.3 s of a program's start on a 2-core CPU) only to
  accept torch tensors, which this writer never passes; `import torch` inside its import raises
  ImportError instead, unless torch is already imported.
  """
  with contextlib.ExitStack() as stack:
    if "torch" not in sys.modules:
      stack.callback(sys.modules.pop, "torch", None)
      sys.modules["torch"] = None
    import tensorboardX  # pylint: disable=g-import-not-at-top
  return tensorboardX.SummaryWriter(logdir)


def metrics_files(workdir: str | epath.PathLike) -> list[epath.Path]:
  """The workdir's metrics files in the order their starts ran ([] when nothing was logged)."""
  workdir = epath.Path(workdir)
  if not workdir.is_dir():
    return []
  numbered = sorted((int(m.group(1)), path) for path in workdir.iterdir() if (m := _START.match(path.name)))
  legacy = [workdir / LEGACY_FILE] if (workdir / LEGACY_FILE).exists() else []
  return legacy + [path for _, path in numbered]


def read_records(workdir: str | epath.PathLike) -> list[dict[str, Any]]:
  """Every record of every start of train on the workdir, starts in the order they ran, each
  start's in the order it wrote them. A line that is not a JSON object (one cut short by a run
  killed while writing it) is skipped. A step a resumed run logged again appears once per start."""
  records = []
  for path in metrics_files(workdir):
    for line in path.read_text().splitlines():
      try:
        record = json.loads(line)
      except json.JSONDecodeError:
        continue
      if isinstance(record, dict):
        records.append(record)
  return records


def _format_duration(seconds: float) -> str:
  seconds = int(max(seconds, 0))
  return f"{seconds // 3600:d}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"


class MetricWriter:
  """Writes scalars to workdir/tb (TensorBoard), this start's workdir/metrics-NNN.jsonl, and a
  console line per write with throughput and ETA; a progress bar on interactive terminals.

  Args:
    workdir: the run's directory, local or gs://.
    total_steps: the step the run ends at, for the ETA and progress bar.
    batch_size: global images per step, for images/s.
  """

  def __init__(self, workdir: str, total_steps: int, batch_size: int):
    self.enabled = jax.process_index() == 0
    self.total_steps = total_steps
    self.batch_size = batch_size
    self._last_time = None
    self._last_step = None
    if not self.enabled:
      return
    workdir = epath.Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    earlier = [int(_START.match(path.name).group(1)) for path in metrics_files(workdir)
               if _START.match(path.name)]
    self.path = workdir / START_FILE.format(start=max(earlier, default=0) + 1)
    self._in_object_store = paths.is_url(str(workdir))
    self._local = None  # the local file, opened at the first record
    self._lines: list[str] = []  # this start's records, for the whole uploads to an object store
    self._uploaded = None  # how many of them the object holds (None: no object yet)
    self._tensorboard = _summary_writer(str(workdir / TENSORBOARD_DIR))
    self._progress = tqdm.tqdm(total=total_steps, unit="step", dynamic_ncols=True) if sys.stderr.isatty() else None

  def write_scalars(self, step: int, scalars: Mapping[str, float]) -> None:
    """Records scalars at `step` in TensorBoard and this start's JSONL file."""
    if not self.enabled:
      return
    scalars = {k: float(np.asarray(v)) for k, v in scalars.items()}
    for name, value in scalars.items():
      self._tensorboard.add_scalar(name, value, step)
    line = json.dumps({"step": step, "time": time.time(), **scalars}) + "\n"
    if self._in_object_store:  # tensorboardX uploads its whole file at each flush: at `flush` only
      self._lines.append(line)
      return
    self._tensorboard.flush()
    if self._local is None:
      self._local = self.path.open("w")
    self._local.write(line)
    self._local.flush()

  def write_train(self, step: int, metrics: Mapping[str, float]) -> None:
    """Records train metrics plus images/s since the previous call, and prints the progress line."""
    now = time.monotonic()
    scalars = dict(metrics)
    eta = ""
    if self._last_time is not None and step > self._last_step:
      seconds_per_step = (now - self._last_time) / (step - self._last_step)
      scalars["images_per_s"] = self.batch_size / seconds_per_step
      eta = f" ETA {_format_duration(seconds_per_step * (self.total_steps - step))}"
    self._last_time, self._last_step = now, step
    if not self.enabled:
      return
    self.write_scalars(step, scalars)
    terms = " ".join(f"{k} {float(v):.4f}" for k, v in scalars.items()
                     if k not in ("lr", "images_per_s") and not k.startswith(HEALTH_PREFIX))
    speed = f" {scalars['images_per_s']:.1f} img/s" if "images_per_s" in scalars else ""
    line = f"step {step}/{self.total_steps} {terms} lr {float(scalars['lr']):.3g}{speed}{eta}"
    if self._progress is not None:
      self._progress.update(step - self._progress.n)
      self._progress.set_postfix_str(line.split(" ", 2)[2])
    else:
      print(line, flush=True)

  def flush(self) -> None:
    """Makes every record so far durable, and this start's file exist (empty before the first
    record): in an object store, uploads the file whole when it has new records; a local file
    already holds each record as it is written."""
    if not self.enabled:
      return
    if not self._in_object_store:
      if self._local is None:
        self._local = self.path.open("w")
      return
    if self._uploaded != len(self._lines):
      self.path.write_text("".join(self._lines))
      self._uploaded = len(self._lines)
      self._tensorboard.flush()

  def close(self) -> None:
    if not self.enabled:
      return
    self.flush()
    if self._progress is not None:
      self._progress.close()
    self._tensorboard.close()
    if self._local is not None:
      self._local.close()
