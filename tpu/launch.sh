#!/usr/bin/env bash
# Starts training on every worker of the TPU VM at once, detached: each worker runs
# `python -m gpt_jax.train TRAIN_ARGS --distributed` in ~/gpt_jax (see tpu/setup.sh) and appends
# its output to its own ~/gpt_jax_logs/worker-$(hostname).log. Follow it with tpu/logs.sh and
# stop it with tpu/stop.sh; launching again resumes from the last checkpoint.
#
# usage: tpu/launch.sh [--project=P --zone=Z --name=N] [--dry-run] -- TRAIN_ARGS...
#
# Put the run on Cloud Storage (--workdir=gs://BUCKET/PATH): the checkpoint is written by all
# workers together, and a worker's local disk holds only its own part. Every argument whose value
# is a gs://BUCKET/PATH (--workdir, --config.data.corpus, --config.init_from, ...) becomes
# $HOME/gcs/BUCKET/PATH on the workers: the bucket mounted with Cloud Storage FUSE by
# `tpu/setup.sh --bucket=gs://BUCKET`, and mounted again here if it is not (after a reboot).
# The prepared-token cache stays on each worker's disk (~/.cache/gpt_jax): it is rebuilt from the
# corpus, the same on every worker, and a rename into place would not be atomic on the bucket.
#
# example: tpu/launch.sh --name=gpt -- --config=experiments/gpt2.py --workdir=gs://my-bucket/gpt2
set -euo pipefail
# shellcheck source=tpu/common.sh
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

while (($#)); do
  case $1 in
    --) shift; break ;;
    *) common_option "$1" ;;
  esac
  shift
done
require_tpu
(($#)) || die "no training arguments; pass them after --, e.g. -- --config=experiments/gpt2.py"
[[ " $* " == *' --workdir=gs://'* ]] ||
  echo "warning: --workdir is not a gs:// path; on a multi-host slice each worker keeps only its" \
    "own part of the checkpoint" >&2

# The training code reads and writes its files with plain file calls (metrics.jsonl appended line
# by line, config.json and plots written to a temporary file and renamed, the corpus opened with
# open()), which a gs:// URL does not support; so gs://BUCKET/PATH goes to the mount instead, a
# path every worker shares. "$HOME" is left for the worker's shell to expand.
train_args='' mounts='' buckets=' '
for arg in "$@"; do
  if [[ $arg =~ ^(-[^=]*=)?gs://([^/]*)(/.*)?$ ]]; then
    flag=${BASH_REMATCH[1]} path=${BASH_REMATCH[3]}
    bucket=$(bucket_name "gs://${BASH_REMATCH[2]}")
    arg="${flag:+$(quote "$flag")}\"\$HOME\"$(quote "/gcs/$bucket$path")"
    # shellcheck disable=SC2016  # $(hostname) is the worker's
    missing='echo "$(hostname): gcsfuse is not installed to mount gs://'$bucket'; run'
    missing+=' tpu/setup.sh --bucket=gs://'$bucket'" >&2; exit 1'
    [[ $buckets == *" $bucket "* ]] ||
      mounts+="; $(mount_bucket "$bucket" "command -v gcsfuse > /dev/null || { $missing; }")"
    buckets+="$bucket "
  else
    arg=$(quote "$arg")
  fi
  train_args+=" $arg"
done

# Refuses to start a second run next to one that still holds the TPU.
command="set -e; if [ -f $PID_FILE ] && kill -0 \"\$(cat $PID_FILE)\" 2>/dev/null; then"
command+=" echo \"\$(hostname): training is running; stop it first (tpu/stop.sh)\" >&2; exit 1; fi"
command+="$mounts; mkdir -p $LOG_DIR; cd $CODE_DIR"
command+="; nohup .venv/bin/python -m gpt_jax.train$train_args --distributed"
command+=" >> $LOG_DIR/worker-\$(hostname).log 2>&1 < /dev/null & echo \$! > $PID_FILE"
on_workers all "$command"
