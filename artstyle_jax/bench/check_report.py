"""One JSON of an accelerator check (launch/gpu_check.sh): the device, the test runs and the suite.

  python -m artstyle_jax.bench.check_report --out=FILE [--tests=NAME=JUNIT.xml ...] [--suite=SUITE.jsonl]

--tests: pytest's JUnit XML of a test run (`--junitxml`), under NAME; --suite: the JSON lines of
`bench suite --out`. A file a failed stage never wrote is reported as missing. The JSON holds the
device JAX runs on, the date, each run's counts and failed tests, the suite's lines and `passed`
(every run without failures or errors, every suite entry without an error). Exit status 0 when
passed, 1 otherwise.
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


def report(tests: dict[str, str], suite: str | None) -> dict:
  device = jax.devices()[0]
  runs = {name: junit_summary(path) for name, path in tests.items()}
  lines = suite_lines(suite) if suite else []
  passed = (all("error" not in r and not r["failed"] for r in runs.values())
            and all("error" not in line for line in lines))
  return {"check": "accelerator", "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
          "device_kind": device.device_kind, "platform": device.platform, "num_devices": jax.device_count(),
          "jax": jax.__version__, "tests": runs, "suite": lines, "passed": passed}


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
  args = cli.parse_command(argv, flag_values, __doc__)
  if not args.out:
    cli.fail("--out is required")
  result = report(_named_paths(args.tests), args.suite)
  with open(args.out, "w", encoding="utf-8") as f:
    json.dump(result, f, indent=2)
  print(f"{args.out}: {'passed' if result['passed'] else 'FAILED'} on {result['device_kind']}")
  return 0 if result["passed"] else 1


if __name__ == "__main__":
  sys.exit(main(sys.argv))
