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
#SBATCH --cpus-per-task=8
#SBATCH --gpus-per-node=1
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
# Processes: one per GPU on the node (NPROC overrides; 1 runs plain python).

set -uo pipefail
cd "${SLURM_SUBMIT_DIR:-.}"

nproc=${NPROC:-${SLURM_GPUS_ON_NODE:-1}}
if [ "$nproc" -gt 1 ]; then
    # torchrun (as a module: no PATH lookup) forwards SIGUSR1 to every rank and gives them
    # --shutdown-timeout seconds to save and exit before it would kill them.
    launch=(python -m torch.distributed.run --standalone --nproc_per_node="$nproc"
            --signals-to-handle=SIGTERM,SIGINT,SIGHUP,SIGQUIT,SIGUSR1 --shutdown-timeout=270)
else
    launch=(python)
fi

# SIGUSR1 is the time-limit warning: save, stop, requeue. SIGTERM (scancel, or preemption,
# which SLURM requeues by itself when allowed) is passed on so that training saves, but the
# job is not requeued from here: a cancelled job must stay cancelled.
requeue_after_stop=0
pass_on() {
    echo "$(date '+%F %T') slurm_requeue: $1 received: asking training to save and stop"
    kill "-$1" "$training" 2>/dev/null
}
trap 'requeue_after_stop=1; pass_on USR1' USR1
trap 'pass_on TERM' TERM

echo "$(date '+%F %T') slurm_requeue: job ${SLURM_JOB_ID:-?} (restart ${SLURM_RESTART_COUNT:-0}):" \
     "${launch[*]} train.py $*"
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
    echo "$(date '+%F %T') slurm_requeue: training stopped with status $status; requeueing" \
         "job ${SLURM_JOB_ID:-?}"
    scontrol requeue "${SLURM_JOB_ID:?not running under SLURM}"
fi
echo "$(date '+%F %T') slurm_requeue: training exited with status $status"
exit "$status"
