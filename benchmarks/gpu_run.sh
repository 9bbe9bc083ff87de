#!/usr/bin/env bash
# The one prepared script run on the lent GPU machine (device tool): trains the faithfulness
# benchmark's checkpoints (4 models x 3 seeds, in parallel) and measures the GPU overhead table.
# Outputs land in $OUT: cache.tgz (checkpoints), train_summary.txt, overhead_*.md, gpu.log.
set -u
export PYTHONPATH="$PWD:/tmp/site" PYTHONUNBUFFERED=1 OMP_NUM_THREADS=1
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader
python3 -c "import torch, timm; print('torch', torch.__version__, 'timm', timm.__version__)"
start=$(date +%s)
for seed in 0 1 2; do
  for model in vit eva02 mixer siglip; do
    timeout "${TRAIN_TIMEOUT:-210}" python3 -m benchmarks.faithfulness.train --model "$model" --seed "$seed" \
      --device cuda > "/tmp/train_${model}_${seed}.log" 2>&1 &
  done
done
wait
echo "training wall time: $(( $(date +%s) - start )) s"
grep -h "test acc" /tmp/train_*.log > "$OUT/train_summary.txt"; cat "$OUT/train_summary.txt"
for f in /tmp/train_*.log; do grep -q "test acc" "$f" || { echo "== $f"; tail -5 "$f"; }; done
tar czf "$OUT/cache.tgz" benchmarks/cache
timeout 100 python3 benchmarks/overhead.py --device cuda --dtype bfloat16 --reps 7 --no-compile \
  --markdown "$OUT/overhead_cuda_bf16_eager.md"
timeout 160 python3 benchmarks/overhead.py --device cuda --dtype bfloat16 --reps 7 --models vit_b16 eva02_tiny \
  --markdown "$OUT/overhead_cuda_bf16_compiled.md"
timeout 80 python3 benchmarks/overhead.py --device cuda --dtype float32 --reps 7 --models vit_b16 \
  --markdown "$OUT/overhead_cuda_fp32_compiled.md"
echo "total: $(( $(date +%s) - start )) s"
