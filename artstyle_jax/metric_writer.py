"""Training metrics to TensorBoard event files, a JSONL file and the console (process 0 only)."""
import json
import sys
import time
from typing import Mapping

from etils import epath
import jax
import numpy as np
import tensorboardX
import tqdm

METRICS_FILE = "metrics.jsonl"
TENSORBOARD_DIR = "tb"
HEALTH_PREFIX = "health/"  # feature-health signals: in TensorBoard and the JSONL file, not on the console line


def _format_duration(seconds: float) -> str:
  seconds = int(max(seconds, 0))
  return f"{seconds // 3600:d}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"


class MetricWriter:
  """Writes scalars to workdir/tb (TensorBoard), workdir/metrics.jsonl, and a console line per
  write with throughput and ETA; a progress bar on interactive terminals.

  Args:
    workdir: the run's directory.
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
    self._jsonl = (workdir / METRICS_FILE).open("a")
    self._tensorboard = tensorboardX.SummaryWriter(str(workdir / TENSORBOARD_DIR))
    self._progress = tqdm.tqdm(total=total_steps, unit="step", dynamic_ncols=True) if sys.stderr.isatty() else None

  def write_scalars(self, step: int, scalars: Mapping[str, float]) -> None:
    """Records scalars at `step` in TensorBoard and the JSONL file."""
    if not self.enabled:
      return
    scalars = {k: float(np.asarray(v)) for k, v in scalars.items()}
    for name, value in scalars.items():
      self._tensorboard.add_scalar(name, value, step)
    self._tensorboard.flush()
    self._jsonl.write(json.dumps({"step": step, "time": time.time(), **scalars}) + "\n")
    self._jsonl.flush()

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

  def close(self) -> None:
    if not self.enabled:
      return
    if self._progress is not None:
      self._progress.close()
    self._tensorboard.close()
    self._jsonl.close()
