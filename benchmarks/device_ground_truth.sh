#!/usr/bin/env bash
# Ground truth on a lent GPU machine (the `device` tool): many small nets trained at once, rows back here.
#
#   here, once:   echo /.device/ >> .git/info/exclude && mkdir -p .device/fashion-mnist .device/wheels &&
#                 cp /usr/share/datasets/fashion-mnist/*.gz .device/fashion-mnist/ &&
#                 pip download --no-deps --only-binary=:all: -d .device/wheels platformdirs
#                 (the device image has torch, numpy, networkx and tqdm; platformdirs travels as a wheel)
#   device run:   command "QNAS_GIT_COMMIT=<git rev-parse HEAD here> bash benchmarks/device_ground_truth.sh
#                 truth k20e2 8 16", carry [".device"], timeout_s 600 (the copy there has no git history:
#                 the commit names the code in each row's provenance; the workers stop after MINUTES)
#   back here:    mkdir -p /tmp/gt-in && tar xzf <files_at>/results.tgz -C /tmp/gt-in &&
#                 python benchmarks/ground_truth.py merge --from /tmp/gt-in/results
#
# One worker process per slot (one CPU thread each, all on the one GPU: small nets leave it mostly idle,
# so it takes many). Every finished stage is in the store the moment it finishes; a job cut off by the
# deadline is redone by a later run. Rows whose FP32 net was trained on the CPU and whose weights are not
# here are left to CPU workers (retraining reproduces a net at best on one kind of device).
set -u
phase=${1:?usage: device_ground_truth.sh PHASE BUDGET [MINUTES] [WORKERS]}
budget=${2:?usage: device_ground_truth.sh PHASE BUDGET [MINUTES] [WORKERS]}
minutes=${3:-8}
workers=${4:-16}
out=${OUT:-/tmp/gt-out}
mkdir -p "$out"
export QNAS_DATA_DIR="$PWD/.device" PYTHONUNBUFFERED=1
if compgen -G ".device/wheels/*.whl" > /dev/null; then
    python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .device/wheels/*.whl || exit 2
    export PYTHONPATH="/tmp/site${PYTHONPATH:+:$PYTHONPATH}"
fi
python3 -c "import qnas.data, qnas.train, qnas.finetune" || exit 2
python3 -c "import torch; assert torch.cuda.is_available(), 'no GPU'" || exit 2
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader | tee "$out/gpu.txt"
timeout --signal=TERM --kill-after=30 "$((minutes * 60))" \
    python3 benchmarks/ground_truth.py run --phase "$phase" --budget "$budget" --workers "$workers" \
    --device cuda --cache /tmp/gt-cache 2>&1 | tail -n 400 > "$out/log.txt"
tar czf "$out/results.tgz" -C benchmarks/ground_truth/v2 results
python3 benchmarks/ground_truth.py status --budget "$budget" | tee "$out/status.txt"
