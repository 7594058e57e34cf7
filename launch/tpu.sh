#!/usr/bin/env bash
# Runs artstyle-jax on a Cloud TPU VM or pod slice through gcloud: create the VM, install the
# project on every worker, start training or evaluation on all workers, follow a worker's log,
# stop the job, measure the paper step beside the compiler's estimate of it, delete the VM.
# launch/README.md walks through a whole run.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
readonly ROOT
# shellcheck source=launch/lib.sh
source "$ROOT/launch/lib.sh"

PROG=tpu.sh
DRY_RUN=0
PROJECT=""
GCLOUD_TRACK=""  # set for one call of tpu_vm: a gcloud release track (alpha)

# Where things live on each worker, relative to the ssh user's home directory.
readonly REMOTE_SRC=artstyle-jax
readonly REMOTE_VENV=artstyle-venv
readonly ARCHIVE=artstyle-jax.tar.gz
readonly LOCAL_ARCHIVE="$ROOT/build/$ARCHIVE"
# Printed by every worker after installing, once all have joined the slice as the programs do
# (multihost.start): its process index, the process count, local and global device counts.
readonly DEVICE_REPORT="from artstyle_jax.runtime import multihost; multihost.start(); import jax; \
print(jax.process_index(), jax.process_count(), jax.local_device_count(), jax.device_count())"

usage() {
  cat <<EOF
Usage: launch/tpu.sh COMMAND --name=NAME --zone=ZONE [flags] [--dry-run]

Commands:
  create   create the TPU VM or pod slice
             --accelerator-type=TYPE  default v4-32 (v4-N, v5litepod-N, v5p-N, v6e-N, ...)
             --runtime-version=V      default from TYPE: tpu-ubuntu2204-base (v2, v3, v4),
                                      v2-alpha-tpuv5-lite (v5e), v2-alpha-tpuv5 (v5p),
                                      v2-alpha-tpuv6e (v6e)
             --spot                   a Spot VM: cheaper, may be preempted at any time
           v2, v3, v4 and v5e are created with Autocheckpoint (gcloud alpha
           --autocheckpoint-enabled): a maintenance event first sends SIGTERM, and
           training saves a checkpoint and exits
  install  install the project and jax[tpu] in ~/$REMOTE_VENV on every worker; ships this
           checkout's committed HEAD (git archive) unless --repo is given
             --repo=URL [--ref=REF]   git clone URL (and check out REF) on every worker instead
             --python=PYTHON          the Ubuntu package (python3.N or python3) that makes the
                                      virtual environment; default python3.11 (the images'
                                      python3 is 3.10, older than JAX supports)
  train    start training in the background on all workers; log ~/artstyle-train.log,
           copied to WORKDIR/logs/train-HOSTNAME.log every 5 minutes and at the end. A worker
           whose training exits 75 (a lost peer: restart me) or is ended by a SIGTERM before
           it could save (143) starts it again, resuming from the workdir, up to --restarts
           times (launch/restarting.sh; each attempt counted in the log); a user error (exit
           1) is never retried
             --bucket=BUCKET          gs:// bucket for the defaults below
             --workdir=gs://...       checkpoints and metrics; default gs://BUCKET/runs/NAME
             --data-dir=gs://...      TFDS data_dir; default gs://BUCKET/tensorflow_datasets
             --config=PATH            config file inside the repository; default configs/paper.py
             --config.KEY=VALUE       passed through to the trainer (any number)
             --restarts=N             automatic restarts on every worker; default 3
  eval     start the linear-probe evaluation in the background on all workers;
           log ~/artstyle-eval.log, copied to WORKDIR/logs/eval-HOSTNAME.log
             --bucket=BUCKET | --workdir=gs://...   as for train
             --step=N                 checkpoint step; default the latest
  logs     follow a worker's log (Ctrl-C to stop following)
             --job=train|eval         default train
             --worker=N               default 0
  stop     stop the job on all workers
             --job=train|eval         default train
  check    on one worker of a single-host VM, in the foreground: the accelerator benchmark
           suite (the paper step in bfloat16 with and without remat at batch 16: step time,
           images/s, MFU; the ConvNeXt-Base backbone) and bench cost --at_hand's estimate of
           the same two steps at 16 images per chip, each measured step beside its estimate
           (roofline time, images/s, MFU ceiling; on a VM of one chip, where the suite's batch
           16 is 16 per chip) in one JSON (bench.check_report), ~/artstyle-check.json on the
           worker, copied here
             --worker=N               default 0
             --out=FILE               default tpu_check.json
  delete   delete the TPU VM
             --yes                    do not ask for confirmation

Flags of every command:
  --name=NAME        TPU VM name (required)
  --zone=ZONE        e.g. us-central2-b (required)
  --project=PROJECT  default: gcloud's configured project
  --dry-run          print the commands, one per line and shell-quoted, and run nothing
  -h, --help         this help
EOF
}

# The runtime version the Cloud TPU documentation pairs with JAX for an accelerator type.
default_runtime_version() {
  case $1 in
    v2-* | v3-* | v4-*) echo tpu-ubuntu2204-base ;;
    v5litepod-* | v5e-*) echo v2-alpha-tpuv5-lite ;;
    v5p-*) echo v2-alpha-tpuv5 ;;
    v6e-*) echo v2-alpha-tpuv6e ;;
    *) die "no default runtime version for accelerator type '$1'; pass --runtime-version" ;;
  esac
}

# Flags each command accepts besides --name, --zone, --project and --dry-run.
allowed_flags() {
  case $1 in
    create) echo "--accelerator-type --runtime-version --spot" ;;
    install) echo "--repo --ref --python" ;;
    train) echo "--bucket --workdir --data-dir --config --config.* --restarts" ;;
    eval) echo "--bucket --workdir --step" ;;
    logs) echo "--job --worker" ;;
    stop) echo "--job" ;;
    check) echo "--worker --out" ;;
    delete) echo "--yes" ;;
  esac
}

# Prints the remote shell command that starts JOB_ARGS in the background from the repository
# checkout, with its output appended to ~/artstyle-JOB.log and its pid in ~/artstyle-JOB.pid,
# so that the ssh session can end while the job runs. Refuses to start a second copy. Beside
# it, a watcher copies the log to WORKDIR/logs/JOB-HOSTNAME.log every 5 minutes and when the
# job ends (finished, failed or stopped): the VM's disk goes with the VM.
background_command() {
  local job=$1 workdir=$2
  shift 2
  local log="../artstyle-$job.log" pid="../artstyle-$job.pid"
  local copy="gcloud storage cp --quiet $log $(shell_quote "$workdir/logs/$job-")\$(hostname).log"
  local watcher="while ! timeout 300 tail --pid=\"\$(cat $pid)\" -f /dev/null; do $copy; done; $copy"
  join_steps \
    "set -e" \
    "cd $REMOTE_SRC" \
    "if kill -0 \"\$(cat $pid 2>/dev/null)\" 2>/dev/null" \
    "then echo \"\$(hostname): $job is already running\" >&2" \
    "exit 1" \
    "fi" \
    "nohup $(shell_join "$@") >> $log 2>&1 < /dev/null & echo \$! > $pid" \
    "nohup bash -c $(shell_quote "$watcher") > /dev/null 2>&1 < /dev/null & echo \"\$(hostname): $job started, log ~/artstyle-$job.log\""
}

# Prints STEPS as one line of shell, separated by "; ".
join_steps() {
  local line=$1
  shift
  local step
  for step in "$@"; do
    line+="; $step"
  done
  printf '%s' "$line"
}

# Whether Cloud TPU's Autocheckpoint (a SIGTERM, then up to 5 minutes before a maintenance event
# takes the VM) is offered for an accelerator type: v2, v3, v4 and v5e, by gcloud's alpha track.
autocheckpoint_supported() {
  case $1 in
    v2-* | v3-* | v4-* | v5litepod-* | v5e-*) return 0 ;;
    *) return 1 ;;
  esac
}

# Runs `gcloud [GCLOUD_TRACK] compute tpus tpu-vm ARGS...` (GCLOUD_TRACK: a release track, e.g.
# alpha), in --project when one was given.
tpu_vm() {
  local -a command=(gcloud ${GCLOUD_TRACK:+"$GCLOUD_TRACK"} compute tpus tpu-vm "$@")
  [[ -z $PROJECT ]] || command+=("--project=$PROJECT")
  run "${command[@]}"
}

main() {
  if (( $# == 0 )); then
    usage >&2
    exit 2
  fi
  local cmd=$1
  shift
  case $cmd in
    -h | --help) usage; exit 0 ;;
    create | install | train | eval | logs | stop | check | delete) ;;
    *) die "unknown command '$cmd' (one of: create install train eval logs stop check delete)" ;;
  esac
  PROG="tpu.sh $cmd"

  local name="" zone="" accelerator_type=v4-32 runtime_version="" spot=0
  local repo="" ref="" python=python3.11 bucket="" workdir="" data_dir=""
  local config=configs/paper.py step="" restarts=3
  local job=train worker=0 yes=0 out=tpu_check.json
  local -a overrides=() given=()
  local arg flag value
  while (( $# )); do
    arg=$1
    shift
    flag=${arg%%=*}
    case $flag in
      -h | --help) usage; exit 0 ;;
      --dry-run | --spot | --yes)
        [[ $arg == "$flag" ]] || die "$flag takes no value"
        ;;
      --name | --zone | --project | --accelerator-type | --runtime-version | --repo | --ref \
        | --python | --bucket | --workdir | --data-dir | --config | --step | --job | --worker \
        | --restarts | --out)
        if [[ $arg == "$flag" ]]; then
          need_value "$flag" $#
          value=$1
          shift
        else
          value=${arg#*=}
        fi
        ;;
      --config.*)
        [[ $arg == *=* ]] || die "write config overrides as $flag=VALUE"
        ;;
      *) die "unknown flag '$arg'" ;;
    esac
    if [[ $flag == --config.* ]]; then
      given+=('--config.*')
    else
      given+=("$flag")
    fi
    case $flag in
      --dry-run) DRY_RUN=1 ;;
      --spot) spot=1 ;;
      --yes) yes=1 ;;
      --name) name=$value ;;
      --zone) zone=$value ;;
      --project) PROJECT=$value ;;
      --accelerator-type) accelerator_type=$value ;;
      --runtime-version) runtime_version=$value ;;
      --repo) repo=$value ;;
      --ref) ref=$value ;;
      --python) python=$value ;;
      --bucket) bucket=$value ;;
      --workdir) workdir=$value ;;
      --data-dir) data_dir=$value ;;
      --config) config=$value ;;
      --step) step=$value ;;
      --job) job=$value ;;
      --worker) worker=$value ;;
      --restarts) restarts=$value ;;
      --out) out=$value ;;
      --config.*) overrides+=("$arg") ;;
    esac
  done

  local allowed
  allowed=" --name --zone --project --dry-run $(allowed_flags "$cmd") "
  for flag in ${given[@]+"${given[@]}"}; do
    [[ $allowed == *" $flag "* ]] || die "$flag does not apply to '$cmd'"
  done

  [[ -n $name ]] || die "--name is required (the TPU VM's name)"
  [[ $name =~ ^[a-z]([-a-z0-9]*[a-z0-9])?$ ]] \
    || die "--name '$name' is not a valid TPU name" \
      "(lowercase letters, digits and -, starting with a letter)"
  [[ -n $zone ]] || die "--zone is required (e.g. us-central2-b)"
  [[ $job == train || $job == eval ]] || die "--job must be train or eval, not '$job'"
  [[ $worker =~ ^[0-9]+$ ]] || die "--worker must be a worker index (0, 1, ...), not '$worker'"
  [[ -z $step || $step =~ ^[0-9]+$ ]] || die "--step must be a non-negative integer, not '$step'"
  [[ $restarts =~ ^[0-9]+$ ]] || die "--restarts must be a non-negative integer, not '$restarts'"
  [[ $out == *.json ]] || die "--out must name a .json file, got '$out'"
  [[ -z $ref || -n $repo ]] || die "--ref needs --repo"
  [[ $python =~ ^python3(\.[0-9]+)?$ ]] \
    || die "--python must be python3 or python3.N, not '$python'"

  if [[ -n $bucket ]]; then
    bucket=${bucket#gs://}
    bucket=${bucket%/}
    [[ $bucket =~ ^[a-z0-9][-a-z0-9_.]+[a-z0-9]$ ]] \
      || die "--bucket '$bucket' is not a bucket name (lowercase letters, digits, -, _ and .)"
    [[ -n $workdir ]] || workdir="gs://$bucket/runs/$name"
    [[ -n $data_dir ]] || data_dir="gs://$bucket/tensorflow_datasets"
  fi

  require_program gcloud "install the Google Cloud CLI: https://cloud.google.com/sdk/docs/install"

  case $cmd in
    create)
      if [[ -z $runtime_version ]]; then
        runtime_version=$(default_runtime_version "$accelerator_type") || exit
      fi
      local -a create=(create "$name" "--zone=$zone" "--accelerator-type=$accelerator_type"
        "--version=$runtime_version")
      (( ! spot )) || create+=(--spot)
      if autocheckpoint_supported "$accelerator_type"; then
        GCLOUD_TRACK=alpha tpu_vm "${create[@]}" --autocheckpoint-enabled
      else
        tpu_vm "${create[@]}"
      fi
      ;;
    install)
      local fetch
      if [[ -n $repo ]]; then
        fetch="rm -rf $REMOTE_SRC; git clone --quiet $(shell_quote "$repo") $REMOTE_SRC"
        [[ -z $ref ]] || fetch+="; git -C $REMOTE_SRC checkout --quiet $(shell_quote "$ref")"
      else
        require_program git "install git, or pass --repo"
        run mkdir -p "$ROOT/build"
        run git -C "$ROOT" archive --format=tar.gz "--prefix=$REMOTE_SRC/" \
          "--output=$LOCAL_ARCHIVE" HEAD
        tpu_vm scp "$LOCAL_ARCHIVE" "$name:$ARCHIVE" "--zone=$zone" --worker=all
        fetch="rm -rf $REMOTE_SRC; tar -xzf $ARCHIVE"
      fi
      local apt="sudo apt-get -qq -o DPkg::Lock::Timeout=600"
      tpu_vm ssh "$name" "--zone=$zone" --worker=all --command "$(join_steps \
        "set -e" \
        "$apt update" \
        "$apt install -y $python $python-venv" \
        "$fetch" \
        "$python -m venv $REMOTE_VENV" \
        "$REMOTE_VENV/bin/pip install -q --upgrade pip" \
        "$REMOTE_VENV/bin/pip install -q -e \"./${REMOTE_SRC}[tpu]\" gcsfs -c ${REMOTE_SRC}/launch/constraints.txt" \
        "$REMOTE_VENV/bin/python -c \"$DEVICE_REPORT\"")"
      ;;
    train | eval)
      [[ -n $workdir ]] || die "--bucket or --workdir is required"
      [[ $workdir == gs://?* ]] \
        || die "--workdir must be a gs:// path: the workers of a pod slice share no disk"
      local -a job_args
      if [[ $cmd == train ]]; then
        [[ -n $data_dir ]] || die "--bucket or --data-dir is required"
        [[ $data_dir == gs://?* ]] \
          || die "--data-dir must be a gs:// path: the workers of a pod slice share no disk"
        [[ $config != /* ]] \
          || die "--config must be a path inside the repository (e.g. configs/paper.py)"
        job_args=(bash launch/restarting.sh "$restarts" "../$REMOTE_VENV/bin/python" -m artstyle_jax.train
          "--config=$config" "--workdir=$workdir" "--config.dataset.data_dir=$data_dir"
          ${overrides[@]+"${overrides[@]}"})
      else
        job_args=("../$REMOTE_VENV/bin/python" -m artstyle_jax.eval "--workdir=$workdir")
        [[ -z $step ]] || job_args+=("--step=$step")
      fi
      tpu_vm ssh "$name" "--zone=$zone" --worker=all --command \
        "$(background_command "$cmd" "$workdir" "${job_args[@]}")"
      ;;
    logs)
      tpu_vm ssh "$name" "--zone=$zone" "--worker=$worker" --command \
        "tail -n 100 -F artstyle-$job.log"
      ;;
    stop)
      tpu_vm ssh "$name" "--zone=$zone" --worker=all --command "$(join_steps \
        "if kill \"\$(cat artstyle-$job.pid 2>/dev/null)\" 2>/dev/null" \
        "then echo \"\$(hostname): $job stopped\"" \
        "else echo \"\$(hostname): $job was not running\"" \
        "fi" \
        "rm -f artstyle-$job.pid")"
      ;;
    check)
      # Every stage runs after a failure; check_report's status, the last, says whether all passed.
      local remote_python="../$REMOTE_VENV/bin/python" runs=../artstyle-check remat
      local -a steps=("cd $REMOTE_SRC || exit 1" "mkdir -p $runs"
        "$remote_python -m artstyle_jax.bench suite --platform=accelerator --out=$runs/suite.jsonl")
      local estimates=""
      for remat in False True; do
        steps+=("$remote_python -m artstyle_jax.bench cost --config=configs/paper.py --config.init=random \
--config.model.dtype=bfloat16 --config.model.remat=$remat --at_hand --batch_sizes=16 \
--out=$runs/cost_remat_$remat.json")
        estimates+=" --estimate=$runs/cost_remat_$remat.json"
      done
      steps+=("$remote_python -m artstyle_jax.bench.check_report --out=../artstyle-check.json \
--suite=$runs/suite.jsonl$estimates")
      local failed=0
      tpu_vm ssh "$name" "--zone=$zone" "--worker=$worker" --command "$(join_steps "${steps[@]}")" || failed=1
      tpu_vm scp "$name:artstyle-check.json" "$out" "--zone=$zone" "--worker=$worker" || failed=1
      return "$failed"
      ;;
    delete)
      local -a delete=(delete "$name" "--zone=$zone")
      (( ! yes )) || delete+=(--quiet)
      tpu_vm "${delete[@]}"
      ;;
  esac
}

main "$@"
