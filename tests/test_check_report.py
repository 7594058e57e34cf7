"""bench.check_report: one JSON from pytest's JUnit reports and the suite's JSON lines."""
import json

from artstyle_jax.bench import check_report

JUNIT = """<?xml version="1.0" encoding="utf-8"?>
<testsuites><testsuite name="pytest" tests="4">
  <testcase classname="tests.test_gpu" name="test_forms[shift]" time="1.0"/>
  <testcase classname="tests.test_gpu" name="test_forms[manual]" time="1.0"><failure message="no"/></testcase>
  <testcase classname="tests.test_gpu" name="test_step[float32]" time="1.0"><error message="boom"/></testcase>
  <testcase classname="tests.test_gpu" name="test_step[bfloat16]" time="0.0"><skipped message="s"/></testcase>
</testsuite></testsuites>
"""


def test_counts_failures_and_errors_as_failed_and_names_them(tmp_path):
  (tmp_path / "gpu.xml").write_text(JUNIT)
  assert check_report.junit_summary(str(tmp_path / "gpu.xml")) == {
      "passed": 1, "failed": 2, "skipped": 1,
      "failed_tests": ["tests.test_gpu::test_forms[manual]", "tests.test_gpu::test_step[float32]"]}
  assert "did not finish" in check_report.junit_summary(str(tmp_path / "missing.xml"))["error"]


def test_the_report_passes_only_without_failures_errors_or_missing_runs(tmp_path, capsys):
  passing = JUNIT.replace('<failure message="no"/>', "").replace('<error message="boom"/>', "")
  (tmp_path / "gpu.xml").write_text(passing)
  suite = tmp_path / "suite.jsonl"
  suite.write_text(json.dumps({"entry": "paper step, bf16", "images_per_s": 100.0, "mfu": 0.4}) + "\n")
  out = tmp_path / "check.json"
  assert check_report.main(["check_report", f"--out={out}", f"--tests=gpu={tmp_path / 'gpu.xml'}",
                            f"--suite={suite}"]) == 0
  written = json.loads(out.read_text())
  assert written["passed"] and written["platform"] == "cpu" and written["tests"]["gpu"]["passed"] == 3
  assert written["suite"] == [{"entry": "paper step, bf16", "images_per_s": 100.0, "mfu": 0.4}]
  assert check_report.main(["check_report", f"--out={out}", f"--tests=gpu={tmp_path / 'gpu.xml'}",
                            f"--suite={tmp_path / 'none.jsonl'}"]) == 1
  assert not json.loads(out.read_text())["passed"]
  assert "FAILED" in capsys.readouterr().out.splitlines()[-1]


STEP = {"benchmark": "step", "model": "convnext_base", "image_size": 352, "dtype": "bfloat16", "remat": True,
        "remat_policy": "matmuls", "batch_size": 32, "num_devices": 2}


def test_each_measured_step_sits_beside_the_estimate_of_the_same_step_and_batch(tmp_path):
  """The suite's step at 16 images per device pairs with the estimate's batch 16 of the same
  config; a step without remat, or an estimate that is missing, pairs with none."""
  figures = {"step_s": 0.05, "bound": "compute", "images_per_s": 320.0, "mfu_ceiling": 0.6, "peak_bytes": 1}
  cost = {**{key: STEP[key] for key in check_report._SAME_STEP}, "chip": "H100 SXM", "by_batch": {"16": figures}}
  (tmp_path / "cost.json").write_text(json.dumps(cost))
  suite = tmp_path / "suite.jsonl"
  measured = {**STEP, "entry": "paper step, bf16 + remat", "step_s": 0.1, "images_per_s": 320.0, "mfu": 0.3}
  suite.write_text("".join(json.dumps(line) + "\n" for line in (measured, {**measured, "remat": False})))
  written = check_report.report({}, str(suite), [str(tmp_path / "cost.json")])
  assert written["estimates"] == [cost] and written["passed"]
  assert written["measured_vs_estimate"] == [{
      "entry": "paper step, bf16 + remat", "batch_per_device": 16, "chip": "H100 SXM",
      "measured": {"step_s": 0.1, "images_per_s": 320.0, "mfu": 0.3},
      "estimate": {"step_s": 0.05, "bound": "compute", "images_per_s": 320.0, "mfu_ceiling": 0.6},
      "measured_over_estimate": 2.0}]
  missing = check_report.report({}, str(suite), [str(tmp_path / "none.json")])
  assert not missing["passed"] and missing["measured_vs_estimate"] == []
  assert "did not finish" in missing["estimates"][0]["error"]
