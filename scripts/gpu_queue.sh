#!/usr/bin/env bash
# Train book-profile runs on one GPU, many processes at a time, for a fixed time, and pack
# what finished (and the checkpoints of what did not) into OUT as tar files of < 16 MiB.
#
#   bash scripts/gpu_queue.sh OUT SECONDS WORKERS PLAN...
#   e.g. (device tool, data/ carried; the code travels without .git, so name its commit):
#   ATTNLIB_GIT_COMMIT=<git rev-parse --short=10 HEAD> bash scripts/gpu_queue.sh "$OUT" 480 14 00:main:ResNet-20 00:convergence
#
# PROFILE and DEVICE (default book, cuda) are for trying it on a CPU: PROFILE=smoke DEVICE=cpu.
#
# Measured on an H200 (2026-12-04, 8 processes, ResNet-20 with SE or BA on 60,000 Fashion-MNIST
# images): about 3,800 training images/s per process, 30,000 in all (16 s an epoch), the GPU
# 100 % busy from 30-45 s after the start, so each 30-epoch run takes about 8 minutes. 450 s
# brought eight such runs to epochs 21-25, back as checkpoints that the CPU queue finishes:
# with fewer processes, more runs finish there.
# The device tool sends at most 64 MiB, and the tracked weights and checkpoints are far more:
# `bash scripts/device_tree.sh hide` before the call (carry data/, real files, not links) and
# `bash scripts/device_tree.sh restore` after it.
# Runs already recorded in book/results are skipped, so the GPU trains only what is missing;
# only the records travel, so a run the CPU queue has checkpointed starts again from epoch 1
# here. Give the GPU the PLAN items the CPU queue (`make queue`, BOOK_PLAN's order) reaches
# last, so that the two do not train the same runs. Back here, with the CPU queue stopped:
# python scripts/records_archive.py unpack FILES_AT book/results
set -uo pipefail
out=$1 seconds=$2 workers=$3
shift 3
plan=()
for item in "$@"; do plan+=(--plan "$item"); done
results=$(mktemp -d)
cp book/results/*.json "$results"/ 2>/dev/null
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
mkdir -p "$out"
python3 -c "import torch; print(torch.__version__, torch.cuda.get_device_name() if torch.cuda.is_available() else \"no GPU\")"
command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,memory.used,memory.total --format=csv
start=$(date +%s)
timeout --signal=TERM --kill-after=30 "$seconds" python3 -m attnlib.run --profile "${PROFILE:-book}" --device "${DEVICE:-cuda}" \
    --workers "$workers" --threads 1 --results-dir "$results" "${plan[@]}" 2>&1 | tee "$out/queue.log"
echo "queue stopped after $(( $(date +%s) - start )) s" | tee -a "$out/queue.log"
python3 -m attnlib.run --profile "${PROFILE:-book}" --results-dir "$results" --status "${plan[@]}" | tee -a "$out/queue.log"
python3 scripts/records_archive.py pack "$results" "$out" --skip-from book/results
