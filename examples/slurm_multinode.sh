#!/usr/bin/env bash
# Train on several SLURM nodes with torchrun, one torchrun per node, rendezvous on the first
# node; submit from the project folder (on a file system every node sees):
#
#     sbatch examples/slurm_multinode.sh --model transformer --config large --epochs 20
#
# Same contract as slurm_requeue.sh: every (re)start runs the same command and resumes from
# the latest checkpoint; SIGUSR1 five minutes before the time limit makes every rank stop at
# the same step, rank 0 saves, and the job requeues itself.
#
#SBATCH --job-name=train-multinode
#SBATCH --nodes=2
#SBATCH --ntasks-per-node=1
#SBATCH --time=12:00:00
#SBATCH --requeue
#SBATCH --signal=B:USR1@300
#SBATCH --open-mode=append
#SBATCH --output=%x-%j.out
#
# No GPU or CPU request here, so that the script runs on any partition (one without GPUs
# rejects a GPU request). Add them on the command line:
#
#     sbatch --gpus-per-node=4 --cpus-per-task=32 examples/slurm_multinode.sh --model ...
#
# Processes per node: one per GPU that SLURM granted (SLURM_GPUS_ON_NODE, else
# SLURM_GPUS_PER_NODE), 1 without GPUs; NPROC overrides.

set -uo pipefail
cd "${SLURM_SUBMIT_DIR:-.}"

log() {
    echo "$(date '+%F %T') slurm_multinode: $*"
}

# Rendezvous: the first node of the allocation hosts torchrun's c10d store. The job id names
# the rendezvous, so a requeued job (same id, maybe other nodes) meets afresh.
head_node=$(scontrol show hostnames "$SLURM_JOB_NODELIST" | head -n 1)
port=${RDZV_PORT:-29500}
gpus=${SLURM_GPUS_ON_NODE:-${SLURM_GPUS_PER_NODE:-1}}
nproc=${NPROC:-${gpus##*:}}   # SLURM_GPUS_PER_NODE may name the type: "a100:4"

requeue_after_stop=0
pass_on() {
    log "$1 received: asking training to save and stop"
    # To the tasks of the training step (torchrun on every node, which passes it on to its
    # ranks), through SLURM, and not to srun: srun takes SIGTERM as "forcing job
    # termination" and SIGKILLs the tasks, save or not. The step is this script's only
    # srun, step 0. When SLURM cancels the whole job (scancel, preemption) it has signalled
    # the step itself and refuses this request, quietly: one signal reaches torchrun, not two.
    scancel --signal="$1" "$SLURM_JOB_ID.0" 2>/dev/null
}
trap 'requeue_after_stop=1; pass_on USR1' USR1
trap 'pass_on TERM' TERM

log "job $SLURM_JOB_ID (restart ${SLURM_RESTART_COUNT:-0}) on $SLURM_JOB_NUM_NODES nodes x" \
    "$nproc processes, rendezvous $head_node:$port"
srun --kill-on-bad-exit=1 \
    python -m torch.distributed.run \
        --nnodes="$SLURM_JOB_NUM_NODES" --nproc_per_node="$nproc" \
        --rdzv_backend=c10d --rdzv_endpoint="$head_node:$port" --rdzv_id="$SLURM_JOB_ID" \
        --signals-to-handle=SIGTERM,SIGINT,SIGHUP,SIGQUIT,SIGUSR1 --shutdown-timeout=270 \
        train.py "$@" &
training=$!

while true; do
    wait "$training"
    status=$?
    if [ "$status" -le 128 ] || ! kill -0 "$training" 2>/dev/null; then
        break
    fi
done

if [ "$requeue_after_stop" = 1 ] && [ "$status" -ne 0 ]; then
    log "training stopped with status $status; requeueing job $SLURM_JOB_ID"
    # The requeue makes SLURM end this attempt with SIGTERM to this script: training has
    # already exited, so there is nothing to pass on, and saying so would be false.
    trap '' TERM USR1
    scontrol requeue "$SLURM_JOB_ID"
fi
log "training exited with status $status"
exit "$status"
