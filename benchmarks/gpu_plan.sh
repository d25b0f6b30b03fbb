#!/usr/bin/env bash
# The training measurements that need a GPU (issue #6's targets), in parts that each fit one call of
# the device tool (10 minutes). Prepare once here: `bash benchmarks/gpu_wheels.sh`; then per part:
#   device run, carry [".whl"]:  bash benchmarks/gpu_plan.sh mfu|factors|factors2|loader|profile
# Each part prints JSON lines (benchmarks/train.py) and keeps them in $OUT/<part>.jsonl;
# `python benchmarks/gpu_report.py <files_at>/*.jsonl` turns them into one Markdown table.
#   mfu      ViT-B/16 bf16 ZeRO-2 batch 384, compiled: bare loop vs webclip's DeepSpeed step on
#            synthetic data; host syncs per step and dynamo graph breaks of each (target: >= 40 % MFU);
#            then the DeepSpeed step with per-tensor parameters (train.flat_params=false) to compare.
#            Each row names the kernels behind addmm/mm/bmm (--gemm-kernels 2: gemm_kernels and
#            gemm_old_arch_share), so a misaligned operand (an sm75 cutlass kernel on Hopper) shows in
#            one call (issue 17: 288 addmm a step on cutlass_75_..._s1688gemm, 1.76 ms each)
#   large    ViT-L/14 (batch 256) bare vs DeepSpeed ZeRO-2, then RN50 channels-last (batch 512)
#   factors  the DeepSpeed step with one setting changed at a time: the old throughput timer, the old
#            check_grad_overflow=true, 5e8 buckets
#   factors2 likewise: ZeRO-2 without contiguous_gradients (~500 fewer host ops per step on tiny-vit),
#            ZeRO-0 (FP16_UnfusedOptimizer: host syncs per parameter), ZeRO-1 with fp32 gradient
#            accumulation (BF16_Optimizer, EVA-CLIP's setup; a third of ZeRO-2's host ops)
# Every DeepSpeed row carries aten_ops_per_step (--count-ops), the host work a step dispatches.
#   loader   real JPEG shards (the COCO photos at 256 px, from .whl/photos) vs synthetic through the
#            DeepSpeed step, 15 loader workers, ViT-B/16 and ViT-B/32 (target: shards >= 90 % of synthetic)
#   profile  torch.profiler traces of 3 steps of each loop (ViT-B/16), to $OUT
# GPU_PLAN_SMOKE=1 runs a part's exact flags on a CPU with tiny-vit, batch 8 and 2 steps (no wheels,
# no nvidia-smi): run it here before a GPU session, so a GPU call does not fail on plumbing.
set -euo pipefail
cd "$(dirname "$0")/.."
part=${1:?usage: gpu_plan.sh mfu|large|factors|factors2|loader|profile}
PART_TIMEOUT=${PART_TIMEOUT:-420}  # seconds per benchmark run: a hung run must not eat the device call
OUT=${OUT:-/tmp/gpu_plan}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false
B16=(--model ViT-B-16 --batch 384 --steps 12 --warmup 4 --compile --deepspeed-config infra/deepspeed/zero2.json)
B32=(--model ViT-B-32 --batch 768 --steps 12 --warmup 4 --compile --deepspeed-config infra/deepspeed/zero2.json)
L14=(--model ViT-L-14 --batch 256 --steps 8 --warmup 3 --compile --deepspeed-config infra/deepspeed/zero2.json)
RN50=(--model RN50 --batch 512 --steps 10 --warmup 3 --compile --channels-last --deepspeed-config infra/deepspeed/zero2.json)
PHOTOS=.whl/photos SHARDS=/tmp/shards MAKE=20000 WORKERS=15
if [ "${GPU_PLAN_SMOKE:-0}" = 1 ]; then
  B16=(--model tiny-vit --batch 8 --steps 2 --warmup 1 --compile --deepspeed-config infra/deepspeed/zero2.json)
  B32=("${B16[@]}")
  L14=("${B16[@]}")
  RN50=(--model tiny-rn --batch 8 --steps 2 --warmup 1 --compile --channels-last --deepspeed-config infra/deepspeed/zero2.json)
  PHOTOS=.whl/photos SHARDS=$OUT/shards MAKE=1000 WORKERS=2  # photos: made by benchmarks/gpu_wheels.sh
  python3 -c "import platform; print('smoke run on', platform.processor() or 'CPU')" | tee "$OUT/device.txt"
else
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
  export PYTHONPATH=/tmp/site:$PWD/.whl/site
  nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader | tee "$OUT/device.txt"
fi
bench() {
  timeout "$PART_TIMEOUT" python3 benchmarks/train.py "$@" 2>>"$OUT/stderr.log" | tee -a "$OUT/$part.jsonl" \
    || echo "{\"failed\": \"$*\", \"rc\": $?}" | tee -a "$OUT/$part.jsonl"
}
case "$part" in
  mfu)
    bench "${B16[@]}" --mode both --data synthetic --sync-debug 5 --count-ops 3 --gemm-kernels 2
    # DeepSpeed over each of the 302 parameter tensors, as before train.flat_params (session 7)
    bench "${B16[@]}" --mode deepspeed --data synthetic --count-ops 3 --flat-params off --gemm-kernels 2 ;;
  large)
    bench "${L14[@]}" --mode both --data synthetic --gemm-kernels 2
    bench "${RN50[@]}" --mode both --data synthetic --gemm-kernels 2 ;;
  factors|factors2)
    # one item per run; an item may hold several settings separated by '+'
    if [ "$part" = factors ]; then
      items=(timers.throughput.enabled=true bf16.check_grad_overflow=true zero_optimization.reduce_bucket_size=5e8)
    else
      items=(zero_optimization.contiguous_gradients=false zero_optimization.stage=0
        zero_optimization.stage=1+data_types.grad_accum_dtype=fp32)
    fi
    for item in "${items[@]}"; do
      sets=(); IFS=+ read -ra parts <<<"$item"
      for s in "${parts[@]}"; do sets+=(--ds-set "$s"); done
      bench "${B16[@]}" --mode deepspeed --data synthetic --count-ops 3 "${sets[@]}"
    done ;;
  loader)
    shards=(--workers "$WORKERS" --shards "$SHARDS" --make-shards "$MAKE" --photos "$PHOTOS")  # COCO photos, 256 px
    bench "${B16[@]}" --mode deepspeed --data both "${shards[@]}"
    bench "${B32[@]}" --mode deepspeed --data both "${shards[@]}" ;;
  profile) bench "${B16[@]}" --mode both --data synthetic --steps 6 --profile "$OUT/prof" ;;
  *) echo "unknown part: $part" >&2; exit 2 ;;
esac
