#!/usr/bin/env bash
# The GPU checks, run once on a CUDA machine with no network (the device tool's H200), from the
# repo root: `bash benchmarks/gpu_run.sh [tests] [load] [hooks]` (default: all). Packages the
# machine lacks come as wheels in .whl/ (gguf; TransformerLens 3.9 and its deps for the hooks
# comparison). Logs and JSON go to $OUT (default: ./gpu-out).
set -u
OUT=${OUT:-gpu-out}; mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 LMSCOPE_CACHE=/tmp/lmscope-cache
if ls .whl/*.whl >/dev/null 2>&1; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site:src || exit 1
else
  export PYTHONPATH=src
fi
parts=${*:-tests load hooks}
nvidia-smi -L; python3 -c "import torch, transformers; print(torch.__version__, transformers.__version__)"
for part in $parts; do
  start=$(date +%s)
  case $part in
    tests) timeout 170 python3 -m pytest -q -p no:cacheprovider -o addopts="" tests/test_cuda.py \
             2>&1 | tee "$OUT/tests.log" | tail -25 ;;
    load)  timeout 260 python3 benchmarks/big_load.py --shape llama3-8b --dtypes bfloat16 \
             --repeats 1 --threads 16 --device cuda --out "$OUT/big_load_gpu.json" 2>&1 \
             | tee "$OUT/load.log" ;;
    hooks) timeout 240 python3 benchmarks/gpu_hooks.py --out "$OUT" 2>&1 | tee "$OUT/hooks.log" | tail -40 ;;
  esac
  echo "== $part took $(( $(date +%s) - start )) s"
done
