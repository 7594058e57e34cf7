#!/usr/bin/env bash
# Runs a command with a bounded number of automatic restarts (lib.sh's run_restarting): what
# launch/tpu.sh starts on every worker of a slice.
# Usage: launch/restarting.sh RESTARTS COMMAND...
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
readonly ROOT
# shellcheck source=launch/lib.sh
source "$ROOT/launch/lib.sh"

PROG=restarting.sh
DRY_RUN=0
[[ ${1-} =~ ^[0-9]+$ ]] || die "the first argument must be the number of restarts, not '${1-}'"
run_restarting "$@"
