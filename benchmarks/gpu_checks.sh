#!/usr/bin/env bash
# sdgen's GPU measurements and checks, in stages that each end within 10 minutes on an H100.
#
#   benchmarks/gpu_checks.sh wheels         # on a machine with network: wheels into .whl/
#   benchmarks/gpu_checks.sh STAGE [OUT]    # on the GPU machine (no network), from the repo root
#
# The GPU machine is assumed to have python3 with CUDA torch, transformers and the rest of
# sdgen's needs except the packages fetched by `wheels` (diffusers and the server's stack);
# those are installed from .whl/ into /tmp/site, and sdgen itself in editable mode. Results and
# logs are copied to OUT (default: $OUT, else benchmarks/results/gpu).
#
# Stages (the order of importance; the first compiles, so later stages reuse inductor's cache):
#   bench-dpmpp   sd_benchmark.py: SD 1.5 architecture, fp16, 512x512, 50 steps, dpmpp_2m,
#                 batch 1 and 8, fast path auto (on) against diffusers; parity and peak memory
#   bench-euler   the same for euler
#   bench-off     dpmpp_2m with sdgen's fast path off: what the fast path itself gains
#   server        server_throughput.py --device cuda: 8 concurrent requests, --max-batch 8 vs 1
#   tests         tests/test_cuda.py (fast path and batching on CUDA) and the fast-path tests
#   train         python -m sdgen.miniature.train /tmp/sdgen-miniature for up to 9 minutes;
#                 run it again to resume from its checkpoint; the log says the time per stage
set -euo pipefail

stage=${1:?"usage: $0 wheels | bench-dpmpp | bench-euler | bench-off | server | tests | train [OUT]"}
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"

if [ "$stage" = wheels ]; then
  # The versions this checkout is tested with (pip show in the local environment).
  packages=()
  for name in diffusers fastapi starlette uvicorn pydantic pydantic-core annotated-types \
      typing-inspection; do
    packages+=("$name==$(python3 -m pip show "$name" | sed -n 's/^Version: //p')")
  done
  packages+=(importlib_metadata)
  grep -qx '/.whl/' .git/info/exclude 2>/dev/null || echo /.whl/ >> .git/info/exclude
  python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 \
    --implementation cp --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 \
    --platform manylinux2014_x86_64 -d .whl "${packages[@]}"
  exit 0
fi

out=${2:-${OUT:-benchmarks/results/gpu}}
mkdir -p "$out"
export PYTHONUNBUFFERED=1
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
  --target /tmp/site .whl/*.whl
export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH}
python3 -m pip install -q --no-deps --no-build-isolation -e . > /dev/null
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee "$out/gpu.txt"
python3 -c 'import torch, diffusers, transformers; print("torch", torch.__version__,
  "diffusers", diffusers.__version__, "transformers", transformers.__version__)' | tee -a "$out/gpu.txt"

bench() {  # sd_benchmark.py with the given options; its results saved under the stage's name
  python3 benchmarks/sd_benchmark.py --device cuda "$@" 2>&1 | tee "$out/$stage.log"
  cp benchmarks/results/sd_benchmark-cuda.json "$out/$stage.json"
  cp benchmarks/results/sd_benchmark-cuda.md "$out/$stage.md"
}

case "$stage" in
  bench-dpmpp) bench --samplers dpmpp_2m ;;
  bench-euler) bench --samplers euler ;;
  bench-off) bench --samplers dpmpp_2m --fast-path off ;;
  server)
    python3 benchmarks/server_throughput.py --device cuda 2>&1 | tee "$out/server.log"
    cp benchmarks/results/server_throughput-cuda*.json "$out/" ;;
  tests)
    python3 -m pytest -q --runslow -p no:cacheprovider tests/test_cuda.py \
      tests/test_fast_path.py 2>&1 | tee "$out/tests.log" ;;
  train)
    # timeout's exit status 124 means "stopped to stay within the call": run the stage again.
    start=$(date +%s)
    status=0
    timeout 540 python3 -m sdgen.miniature.train /tmp/sdgen-miniature 2>&1 \
      | tee -a "$out/train.log" || status=$?
    echo "train: $(( $(date +%s) - start )) s this call, exit $status" | tee -a "$out/train.log"
    cp /tmp/sdgen-miniature/*.json "$out/" 2>/dev/null || true ;;
  *) echo "unknown stage: $stage" >&2; exit 2 ;;
esac
