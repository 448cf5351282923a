#!/usr/bin/env bash
# Builds `aside` with the `cuda` feature, on a machine with or without a GPU: no
# driver or system CUDA toolkit is needed to compile. NVIDIA's own wheels (nvcc, the
# runtime, cuBLAS, cuRAND, NVRTC and their headers, CUDA 13) go into a cached
# virtualenv at .cuda-venv/ (or $ASIDE_CUDA_VENV); the build goes to its own target
# folder (target/cuda/, or $ASIDE_CUDA_TARGET) so the CPU build is untouched.
#
# Linking: candle links the CUDA libraries by name (-lcuda -lcublas ...). The wheels
# carry versioned libraries only (libcublas.so.13), so unversioned links to them are
# made in target/cuda/link/; the driver's libcuda is not in any wheel, so a link stub
# is generated there (every cu* entry point of the driver API as cudarc declares it,
# soname libcuda.so.1) — the same thing the toolkit's lib64/stubs/libcuda.so is. At
# run time the driver's real libcuda.so.1 is loaded; on a machine without one the
# binary stops at start with the loader's "libcuda.so.1: cannot open shared object
# file".
#
# Idempotent; prints the built binary's path as its last line. CUDA_COMPUTE_CAP
# (default 90: H100/H200) picks the GPU architecture the kernels are compiled for.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
venv="${ASIDE_CUDA_VENV:-$root/.cuda-venv}"
target="${ASIDE_CUDA_TARGET:-$root/target/cuda}"
wheels=(nvidia-cuda-nvcc nvidia-cuda-runtime nvidia-cuda-crt nvidia-cuda-cccl
        nvidia-cublas nvidia-curand nvidia-cuda-nvrtc)
stamp="$venv/.wheels"
if [[ ! -x "$venv/bin/python" || "$(cat "$stamp" 2>/dev/null)" != "${wheels[*]}" ]]; then
  echo "build-cuda: installing ${wheels[*]} into $venv ..." >&2
  python3 -m venv "$venv" >&2
  "$venv/bin/python" -m pip install --quiet --disable-pip-version-check "${wheels[@]}" >&2
  echo "${wheels[*]}" >"$stamp"
fi
cuda="$("$venv/bin/python" -c 'import nvidia, os; print(os.path.join(list(nvidia.__path__)[0], "cu13"))')"
[[ -x "$cuda/bin/nvcc" ]] || { echo "build-cuda: no nvcc under $cuda" >&2; exit 1; }
version="$("$cuda/bin/nvcc" --version | sed -n 's/.*release \([0-9]*\)\.\([0-9]*\).*/\1 \2/p')"
read -r major minor <<<"$version"
echo "build-cuda: nvcc $major.$minor at $cuda/bin/nvcc" >&2

link="$target/link"
mkdir -p "$link"
for lib in cudart cublas cublasLt curand nvrtc; do
  so="$(ls "$cuda"/lib/lib$lib.so.* 2>/dev/null | sort | head -n1 || true)"
  [[ -n $so ]] || { echo "build-cuda: lib$lib.so.* is not in the wheels" >&2; exit 1; }
  ln -sf "$so" "$link/lib$lib.so"
done
if [[ ! -e "$link/libcuda.so" ]]; then
  sys="$(cargo metadata --format-version 1 --features aside-server/cuda --manifest-path "$root/Cargo.toml" |
    "$venv/bin/python" -c 'import json,sys; print(next(p["manifest_path"] for p in json.load(sys.stdin)["packages"] if p["name"]=="cudarc"))')"
  sys="$(dirname "$sys")/src/driver/sys/mod.rs"
  grep -oE '^pub unsafe fn cu[A-Za-z0-9_]+' "$sys" | sed 's/^pub unsafe fn //' | sort -u |
    sed 's/.*/int &(void) { return 100; }/' >"$link/libcuda-stub.c"
  cc -shared -fPIC -Wl,-soname,libcuda.so.1 -o "$link/libcuda.so" "$link/libcuda-stub.c"
fi

# cudarc knows CUDA up to its own newest release: a newer nvcc builds against that API.
cudarc_max=13040
have=$((major * 1000 + minor * 10))
export CUDARC_CUDA_VERSION=$((have < cudarc_max ? have : cudarc_max))
export CUDA_ROOT="$cuda" CUDA_PATH="$cuda" CUDA_HOME="$cuda"
export CUDA_COMPUTE_CAP="${CUDA_COMPUTE_CAP:-90}"
export PATH="$cuda/bin:$PATH"
export RUSTFLAGS="${RUSTFLAGS:-} -L native=$link"
if [[ ${1:-} == test ]]; then
  # `scripts/build-cuda.sh test ARGS...`: `cargo test --features cuda ARGS...` in the
  # same environment and target directory (scripts/gpu-check.sh runs its parity
  # test so).
  shift
  exec cargo test --release --features cuda --manifest-path "$root/Cargo.toml" \
    --target-dir "$target" "$@"
fi
cargo build --release --features cuda -p aside-server --bin aside \
  --manifest-path "$root/Cargo.toml" --target-dir "$target" >&2
echo "$target/release/aside"
