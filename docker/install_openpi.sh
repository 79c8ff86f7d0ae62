#!/usr/bin/env bash
# Installs Physical Intelligence's openpi into an existing Python environment, for the `openpi` runtime
# (docs/runtime.md, "openpi runtime"). Used by docker/Dockerfile (--build-arg OPENPI=REF) and
# docker/build_execution_env.sh (--openpi REF); runs on its own too:
#
#   docker/install_openpi.sh --python /path/to/env/bin/python --ref main
#
# openpi is a uv workspace and pip cannot see its [tool.uv] settings, so this installs it as `uv sync`
# would resolve it: lerobot at the commit openpi pins (pip would take an unrelated PyPI release), openpi's
# overrides (ml-dtypes, tensorstore) plus numpy<2, then openpi's patched transformers modules copied over
# the installed transformers (the PyTorch set-up step of openpi's README; openpi only checks the version).
#
# An openpi-client already in the environment keeps its version (openpi would replace it with the copy in its
# own workspace). Environment (mirrors, air-gapped sites): OPENPI_REPO (default
# git+https://github.com/Physical-Intelligence/openpi), LEROBOT_REQUIREMENT (a requirement replacing lerobot
# from GitHub at openpi's pinned commit), UV (a uv binary; default: uv on PATH, else pip-installed into a
# temporary folder).
set -euo pipefail

usage() {
  sed -n '2,17p' "$0" | sed 's/^# \{0,1\}//'
}

python_bin="python3"
ref=""
while [[ $# -gt 0 ]]; do
  case "$1" in
    --python) python_bin="$2"; shift 2 ;;
    --ref) ref="$2"; shift 2 ;;
    -h | --help) usage; exit 0 ;;
    *) echo "install_openpi: unknown argument '$1' (see --help)" >&2; exit 2 ;;
  esac
done
if [[ -z "$ref" ]]; then
  echo "install_openpi: --ref is required (an openpi commit, tag or branch, e.g. main)" >&2
  exit 2
fi

# The lerobot commit of openpi's [tool.uv.sources]; change it when openpi changes its pin.
lerobot_commit="0cf864870cf29f4738d3ade893e6fd13fbd7cdb5"
openpi_repo="${OPENPI_REPO:-git+https://github.com/Physical-Intelligence/openpi}"
lerobot_requirement="${LEROBOT_REQUIREMENT:-lerobot @ git+https://github.com/huggingface/lerobot@${lerobot_commit}}"

workdir="$(mktemp -d)"
trap 'rm -rf "$workdir"' EXIT

uv_bin="${UV:-$(command -v uv || true)}"
if [[ -z "$uv_bin" ]]; then
  echo "[install_openpi] uv not found: installing it into ${workdir}" >&2
  "$python_bin" -m pip install --quiet --no-cache-dir --target "${workdir}/uv" "uv==0.5.11"
  uv_bin="${workdir}/uv/bin/uv"
fi

# Overrides win over every requirement in the graph, openpi's own sources included.
printf 'ml-dtypes==0.4.1\ntensorstore==0.1.74\nnumpy<2\n%s\n' "$lerobot_requirement" >"${workdir}/overrides.txt"
client_version="$("$python_bin" -c 'import importlib.metadata as m
try:
    print(m.version("openpi-client"))
except m.PackageNotFoundError:
    pass')"
if [[ -n "$client_version" ]]; then
  echo "openpi-client==${client_version}" >>"${workdir}/overrides.txt"
fi
openpi_requirement="openpi @ ${openpi_repo}@${ref}"
echo "[install_openpi] installing ${openpi_requirement} into $("$python_bin" -c 'import sys; print(sys.prefix)')" >&2
"$uv_bin" pip install --no-cache --python "$python_bin" --override "${workdir}/overrides.txt" "$openpi_requirement"

echo "[install_openpi] copying openpi's transformers_replace over the installed transformers" >&2
openpi_dir="$("$python_bin" -c 'import os, openpi; print(os.path.dirname(openpi.__file__))')"
transformers_dir="$("$python_bin" -c 'import os, transformers; print(os.path.dirname(transformers.__file__))')"
cp -r "${openpi_dir}/models_pytorch/transformers_replace/." "${transformers_dir}/"

# What the runtime imports at load, and numpy 1.x (the Python backend stub needs it).
"$python_bin" -c 'import numpy, openpi.policies.policy_config, openpi.training.config
assert numpy.__version__ < "2", numpy.__version__'
echo "[install_openpi] done: openpi ${ref}" >&2
