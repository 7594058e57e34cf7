"""The metrics writer: a file per start of train, never an earlier start's records touched, and
on gs:// (a real GCS emulator) every record uploaded by each flush, as no object store appends."""
import json
import textwrap
import unittest.mock

import pytest

from artstyle_jax.storage import metric_writer
from helpers import run_python


def write(writer, steps):
  for step in steps:
    writer.write_scalars(step, {"loss": float(step), "lr": 0.1})


def record_steps(text):
  return [json.loads(line)["step"] for line in text.splitlines()]


def test_each_start_writes_its_own_file_and_reading_follows_the_order_of_the_starts(tmp_path):
  """A local workdir: the first start's records are in metrics-001.jsonl as each is written, a
  second start writes metrics-002.jsonl and leaves the first byte for byte; read_records gives
  a workdir's older one-file metrics.jsonl first, then the starts by number (999 before 1000), a
  line cut short skipped; a start that logged nothing leaves an empty file once flushed."""
  first = metric_writer.MetricWriter(str(tmp_path), total_steps=10, batch_size=8)
  write(first, range(1, 4))
  assert record_steps((tmp_path / "metrics-001.jsonl").read_text()) == [1, 2, 3]  # before any flush
  first.close()
  before = (tmp_path / "metrics-001.jsonl").read_bytes()
  second = metric_writer.MetricWriter(str(tmp_path), total_steps=10, batch_size=8)
  write(second, range(3, 6))
  second.close()
  assert (tmp_path / "metrics-001.jsonl").read_bytes() == before
  assert record_steps((tmp_path / "metrics-002.jsonl").read_text()) == [3, 4, 5]
  assert [r["step"] for r in metric_writer.read_records(tmp_path)] == [1, 2, 3, 3, 4, 5]

  (tmp_path / "metrics-999.jsonl").write_text('{"step": 6}\n{"step": 7, "lo\n')
  (tmp_path / "metrics-1000.jsonl").write_text('{"step": 8}\n')
  (tmp_path / metric_writer.LEGACY_FILE).write_text('{"step": 0}\n')
  assert [r["step"] for r in metric_writer.read_records(tmp_path)] == [0, 1, 2, 3, 3, 4, 5, 6, 8]
  idle = metric_writer.MetricWriter(str(tmp_path), total_steps=10, batch_size=8)
  idle.flush()
  assert (tmp_path / "metrics-1001.jsonl").read_text() == ""
  idle.close()


def test_on_gcs_each_flush_uploads_every_record_and_a_resumed_run_adds_an_object(gcs, monkeypatch):
  """gs:// on the emulator: nothing of a start is in the bucket before its first flush (an upload
  only appears once finished), after each flush every record so far is, a resumed start writes
  metrics-002.jsonl beside the first start's unchanged object, and read_records reads both
  from the bucket. (TensorBoard's events are left out: tensorboardX's gs:// file uploads itself
  again at interpreter exit, after the tests' emulator has stopped; test_gcs_workdir.py
  finds them in the bucket.)"""
  for key, value in gcs.env.items():
    monkeypatch.setenv(key, value)
  monkeypatch.setattr(metric_writer, "_summary_writer", lambda logdir: unittest.mock.Mock())
  workdir = gcs.new_bucket("metrics-writer") + "/run"
  objects = gcs.root / "metrics-writer" / "run"

  first = metric_writer.MetricWriter(workdir, total_steps=10, batch_size=8)
  write(first, range(1, 3))
  assert not (objects / "metrics-001.jsonl").exists()
  first.flush()
  assert record_steps((objects / "metrics-001.jsonl").read_text()) == [1, 2]
  write(first, range(3, 5))
  first.flush()
  assert record_steps((objects / "metrics-001.jsonl").read_text()) == [1, 2, 3, 4]
  write(first, [5])  # a record after the last flush: the close uploads it
  first.close()
  assert record_steps((objects / "metrics-001.jsonl").read_text()) == [1, 2, 3, 4, 5]

  second = metric_writer.MetricWriter(workdir, total_steps=10, batch_size=8)
  write(second, range(5, 8))
  second.close()
  assert record_steps((objects / "metrics-001.jsonl").read_text()) == [1, 2, 3, 4, 5]
  assert record_steps((objects / "metrics-002.jsonl").read_text()) == [5, 6, 7]
  assert [r["step"] for r in metric_writer.read_records(workdir)] == [1, 2, 3, 4, 5, 5, 6, 7]


@pytest.fixture(autouse=True)
def _process_index_zero(monkeypatch):
  """The writer writes on process 0 only: these tests are process 0."""
  monkeypatch.setattr(metric_writer.jax, "process_index", lambda: 0)


def test_the_writer_leaves_torch_unimported_and_torch_importable_after_it(tmp_path):
  """tensorboardX imports torch when it can (seconds of every program's start): a writer made in a
  process that has not imported torch writes its event file without it, and torch imports after."""
  code = textwrap.dedent("""
      import pathlib, sys
      from artstyle_jax.storage import metric_writer
      writer = metric_writer.MetricWriter(sys.argv[1], total_steps=1, batch_size=1)
      writer.write_scalars(1, {"loss": 1.0, "lr": 0.1})
      writer.close()
      print("torch" in sys.modules, len(list(pathlib.Path(sys.argv[1], "tb").iterdir())))
      import torch
      print(torch.ones(2).sum().item())
  """)
  result = run_python("-c", code, tmp_path / "run", check=True)
  assert result.stdout.split() == ["False", "1", "2.0"]
