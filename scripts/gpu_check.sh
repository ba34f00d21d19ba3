#!/usr/bin/env bash
# The device checks of a GPU machine in one prepared command (a few minutes on an H200):
#
#   bash scripts/gpu_check.sh OUT
#   e.g. with the device tool: run(command='bash scripts/gpu_check.sh "$OUT"', timeout_s=540)
#
# 1. tests/test_devices.py on cuda: every layer's forward, gradients and running statistics
#    equal the CPU's, and IEBN, BA and DynamicConv networks train;
# 2. the benchmark, eager and torch.compile'd, with the epoch times of ResNet-18 and ResNet-20
#    on 50,000 CIFAR-size images (targets 1.3 s and 0.45 s on an H200);
# PY, DEVICE, EPOCH_IMAGES and BENCH_ARGS are for a dry run on a CPU: PY=.venv/bin/python DEVICE=cpu
# EPOCH_IMAGES=256 BENCH_ARGS="--methods SE --batch-size 8 --image-shape 3,16,16 --steps 1 --repeats 1 --amp off".
# each step's output and the benchmark's JSON records go to OUT (back here, copy
# OUT/bench/*.json into book/benchmark/ and run `python -m booktools.book overview`).
set -uo pipefail
out=${1:?usage: bash scripts/gpu_check.sh OUT}
mkdir -p "$out/bench"
py=${PY:-python3} device=${DEVICE:-cuda}
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
"$py" -c "import torch; print(torch.__version__, torch.cuda.get_device_name() if torch.cuda.is_available() else 'no GPU')" | tee "$out/device.txt"
status=0
step() {  # name, command...: run it, keep its output, remember a failure and go on
  local name=$1; shift
  local start; start=$(date +%s)
  "$@" > "$out/$name.txt" 2>&1; local rc=$?
  echo "$name: rc=$rc, $(( $(date +%s) - start )) s" | tee -a "$out/summary.txt"
  tail -3 "$out/$name.txt"
  [ "$rc" = 0 ] || status=1
}
step device-tests "$py" -m pytest -q -p no:cacheprovider tests/test_devices.py
step bench-eager "$py" -m attnlib.bench --device "$device" --out-dir "$out/bench" --epoch-times resnet18 resnet20 --epoch-images "${EPOCH_IMAGES:-50000}" ${BENCH_ARGS:-}
step bench-compiled "$py" -m attnlib.bench --device "$device" --compile --out-dir "$out/bench" --epoch-times resnet18 resnet20 --epoch-images "${EPOCH_IMAGES:-50000}" ${BENCH_ARGS:-}
exit $status
