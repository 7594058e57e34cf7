#!/usr/bin/env bash
# Checks artstyle-jax on this machine's NVIDIA GPU in one go and writes one JSON: the tests that
# need a GPU (every form equals the plain network, the train step equals the CPU's), the export
# test, the accelerator benchmark suite (the paper step in bfloat16 with and without remat:
# images/s, MFU, peak memory; the ConvNeXt-Base backbone) and bench cost's estimate of the same two
# steps on this GPU, each measured step beside its estimate. About 2 minutes to install and 8 to
# run on one H100-class GPU.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
readonly ROOT
# shellcheck source=launch/lib.sh
source "$ROOT/launch/lib.sh"

PROG=gpu_check.sh
DRY_RUN=0

usage() {
  cat <<EOF
Usage: launch/gpu_check.sh [--out=FILE] [--venv=DIR] [--python=PYTHON] [--skip-install] [--dry-run]

Installs the project with jax[cuda12] (the constraints' versions) and pytest into a virtual
environment, checks that JAX sees a GPU, then runs tests/test_gpu.py on the GPU,
tests/test_device_programs.py on the host, python -m artstyle_jax.bench suite, and bench cost
--at_hand for the suite's two paper steps (bfloat16, remat off and on, batch 16), and writes the
device, each run's results, the suite's figures, the estimates and each measured step (time,
images/s, MFU) beside its estimate (roofline time, images/s, MFU ceiling) to one JSON. Every
stage runs even when one before it failed; the exit status is 1 if any failed.

Flags:
  --out=FILE       the JSON; default gpu_check.json (the runs' own files go beside it, in
                   FILE's name without .json plus _runs/)
  --venv=DIR       virtual environment; default $ROOT/.venv
  --python=PYTHON  Python 3.11 or newer, which makes the virtual environment; default python3
  --skip-install   use the virtual environment as it is
  --dry-run        print the commands, one per line and shell-quoted, and run nothing
  -h, --help       this help
EOF
}

main() {
  local out=gpu_check.json venv="$ROOT/.venv" python=python3 skip_install=0
  local arg flag value
  while (( $# )); do
    arg=$1
    shift
    flag=${arg%%=*}
    case $flag in
      -h | --help) usage; exit 0 ;;
      --dry-run | --skip-install)
        [[ $arg == "$flag" ]] || die "$flag takes no value"
        ;;
      --out | --venv | --python)
        if [[ $arg == "$flag" ]]; then
          need_value "$flag" $#
          value=$1
          shift
        else
          value=${arg#*=}
        fi
        [[ -n $value ]] || die "$flag needs a value"
        ;;
      *) die "unknown flag '$arg'" ;;
    esac
    case $flag in
      --dry-run) DRY_RUN=1 ;;
      --skip-install) skip_install=1 ;;
      --out) out=$value ;;
      --venv) venv=${value%/} ;;
      --python) python=$value ;;
    esac
  done
  [[ $out == *.json ]] || die "--out must name a .json file, got '$out'"
  local runs="${out%.json}_runs" venv_python="$venv/bin/python"

  # The stages run one after another; each process takes the GPU memory it uses.
  set_env XLA_PYTHON_CLIENT_PREALLOCATE false
  install_for_gpu "$python" "$venv" "$skip_install" pytest
  run mkdir -p "$runs"
  local failed=0
  # The GPU the default device, the host's CPU devices beside it for the CPU's step.
  run env JAX_PLATFORMS=cuda,cpu "$venv_python" -m pytest -q "$ROOT/tests/test_gpu.py" \
    "--junitxml=$runs/gpu_tests.xml" || failed=1
  run "$venv_python" -m pytest -q "$ROOT/tests/test_device_programs.py" "--junitxml=$runs/export_tests.xml" || failed=1
  run "$venv_python" -m artstyle_jax.bench suite --platform=accelerator "--out=$runs/suite.jsonl" || failed=1
  local remat
  local -a estimates=()
  for remat in False True; do
    run "$venv_python" -m artstyle_jax.bench cost "--config=$ROOT/configs/paper.py" --config.init=random \
      --config.model.dtype=bfloat16 "--config.model.remat=$remat" --at_hand --batch_sizes=16 \
      "--out=$runs/cost_remat_$remat.json" || failed=1
    estimates+=("--estimate=$runs/cost_remat_$remat.json")
  done
  run "$venv_python" -m artstyle_jax.bench.check_report "--out=$out" "--tests=gpu=$runs/gpu_tests.xml" \
    "--tests=export=$runs/export_tests.xml" "--suite=$runs/suite.jsonl" "${estimates[@]}" || failed=1
  return "$failed"
}

main "$@"
