"""bench backbone: ours and PyTorch's backbone timed call by call in alternation, the ratio of
the medians reported."""
import json

from artstyle_jax.bench import backbone
from artstyle_jax.bench import timing


def test_backbone_bench_times_ours_and_pytorch_interleaved_and_reports_their_ratio(monkeypatch, capsys):
  rounds = []
  interleaved_medians = timing.interleaved_medians

  def recording_medians(runs, steps, warmup):
    rounds.append(tuple(runs))
    return interleaved_medians(runs, steps, warmup)

  monkeypatch.setattr(timing, "interleaved_medians", recording_medians)
  assert backbone.main(["backbone", "--model=convnext_atto", "--image-size=32", "--batch=2", "--steps=2",
                        "--warmup=0", "--depthwise=conv"]) == 0
  result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])

  assert rounds == [("ours", "torch"), ("ours", "torch")]  # Forward, then forward+backward.
  for side in ("jax", "torch"):
    assert result[side]["forward_s"] > 0 and result[side]["train_s"] > 0
  assert result["forward_speedup"] == result["torch"]["forward_s"] / result["jax"]["forward_s"]
  assert result["train_speedup"] == result["torch"]["train_s"] / result["jax"]["train_s"]


def test_backbone_bench_forward_only_times_no_backward(capsys):
  assert backbone.main(["backbone", "--model=convnext_atto", "--image-size=32", "--batch=1", "--steps=1",
                        "--warmup=0", "--depthwise=conv", "--forward-only", "--no-torch"]) == 0
  result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
  assert result["jax"]["forward_s"] > 0 and result["jax"]["train_s"] is None
  assert result["torch"] is None and "forward_speedup" not in result
