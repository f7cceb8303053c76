# Sourced by the tpu/*.sh scripts: the TPU's settings, the options every script takes, --dry-run
# and one-line errors.
# shellcheck shell=bash

# Where setup.sh puts the code and launch.sh the logs and the process id, on every worker; that
# worker's shell expands the ~.
# shellcheck disable=SC2034,SC2088
CODE_DIR='~/gpt_jax' LOG_DIR='~/gpt_jax_logs' PID_FILE='~/gpt_jax_logs/train.pid'
# Where setup.sh --bucket and launch.sh mount gs://BUCKET with Cloud Storage FUSE: ~/gcs/BUCKET.
# shellcheck disable=SC2088
GCS_DIR='~/gcs'

project=${TPU_PROJECT:-}
zone=${TPU_ZONE:-}
name=${TPU_NAME:-}
dry_run=0

COMMON_HELP='
Every script also takes (a flag, or else its environment variable):
  --project=PROJECT   TPU_PROJECT   the Google Cloud project
  --zone=ZONE         TPU_ZONE      e.g. us-central2-b
  --name=NAME         TPU_NAME      the TPU VM (with --queued also its queued resource)
  --dry-run                         print each command, shell-quoted, instead of running it
  --help                            print this text'

die() {
  echo "error: $*" >&2
  exit 2
}

# The comment block under the script's first line is its usage.
usage() {
  awk 'NR == 1 { next } /^#/ { sub(/^# ?/, ""); print; next } { exit }' "$0"
  echo "$COMMON_HELP"
}

# Quotes the words as Python's shlex.join does, so a --dry-run line pastes back into a shell.
quote() {
  local word safe='^[A-Za-z0-9_@%+=:,./-]+$' quoted=() escaped
  for word in "$@"; do
    if [[ $word =~ $safe ]]; then
      quoted+=("$word")
    else
      escaped=${word//\'/\'\"\'\"\'}
      quoted+=("'$escaped'")
    fi
  done
  echo "${quoted[*]}"
}

run() {
  if ((dry_run)); then
    quote "$@"
  else
    "$@"
  fi
}

# The options every script takes; anything else is an error.
common_option() {
  case $1 in
    --project=*) project=${1#*=} ;;
    --zone=*) zone=${1#*=} ;;
    --name=*) name=${1#*=} ;;
    --dry-run) dry_run=1 ;;
    -h | --help) usage; exit 0 ;;
    *) die "unknown option $(quote "$1") (values go as --option=VALUE); run $0 --help" ;;
  esac
}

require_tpu() {
  [[ -n $project ]] || die "no Google Cloud project; pass --project=PROJECT or set TPU_PROJECT"
  [[ -n $zone ]] || die "no zone; pass --zone=ZONE or set TPU_ZONE"
  [[ -n $name ]] || die "no TPU name; pass --name=NAME or set TPU_NAME"
}

# Runs one shell command line on the given workers ("all", or a worker number) over gcloud ssh.
on_workers() {
  run gcloud compute tpus tpu-vm ssh "$name" --project="$project" --zone="$zone" \
    --worker="$1" --command="$2"
}

# gs://BUCKET[/] or BUCKET -> BUCKET, checked against Cloud Storage's bucket names, so that it goes
# into the workers' command lines unquoted.
bucket_name() {
  local bucket=${1#gs://}
  bucket=${bucket%/}
  [[ $bucket =~ ^[a-z0-9][a-z0-9._-]{1,221}[a-z0-9]$ ]] ||
    die "$(quote "$1") does not name a Cloud Storage bucket (gs://NAME; a-z, 0-9, ., _, -)"
  echo "$bucket"
}

# The shell command that mounts gs://$1 at ~/gcs/$1 on a worker unless it is mounted there; $2, if
# given, runs first when it is not. Orbax renames each checkpoint's temporary directory into
# place: FUSE refuses to rename a non-empty directory unless --rename-dir-limit allows it (on a
# bucket with hierarchical namespace the rename is atomic, elsewhere a copy and delete per file).
mount_bucket() {
  local dir="$GCS_DIR/$1"
  echo "if ! mountpoint -q $dir; then ${2:+$2; }mkdir -p $dir" \
    "&& gcsfuse --implicit-dirs --rename-dir-limit=200000 $1 $dir; fi"
}
