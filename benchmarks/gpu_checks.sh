#!/usr/bin/env bash
# sdgen's GPU measurements and checks, in stages that each end within 10 minutes on an H100.
#
#   benchmarks/gpu_checks.sh wheels      # on a machine with network: wheels into .whl/
#   benchmarks/gpu_checks.sh STAGE...    # on the GPU machine (no network), from the repo root
#   SECONDS_PER_STAGE=300 benchmarks/gpu_checks.sh tests bench-dpmpp   # several, each time-limited
#
# The GPU machine is assumed to have python3 (3.12) with CUDA torch, numpy, Pillow and scipy;
# `wheels` fetches the Hugging Face stack at the versions tested here and whatever else of
# sdgen's and the server's needs is not in DEVICE_HAS below. .whl/ travels with the checkout;
# there the wheels are installed into /tmp/site and sdgen itself in editable mode. Results and
# logs are copied to OUT (default: $OUT, else benchmarks/results/gpu). Installing happens once per
# machine. With several stages, each runs under `timeout $SECONDS_PER_STAGE` (default 590: set it
# so that they fit one call together) and the next starts whatever the last one's outcome; the
# stages that failed or ran out of time are listed in OUT/stages.txt.
#
# Stages (the order of importance; the first compiles, so later stages reuse inductor's cache):
#   bench         sd_benchmark.py: SD 1.5 architecture, fp16, 512x512, 50 steps, dpmpp_2m and
#                 euler (one compile serves both), batch 1 and 8, fast path auto (on) against
#                 diffusers; parity and peak memory. dpmpp_2m alone took 292 s on an H100
#                 (2026-11-25, compiling 193 s of it): both samplers fit one call
#   bench-dpmpp   the same for dpmpp_2m only; bench-euler for euler only
#   bench-off     dpmpp_2m with sdgen's fast path off: what the fast path itself gains
#   server        server_throughput.py --device cuda: 8 concurrent requests, --max-batch 8 vs 1
#   tests         tests/test_cuda.py (fast path and batching on CUDA) and the fast-path tests
#   train         python -m sdgen.miniature.train /tmp/sdgen-miniature for up to 9 minutes;
#                 exit 124 means unfinished: run it again on the same (still warm) machine to
#                 resume from its checkpoints; the loss logs record the seconds per step (their
#                 clock restarts on resuming). A whole run takes about 18 minutes on an H100
#                 (2026-11-25: CLIP 58 s, VAE 104 s, UNet 76-92 ms a step): plan three calls
#                 on one warm machine (a resumed stage redoes up to 499 steps); TRAIN_SECONDS
#                 (default 540) limits one call's training.
set -euo pipefail

stage=${1:?"usage: $0 wheels | STAGE... (bench bench-dpmpp bench-euler bench-off server tests train)"}
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"

# What the GPU machine's Python already has (its image's package list, read 2026-11-17):
# wheels of these are not carried, the rest of sdgen's and the server's needs are.
DEVICE_HAS="absl-py accelerate aiofiles aiohappyeyeballs aiohttp aiosignal annotated-doc anyio
  attrs botorch build certifi charset-normalizer chex click cloudpickle cmake colorama contourpy
  coverage cuda-bindings cuda-core cuda-pathfinder cuda-toolkit cupy-cuda13x cycler cython diffrax
  e3nn einops equinox etils execnet filelock flatbuffers flax fonttools formulaic frozenlist fsspec
  gpytorch grpcio h11 h5py hf-xet httpcore httpx huggingface-hub humanize hypothesis idna imageio
  iniconfig interface-meta jax jax-cuda13-pjrt jax-cuda13-plugin jaxlib jaxtyping jinja2 joblib
  kiwisolver lazy-loader lightning lightning-utilities linear-operator lineax llvmlite lxml markdown
  markdown-it-py markupsafe matplotlib mdurl meson ml-dtypes mpi4py mpmath msgpack multidict
  multipledispatch mypy-extensions nanobind narwhals networkx ninja numba numba-cuda numpy numpyro
  onnx onnx-ir onnxruntime onnxscript opencv-python-headless optax opt-einsum opt-einsum-fx
  optimistix orbax-checkpoint packaging pandas pathspec patsy peft pillow pip pluggy portalocker
  prometheus-client propcache protobuf psutil pyarrow pybind11 py-cpuinfo pygments pyparsing
  pyproject-hooks pyre-extensions pytest pytest-benchmark pytest-cov pytest-mock pytest-timeout
  pytest-xdist python-dateutil pytorch-lightning pyyaml regex requests rich sacrebleu safetensors
  scikit-build-core scikit-image scikit-learn scipy seaborn sentencepiece sentence-transformers
  setuptools shellingham simplejson six sortedcontainers statsmodels sympy tabulate tensorboard
  tensorboard-data-server tensorstore threadpoolctl tifffile tiktoken timm tokenizers toolz torch
  torchaudio torchdiffeq torch-geometric torchmetrics torchvision tqdm transformers treescope triton
  typer typing-extensions typing-inspect urllib3 uvloop wadler-lindig werkzeug wheel wrapt xarray
  xxhash yarl zipp"

if [ "$stage" = wheels ]; then
  # The versions this checkout is tested with, from its environment (.venv, else $PYTHON).
  py=${PYTHON:-.venv/bin/python}
  [ -x "$py" ] || py=python3
  # The Hugging Face stack travels whole, at the versions tested here (diffusers needs a recent
  # huggingface-hub, which must match transformers); the rest only where the machine lacks it.
  carried="diffusers transformers tokenizers huggingface-hub safetensors typing-extensions"
  pins=()
  for name in $carried fastapi uvicorn; do
    pins+=("$name==$("$py" -m pip show "$name" | sed -n 's/^Version: //p')")
  done
  everything=$(mktemp -d)
  "$py" -m pip download -q --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 \
    --platform manylinux2014_x86_64 -d "$everything" "${pins[@]}"
  rm -rf .whl && mkdir .whl
  grep -qx '/.whl/' .git/info/exclude 2>/dev/null || echo /.whl/ >> .git/info/exclude
  for wheel in "$everything"/*.whl; do
    name=$(basename "$wheel" | cut -d- -f1 | tr '[:upper:]_.' '[:lower:]--')
    case " $carried " in *" $name "*) cp "$wheel" .whl/; continue ;; esac
    case " $(echo $DEVICE_HAS) " in
      *" $name "*) ;;  # already there
      *) cp "$wheel" .whl/ ;;
    esac
  done
  ls .whl && du -sh .whl
  exit 0
fi

out=${OUT:-benchmarks/results/gpu}
mkdir -p "$out"
if [ $# -gt 1 ]; then  # several stages: one after another, each within its time
  for one in "$@"; do
    echo "== $one" && timeout "${SECONDS_PER_STAGE:-590}" bash "$root/benchmarks/gpu_checks.sh" "$one" \
      || echo "== $one: exit $?" | tee -a "$out/stages.txt"
  done
  exit 0
fi
export PYTHONUNBUFFERED=1
export PYTHONPATH=/tmp/site:$root/src${PYTHONPATH:+:$PYTHONPATH}
if [ ! -e /tmp/site/.sdgen-installed ]; then  # once per machine
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target /tmp/site .whl/*.whl
  python3 -m pip install -q --no-deps --no-build-isolation -e . > /dev/null \
    || echo "sdgen not installed: imported from src/ (no package metadata)"
  touch /tmp/site/.sdgen-installed
fi
python3 -m pip check 2>&1 | grep -Ei "diffusers|transformers|huggingface|fastapi|sdgen" \
  | tee "$out/pip-check.txt" || true  # conflicts that concern sdgen, for the log
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader \
  | tee "$out/gpu.txt" || echo "no nvidia-smi" | tee "$out/gpu.txt"
python3 -c 'import torch, diffusers, transformers; print("torch", torch.__version__,
  "diffusers", diffusers.__version__, "transformers", transformers.__version__)' | tee -a "$out/gpu.txt"

bench() {  # sd_benchmark.py with the given options; the rows it wrote (it writes them as it
  # goes) saved under the stage's name, also when the stage is stopped by its time limit
  started=$(mktemp)
  trap 'for f in benchmarks/results/sd_benchmark-cuda*.{json,md}; do
          [ "$f" -nt "$started" ] && cp "$f" "$out/$stage.${f##*.}" || true
        done' EXIT
  trap 'exit 124' TERM
  python3 benchmarks/sd_benchmark.py --device cuda "$@" 2>&1 | tee "$out/$stage.log"
}

case "$stage" in
  bench) bench ;;
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
    # --foreground: in this script's process group, so an outer time limit stops it too.
    start=$(date +%s)
    trap 'status=$?; echo "train: $(( $(date +%s) - start )) s this call, exit $status" \
            | tee -a "$out/train.log"
          cp /tmp/sdgen-miniature/logs/*.csv "$out/" 2>/dev/null || true  # losses, seconds
          cp /tmp/sdgen-miniature/model/training.json "$out/" 2>/dev/null || true
          exit "$status"' EXIT
    trap 'exit 124' TERM
    timeout --foreground "${TRAIN_SECONDS:-540}" python3 -m sdgen.miniature.train \
      /tmp/sdgen-miniature 2>&1 | tee -a "$out/train.log" ;;
  *) echo "unknown stage: $stage" >&2; exit 2 ;;
esac
