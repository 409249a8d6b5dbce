#!/bin/bash
# On a machine with a CUDA GPU: the CUDA tests, then the GPU figures of benchmarks/README.md.
#
#   METAREC_DATA_DIR=../shared/data bash benchmarks/gpu_check.sh [OUT_DIR]
#
# Steps (each with a time limit; each writes its own file under OUT_DIR, default
# .gpu_check/, as it goes, so a step that runs out of time leaves the others' results):
#   pytest.txt        tests/test_cuda.py and the shared loop's CUDA test
#   torch_models.txt  bench_torch_models.py --device both --repeat: every GPU-capable model on
#                     the CPU and on CUDA, with their agreement (NDCG@10, shared top-10, score
#                     gap) and whether a refit from the same seed gives the same bits
#   deep_ml100k.txt   bench_deep.py on CUDA, ML-100K
#   deep_mls.txt      bench_deep.py on CUDA, ml-latest-small (full softmax over 9,742 items)
# steps.txt has each step's exit status and when it ended; env.txt the machine.
set -u
out=${1:-.gpu_check}
epochs=${EPOCHS:-2}
python=${PYTHON:-python}
mkdir -p "$out"
export TQDM_DISABLE=1 MPLBACKEND=Agg
begin=$(date +%s)
stamp() { echo "[$(($(date +%s) - begin)) s] $*" | tee -a "$out/steps.txt"; }
{
  "$python" -V
  nproc
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv
  lscpu | grep -E "Model name|^CPU\(s\)"
  "$python" -c "import torch; print('torch', torch.__version__, 'CUDA', torch.version.cuda,
    'available', torch.cuda.is_available())"
} > "$out/env.txt" 2>&1
stamp "environment"
timeout 170 "$python" -m pytest -q -p no:cacheprovider -rA tests/test_cuda.py \
  "tests/test_torch_base.py::test_cuda_fit_pickles_to_cpu" > "$out/pytest.txt" 2>&1
stamp "CUDA tests: exit $?"
timeout 300 "$python" benchmarks/bench_torch_models.py --device both --repeat --epochs "$epochs" \
  > "$out/torch_models.txt" 2>&1
stamp "bench_torch_models --device both: exit $?"
timeout 80 "$python" benchmarks/bench_deep.py --device cuda --epochs 3 \
  > "$out/deep_ml100k.txt" 2>&1
stamp "bench_deep ml-100k: exit $?"
timeout 100 "$python" benchmarks/bench_deep.py --device cuda --epochs 3 \
  --dataset ml-latest-small > "$out/deep_mls.txt" 2>&1
stamp "bench_deep ml-latest-small: exit $?"
