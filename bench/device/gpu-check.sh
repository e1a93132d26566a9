#!/usr/bin/env bash
# One prepared run on a lent GPU machine (the workplace's `device` tool): the encoder's documents a second on the
# card for negmine and sentence-transformers (issue 10), and the full-length downstream harness, fp32, TF32 off,
# deterministic kernels (issue 14). The machine has torch and sentence-transformers but not `datasets`, negmine's
# other dependencies, our data or the packaged model, and nothing there can be downloaded, so what it needs
# travels in the ignored folder .dev (made by bench/device/prepare.sh). The model (91 MB) is larger than one
# call may carry (64 MiB), so it travels in two parts: `stash` keeps the first part and the rest of .dev on the
# machine (and smoke-tests both benchmarks with a tiny random model); `run`, on the same warm machine, joins it
# with the second part and measures.
#   stash carry: .dev/model-a .dev/whl .dev/scifact .dev/work .dev/tiny .dev/model-files .dev/model.sha256
#   run carry:   .dev/model-b
#   bash bench/device/gpu-check.sh stash|run [seconds]
set -u
mode=$1
budget=${2:-540}
start=$(date +%s)
out=${OUT:-/tmp/negmine-gpu-out}
stash=/root/negmine-stash
mkdir -p "$out" "$stash/dev"
if [ "$mode" = stash ]; then
    cp -r .dev/whl .dev/scifact .dev/work .dev/model-files .dev/model.sha256 "$stash/dev/"
    cp .dev/model-a/part "$stash/part-a" && echo "stashed $(stat -c %s "$stash/part-a") bytes of the model"
else
    for x in whl scifact work model-files model.sha256; do [ -e .dev/$x ] || cp -r "$stash/dev/$x" .dev/; done
fi
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .dev/whl/*.whl \
    || { echo "wheel install failed"; exit 1; }
export PYTHONPATH=/tmp/site:$PWD PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false \
    NEGMINE_BENCH_SCIFACT=$PWD/.dev/scifact
rows=zero-shot,in-batch,bm25-top,dense-top,hybrid,nv-retriever,perc-pos-top,recommended,simans,dense-skip2
rows=$rows,dense-top3-ntuple,dense-top3-triplet,perc-pos-top100
left() { echo $((budget - ($(date +%s) - start))); }

if [ "$mode" = stash ]; then
    nvidia-smi -L
    python3 -c "
import importlib.metadata as m
for p in ('torch','sentence-transformers','transformers','accelerate','pyarrow','fsspec','huggingface-hub','datasets'):
    print(p, m.version(p))
import datasets, torch; print('cuda', torch.cuda.is_available(), torch.cuda.get_device_name(0))"
    export NEGMINE_BENCH_MODEL=$PWD/.dev/tiny
    time python3 bench/downstream.py --device cuda --no-mine --work .dev/work --json "$out/smoke.json" \
        --rows zero-shot,in-batch,dense-top,dense-top3-ntuple --seeds 1 --max-steps 3 2>&1 | tail -15
    time python3 bench/dense.py --encode-only --device cuda --model .dev/tiny --data .dev/scifact --docs 256 --repeat 1 \
        --precisions fp32,auto --json "$out/encode-smoke.json" 2>&1 | tail -8
    exit 0
fi

# run: the real model, joined from its two halves and checked against the packaged file's hash
model=/tmp/minilm
mkdir -p $model && cp -r .dev/model-files/. $model/
[ -f "$stash/part-a" ] || { echo "first half missing: the machine was not the stashing one"; exit 3; }
cat "$stash/part-a" .dev/model-b/part > $model/model.safetensors
echo "$(cat .dev/model.sha256)  $model/model.safetensors" | sha256sum -c - || exit 3
nvidia-smi --query-gpu=name,memory.total,clocks.sm,clocks.max.sm --format=csv
timeout 150 python3 bench/dense.py --encode-only --device cuda --model $model --data .dev/scifact --docs 5183 --repeat 3 \
    --precisions fp32,auto --batch-tokens 8192,65536 --json "$out/dense-encode-gpu.json" 2>&1 | tail -9
export NEGMINE_BENCH_MODEL=$model
for seeds in 3 5; do  # every row's three seeds first, then more seeds while the lease lasts
    t=$(($(left) - 15))
    [ $t -gt 30 ] || break
    timeout $t python3 bench/downstream.py --device cuda --no-mine --work .dev/work --json "$out/downstream-gpu.json" \
        --rows $rows --seeds $seeds 2>&1 | grep -v "it/s\]" | tail -40
done
echo "done after $(($(date +%s) - start)) s"
