"""bench suite: every entry runs as its own benchmark process, one JSON line each, then Markdown."""
import json

import pytest

from artstyle_jax.bench import suite

BACKBONE = {"benchmark": "backbone", "entry": "atto", "depthwise": "shift",
            "jax": {"forward_s": 0.04, "train_s": 0.2},
            "torch": {"forward_s": 0.05, "train_s": 0.3}, "forward_speedup": 1.25, "train_speedup": 1.5}
STEP = {"benchmark": "step", "entry": "tiny.py", "step_s": 0.0453, "images_per_s": 176.6, "mfu": 0.18,
        "memory_peak_gib": 0.25, "compile_s": 13.2}


def test_markdown_has_one_table_per_benchmark_and_lists_failures():
  failed = {"benchmark": "data", "entry": "views", "error": "exit 1: boom"}
  text = suite.markdown([BACKBONE, STEP, failed])
  assert "| atto | shift | 0.040 | 0.200 | 0.050 | 0.300 | 1.25x | 1.50x |" in text
  assert "| tiny.py | 45.3 ms | 176.6 | 0.180 | 0.25 | 13 s | - | - |" in text
  assert "- data views: exit 1: boom" in text
  assert text.index("Backbone") < text.index("Train step") < text.index("Failed")


def test_every_cpu_entry_names_a_benchmark_with_a_table():
  assert {entry.benchmark for entry in suite.CPU_ENTRIES + suite.ACCELERATOR_ENTRIES} <= set(suite.TABLES)


def test_an_entry_gives_its_benchmarks_json_line_or_its_error():
  good = suite.run_entry(suite.Entry("views", "data", ("--num-images=2", "--batch-size=2", "--image-size=32",
                                                              "--repeats=1")))
  assert good["entry"] == "views" and good["benchmark"] == "data" and good["pil_images_per_cpu_s"] > 0
  bad = suite.run_entry(suite.Entry("typo", "data", ("--no-such-flag",)))
  assert bad["entry"] == "typo" and "no-such-flag" in bad["error"]


def test_suite_writes_one_json_line_per_entry_to_out_relative_to_cwd(tmp_path, monkeypatch, capsys):
  monkeypatch.chdir(tmp_path)
  monkeypatch.setattr(suite, "CPU_ENTRIES", (suite.Entry("a", "data", ("--bad",)),
                                            suite.Entry("b", "data", ("--bad",))))
  assert suite.main(["suite", "--platform=cpu", "--out=figures.jsonl"]) == 1
  lines = (tmp_path / "figures.jsonl").read_text().splitlines()
  assert [json.loads(line)["entry"] for line in lines] == ["a", "b"]
  assert "**Failed**" in capsys.readouterr().out


def test_unwritable_out_is_refused_before_running(tmp_path):
  with pytest.raises(SystemExit, match="cannot write --out="):
    suite.main(["suite", "--platform=cpu", f"--out={tmp_path}/missing/figures.jsonl"])
