# shellcheck shell=bash
# Helpers shared by the launch scripts: shell quoting, dry-run aware command execution and
# argument errors. Sourced, not executed; the sourcing script sets ROOT, PROG and DRY_RUN.

# Prints WORD quoted for a POSIX shell, the way Python's shlex.quote does: a word made only of
# letters, digits and _@%+=:,./- stays bare; any other word is single-quoted, with each ' in it
# written as '"'"'.
shell_quote() {
  local LC_ALL=C word=$1
  if [[ -z $word ]]; then
    printf "''"
  elif [[ $word =~ ^[A-Za-z0-9_@%+=:,./-]+$ ]]; then
    printf '%s' "$word"
  else
    printf "'%s'" "${word//\'/\'\"\'\"\'}"
  fi
}

# Prints WORDS as one command line that a shell splits back into exactly these words.
shell_join() {
  local line="" word
  for word in "$@"; do
    line+="${line:+ }$(shell_quote "$word")"
  done
  printf '%s\n' "$line"
}

# Runs a command, or with DRY_RUN=1 only prints it (stdout, one line, copy-pasteable). A real
# run echoes the command to stderr first, like `set -x`.
run() {
  if (( DRY_RUN )); then
    shell_join "$@"
  else
    printf '+ %s\n' "$(shell_join "$@")" >&2
    "$@"
  fi
}

# Exports NAME=VALUE for the commands that follow; with DRY_RUN=1 also prints it as an export
# line, so that the printed commands run as the real run does.
set_env() {
  (( ! DRY_RUN )) || shell_join export "$1=$2"
  export "$1=$2"
}

# Reports a usage error and exits with status 2.
die() {
  printf '%s: error: %s\n' "$PROG" "$*" >&2
  printf "Run '%s --help' for usage.\n" "$PROG" >&2
  exit 2
}

# Checks that flag $1 has a value: $2 is the number of arguments left after the flag.
need_value() {
  (( $2 > 0 )) || die "$1 needs a value"
}

# Exits with a clear message unless PROGRAM is on PATH (only checked for real runs).
require_program() {
  (( DRY_RUN )) || command -v "$1" >/dev/null 2>&1 \
    || { printf '%s: error: %s not found on PATH; %s\n' "$PROG" "$1" "$2" >&2; exit 1; }
}

# Makes the virtual environment VENV with PYTHON and installs the project into it with
# jax[cuda12] and PACKAGES, at launch/constraints.txt's versions; with SKIP_INSTALL=1 only checks
# that VENV exists. Then stops unless JAX sees a GPU.
# Usage: install_for_gpu PYTHON VENV SKIP_INSTALL [PACKAGES...]
install_for_gpu() {
  local python=$1 venv=$2 skip_install=$3
  shift 3
  local venv_python="$venv/bin/python"
  if (( ! skip_install )); then
    require_program "$python" "pass --python=PYTHON (Python 3.11 or newer)"
    run "$python" -c \
      'import sys; assert sys.version_info >= (3, 11), "JAX needs Python 3.11+: pass --python"'
    run "$python" -m venv "$venv"
    run "$venv_python" -m pip install --upgrade pip
    run "$venv_python" -m pip install -e "${ROOT}[cuda]" "$@" -c "$ROOT/launch/constraints.txt"
  elif (( ! DRY_RUN )) && [[ ! -x $venv_python ]]; then
    die "--skip-install, but $venv_python does not exist"
  fi
  run "$venv_python" -c \
    'import jax; print(jax.devices()); assert jax.default_backend() == "gpu", "JAX sees no GPU"'
}

# The exit status of a training process whose run lost a peer (artstyle_jax.runtime.multihost's
# RESTART_EXIT_CODE, EX_TEMPFAIL), and that of a process SIGTERM ended before it could save
# (128 + 15: a preemption during its start or compile, before the program's handler is set).
RESTART_STATUSES=" 75 143 "

# Runs COMMAND; while it exits with one of RESTART_STATUSES, runs it again, at most RESTARTS
# more times, each attempt counted on stderr ("attempt 2 of 4: ..."). Any other status (0, 1: a
# user error, ...) ends it. A SIGTERM or SIGINT to this shell is passed on to COMMAND (which
# saves a checkpoint and exits) and ends the loop. With DRY_RUN=1 only prints COMMAND, as `run`.
# Exit status: COMMAND's last.
# Usage: run_restarting RESTARTS COMMAND...
run_restarting() {
  local restarts=$1
  shift
  if (( DRY_RUN )); then
    shell_join "$@"
    return
  fi
  local attempt status child stopping=0
  trap 'stopping=1; kill -TERM "$child" 2>/dev/null' TERM INT
  for (( attempt = 1; ; attempt++ )); do
    printf '+ %s\n%s: attempt %d of %d\n' "$(shell_join "$@")" "$PROG" "$attempt" $(( restarts + 1 )) >&2
    "$@" &
    child=$!
    while :; do  # a trapped signal ends `wait` early: wait again for the command's own status
      status=0
      wait "$child" || status=$?
      kill -0 "$child" 2>/dev/null || break
    done
    if (( stopping )) || [[ $RESTART_STATUSES != *" $status "* ]] || (( attempt > restarts )); then
      break
    fi
    printf '%s: exit status %d (restart me): starting again\n' "$PROG" "$status" >&2
  done
  trap - TERM INT
  return "$status"
}
