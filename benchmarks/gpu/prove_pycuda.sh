#!/usr/bin/env bash
# GPU proof of the TensorRT backend's CUDA half (device/tensorrt/cuda_worker.py + cuda_io.py) on a
# machine with CUDA + nvcc but no TensorRT and no internet: builds pycuda from the sdist carried
# in .pycuda-src/, then runs benchmarks/gpu/prove_pycuda.py. Log and JSON summary go to $OUT.
# Run from the repository root:  bash benchmarks/gpu/prove_pycuda.sh
# .pycuda-src/ is not committed; on a machine with PyPI access fill it first (GPU box: Python 3.12):
#   pip download --no-deps --no-binary :all: pycuda -d .pycuda-src
#   pip download --no-deps --only-binary=:all: --python-version 3.12 --platform manylinux2014_x86_64 \
#       pytools platformdirs mako siphash24 -d .pycuda-src
set -uo pipefail
OUT=${OUT:-/tmp/prove-pycuda}
mkdir -p "$OUT"
exec > >(tee "$OUT/prove_pycuda.log") 2>&1
export PYTHONUNBUFFERED=1
REPO=$(pwd)
SRC=$REPO/.pycuda-src
PY=${PYTHON:-python3}
SITE=/tmp/pycuda-site
WORK=/tmp/pycuda-build

NVCC=$(command -v nvcc || ls /usr/local/cuda/bin/nvcc 2>/dev/null) || { echo "FAIL: no nvcc"; exit 2; }
export CUDA_ROOT=${CUDA_ROOT:-$(dirname "$(dirname "$(readlink -f "$NVCC")")")}
export PATH=$CUDA_ROOT/bin:$PATH
echo "== $(date -u +%FT%TZ) python $($PY --version 2>&1), nvcc $(nvcc --version | tail -1), CUDA_ROOT=$CUDA_ROOT"
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader || true
$PY -c "import numpy, setuptools; print('numpy', numpy.__version__, 'setuptools', setuptools.__version__)" \
  || { echo "FAIL: pycuda's build needs numpy and setuptools"; exit 2; }

echo "== pure-Python dependencies (pytools, platformdirs, mako, siphash24) from .pycuda-src"
$PY -m pip install -q --no-index --no-deps --no-compile --target "$SITE" "$SRC"/*.whl || exit 2
export PYTHONPATH=$SITE

echo "== building pycuda ($(ls "$SRC"/pycuda-*.tar.gz))"
START=$(date +%s)
if ls "$WORK"/pycuda/_driver*.so >/dev/null 2>&1; then
  echo "reusing the pycuda built earlier on this machine"; cd "$WORK"
else
rm -rf "$WORK" && mkdir -p "$WORK" && tar xzf "$SRC"/pycuda-*.tar.gz -C "$WORK" --strip-components=1
cd "$WORK"
$PY configure.py --cuda-root="$CUDA_ROOT" >/dev/null || exit 3
fi
# In place and in parallel (16 cores): the serial pip build is several minutes of boost.python.
if $PY setup.py -q build_ext --inplace -j "$(nproc)" >"$OUT/pycuda_build.txt" 2>&1; then
  export PYTHONPATH=$WORK:$SITE
else
  echo "parallel in-place build failed (tail below); trying pip"; tail -20 "$OUT/pycuda_build.txt"
  $PY -m pip install -q --no-index --no-deps --no-build-isolation --target "$SITE" . >>"$OUT/pycuda_build.txt" 2>&1 \
    || { tail -40 "$OUT/pycuda_build.txt"; echo "FAIL: pycuda did not build"; exit 3; }
fi
echo "pycuda built in $(( $(date +%s) - START )) s"
cd "$REPO"
export PYTHONPATH=$REPO:$PYTHONPATH

echo "== proof"
$PY benchmarks/gpu/prove_pycuda.py --out "$OUT"
RC=$?
echo "== exit $RC"
exit $RC
