#!/usr/bin/env bash
# Every GPU check in one run. By default the steps of the open GPU issues, whose limits add up to 8 minutes
# (the device tool lends 15 minutes a task, the machine's start and the transfers included): issue 26's CIFAR-10
# record (5 seeds, 120 s), issue 25's data pipeline (120 s) and its CUDA tests (45 s), then the like-for-like
# ResNet-50 training (120 s) and inference (75 s) pairs. STEPS picks others, in this order:
# STEPS="record data train infer resnet20" (resnet20: the cifar-fast runs, eager and compiled, 330 s more),
# or STEPS=all.
#
#   benchmarks/gpu.sh OUT_DIR [CIFAR10_JPEG_DIR]
#
# Needs python3 with torch and torchvision (the lent machine has them) and this checkout. What else resnets
# imports and the machine lacks (webdataset, braceexpand) is installed from the wheels in .gpu/wheels (no
# network there), and every import is checked before the first step. CIFAR10_JPEG_DIR defaults to
# .gpu/cifar10-jpeg, unpacked from .gpu/cifar10-jpeg.tgz if that is what the call carried. Prepare .gpu/ here:
#
#   mkdir -p .gpu && tar czf .gpu/cifar10-jpeg.tgz -C ../shared/data cifar10-jpeg
#   pip download --no-deps --only-binary=:all: -d .gpu/wheels webdataset braceexpand torchcodec
#
# and carry [".gpu"]. Each step has its own time limit, so one failure cannot eat the budget; results go to
# OUT_DIR as JSON and logs, and a summary is printed last.
set -uo pipefail
out=${1:?usage: benchmarks/gpu.sh OUT_DIR [CIFAR10_JPEG_DIR]}
data=${2:-.gpu/cifar10-jpeg}
mkdir -p "$out"
cd "$(dirname "$0")/.."
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
py=${PYTHON:-python3}
status=0

if compgen -G ".gpu/wheels/*.whl" >/dev/null; then
    "$py" -m pip install -q --no-index --no-deps --no-compile --target /tmp/resnets-site .gpu/wheels/*.whl || exit 1
    export PYTHONPATH="$PYTHONPATH:/tmp/resnets-site"
fi
"$py" - <<'PY' || { echo "missing packages: put their wheels in .gpu/wheels (see the top of this script)"; exit 1; }
import importlib, importlib.util, sys
names = ["torch", "torchvision", "safetensors", "numpy", "PIL", "tqdm", "matplotlib", "yaml", "webdataset",
         "braceexpand", "resnets", "resnets.data.shards", "resnets.train"]
missing = [n for n in names if importlib.util.find_spec(n.split(".")[0]) is None]
if missing:
    sys.exit("not importable: " + ", ".join(missing))
for n in names:
    importlib.import_module(n)
PY
if [ ! -d "$data/train" ] && [ -f .gpu/cifar10-jpeg.tgz ]; then
    tar xzf .gpu/cifar10-jpeg.tgz -C .gpu
fi

steps=${STEPS:-record data train infer}
[ "$steps" = all ] && steps="record data train infer resnet20"
want() { [[ " $steps " == *" $1 "* ]]; }

step() {  # step NAME SECONDS COMMAND...
    local name=$1 limit=$2; shift 2
    echo "== $name (limit ${limit}s)"
    local t0=$SECONDS
    timeout "$limit" "$@" >"$out/$name.log" 2>&1
    local rc=$?
    echo "   rc=$rc in $((SECONDS - t0))s"; tail -n 3 "$out/$name.log"
    [ $rc -eq 0 ] || status=1
}

nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv >"$out/gpu.txt" 2>&1
"$py" -c 'import torch, torchvision; print(torch.__version__, torchvision.__version__, torch.cuda.get_device_name())' \
    >>"$out/gpu.txt" 2>&1
cat "$out/gpu.txt"

if [ ! -d "$data/train" ] && { want record || want data || want resnet20; }; then
    echo "== CIFAR-10 steps skipped: no data at $data"; status=1
fi
# 1. Issue 26: resnet9 with the cifar-record recipe, 5 seeds (mean +- sd accuracy with TTA, CUDA-event time a run).
if want record && [ -d "$data/train" ]; then
    step cifar_record_resnet9 120 "$py" benchmarks/cifar_record.py --model resnet9 --data "$data" --seeds 5 \
        --device cuda --cache-dir "$out/cache"
fi
# 2. Issue 25, the data pipeline on an ImageNet-size folder built from the CIFAR copy (1,280 JPEGs of 500x375):
#    the loaders alone per worker, (a) ResNet-50 alone on device-resident data, (c) the plain torchvision loop
#    feeding it, (b) resnets train end to end; then the data tests that need CUDA (side-stream copy).
if want data && [ -d "$data/train" ]; then
    step data_pipeline 120 "$py" benchmarks/data_pipeline.py --device cuda --cifar "$data" --images 1280 \
        --folder "$out/imagenet-size" --workers 15 --batch 256 --batches 4
    rm -rf "$out/imagenet-size"
    if "$py" -c "import pytest" 2>/dev/null; then
        step data_cuda_tests 45 "$py" -m pytest -q -p no:cacheprovider tests/test_data_device.py
    fi
fi
# 3. ResNet-50 training, synthetic data, like for like: ours as resnets train runs it by default (bf16 autocast,
#    channels_last), eager and compiled, against torchvision with the same recipe, eager and compiled
#    (and torchvision eager fp32 with PyTorch's defaults, for context).
want train && step train_resnet50 120 "$py" benchmarks/gpu_train.py --model resnet50 --batch 256 --steps 20
# 4. ResNet-50 inference, batch 256, the same pairs, plus both with BN folded and bf16 weights.
want infer && step infer_resnet50 75 "$py" benchmarks/gpu_infer.py --batch 256 --iters 30
# 5. ResNet-20 on full CIFAR-10 with the fast recipe (wall time and test accuracy), then with --compile.
if want resnet20 && [ -d "$data/train" ]; then
    step cifar10_resnet20 180 "$py" -m resnets train --model resnet20 --data "$data" --recipe cifar-fast \
        --device cuda --precision bf16 --out "$out/cifar10_resnet20" --cache-dir "$out/cache" --no-progress --json
    step cifar10_resnet20_compiled 150 "$py" -m resnets train --model resnet20 --data "$data" --recipe cifar-fast \
        --device cuda --precision bf16 --compile --out "$out/cifar10_resnet20_compiled" --cache-dir "$out/cache" \
        --no-progress --json
fi
rm -rf "$out/cache"

echo "== summary"
for f in "$out"/train_resnet50.log "$out"/infer_resnet50.log; do  # the ratios (or the last row, if cut short)
    grep -h '^{' "$f" 2>/dev/null | tail -n 1 | "$py" -c 'import json, sys
line = sys.stdin.read().strip()
if line:
    d = json.loads(line)
    print(d.get("benchmark", d.get("row")), d.get("precision", ""), json.dumps(d.get("ratios", d)))'
done
for f in "$out"/cifar10_resnet20.log "$out"/cifar10_resnet20_compiled.log; do
    grep -h '^epoch 30:' "$f" 2>/dev/null | tail -n 1
done
tail -n 1 "$out/cifar_record_resnet9.log" 2>/dev/null
tail -n 2 "$out/data_pipeline.log" 2>/dev/null
exit $status
