#!/usr/bin/env bash
# One-command GPU check for a machine with a GPU and no network (docs/design.md section 8):
#   bash bench/gpu_check.sh
# builds and installs dcd_ext against the installed torch (sm_90 by default, 16 jobs), installs the
# peer wheels found in bench/wheels (bench/wheels/README.md), runs the CUDA tests (fused and chunked
# implementations against the CPU kernels and the reference, no host synchronisation, CUDA graphs), a
# short CUDA training run and the GPU benchmarks (which cross-check their results), and prints the table
# last. Results go to $OUT (default bench-gpu/): gpu_check.log, gpu_bench.json, gpu_bench.md.
# The whole run stays within DCD_GPU_CHECK_BUDGET_S seconds (default 470): every stage gets what is left
# after a reserve for the stages after it. Exits non-zero when any stage fails or any result is wrong.
set -uo pipefail
cd "$(dirname "$0")/.."
out=${OUT:-bench-gpu}
mkdir -p "$out"
exec > >(tee "$out/gpu_check.log") 2>&1
SECONDS=0
budget=${DCD_GPU_CHECK_BUDGET_S:-470}
left() { local s=$(( budget - SECONDS - $1 )); echo $(( s > 10 ? s : 10 )); }  # seconds left after a reserve
export TORCH_CUDA_ARCH_LIST=${TORCH_CUDA_ARCH_LIST:-9.0}
export MAX_JOBS=${MAX_JOBS:-16}
unset DCD_CUDA_IMPL DCD_CPU_IMPL DCD_CHUNK_COLS DCD_CHECK_INDICES
echo "== $(date -u +%FT%TZ)"
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader || true
python -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda)"

echo "== build"
DCD_FORCE_CUDA=1 timeout "$(left 270)" python -m pip install --no-build-isolation --no-deps --force-reinstall . -q \
  || { echo "build failed at ${SECONDS}s"; exit 1; }
python -m dcd_ext.info
wheels=(bench/wheels/*.whl)
if [ -e "${wheels[0]}" ]; then  # offline: the wheels brought along, without their dependencies
  python -m pip install --no-index --no-deps -q "${wheels[@]}" || echo "peer wheels did not install"
fi
echo "build done at ${SECONDS}s"

echo "== CUDA tests"
python -m pip show pytest >/dev/null 2>&1 || echo "pytest missing: CUDA tests cannot run"
(cd python_tests && timeout "$(left 170)" python -m pytest -q -p no:cacheprovider --rootdir=.. --maxfail=25 -rf \
  test_cuda_ops.py test_cuda_sync.py test_ops_similarity_topk.py test_ops_contrastive_loss.py \
  test_ops_distill_loss.py -k cuda)
tests_rc=$?
echo "tests rc=$tests_rc at ${SECONDS}s"

echo "== CUDA training smoke (tiny demo, bf16, 2 micro-batches per step)"
smoke_dir=$(mktemp -d)
timeout "$(left 130)" python -m dcd_ext.train --demo-size tiny --device cuda --precision bf16 --accum-steps 2 \
  --out "$smoke_dir/run" --cache-dir "$smoke_dir/cache" --no-progress | tail -8
train_rc=${PIPESTATUS[0]}
echo "training rc=$train_rc at ${SECONDS}s"

echo "== GPU benchmarks (fused, chunked, naive, GEMM floor, Inf-CL when installed)"
timeout "$(left 0)" python bench/gpu_bench.py --out "$out"
bench_rc=$?
echo "== done in ${SECONDS}s (tests rc=$tests_rc, training rc=$train_rc, bench rc=$bench_rc); results in $out"
exit $(( tests_rc != 0 || train_rc != 0 || bench_rc != 0 ))
