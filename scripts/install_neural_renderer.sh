#!/usr/bin/env bash
# Build and install neural_renderer (PyPI neural-renderer-pytorch 1.1.3) on a GPU node
# running torch 2.x, for recon's optional `--renderer neural_renderer` backend.
#
# Why a script: the 1.1.3 sdist (2019, the last release; no maintained fork on PyPI)
# does not compile against current torch (renderer_spec.md §3.2):
#   * AT_CHECK was removed in torch 1.5            -> TORCH_CHECK
#   * x.type().is_cuda() is deprecated             -> x.is_cuda()
#   * AT_DISPATCH_*(x.type(), ...) fails on >= 2.6 -> AT_DISPATCH_*(x.scalar_type(), ...)
#   * x.data<T>() is deprecated                    -> x.data_ptr<T>()
#   * setup.py imports torch, so PEP 517 build isolation fails -> --no-build-isolation
#   * without a visible GPU, torch cannot guess the arch -> TORCH_CUDA_ARCH_LIST
# This script downloads the sdist with pip (or takes a local copy), checks its hash,
# applies exactly those substitutions, verifies none of the old forms remain, builds it
# against the torch already installed, and checks that `import neural_renderer` works.
#
# Usage:
#   scripts/install_neural_renderer.sh             # install (no-op if already importable)
#   scripts/install_neural_renderer.sh --force     # rebuild and reinstall
#   scripts/install_neural_renderer.sh --patch-only DIR
#                                                  # unpack + patch into DIR, no build (no CUDA needed)
# Environment:
#   PYTHON                 interpreter whose torch to build against (default: python3)
#   TORCH_CUDA_ARCH_LIST   GPU archs (default "8.0;8.6;8.9;9.0": A100, A10G, L4, H100/H200)
#   CUDA_HOME              CUDA toolkit root (default: the root of the nvcc on PATH)
#   NR_SDIST               path to neural_renderer_pytorch-1.1.3.tar.gz for nodes without
#                          PyPI access (fetch it elsewhere with
#                          `pip download --no-deps --no-binary :all: neural-renderer-pytorch==1.1.3`)
# Requirements: torch with CUDA already installed, nvcc whose major version matches
# torch.version.cuda, a C++ compiler. scikit-image is installed if missing
# (neural_renderer imports it).
set -euo pipefail

readonly NR_VERSION="1.1.3"
readonly NR_SDIST_NAME="neural_renderer_pytorch-${NR_VERSION}.tar.gz"
# sha256 of the PyPI sdist (19,119 bytes).
readonly NR_SDIST_SHA256="d0d86b003c2cc1a4d8a909862fb52ff153641636471097651239764a428c9137"

PYTHON="${PYTHON:-python3}"
export TORCH_CUDA_ARCH_LIST="${TORCH_CUDA_ARCH_LIST:-8.0;8.6;8.9;9.0}"

die() { echo "install_neural_renderer: ERROR: $*" >&2; exit 1; }
say() { echo "install_neural_renderer: $*"; }

force=0
patch_only_dir=""
while [[ $# -gt 0 ]]; do
  case "$1" in
    --force) force=1; shift ;;
    --patch-only) [[ $# -ge 2 ]] || die "--patch-only needs a directory"; patch_only_dir="$2"; shift 2 ;;
    -h|--help) sed -n '2,32p' "$0"; exit 0 ;;
    *) die "unknown argument: $1 (see --help)" ;;
  esac
done

# Imports from / so that a source tree in the current directory cannot shadow the install.
nr_importable() { (cd / && "$PYTHON" -c "import neural_renderer, neural_renderer.cuda.rasterize" >/dev/null 2>&1); }

# The toolkit root of the nvcc on PATH. nvcc is often a symlink or a wrapper script
# outside the toolkit tree (then dirname/dirname gives a root without libcudart, and the
# link fails: spec §3.2 #7), so ask nvcc itself: its --dryrun prints "#$ TOP=<root>/bin/..".
find_cuda_home() {
  local nvcc_path top
  nvcc_path="$(command -v nvcc)" || return 1
  top="$("$nvcc_path" --dryrun -x cu -c /dev/null -o /dev/null 2>&1 | sed -n 's/^#\$ TOP=//p' | head -n 1)"
  if [[ -n "$top" && -d "$top" ]]; then
    (cd "$top" && pwd -P)
  else
    dirname "$(dirname "$(readlink -f "$nvcc_path")")"
  fi
}

check_build_environment() {
  command -v "$PYTHON" >/dev/null || die "no Python interpreter '$PYTHON' (set PYTHON)"
  "$PYTHON" -c "import torch" 2>/dev/null || die "torch is not importable by $PYTHON; install the CUDA build of torch first"
  local torch_cuda
  torch_cuda="$("$PYTHON" -c "import torch; print(torch.version.cuda or '')")"
  [[ -n "$torch_cuda" ]] || die "torch $("$PYTHON" -c 'import torch; print(torch.__version__)') is a CPU-only build; neural_renderer needs CUDA"

  if [[ -z "${CUDA_HOME:-}" ]]; then
    CUDA_HOME="$(find_cuda_home)" || die "nvcc not found on PATH and CUDA_HOME is unset; install the CUDA toolkit ${torch_cuda%%.*}.x"
  fi
  export CUDA_HOME
  [[ -x "$CUDA_HOME/bin/nvcc" ]] || die "CUDA_HOME=$CUDA_HOME has no bin/nvcc; point CUDA_HOME at the toolkit root"
  compgen -G "$CUDA_HOME/lib64/libcudart*" >/dev/null || compgen -G "$CUDA_HOME/targets/*/lib/libcudart*" >/dev/null \
    || die "no libcudart under CUDA_HOME=$CUDA_HOME (lib64/ or targets/*/lib/); the link step would fail"

  local nvcc_version
  nvcc_version="$("$CUDA_HOME/bin/nvcc" --version | sed -n 's/.*release \([0-9]*\.[0-9]*\).*/\1/p')"
  [[ -n "$nvcc_version" ]] || die "could not read the nvcc version from $CUDA_HOME/bin/nvcc --version"
  [[ "${nvcc_version%%.*}" == "${torch_cuda%%.*}" ]] \
    || die "nvcc $nvcc_version and torch's CUDA $torch_cuda differ in major version; torch refuses to build extensions then"
  say "torch CUDA $torch_cuda, nvcc $nvcc_version at $CUDA_HOME, TORCH_CUDA_ARCH_LIST=$TORCH_CUDA_ARCH_LIST"
}

fetch_sdist() {  # $1: directory to put the sdist in
  local dest="$1"
  if [[ -n "${NR_SDIST:-}" ]]; then
    [[ -f "$NR_SDIST" ]] || die "NR_SDIST=$NR_SDIST does not exist"
    cp "$NR_SDIST" "$dest/$NR_SDIST_NAME"
  else
    # pip prepares the sdist's metadata, which runs its setup.py: hence --no-build-isolation
    # and a CUDA torch (checked above).
    "$PYTHON" -m pip download --no-deps --no-binary :all: --no-build-isolation \
      "neural-renderer-pytorch==${NR_VERSION}" -d "$dest" >&2 \
      || die "pip could not download neural-renderer-pytorch==${NR_VERSION}; set NR_SDIST to a local copy"
  fi
  local actual
  actual="$(sha256sum "$dest/$NR_SDIST_NAME" | cut -d' ' -f1)"
  [[ "$actual" == "$NR_SDIST_SHA256" ]] || die "sha256 of $NR_SDIST_NAME is $actual, expected $NR_SDIST_SHA256"
}

patch_sources() {  # $1: unpacked source root
  local cuda_dir="$1/neural_renderer/cuda"
  [[ -d "$cuda_dir" ]] || die "unexpected sdist layout: no $cuda_dir"
  local f
  for f in "$cuda_dir"/*.cpp; do
    sed -i -e 's/AT_CHECK(/TORCH_CHECK(/g' -e 's/\.type()\.is_cuda()/.is_cuda()/g' "$f"
  done
  for f in "$cuda_dir"/*.cu; do
    sed -i \
      -e 's/\(AT_DISPATCH_[A-Z_]*([[:space:]]*[A-Za-z_][A-Za-z0-9_]*\)\.type()/\1.scalar_type()/g' \
      -e 's/\.data<\([A-Za-z0-9_]*\)>()/.data_ptr<\1>()/g' \
      "$f"
  done
  # Fail loudly if a form the substitutions should have removed is still there (a different sdist?).
  if grep -nE 'AT_CHECK|\.type\(\)|\.data<' "$cuda_dir"/*.cpp "$cuda_dir"/*.cu >&2; then
    die "the lines above still use APIs removed from torch 2.x; the patch did not apply cleanly"
  fi
  local count
  count="$(grep -cE 'TORCH_CHECK|scalar_type\(\)|data_ptr<' "$cuda_dir"/*.cpp "$cuda_dir"/*.cu | awk -F: '{s+=$2} END {print s}')"
  [[ "$count" -gt 0 ]] || die "no substituted call found; the sources are not the expected ones"
  say "patched $count call sites in $cuda_dir"
}

if [[ -n "$patch_only_dir" ]]; then
  mkdir -p "$patch_only_dir"
  fetch_sdist "$patch_only_dir"
  tar -xzf "$patch_only_dir/$NR_SDIST_NAME" -C "$patch_only_dir"
  patch_sources "$patch_only_dir/neural_renderer_pytorch-${NR_VERSION}"
  say "patched sources in $patch_only_dir/neural_renderer_pytorch-${NR_VERSION} (not built)"
  exit 0
fi

if [[ "$force" -eq 0 ]] && nr_importable; then
  say "neural_renderer is already importable by $PYTHON; nothing to do (use --force to rebuild)"
  exit 0
fi

check_build_environment
"$PYTHON" -c "import skimage" 2>/dev/null || "$PYTHON" -m pip install scikit-image \
  || die "could not install scikit-image, which neural_renderer imports"

workdir="$(mktemp -d)"
trap 'rm -rf "$workdir"' EXIT
fetch_sdist "$workdir"
tar -xzf "$workdir/$NR_SDIST_NAME" -C "$workdir"
src="$workdir/neural_renderer_pytorch-${NR_VERSION}"
patch_sources "$src"

say "building (a few minutes; MAX_JOBS limits parallel nvcc jobs)"
pip_args=(install --no-build-isolation --no-deps)
[[ "$force" -eq 1 ]] && pip_args+=(--force-reinstall)
(cd "$src" && "$PYTHON" -m pip "${pip_args[@]}" .) \
  || die "building neural_renderer failed (see the compiler output above)"

nr_importable || die "the build finished but 'import neural_renderer' still fails"
say "installed: $(cd / && "$PYTHON" -c 'import neural_renderer; print(neural_renderer.__file__)')"

# Run one depth render when a GPU is visible: a build for the wrong arch imports fine
# but fails at the first kernel launch.
if (cd / && "$PYTHON" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)"); then
  (cd / && "$PYTHON" - <<'EOF') || die "neural_renderer imports but cannot render on this GPU (wrong TORCH_CUDA_ARCH_LIST?)"
import torch
import neural_renderer as nr

K = torch.tensor([[[10.0, 0, 3.5], [0, 10.0, 3.5], [0, 0, 1]]], device="cuda")
renderer = nr.Renderer(camera_mode="projection", image_size=8, orig_size=8, K=K,
                       R=torch.eye(3, device="cuda")[None], t=torch.zeros(1, 1, 3, device="cuda"))
verts = torch.tensor([[[-1.0, -1.0, 2.0], [1.0, -1.0, 2.0], [0.0, 1.0, 2.0]]], device="cuda")
faces = torch.tensor([[[0, 1, 2]]], dtype=torch.int32, device="cuda")
depth = renderer.render_depth(verts, faces)
assert torch.isclose(depth.min(), torch.tensor(2.0, device="cuda")), depth
print("install_neural_renderer: GPU smoke test passed (triangle at depth 2 rendered)")
EOF
else
  say "no GPU visible: skipped the render smoke test"
fi
