"""Every benchmark at the sizes README reports: `python -m artstyle_jax.bench suite [--out=FILE]`.

On a CPU host: the backbone against PyTorch (ConvNeXt-atto 128 px batch 16, ConvNeXt-tiny 224 px
batch 8, and tiny with the grouped-convolution depthwise form), the train step against the
PyTorch step (tiny.py; ConvNeXt-atto 128 px batch 16) and the input pipeline; 4 to 6 minutes on
2 cores. On a GPU or TPU: the paper step (ConvNeXt-Base, 352 px, batch 16) in
bfloat16 with and without remat (images/s, MFU, peak memory) and the bfloat16 backbone at that
size.

Each entry runs as its own process (`python -m artstyle_jax.bench NAME ARGS`), so none inherits
another's compiled programs or memory. Prints one JSON line per entry (the benchmark's own JSON
line plus `entry`, or `error` if it failed) as it finishes, then the Markdown tables README's
performance section shows; --out also writes the JSON lines to FILE. Exit status 1 if any entry
failed.
"""
from collections.abc import Sequence
import json
import os
import subprocess
import sys
from typing import NamedTuple

from absl import flags

from artstyle_jax import cli
from artstyle_jax.method import config_lib


class Entry(NamedTuple):
  """One figure of the suite: a row name, a benchmark of `python -m artstyle_jax.bench`, its flags."""
  name: str
  benchmark: str
  args: tuple[str, ...]


_TINY = f"--config={config_lib.packaged_config('tiny.py')}"
_ATTO_128 = (_TINY, "--config.model.name=convnext_atto", "--config.image_size=128",
             "--config.batch_size=16")

CPU_ENTRIES = (
    Entry("ConvNeXt-atto 128 px b16", "backbone", ("--model=convnext_atto", "--image-size=128", "--batch=16",
                                                   "--steps=10")),
    Entry("ConvNeXt-tiny 224 px b8", "backbone", ("--model=convnext_tiny", "--image-size=224", "--batch=8")),
    Entry("ConvNeXt-tiny 224 px b8, --depthwise=conv", "backbone",
          ("--model=convnext_tiny", "--image-size=224", "--batch=8", "--depthwise=conv", "--no-torch",
           "--steps=3", "--warmup=1")),
    Entry("ResNet-50 224 px b8, forward", "backbone",
          ("--model=resnet50", "--image-size=224", "--batch=8", "--forward-only", "--steps=3", "--warmup=1")),
    Entry("tiny.py (ConvNeXt-atto 64 px b8)", "step", (_TINY, "--steps=10", "--torch")),
    Entry("ConvNeXt-atto 128 px b16", "step", _ATTO_128 + ("--steps=10", "--warmup=2", "--torch")),
    Entry("three 352 px views per JPEG", "data", ()),
)

_PAPER_BF16 = (f"--config={config_lib.packaged_config('paper.py')}", "--config.model.dtype=bfloat16",
               "--config.init=random")

ACCELERATOR_ENTRIES = (
    Entry("paper step, bf16", "step", _PAPER_BF16 + ("--steps=20",)),
    Entry("paper step, bf16 + remat", "step", _PAPER_BF16 + ("--config.model.remat=True", "--steps=20")),
    Entry("ConvNeXt-Base 352 px b16, bf16", "backbone",
          ("--model=convnext_base", "--image-size=352", "--batch=16", "--dtype=bfloat16", "--no-torch",
           "--steps=20")),
)


def _parse(argv: Sequence[str]):
  flag_values = flags.FlagValues()
  cli.DEFINE_path("out", None, "also write the JSON lines to this file", flag_values=flag_values)
  flags.DEFINE_enum("platform", "auto", ("auto", "cpu", "accelerator"), "which entries to run: 'auto' picks by "
                    "JAX's default backend", flag_values=flag_values)
  return cli.parse_command(argv, flag_values, __doc__)


def default_backend() -> str:
  """JAX's default backend, asked in a child process so that this one holds no accelerator memory."""
  found = subprocess.run([sys.executable, "-c", "import jax; print(jax.default_backend())"],
                         capture_output=True, text=True, check=True)
  return found.stdout.strip().splitlines()[-1]


def run_entry(entry: Entry) -> dict:
  """Runs one entry in a child process: its JSON line plus `entry`, or `entry` and `error`."""
  command = [sys.executable, "-m", "artstyle_jax.bench", entry.benchmark, *entry.args]
  done = subprocess.run(command, capture_output=True, text=True, env=os.environ.copy())
  lines = done.stdout.strip().splitlines()
  if done.returncode == 0 and lines:
    try:
      return {"entry": entry.name, **json.loads(lines[-1])}
    except json.JSONDecodeError:
      pass
  last = (done.stderr.strip().splitlines() or lines or ["no output"])[-1]
  return {"entry": entry.name, "benchmark": entry.benchmark, "args": list(entry.args),
          "error": f"exit {done.returncode}: {last}"}


def _seconds(value) -> str:
  return "-" if value is None else f"{value:.3f}"


def _ratio(value) -> str:
  return "-" if value is None else f"{value:.2f}x"


def _backbone_row(r: dict) -> list[str]:
  ours, theirs = r["jax"], r.get("torch") or {}
  return [r["entry"], r["depthwise"], _seconds(ours["forward_s"]), _seconds(ours["train_s"]),
          _seconds(theirs.get("forward_s")), _seconds(theirs.get("train_s")),
          _ratio(r.get("forward_speedup")), _ratio(r.get("train_speedup"))]


def _step_row(r: dict) -> list[str]:
  theirs = r.get("torch") or {}
  return [r["entry"], f"{r['step_s'] * 1e3:.1f} ms", f"{r['images_per_s']:.1f}", f"{r['mfu']:.3f}",
          f"{r['memory_peak_gib']:.2f}", f"{r['compile_s']:.0f} s",
          "-" if not theirs else f"{theirs['step_s'] * 1e3:.1f} ms", _ratio(r.get("speedup"))]


def _data_row(r: dict) -> list[str]:
  return [r["entry"], f"{r['pil_images_per_cpu_s']:.1f}", f"{r['host_images_per_cpu_s']:.1f}",
          f"{r['split_images_per_cpu_s']:.1f}", f"{r['device_photometric_images_per_s']:.1f}"]


# benchmark -> (table title, column names, row of one result).
TABLES = {
    "backbone": ("Backbone (float32 unless named; s/iter, ratio > 1: ours faster)",
                 ["", "depthwise", "ours fwd", "ours fwd+bwd", "PyTorch fwd", "PyTorch fwd+bwd", "fwd",
                  "fwd+bwd"], _backbone_row),
    "step": ("Train step", ["", "step", "images/s", "MFU", "peak GiB/device", "compile", "PyTorch step",
                            "ours vs PyTorch"], _step_row),
    "data": ("Input pipeline (three-view images per CPU-second; device half images/s)",
             ["", "PIL baseline", "host", "split, host half", "split, device half"], _data_row),
}


def markdown(results: Sequence[dict]) -> str:
  """One Markdown table per benchmark kind, in the order of first appearance; failures listed."""
  blocks = []
  for benchmark in dict.fromkeys(r["benchmark"] for r in results):
    if benchmark not in TABLES:
      continue
    rows = [r for r in results if r["benchmark"] == benchmark and "error" not in r]
    if not rows:
      continue
    title, columns, row = TABLES[benchmark]
    lines = [f"**{title}**", "", "| " + " | ".join(columns) + " |", "|" + " --- |" * len(columns)]
    lines += ["| " + " | ".join(row(r)) + " |" for r in rows]
    blocks.append("\n".join(lines))
  failed = [f"- {r['benchmark']} {r['entry']}: {r['error']}" for r in results if "error" in r]
  if failed:
    blocks.append("**Failed**\n\n" + "\n".join(failed))
  return "\n\n".join(blocks)


def main(argv: Sequence[str]) -> int:
  args = _parse(argv)
  platform = args.platform
  if platform == "auto":
    platform = "cpu" if default_backend() == "cpu" else "accelerator"
  entries = CPU_ENTRIES if platform == "cpu" else ACCELERATOR_ENTRIES
  results = []
  try:
    out = open(args.out, "w", encoding="utf-8") if args.out else None
  except OSError as error:
    raise SystemExit(f"cannot write --out={args.out}: {error.strerror}") from None
  try:
    for entry in entries:
      print(f"# {entry.benchmark} {' '.join(entry.args)}", file=sys.stderr, flush=True)
      result = run_entry(entry)
      results.append(result)
      line = json.dumps(result)
      print(line, flush=True)
      if out:
        out.write(line + "\n")
        out.flush()
  finally:
    if out:
      out.close()
  print()
  print(markdown(results))
  return 1 if any("error" in r for r in results) else 0
