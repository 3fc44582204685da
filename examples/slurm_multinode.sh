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
#SBATCH --gpus-per-node=4
#SBATCH --cpus-per-task=32
#SBATCH --time=12:00:00
#SBATCH --requeue
#SBATCH --signal=B:USR1@300
#SBATCH --open-mode=append
#SBATCH --output=%x-%j.out

set -uo pipefail
cd "${SLURM_SUBMIT_DIR:-.}"

# Rendezvous: the first node of the allocation hosts torchrun's c10d store. The job id names
# the rendezvous, so a requeued job (same id, maybe other nodes) meets afresh.
head_node=$(scontrol show hostnames "$SLURM_JOB_NODELIST" | head -n 1)
port=${RDZV_PORT:-29500}
gpus=${SLURM_GPUS_ON_NODE:-1}

requeue_after_stop=0
pass_on() {
    echo "$(date '+%F %T') slurm_multinode: $1 received: asking training to save and stop"
    # srun passes the signal to its task on every node: torchrun, which passes it to its
    # ranks (--signals-to-handle) and waits up to --shutdown-timeout for them to exit.
    kill "-$1" "$training" 2>/dev/null
}
trap 'requeue_after_stop=1; pass_on USR1' USR1
trap 'pass_on TERM' TERM

echo "$(date '+%F %T') slurm_multinode: job $SLURM_JOB_ID (restart ${SLURM_RESTART_COUNT:-0})" \
     "on $SLURM_JOB_NUM_NODES nodes x $gpus processes, rendezvous $head_node:$port"
srun --kill-on-bad-exit=1 \
    python -m torch.distributed.run \
        --nnodes="$SLURM_JOB_NUM_NODES" --nproc_per_node="$gpus" \
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
    echo "$(date '+%F %T') slurm_multinode: training stopped with status $status; requeueing"
    scontrol requeue "$SLURM_JOB_ID"
fi
echo "$(date '+%F %T') slurm_multinode: training exited with status $status"
exit "$status"
