#!/usr/bin/env bash
# Packs into .gpu/ what bench/gpu_run.sh needs on the GPU machine and that machine lacks: the
# cp312 wheels of optuna, pydantic, kornia, torchcam, tensorboardX, jsonschema and their own
# needs, and Ray with what a sweep never imports left out (ray/jars, rllib, serve, llm, the
# dashboard's web client; not ray/data: ray.tune imports ray.air, which imports it), as one
# tar.xz: Ray's wheel is 79 MB, over the 64 MiB a device call carries. Versions are the ones installed in .venv (the ones the tests pass with).
#
#     bash bench/gpu_pack.sh            # here, once (about 2 minutes: xz is slow)
#
# then a device call with carry [".gpu"] runs `bash bench/gpu_run.sh` (BENCHMARKS.md, "GPU
# training and sharing"). .gpu/ is git-ignored; its size and the tree's are printed at the end.
set -euo pipefail
cd "$(dirname "$0")/.."

PACK=.gpu
# On the GPU machine already (KINDS.md's package list): torch, torchvision, numpy, pandas,
# pyarrow, fsspec, scipy, matplotlib, tensorboard, pyyaml, requests, click, filelock, msgpack,
# protobuf, packaging, attrs, markupsafe, tqdm, pillow, aiohttp, onnx, onnxruntime.
MISSING=(optuna alembic colorlog Mako SQLAlchemy pydantic pydantic_core annotated-types
         typing-inspection typing_extensions kornia kornia_rs torchcam tensorboardX
         jsonschema jsonschema-specifications referencing rpds-py)
PLATFORMS=()
for tag in manylinux_2_{17,24,27,28,31,34,35}_x86_64 manylinux2014_x86_64 manylinux1_x86_64; do
  PLATFORMS+=(--platform "$tag")
done

installed() { .venv/bin/python -c "import importlib.metadata as m; print(m.version('$1'))"; }

download() {  # name==version ... into $1
  local into=$1; shift
  python3 -m pip download --quiet --no-deps --only-binary=:all: --python-version 3.12 \
    --implementation cp "${PLATFORMS[@]}" --platform any -d "$into" "$@" 2>&1 \
    | { grep -v "^WARNING: Location" || true; }
}

rm -rf "$PACK" && mkdir -p "$PACK/wheels"
pins=()
for name in "${MISSING[@]}"; do pins+=("$name==$(installed "$name")"); done
download "$PACK/wheels" "${pins[@]}"

ray_version=$(installed ray)
staging=$(mktemp -d)
trap 'rm -rf "$staging"' EXIT
download "$staging" "ray==$ray_version"
mkdir "$staging/site"
# A wheel is a zip of its site-packages tree: unzip keeps the mode bits of raylet and
# gcs_server (python -m zipfile drops them). Ray's console scripts stay behind: the run starts
# Ray from Python.
unzip -q "$staging"/ray-*.whl -d "$staging/site"
rm -rf "$staging/site/ray/"{jars,rllib,serve,llm} "$staging/site/ray/dashboard/client" \
       "$staging/site/ray-$ray_version.data"
tar -cJf "$PACK/ray-trimmed.tar.xz" -C "$staging/site" .

echo "packed into $PACK/:"
ls -l "$PACK/wheels" "$PACK/ray-trimmed.tar.xz" | awk 'NF > 5 {print "  " $5, $NF}'
pack_bytes=$(du -sb "$PACK" | cut -f1)
tree_bytes=$(git ls-files -z --cached --others --exclude-standard | du -cb --files0-from=- \
             | tail -1 | cut -f1)
echo "$PACK: $((pack_bytes / 1048576)) MiB; the working tree beside it:" \
     "$((tree_bytes / 1048576)) MiB (a device call carries 64 MiB in all)"
if (( pack_bytes + tree_bytes > 64 * 1048576 )); then
  echo "too large to carry in one device call" >&2
  exit 1
fi
