#!/usr/bin/env bash
# Runs artstyle-jax on this machine's NVIDIA GPUs: installs the project with jax[cuda12] into a
# virtual environment, checks that JAX sees a GPU, trains, then evaluates the trained features
# with the linear probe. launch/README.md walks through a run.
#
# Memory: JAX takes 75% of a GPU's memory when it starts, so a second process on the same GPU
# (eval or predict beside a training run, a notebook) fails to allocate. Unless the caller set
# XLA_PYTHON_CLIENT_PREALLOCATE or XLA_PYTHON_CLIENT_MEM_FRACTION, or passes --mem-fraction, each
# process here allocates what it uses as it goes (XLA_PYTHON_CLIENT_PREALLOCATE=false).
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
Training resumes from the workdir's latest checkpoint when run again, and is run again by
itself up to --restarts times when it exits 75 (a lost peer of a multi-process run: restart
me) or is ended by a SIGTERM before it could save (143); each attempt is counted on stderr. A
user error (exit 1) is never retried. The GPU's memory is allocated as used, so that other
processes can share the GPU (see --mem-fraction).

Flags:
  --data-dir=DIR      TFDS data_dir holding the config's dataset (required)
  --config=PATH       config file; default configs/paper.py
  --workdir=DIR       checkpoints and metrics; default workdir/CONFIG_NAME (e.g. workdir/paper)
  --config.KEY=VALUE  passed through to the trainer (any number)
  --restarts=N        automatic restarts of training on exit 75 or 143; default 3
  --mem-fraction=F    take the fraction F of the GPU's memory up front instead (faster
                      allocation; give each process beside it the rest, e.g. 0.6 and 0.3)
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
  local skip_install=0 mem_fraction="" restarts=3
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
      --config | --workdir | --data-dir | --venv | --python | --mem-fraction | --restarts)
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
      --mem-fraction) mem_fraction=$value ;;
      --restarts) restarts=$value ;;
      --config.*) overrides+=("$arg") ;;
    esac
  done
  [[ -n $data_dir ]] || die "--data-dir=DIR is required: the TFDS data_dir that holds the config's dataset"
  [[ $restarts =~ ^[0-9]+$ ]] || die "--restarts must be a non-negative integer, got '$restarts'"
  [[ -z $mem_fraction || $mem_fraction =~ ^0?\.[0-9]+$ ]] || die "--mem-fraction must be in (0, 1), got '$mem_fraction'"
  if [[ $data_dir != gs://* ]] && (( ! DRY_RUN )) && [[ ! -d $data_dir ]]; then
    die "--data-dir=$data_dir: no such directory"
  fi
  if [[ -z $workdir ]]; then
    local config_name=${config##*/}
    workdir="workdir/${config_name%.py}"
  fi

  local venv_python="$venv/bin/python"
  if [[ -n $mem_fraction ]]; then
    set_env XLA_PYTHON_CLIENT_PREALLOCATE true
    set_env XLA_PYTHON_CLIENT_MEM_FRACTION "$mem_fraction"
  elif [[ -z ${XLA_PYTHON_CLIENT_PREALLOCATE-} && -z ${XLA_PYTHON_CLIENT_MEM_FRACTION-} ]]; then
    set_env XLA_PYTHON_CLIENT_PREALLOCATE false
  fi
  install_for_gpu "$python" "$venv" "$skip_install"
  local -a train=(-m artstyle_jax.train "--config=$config" "--workdir=$workdir"
                  "--config.dataset.data_dir=$data_dir")
  run_restarting "$restarts" "$venv_python" "${train[@]}" ${overrides[@]+"${overrides[@]}"}
  run "$venv_python" -m artstyle_jax.eval "--workdir=$workdir"
}

main "$@"
