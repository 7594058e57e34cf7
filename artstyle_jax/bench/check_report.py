"""One JSON of an accelerator check (launch/gpu_check.sh, `launch/tpu.sh check`): the device, the
test runs, the suite, and the measured step beside the compiler's estimate of it.

  python -m artstyle_jax.bench.check_report --out=FILE [--tests=NAME=JUNIT.xml ...] [--suite=SUITE.jsonl]
      [--estimate=COST.json ...]

--tests: pytest's JUnit XML of a test run (`--junitxml`), under NAME; --suite: the JSON lines of
`bench suite --out`; --estimate: the JSON of `bench cost --at_hand --out` (one per config). A file
a failed stage never wrote is reported as missing. The JSON holds the device JAX runs on, the
date, each run's counts and failed tests, the suite's lines, the estimates, 'measured_vs_estimate'
(each suite step whose model, image size, dtype, remat, remat policy and per-device batch an
estimate has: its measured step time, images/s and MFU beside the estimate's roofline step,
images/s and MFU ceiling) and `passed` (every run without failures or errors, every suite entry
and estimate without an error). Exit status 0 when passed, 1 otherwise.
"""
from collections.abc import Sequence
import datetime
import json
import os
import sys
import xml.etree.ElementTree as ElementTree

from absl import flags
import jax

from artstyle_jax import cli


def junit_summary(path: str) -> dict:
  """Counts of a pytest JUnit XML file and the ids of its failed tests ('error' if unreadable)."""
  if not os.path.exists(path):
    return {"error": f"no report at {path}: the run did not finish"}
  try:
    cases = ElementTree.parse(path).getroot().iter("testcase")
  except ElementTree.ParseError as error:
    return {"error": f"unreadable report {path}: {error}"}
  counts = {"passed": 0, "failed": 0, "skipped": 0}
  failed = []
  for case in cases:
    outcome = next((child.tag for child in case if child.tag in ("failure", "error", "skipped")), "passed")
    if outcome in ("failure", "error"):
      counts["failed"] += 1
      failed.append(f"{case.get('classname')}::{case.get('name')}")
    else:
      counts[outcome] += 1
  return {**counts, "failed_tests": failed}


def suite_lines(path: str) -> list[dict]:
  """The suite's JSON lines; one {'error': ...} line when the file is missing."""
  if not os.path.exists(path):
    return [{"error": f"no suite output at {path}: the suite did not finish"}]
  with open(path, encoding="utf-8") as f:
    return [json.loads(line) for line in f if line.strip()]


def estimate(path: str) -> dict:
  """The JSON of `bench cost --out`; {'error': ...} when the file is missing."""
  if not os.path.exists(path):
    return {"error": f"no estimate at {path}: bench cost did not finish"}
  with open(path, encoding="utf-8") as f:
    return json.load(f)


_SAME_STEP = ("model", "image_size", "dtype", "remat", "remat_policy")


def measured_vs_estimate(lines: Sequence[dict], estimates: Sequence[dict]) -> list[dict]:
  """Each suite step line beside the estimate of the same step (`_SAME_STEP`, per-device batch):
  {'entry', 'batch_per_device', 'chip', 'measured': {step_s, images_per_s, mfu}, 'estimate':
  {step_s, bound, images_per_s, mfu_ceiling}, 'measured_over_estimate': measured / estimated step
  time}, seconds."""
  pairs = []
  for line in lines:
    if line.get("benchmark") != "step" or "step_s" not in line:
      continue
    per_device = line["batch_size"] // line["num_devices"]
    for cost in estimates:
      figures = cost.get("by_batch", {}).get(str(per_device))
      if figures is None or any(cost.get(key) != line.get(key) for key in _SAME_STEP):
        continue
      pairs.append({
          "entry": line.get("entry"), "batch_per_device": per_device, "chip": cost["chip"],
          "measured": {key: line[key] for key in ("step_s", "images_per_s", "mfu")},
          "estimate": {key: figures[key] for key in ("step_s", "bound", "images_per_s", "mfu_ceiling")},
          "measured_over_estimate": line["step_s"] / figures["step_s"]})
  return pairs


def report(tests: dict[str, str], suite: str | None, estimates: Sequence[str] = ()) -> dict:
  device = jax.devices()[0]
  runs = {name: junit_summary(path) for name, path in tests.items()}
  lines = suite_lines(suite) if suite else []
  costs = [estimate(path) for path in estimates]
  passed = (all("error" not in r and not r["failed"] for r in runs.values())
            and all("error" not in line for line in lines + costs))
  return {"check": "accelerator", "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
          "device_kind": device.device_kind, "platform": device.platform, "num_devices": jax.device_count(),
          "jax": jax.__version__, "tests": runs, "suite": lines, "estimates": costs,
          "measured_vs_estimate": measured_vs_estimate(lines, costs), "passed": passed}


def _named_paths(values: Sequence[str]) -> dict[str, str]:
  named = {}
  for value in values:
    name, separator, path = value.partition("=")
    if not separator or not name or not path:
      cli.fail(f"--tests expects NAME=PATH, got {value!r}")
    named[name] = path
  return named


def main(argv: Sequence[str]) -> int:
  flag_values = flags.FlagValues()
  flags.DEFINE_string("out", None, "the JSON file to write", flag_values=flag_values)
  flags.DEFINE_multi_string("tests", [], "NAME=JUNIT.xml, repeated", flag_values=flag_values)
  flags.DEFINE_string("suite", None, "bench suite's JSON lines", flag_values=flag_values)
  flags.DEFINE_multi_string("estimate", [], "bench cost's JSON (--out), repeated", flag_values=flag_values)
  args = cli.parse_command(argv, flag_values, __doc__)
  if not args.out:
    cli.fail("--out is required")
  result = report(_named_paths(args.tests), args.suite, args.estimate)
  with open(args.out, "w", encoding="utf-8") as f:
    json.dump(result, f, indent=2)
  print(f"{args.out}: {'passed' if result['passed'] else 'FAILED'} on {result['device_kind']}")
  return 0 if result["passed"] else 1


if __name__ == "__main__":
  sys.exit(main(sys.argv))
