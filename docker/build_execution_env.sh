#!/usr/bin/env bash
# Builds a conda-pack'ed Python environment with openpi-triton and its dependencies, for the stock
# nvcr.io/nvidia/tritonserver image's Python backend (`EXECUTION_ENV_PATH` in each model's config.pbtxt),
# so the model repository runs there without building a derived image.
#
#   docker/build_execution_env.sh [--output envs/openpi-triton-py312.tar.gz] [--python 3.12]
#                                 [--jax cuda12|cpu] [--openpi GIT_REF]
#
# Needs conda (Miniconda, Miniforge or Anaconda) on PATH; conda-pack is installed into the build env.
# The Python version must equal the image's stub: 3.12 from Triton 24.11 on (24.10 and older: 3.10, too
# old for this project). Run it on Linux x86_64 (the image's platform); the result is several GB with
# CUDA JAX.
set -euo pipefail

usage() {
  sed -n '2,12p' "$0" | sed 's/^# \{0,1\}//'
}

repo_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
output="envs/openpi-triton-py312.tar.gz"
python_version="3.12"
jax_flavour="cuda12"
openpi_ref=""
jax_version="0.5.3"

while [[ $# -gt 0 ]]; do
  case "$1" in
    --output) output="$2"; shift 2 ;;
    --python) python_version="$2"; shift 2 ;;
    --jax) jax_flavour="$2"; shift 2 ;;
    --openpi) openpi_ref="$2"; shift 2 ;;
    -h | --help) usage; exit 0 ;;
    *) echo "unknown argument '$1' (see --help)" >&2; exit 2 ;;
  esac
done

case "$jax_flavour" in
  cuda12) jax_requirement="jax[cuda12]==${jax_version}" ;;
  cpu) jax_requirement="jax==${jax_version}" ;;
  *) echo "--jax must be cuda12 or cpu, got '${jax_flavour}'" >&2; exit 2 ;;
esac

if ! command -v conda >/dev/null 2>&1; then
  echo "conda not found on PATH: install Miniforge (https://conda-forge.org/download/) or Miniconda first" >&2
  exit 1
fi

# Packages from ~/.local would leak into the env and then be missing inside the container.
export PYTHONNOUSERSITE=True

workdir="$(mktemp -d)"
trap 'rm -rf "$workdir"' EXIT
env_dir="${workdir}/env"

echo "[build_execution_env] creating Python ${python_version} env in ${env_dir}" >&2
# libstdcxx-ng: the env's own libstdc++ (Triton's README: "GLIBCXX_3.4.30 not found" otherwise).
conda create --yes --quiet --prefix "$env_dir" --channel conda-forge --override-channels \
  "python=${python_version}" "libstdcxx-ng>=12" conda-pack
env_python="${env_dir}/bin/python"

echo "[build_execution_env] installing openpi-triton (${repo_root}) and ${jax_requirement}" >&2
# A copy of the sources, so the build leaves nothing (build/, *.egg-info) in the checkout.
src="${workdir}/src"
mkdir -p "$src"
cp -r "${repo_root}/pyproject.toml" "${repo_root}/README.md" "${repo_root}/openpi_triton" "${repo_root}/bridge" "$src/"
"$env_python" -m pip install --no-cache-dir "$src" "$jax_requirement"
if [[ -n "$openpi_ref" ]]; then
  "${repo_root}/docker/install_openpi.sh" --python "$env_python" --ref "$openpi_ref"
fi
# numpy 1.x: the Python backend stub and openpi both need it (pyproject pins it; check nothing upgraded it).
"$env_python" -c 'import numpy, openpi_triton; assert numpy.__version__ < "2", numpy.__version__'

mkdir -p "$(dirname "$output")"
echo "[build_execution_env] packing to ${output}" >&2
"${env_dir}/bin/conda-pack" --prefix "$env_dir" --output "$output" --force --ignore-editable-packages
echo "[build_execution_env] done: $(du -h "$output" | cut -f1) ${output}" >&2
echo "In each model's config.pbtxt (path as the container sees it, e.g. with -v \$PWD/envs:/envs):" >&2
echo "  parameters { key: \"EXECUTION_ENV_PATH\" value: { string_value: \"/envs/$(basename "$output")\" } }" >&2
