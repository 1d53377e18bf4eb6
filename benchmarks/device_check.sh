#!/usr/bin/env bash
# The one prepared run on a lent GPU machine (see the device tool's README): install the carried wheels
# (open_clip_torch, ftfy, wcwidth, platformdirs in .whl/), run the GPU tests, then the benchmark on CUDA.
# Results land in $OUT. Knobs: TESTS (more test files), MODELS, SMALL, PHONE, REPEATS, PARTS, BENCH_TIMEOUT.
set -uo pipefail
python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .whl/*.whl || exit 1
export PYTHONPATH="/tmp/site:$PWD" PYTHONUNBUFFERED=1 CLIPZS_CACHE_DIR=/tmp/clipzs-cache
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
python3 -c "import torch, open_clip; print('torch', torch.__version__, 'open_clip', open_clip.__version__)"
timeout 100 python3 -m pytest -q -p no:cacheprovider tests/test_gpu.py tests/test_device_decode.py \
    ${TESTS:-} 2>&1 | tail -15 | tee "$OUT/pytest.txt"
timeout "${BENCH_TIMEOUT:-420}" python3 benchmarks/bench.py --device cuda --models "${MODELS:-ViT-B-32,ViT-L-14}" \
    --small "${SMALL:-3000}" --phone "${PHONE:-120}" --batch-size 256 --repeats "${REPEATS:-2}" \
    --parts "${PARTS:-text,images,stages,overlap,reclassify}" --out "$OUT/RESULTS-cuda.md" 2>&1 | tee "$OUT/bench.log"
