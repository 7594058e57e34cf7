#!/usr/bin/env bash
# Runs artstyle-jax on this machine's NVIDIA GPUs: installs the project with jax[cuda12] into a
# virtual environment, checks that JAX sees a GPU, trains, then evaluates the trained features
# with the linear probe. launch/README.md walks through a run.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
readonly ROOT
# shellcheck source=launch/lib.sh
source "$ROOT/launch/lib.sh"

PROG=gpu.sh
DRY_RUN=0

usage() {
  cat <<EOF
Usage: launch/gpu.sh [flags] [--config.KEY=VALUE ...] [--dry-run]

Installs the project with jax[cuda12] into a virtual environment, checks that JAX sees a GPU,
runs python -m artstyle_jax.train, then python -m artstyle_jax.eval on the same workdir.
Training resumes from the workdir's latest checkpoint when run again.

Flags:
  --config=PATH       config file; default configs/paper.py
  --workdir=DIR       checkpoints and metrics; default workdir/CONFIG_NAME (e.g. workdir/paper)
  --data-dir=DIR      TFDS data_dir; default the config's dataset.data_dir
  --config.KEY=VALUE  passed through to the trainer (any number)
  --venv=DIR          virtual environment; default $ROOT/.venv
  --python=PYTHON     Python 3.11 or newer, which makes the virtual environment;
                      default python3
  --skip-install      use the virtual environment as it is
  --dry-run           print the commands, one per line and shell-quoted, and run nothing
  -h, --help          this help
EOF
}

main() {
  local config=configs/paper.py workdir="" data_dir="" venv="$ROOT/.venv" python=python3
  local skip_install=0
  local -a overrides=()
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
      --config | --workdir | --data-dir | --venv | --python)
        if [[ $arg == "$flag" ]]; then
          need_value "$flag" $#
          value=$1
          shift
        else
          value=${arg#*=}
        fi
        [[ -n $value ]] || die "$flag needs a value"
        ;;
      --config.*)
        [[ $arg == *=* ]] || die "write config overrides as $flag=VALUE"
        ;;
      *) die "unknown flag '$arg'" ;;
    esac
    case $flag in
      --dry-run) DRY_RUN=1 ;;
      --skip-install) skip_install=1 ;;
      --config) config=$value ;;
      --workdir) workdir=$value ;;
      --data-dir) data_dir=$value ;;
      --venv) venv=${value%/} ;;
      --python) python=$value ;;
      --config.*) overrides+=("$arg") ;;
    esac
  done
  if [[ -z $workdir ]]; then
    local config_name=${config##*/}
    workdir="workdir/${config_name%.py}"
  fi

  local venv_python="$venv/bin/python"
  if (( ! skip_install )); then
    require_program "$python" "pass --python=PYTHON (Python 3.11 or newer)"
    run "$python" -c \
      'import sys; assert sys.version_info >= (3, 11), "JAX needs Python 3.11+: pass --python"'
    run "$python" -m venv "$venv"
    run "$venv_python" -m pip install --upgrade pip
    run "$venv_python" -m pip install -e "${ROOT}[cuda]" -c "$ROOT/launch/constraints.txt"
  elif (( ! DRY_RUN )) && [[ ! -x $venv_python ]]; then
    die "--skip-install, but $venv_python does not exist"
  fi
  run "$venv_python" -c \
    'import jax; print(jax.devices()); assert jax.default_backend() == "gpu", "JAX sees no GPU"'
  local -a train=(-m artstyle_jax.train "--config=$config" "--workdir=$workdir")
  [[ -z $data_dir ]] || train+=("--config.dataset.data_dir=$data_dir")
  run "$venv_python" "${train[@]}" ${overrides[@]+"${overrides[@]}"}
  run "$venv_python" -m artstyle_jax.eval "--workdir=$workdir"
}

main "$@"
