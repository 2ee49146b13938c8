#!/usr/bin/env bash
# Slurm training with train_net.py (the counterpart of the official tools/run_dist_slurm.sh).
# Detectron2 spawns one process per GPU itself, so srun starts one task per node; each task
# derives its machine rank from SLURM_NODEID and the master address from the first node of
# SLURM_JOB_NODELIST.
#
#   ./tools/run_dist_slurm.sh PARTITION deta_r50 8 --config-file configs/deta_R_50_5scale_12ep.yaml
#   ./tools/run_dist_slurm.sh PARTITION deta_swin 16 --config-file configs/deta_swin_L_5scale_24ep.yaml
#
# Everything after GPUS goes to train_net.py. Environment: GPUS_PER_NODE (8), CPUS_PER_TASK
# (CPU cores per GPU, 4), MASTER_PORT (29500), SRUN_ARGS (extra srun flags), PYTHON (python).
set -euo pipefail

if [ $# -lt 3 ]; then
  echo "usage: $0 PARTITION JOB_NAME GPUS [train_net.py arguments ...]" >&2
  exit 2
fi
PARTITION=$1
JOB_NAME=$2
GPUS=$3
shift 3
GPUS_PER_NODE=${GPUS_PER_NODE:-8}
if [ "$GPUS" -lt "$GPUS_PER_NODE" ]; then
  GPUS_PER_NODE=$GPUS
fi
if [ $((GPUS % GPUS_PER_NODE)) -ne 0 ]; then
  echo "GPUS=$GPUS is not a multiple of GPUS_PER_NODE=$GPUS_PER_NODE" >&2
  exit 2
fi
NNODES=$((GPUS / GPUS_PER_NODE))
CPUS_PER_TASK=${CPUS_PER_TASK:-4}
export MASTER_PORT=${MASTER_PORT:-29500}
export DETA_GPUS_PER_NODE=$GPUS_PER_NODE DETA_NNODES=$NNODES
export DETA_PYTHON=${PYTHON:-python}
export DETA_TRAIN_NET
DETA_TRAIN_NET="$(cd "$(dirname "$0")/.." && pwd)/train_net.py"

# The single quotes are deliberate: the variables expand inside each task, on its own node.
# shellcheck disable=SC2016,SC2086
srun -p "$PARTITION" \
  --job-name="$JOB_NAME" \
  --nodes="$NNODES" \
  --ntasks="$NNODES" \
  --ntasks-per-node=1 \
  --gres="gpu:${GPUS_PER_NODE}" \
  --cpus-per-task=$((CPUS_PER_TASK * GPUS_PER_NODE)) \
  --kill-on-bad-exit=1 \
  ${SRUN_ARGS:-} \
  bash -c '
    MASTER_ADDR=$(scontrol show hostnames "$SLURM_JOB_NODELIST" | head -n 1)
    exec "$DETA_PYTHON" "$DETA_TRAIN_NET" \
      --num-gpus "$DETA_GPUS_PER_NODE" \
      --num-machines "$DETA_NNODES" \
      --machine-rank "$SLURM_NODEID" \
      --dist-url "tcp://${MASTER_ADDR}:${MASTER_PORT}" \
      "$@"
  ' deta_train "$@"
