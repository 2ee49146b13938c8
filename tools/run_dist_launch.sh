#!/usr/bin/env bash
# Multi-GPU / multi-node training with train_net.py (the counterpart of the official
# tools/run_dist_launch.sh). Run it once per machine; every machine passes the same GPUS total.
#
#   GPUS_PER_NODE=8 ./tools/run_dist_launch.sh 8 --config-file configs/deta_R_50_5scale_12ep.yaml
#   # two machines, 16 GPUs: on machine 0 and machine 1 respectively
#   NODE_RANK=0 MASTER_ADDR=10.0.0.1 ./tools/run_dist_launch.sh 16 --config-file CONFIG
#   NODE_RANK=1 MASTER_ADDR=10.0.0.1 ./tools/run_dist_launch.sh 16 --config-file CONFIG
#
# Everything after GPUS goes to train_net.py (--resume, --eval-only, KEY VALUE overrides).
# Environment: GPUS_PER_NODE (default min(GPUS, 8)), NODE_RANK (0), MASTER_ADDR (127.0.0.1),
# MASTER_PORT (29500), PYTHON (python).
set -euo pipefail

if [ $# -lt 1 ]; then
  echo "usage: $0 GPUS [train_net.py arguments ...]" >&2
  exit 2
fi
GPUS=$1
shift
if [ "$GPUS" -lt 8 ]; then
  GPUS_PER_NODE=${GPUS_PER_NODE:-$GPUS}
else
  GPUS_PER_NODE=${GPUS_PER_NODE:-8}
fi
if [ $((GPUS % GPUS_PER_NODE)) -ne 0 ]; then
  echo "GPUS=$GPUS is not a multiple of GPUS_PER_NODE=$GPUS_PER_NODE" >&2
  exit 2
fi
NNODES=$((GPUS / GPUS_PER_NODE))
NODE_RANK=${NODE_RANK:-0}
MASTER_ADDR=${MASTER_ADDR:-127.0.0.1}
MASTER_PORT=${MASTER_PORT:-29500}
REPO=$(cd "$(dirname "$0")/.." && pwd)

set -x
exec "${PYTHON:-python}" "$REPO/train_net.py" \
  --num-gpus "$GPUS_PER_NODE" \
  --num-machines "$NNODES" \
  --machine-rank "$NODE_RANK" \
  --dist-url "tcp://${MASTER_ADDR}:${MASTER_PORT}" \
  "$@"
