#!/usr/bin/env bash
# Train on one SLURM node and carry on across time limits: submit from the project folder,
#
#     sbatch examples/slurm_requeue.sh --model transformer --config small --epochs 50
#
# Every start and every restart runs the same command (SLURM keeps the script's arguments), and
# train.py resumes the run from its latest checkpoint. Five minutes before the time limit SLURM
# sends SIGUSR1 to this script; the script passes it to training, which saves at the next step
# and exits, and then puts the job back in the queue. A run that finishes, or fails for any
# other reason, is not requeued.
#
#SBATCH --job-name=train
#SBATCH --nodes=1
#SBATCH --ntasks=1
#SBATCH --time=04:00:00
#SBATCH --requeue
#SBATCH --signal=B:USR1@300
#SBATCH --open-mode=append
#SBATCH --output=%x-%j.out
#
# --requeue        the job may go back to the queue (by scontrol requeue, or on preemption)
# --signal=B:USR1@300   SIGUSR1 to this batch script (B:) 300 s before the time limit: time
#                  to save; a medium model's checkpoint takes seconds
# --open-mode=append    a restart appends to the same log instead of truncating it
#
# No GPU or CPU request here, so that the script runs on any partition (one without GPUs
# rejects a GPU request). Add them on the command line:
#
#     sbatch --gpus-per-node=4 --cpus-per-task=32 examples/slurm_requeue.sh --model ...
#
# Processes: one per GPU that SLURM granted on the node (SLURM_GPUS_ON_NODE, else
# SLURM_GPUS_PER_NODE), 1 without GPUs; NPROC overrides. 1 runs plain python.

set -uo pipefail
cd "${SLURM_SUBMIT_DIR:-.}"

log() {
    echo "$(date '+%F %T') slurm_requeue: $*"
}

gpus=${SLURM_GPUS_ON_NODE:-${SLURM_GPUS_PER_NODE:-1}}
nproc=${NPROC:-${gpus##*:}}   # SLURM_GPUS_PER_NODE may name the type: "a100:4"
if [ "$nproc" -gt 1 ]; then
    # torchrun (as a module: no PATH lookup) forwards SIGUSR1 to every rank and gives them
    # --shutdown-timeout seconds to save and exit before it would kill them.
    launch=(python -m torch.distributed.run --standalone --nproc_per_node="$nproc"
            --signals-to-handle=SIGTERM,SIGINT,SIGHUP,SIGQUIT,SIGUSR1 --shutdown-timeout=270)
else
    launch=(python)
fi

# SIGUSR1 is the time-limit warning: save, stop, requeue. SIGTERM makes training save and
# stop, but the job is not requeued from here: a cancelled job must stay cancelled (and
# preemption requeues by itself when allowed).
requeue_after_stop=0
pass_on() {
    log "$1 received: asking training to save and stop"
    kill "-$1" "$training" 2>/dev/null
}
on_term() {
    # When SLURM ends the whole job (scancel, the time limit, preemption), the job is no
    # longer RUNNING and SLURM's SIGTERM has reached every process of it, training included:
    # a second one from here would cut short torchrun's wait for its ranks to save. A
    # SIGTERM to this script alone (scancel --batch), or outside SLURM, is passed on.
    local state=""
    if [ -n "${SLURM_JOB_ID:-}" ]; then
        state=$(squeue --noheader --format=%T --jobs="$SLURM_JOB_ID" 2>/dev/null)
    fi
    if [ -z "$state" ] || [ "$state" = RUNNING ]; then
        pass_on TERM
    else
        log "TERM received: SLURM is ending the job ($state) and has signalled training itself"
    fi
}
trap 'requeue_after_stop=1; pass_on USR1' USR1
trap on_term TERM

log "job ${SLURM_JOB_ID:-?} (restart ${SLURM_RESTART_COUNT:-0}): ${launch[*]} train.py $*"
"${launch[@]}" train.py "$@" &
training=$!

# `wait` returns early when a trapped signal arrives: keep waiting while training runs.
while true; do
    wait "$training"
    status=$?
    if [ "$status" -le 128 ] || ! kill -0 "$training" 2>/dev/null; then
        break
    fi
done

if [ "$requeue_after_stop" = 1 ] && [ "$status" -ne 0 ]; then
    # Stopped early, after saving (train.py exits 138; torchrun reports that as 1). Had the
    # save failed, the previous checkpoint is still there to resume from.
    log "training stopped with status $status; requeueing job ${SLURM_JOB_ID:-?}"
    # The requeue makes SLURM end this attempt with SIGTERM to this script: training has
    # already exited, so there is nothing to pass on, and saying so would be false.
    trap '' TERM USR1
    scontrol requeue "${SLURM_JOB_ID:?not running under SLURM}"
fi
log "training exited with status $status"
exit "$status"
