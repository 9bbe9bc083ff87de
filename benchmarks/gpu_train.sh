#!/usr/bin/env bash
# Second device call: the same training as gpu_run.sh, with the checkpoints returned in tar files
# of three (the device tool returns at most 8 files of 16 MiB), then ViT-B/16 compiled in bf16.
set -u
export PYTHONPATH="$PWD:/tmp/site" PYTHONUNBUFFERED=1 OMP_NUM_THREADS=1
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
start=$(date +%s)
for seed in 0 1 2; do
  for model in vit eva02 mixer siglip; do
    timeout 200 python3 -m benchmarks.faithfulness.train --model "$model" --seed "$seed" --device cuda \
      > "/tmp/train_${model}_${seed}.log" 2>&1 &
  done
done
wait
echo "training wall time: $(( $(date +%s) - start )) s"
grep -h "test acc" /tmp/train_*.log | tee "$OUT/train_summary.txt"
for model in vit eva02 mixer siglip; do tar cf "$OUT/ckpt_${model}.tar" benchmarks/cache/${model}_seed*.pt; done
ls -la "$OUT"
timeout 110 python3 benchmarks/overhead.py --device cuda --dtype bfloat16 --reps 7 --models vit_b16 \
  --markdown "$OUT/overhead_cuda_bf16_compiled.md"
