#!/usr/bin/env bash
# The GPU path, proven in about 10 minutes on one CUDA GPU; every rate lands in BENCHMARKS.md.
#
#  1. torchrun (one process, NCCL) trains SimCLR on the CIFAR-10 subset end to end on CUDA, bf16,
#     channels-last, ResNet-18 at full width: training, online evaluation, checkpoint, report.
#  2. The same run for 2 epochs with train.compile=true.
#  3. benchmarks/throughput.py on CUDA: SimCLR's full step against its backbone bound, ResNet-18
#     at 32 px (the goal: >= 10,000 source images/s, two views each, on an H100-class GPU; this
#     script says whether it is met) and ResNet-50 at 224 px.
#  4. benchmarks/streaming.py on CUDA: ResNet-50 at 224 px streamed from synthetic folders of
#     256 px JPEGs with 1, 2 and 8 loader workers: whether the loader or the model is the bound,
#     and whether host memory stays flat from the smaller folder to the larger.
#
# Run from the repository root with clusterclr importable (an installed clusterclr, or
# PYTHONPATH=src):
#   bash benchmarks/gpu_check.sh                    # CIFAR=... PYTHON=... OUT=... to override
set -euo pipefail

PYTHON=${PYTHON:-python}
CIFAR=${CIFAR:-../shared/data/cifar-10-batches-py}
[ -d "$CIFAR" ] || CIFAR=shared/data/cifar-10-batches-py
OUT=${OUT:-/tmp/clusterclr-gpu-check}
RESULTS=${RESULTS:-BENCHMARKS.md}
export PYTHONPATH=${PYTHONPATH:-src}
mkdir -p "$OUT"
step() { echo; echo "== $* ($(date +%T))"; }

"$PYTHON" -c "import torch; assert torch.cuda.is_available(), 'no CUDA device'; print(torch.cuda.get_device_name(), torch.__version__)"

if [ -d "$CIFAR" ]; then
  step "1. torchrun: SimCLR on the CIFAR-10 subset, CUDA, NCCL, bf16, channels-last"
  GPU_RUN=(--config configs/cifar10_subset_simclr.yaml --data-root "$CIFAR"
           --set model.width=1.0 optim.batch_size=512 train.device=cuda train.precision=bf16 train.channels_last=true
                 train.progress=false train.eval_every=10)
  rm -rf "$OUT/simclr" "$OUT/simclr-compiled"
  torchrun --standalone --nproc_per_node=1 -m clusterclr train "${GPU_RUN[@]}" --epochs 30 --out "$OUT/simclr"
  test -f "$OUT/simclr/report.html" && test -f "$OUT/simclr/metrics.json"

  step "2. the same with train.compile=true (2 epochs)"
  torchrun --standalone --nproc_per_node=1 -m clusterclr train "${GPU_RUN[@]}" train.compile=true train.report=false \
      --epochs 2 --out "$OUT/simclr-compiled"

  "$PYTHON" - "$OUT" "$RESULTS" <<'EOF'
import json, statistics, sys
sys.path.insert(0, "benchmarks")
from machine import append_result
out, results = sys.argv[1:]
rows = ["| run | epochs | median images/s over epochs (after the first) | knn_acc | kmeans_nmi |", "|---|---|---|---|---|"]
for name in ("simclr", "simclr-compiled"):
    records = [json.loads(line) for line in open(f"{out}/{name}/metrics.jsonl")]
    rates = [r["images_per_second"] for r in records if r["kind"] == "epoch"][1:]
    metrics = json.load(open(f"{out}/{name}/metrics.json"))
    rows.append(f"| {name} | {metrics['epoch']} | {statistics.median(rates):.0f} | {metrics['knn_acc']:.4f} | {metrics['kmeans_nmi']:.4f} |")
table = "\n".join(rows)
print(table)
append_result(results, "GPU check: torchrun SimCLR end to end on the CIFAR-10 subset",
              "ResNet-18 ×1, batch 512, bf16 autocast, channels-last, 1 process (NCCL), whole training loop "
              "(augmentation, online evaluation every 10 epochs and checkpoints included in the epoch times)", table)
EOF
else
  echo "no CIFAR-10 subset at $CIFAR (set CIFAR=...): skipping steps 1 and 2" >&2
fi

step "3. throughput against the bound on CUDA"
"$PYTHON" benchmarks/throughput.py --device cuda --precision bf16 --backbone resnet18 --width 1 --size 32 --batch 1024 \
    --methods simclr moco_v2 --steps 10 --rounds 10 --images 8192 --results "$RESULTS" | tee "$OUT/throughput-r18.txt"
"$PYTHON" benchmarks/throughput.py --device cuda --precision bf16 --backbone resnet50 --width 1 --size 224 --batch 256 \
    --methods simclr --steps 5 --rounds 5 --images 1024 --results "$RESULTS" | tee "$OUT/throughput-r50.txt"
"$PYTHON" - "$OUT/throughput-r18.txt" <<'EOF'
import sys
row = next(line for line in open(sys.argv[1]) if line.startswith("| simclr |"))
rate = float(row.split("|")[4])
print(f"SimCLR ResNet-18 at 32 px: {rate:.0f} source images/s (two views each): "
      + ("meets" if rate >= 10_000 else "BELOW") + " the goal of 10,000")
EOF

step "4. streamed ResNet-50 at 224 px from folders of JPEGs, 1, 2 and 8 loader workers"
"$PYTHON" benchmarks/streaming.py --device cuda --backbone resnet50 --width 1 --image-size 224 --side 256 \
    --sizes 4000 16000 --batch 256 --steps 10 --workers 1 2 8 --threads 8 --folders "$OUT/folders" --results "$RESULTS"

echo; echo "done: results appended to $RESULTS"
