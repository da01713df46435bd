#!/usr/bin/env bash
# The prepared run on a GPU machine (issue "On a real GPU"): the product's own code first, then
# its figures, in about 8 minutes. Each stage has its own time cap and leaves its log and JSON
# under $OUT as it ends, so a run cut short keeps what it measured; a failed stage does not
# stop the ones after it that do not need it.
#
#   here, once:        bash bench/gpu_pack.sh        (the wheels and trimmed Ray, into .gpu/)
#   on the device:     bash bench/gpu_run.sh          (device tool: carry [".gpu"], timeout 540)
#   a shorter budget:  BUDGET=300 bash bench/gpu_run.sh   (seconds for all stages; 480 default)
#   some stages only:  bash bench/gpu_run.sh sweep figures
#   on a CPU:          bash bench/gpu_run.sh --smoke  (every stage at toy size: the rehearsal)
#
# Stages, in order:
#   env      nvidia-smi (clocks, power, driver), torch, CUDA, cuDNN and each carried package's
#            version: env.json, nvidia-smi.txt
#   smoke    bench/gpu_smoke.py: the shipped Cars trial's real step, 4 trials sharing the GPU
#            at gpu_share 0.25 under the memory cap, train, export, predict --cam: smoke.json
#   ray      ray.init and one task on the GPU through the trimmed Ray: ray.json
#   sweep    `carsweep sweep --check`, then 8 trials of the Cars config at gpu 0.25, 2 epochs,
#            on the smoke stage's data: sweep-check.log, sweep.log, the experiment's trials.csv;
#            then `carsweep analyze` of it (the best trial retrained on train+val, tested,
#            Grad-CAM of its mistakes, report.html): analysis/, without its weights and with 8
#            of its Grad-CAM pictures
#   figures  bench/train_gpu.py: the product's step against a bare torchvision step at 224, 256
#            and 400 px, MFU, 1/2/4 trials sharing the GPU at batch 32 and 64: figures.json,
#            and a profiler trace of the product's steps at 400 px: trace.json.gz
#   ops      bench/augment_ops.py at 400 px: each preset's batch op on the GPU: ops.json
#   cam      bench/cam_occlusion.py: the epoch's images/s with and without cam-occlusion: cam.log
#   compile  bench/train_gpu.py --compile at 400 px: torch.compile's cost and pay-back:
#            compile.json (last: the budget skips it first)
set -uo pipefail
cd "$(dirname "$0")/.."
REPO=$PWD
OUT=${OUT:-$REPO/gpu-run}
WORK=${WORK:-/tmp/carsweep-gpu-run}
SITE=${SITE:-/tmp/carsweep-site}
CARRIED=${CARRIED:-.gpu}  # bench/gpu_pack.sh's folder; none: use the packages installed
SMOKE=
if [[ ${1:-} == --smoke ]]; then SMOKE=--smoke; shift; fi
STAGES=("$@")
(( ${#STAGES[@]} )) || STAGES=(env smoke ray sweep figures ops cam compile)
mkdir -p "$OUT" "$WORK"

wanted() { [[ " ${STAGES[*]} " == *" $1 "* ]]; }

# stage NAME CAP_SECONDS COMMAND...: the command's output in NAME.log, a line in stages.jsonl.
# No stage runs past the run's budget (BUDGET seconds from the start, 480 by default: inside a
# 540 s device call), so a stage that hangs costs the ones after it only their share.
BUDGET=${BUDGET:-480}
STARTED=$SECONDS
stage() {
  local name=$1 cap=$2 started rc left
  shift 2
  left=$(( BUDGET - (SECONDS - STARTED) ))
  if (( left < 15 )); then
    echo "{\"stage\": \"$name\", \"skipped\": \"the run's ${BUDGET} s are spent\"}" \
      | tee -a "$OUT/stages.jsonl"
    return 124
  fi
  (( cap > left )) && cap=$left
  started=${EPOCHREALTIME/./}
  echo "== $name (at most ${cap} s)"
  timeout --kill-after=10 "$cap" "$@" > "$OUT/$name.log" 2>&1
  rc=$?
  printf '{"stage": "%s", "exit_code": %d, "seconds": %d, "cap_seconds": %d}\n' \
    "$name" "$rc" $(( (${EPOCHREALTIME/./} - started) / 1000000 )) "$cap" \
    | tee -a "$OUT/stages.jsonl"
  tail -n 4 "$OUT/$name.log"
  return "$rc"
}

install_carried() {
  # The GPU machine has torch, torchvision, pandas, pyarrow and onnxruntime, not Ray, Optuna,
  # pydantic, kornia or torchcam: they come in .gpu/ (bench/gpu_pack.sh).
  if [[ -d $CARRIED ]]; then
    python3 -m pip install --quiet --no-index --no-deps --no-compile --no-cache-dir \
      --upgrade --target "$SITE" "$CARRIED"/wheels/*.whl || return 1
    tar -xJf "$CARRIED/ray-trimmed.tar.xz" -C "$SITE" || return 1
  fi
}

export -f install_carried
export SITE CARRIED
stage install 90 bash -c install_carried
export PYTHONPATH=$SITE:$REPO${PYTHONPATH:+:$PYTHONPATH}
export PYTHONUNBUFFERED=1 RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0 RAY_USAGE_STATS_ENABLED=0
CARSWEEP=(python3 -m carsweep)

if wanted env; then
  (nvidia-smi -q -d CLOCK,POWER,PERFORMANCE,MEMORY > "$OUT/nvidia-smi.txt" 2>&1 || true)
  stage env 60 python3 - "$OUT/env.json" <<'EOF'
import importlib.metadata as metadata, json, platform, sys
import torch
env = {"python": platform.python_version(), "torch": torch.__version__,
       "cuda": torch.version.cuda, "cuda_available": torch.cuda.is_available(),
       "cudnn": torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None}
if torch.cuda.is_available():
    props = torch.cuda.get_device_properties(0)
    env |= {"gpu": props.name, "capability": f"{props.major}.{props.minor}",
            "memory_bytes": props.total_memory, "multiprocessors": props.multi_processor_count,
            "bf16": torch.cuda.is_bf16_supported()}
for name in ("torchvision", "ray", "optuna", "pydantic", "kornia", "torchcam", "onnxruntime",
             "pandas", "pyarrow", "numpy"):
    try:
        env[name] = metadata.version(name)
    except metadata.PackageNotFoundError:
        env[name] = None
open(sys.argv[1], "w").write(json.dumps(env, indent=2))
print(json.dumps(env))
EOF
fi

if wanted smoke; then
  stage smoke 150 python3 bench/gpu_smoke.py $SMOKE --json "$OUT/smoke.json" --work "$WORK/smoke"
fi

RAY_OK=1
if wanted ray; then
  stage ray 60 python3 - "$OUT/ray.json" <<'EOF' || RAY_OK=0
import json, sys, time
started = time.perf_counter()
import ray
ray.init(include_dashboard=False, logging_level="ERROR")
resources = ray.cluster_resources()
@ray.remote(num_gpus=1 if resources.get("GPU") else 0)
def where() -> dict:
    import torch
    return {"cuda": torch.cuda.is_available(),
            "gpu": torch.cuda.get_device_name() if torch.cuda.is_available() else None}
found = ray.get(where.remote())
ray.shutdown()
result = {"ray": ray.__version__, "resources": resources, "task": found,
          "seconds": round(time.perf_counter() - started, 1)}
open(sys.argv[1], "w").write(json.dumps(result, indent=2))
print(json.dumps(result))
EOF
fi

if wanted sweep; then
  if (( ! RAY_OK )); then
    echo '{"stage": "sweep", "skipped": "Ray did not start (ray.log)"}' | tee -a "$OUT/stages.jsonl"
  else
    data=$WORK/smoke/data
    if [[ ! -d $data ]]; then  # the smoke stage did not run: a small Cars-shaped set
      stage sweep-synth 90 "${CARSWEEP[@]}" synth "$WORK/source" --preset cars --per-class 6 \
        --test-per-class 1 --force
      stage sweep-prepare 60 "${CARSWEEP[@]}" prepare "$WORK/source" --out "$data" \
        --val-fraction 0.25 --force
    fi
    sweep=(configs/stanford-cars.yaml --data "$data" --storage "$WORK/results" --name gpu-run
           --num-samples 8 --max-concurrent 4 --set space.epochs=2 --set space.weights=none
           --set space.warmup_epochs=0 --set asha.grace_period=1)
    if [[ -n $SMOKE ]]; then  # a CPU: toy sizes, no GPU to share
      sweep+=(--num-samples 2 --max-concurrent 2 --set 'resources={cpu: 1, gpu: 0}'
              --set space.resize=64 --set space.batch_size=8
              --set 'searcher.points_to_evaluate=[]')
    fi
    stage sweep-check 90 "${CARSWEEP[@]}" sweep "${sweep[@]}" --check
    stage sweep 200 "${CARSWEEP[@]}" sweep "${sweep[@]}"
    cp "$WORK/results/gpu-run/trials.csv" "$OUT/sweep-trials.csv" 2>/dev/null || true
    stage analyze 120 "${CARSWEEP[@]}" analyze "$WORK/results/gpu-run"
    analysis=$WORK/results/gpu-run/analysis
    if [[ -d $analysis ]]; then  # without its weights, and 8 of its Grad-CAM pictures (of 100s)
      tar -C "$analysis/.." --exclude '*.pt' --exclude '*.onnx' --exclude gallery -cf - \
        analysis | tar -C "$OUT" -xf -
      mkdir -p "$OUT/analysis/gallery"
      find "$analysis/gallery" -name '*.png' | sort | head -n 8 \
        | xargs -r cp -t "$OUT/analysis/gallery"
    fi
  fi
fi

if wanted figures; then
  if [[ -n $SMOKE ]]; then
    stage figures 120 python3 bench/train_gpu.py --smoke --json "$OUT/figures.json" \
      --trace "$OUT/trace.json.gz"
  else
    stage figures 200 python3 bench/train_gpu.py --sizes 224 256 400 --batch 64 --steps 30 \
      --share-processes 1 2 4 --share-batches 32 64 --seconds 8 --json "$OUT/figures.json" \
      --trace "$OUT/trace.json.gz"
  fi
fi

if wanted ops; then
  if [[ -n $SMOKE ]]; then
    stage ops 60 python3 bench/augment_ops.py --small --json "$OUT/ops.json"
  else
    stage ops 90 python3 bench/augment_ops.py --device cuda --size 400 --rounds 1 --seconds 1 \
      --json "$OUT/ops.json"
  fi
fi

if wanted cam; then
  if [[ -n $SMOKE ]]; then
    stage cam 60 python3 bench/cam_occlusion.py --device cpu --resize 32 --batch-size 8 \
      --batches 2 --rounds 1
  else
    stage cam 60 python3 bench/cam_occlusion.py --device cuda --resize 224 --batch-size 64 \
      --rounds 3
  fi
fi

if wanted compile; then
  if [[ -n $SMOKE ]]; then
    stage compile 120 python3 bench/train_gpu.py --smoke --compile --json "$OUT/compile.json"
  else
    stage compile 150 python3 bench/train_gpu.py --sizes 400 --batch 64 --steps 30 --compile \
      --share-processes 1 --share-batches 64 --seconds 3 --json "$OUT/compile.json"
  fi
fi
echo "== done: $OUT"
