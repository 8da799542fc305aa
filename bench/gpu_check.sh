#!/usr/bin/env bash
# One-command GPU check for a machine with a GPU and no network (docs/design.md section 8):
#   bash bench/gpu_check.sh
# builds dcd_ext against the installed torch, runs the CUDA tests (against the CPU kernels and the
# reference), runs the GPU benchmarks and prints a short table last. With $OUT set, the full output
# and the JSON results are written there too. Budget: about 8 minutes.
set -uo pipefail
cd "$(dirname "$0")/.."
log=${OUT:+$OUT/gpu_check.log}
exec > >(tee ${log:-/dev/null}) 2>&1
SECONDS=0
export TORCH_CUDA_ARCH_LIST=${TORCH_CUDA_ARCH_LIST:-9.0}
export MAX_JOBS=${MAX_JOBS:-16}
echo "== $(date -u +%FT%TZ)"
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader || true
python -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda)"

echo "== build"
DCD_FORCE_CUDA=1 python -m pip install --no-build-isolation --no-deps --force-reinstall . -q || exit 1
python -m dcd_ext.info
echo "build done at ${SECONDS}s"

echo "== CUDA tests"
python -m pip show pytest >/dev/null 2>&1 || echo "pytest missing: CUDA tests cannot run"
(cd python_tests && timeout 300 python -m pytest -q -p no:cacheprovider --rootdir=.. -x \
  test_cuda_ops.py test_ops_similarity_topk.py test_ops_contrastive_loss.py test_ops_distill_loss.py -k cuda)
tests_rc=$?
echo "tests rc=$tests_rc at ${SECONDS}s"

echo "== CUDA training smoke (tiny demo, bf16, 2 micro-batches per step)"
smoke_dir=$(mktemp -d)
timeout 180 python -m dcd_ext.train --demo-size tiny --device cuda --precision bf16 --accum-steps 2 \
  --out "$smoke_dir/run" --cache-dir "$smoke_dir/cache" --no-progress | tail -8
train_rc=${PIPESTATUS[0]}
echo "training rc=$train_rc at ${SECONDS}s"

echo "== GPU benchmarks"
timeout 240 python bench/gpu_bench.py ${OUT:+--json "$OUT/gpu_bench.json"}
bench_rc=$?
echo "== done in ${SECONDS}s (tests rc=$tests_rc, training rc=$train_rc, bench rc=$bench_rc)"
exit $(( tests_rc != 0 || train_rc != 0 || bench_rc != 0 ))
