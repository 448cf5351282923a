#!/usr/bin/env bash
# Builds the image from docker/Dockerfile (the file users build), runs it, waits for
# /health, embeds one text over HTTP and checks the gRPC port answers, then removes
# the container and the image (KEEP_IMAGE=1 keeps the image).
#
#   docker/smoke.sh                 # with docker or podman and reachable base images
#   docker/smoke.sh --local-bases   # CI: as root, with no image registry reachable
#
# --local-bases installs podman, buildah, runc and debootstrap from the system's
# Debian packages, configures them for a root CI job (vfs storage, runc, cgroupfs,
# no default ulimits), and makes the two base images the Dockerfile names:
# debian:bookworm-slim from debootstrap, and rust:1-slim-bookworm from it plus a C
# toolchain and this machine's Rust toolchain.
set -euo pipefail
cd "$(dirname "$0")/.."

IMAGE=${IMAGE:-aside:smoke}
PORT=${PORT:-18080}
GRPC_PORT=${GRPC_PORT:-15051}
local_bases=0
[[ ${1:-} == --local-bases ]] && local_bases=1

log() { echo "[smoke] $*" >&2; }

if [[ $local_bases == 1 ]]; then
  if [[ $(id -u) != 0 ]]; then
    echo "--local-bases needs root" >&2
    exit 2
  fi
  if ! command -v podman >/dev/null || ! command -v debootstrap >/dev/null; then
    log "installing podman, buildah, runc, debootstrap"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq podman buildah runc debootstrap >/dev/null
  fi
  mkdir -p /etc/containers
  cat > /etc/containers/containers.conf <<'CONF'
[containers]
default_ulimits = []
[engine]
cgroup_manager = "cgroupfs"
runtime = "runc"
events_logger = "file"
CONF
  export STORAGE_DRIVER=vfs
  ENGINE=(podman --storage-driver vfs)
  # The Debian mirror this machine's apt already uses.
  mirror=$( (grep -rhoE '^(URIs:|deb) +https?://[^ ]+' /etc/apt/sources.list /etc/apt/sources.list.d/ 2>/dev/null || true) \
           | awk '{print $2}' | grep -E '/debian/?$' | head -1)
  if [[ -z $mirror ]]; then
    echo "no Debian mirror found in this machine's apt sources" >&2
    exit 1
  fi
  if ! "${ENGINE[@]}" image exists debian:bookworm-slim; then
    log "debootstrap bookworm from $mirror"
    root=$(mktemp -d)
    debootstrap --variant=minbase --include=ca-certificates bookworm "$root" "$mirror" >/dev/null
    echo "deb $mirror bookworm main" > "$root/etc/apt/sources.list"
    # Extra CA certificates this machine trusts (e.g. of an intercepting proxy on
    # the way to the package registries) are trusted inside the images too.
    if compgen -G "/usr/local/share/ca-certificates/*.crt" >/dev/null; then
      cp /usr/local/share/ca-certificates/*.crt "$root/usr/local/share/ca-certificates/"
      chroot "$root" update-ca-certificates >/dev/null
    fi
    rm -rf "$root"/var/cache/apt/archives/*.deb
    chmod 755 "$root"
    tar -C "$root" -c . | "${ENGINE[@]}" import \
      --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
      --change 'CMD ["bash"]' - debian:bookworm-slim >/dev/null
    rm -rf "$root"
  fi
  if ! "${ENGINE[@]}" image exists rust:1-slim-bookworm; then
    log "making rust:1-slim-bookworm from debian:bookworm-slim and $(rustc --version)"
    sysroot=$(rustc --print sysroot)
    ctx=$(mktemp -d)
    cp -a "$sysroot" "$ctx/rust"
    rm -rf "$ctx/rust/share/doc"
    cat > "$ctx/Containerfile" <<'CF'
FROM debian:bookworm-slim
RUN apt-get update && apt-get install -y --no-install-recommends gcc libc6-dev ca-certificates && rm -rf /var/lib/apt/lists/*
COPY rust /usr/local/rust
ENV PATH=/usr/local/rust/bin:$PATH CARGO_HOME=/usr/local/cargo
CF
    "${ENGINE[@]}" build --network host -t rust:1-slim-bookworm "$ctx" >/dev/null
    rm -rf "$ctx"
  fi
elif command -v docker >/dev/null; then
  ENGINE=(docker)
else
  ENGINE=(podman)
fi

build_args=(--network host -f docker/Dockerfile -t "$IMAGE")
if [[ ${ENGINE[0]} == podman ]]; then
  # podman writes OCI images unless told otherwise, and OCI has no HEALTHCHECK.
  # --layers=false: one commit per stage instead of one per instruction; under the
  # vfs driver every commit is a full copy of the tree (~1.4 GB for the build stage),
  # and a run that kept them filled the CI disk.
  build_args+=(--format docker --layers=false)
fi
if [[ $local_bases == 1 ]]; then
  # What an earlier run left behind (it may have been killed before its cleanup).
  "${ENGINE[@]}" rmi -f "$IMAGE" >/dev/null 2>&1 || true
  "${ENGINE[@]}" image prune -f >/dev/null 2>&1 || true
fi
# Reuse this machine's crate downloads when podman can mount them.
if [[ ${ENGINE[0]} == podman && -d "${CARGO_HOME:-$HOME/.cargo}/registry" ]]; then
  build_args+=(-v "${CARGO_HOME:-$HOME/.cargo}/registry:/usr/local/cargo/registry")
fi
name=aside-smoke-$$
# The container, then the image; on a CI machine (--local-bases) also the build
# stage's unnamed image, so that nothing is kept between runs but the base images.
cleanup() {
  "${ENGINE[@]}" rm -f "$name" >/dev/null 2>&1 || true
  [[ ${KEEP_IMAGE:-0} == 1 ]] && return
  "${ENGINE[@]}" rmi -f "$IMAGE" >/dev/null 2>&1 || true
  if [[ $local_bases == 1 ]]; then
    "${ENGINE[@]}" image prune -f >/dev/null 2>&1 || true
  fi
}
trap cleanup EXIT
log "building $IMAGE with ${ENGINE[*]}"
t0=$(date +%s)
"${ENGINE[@]}" build "${build_args[@]}" .
log "built in $(( $(date +%s) - t0 )) s"

run_args=(-d --name "$name" -p "127.0.0.1:$PORT:8080" -p "127.0.0.1:$GRPC_PORT:50051")
[[ ${ENGINE[0]} == podman ]] && run_args=(-d --name "$name" --network host -e ASIDE_PORT=$PORT -e ASIDE_GRPC_PORT=$GRPC_PORT -e ASIDE_HOST=127.0.0.1)
"${ENGINE[@]}" run "${run_args[@]}" "$IMAGE" >/dev/null

log "waiting for /health"
for i in $(seq 1 90); do
  if curl -fsS "http://127.0.0.1:$PORT/health" >/dev/null 2>&1; then break; fi
  if [[ $i == 90 ]]; then
    "${ENGINE[@]}" logs "$name" >&2 || true
    echo "the container did not become healthy" >&2
    exit 1
  fi
  sleep 2
done
out=$(curl -fsS -H 'content-type: application/json' \
  -d '{"inputs": ["This is an example sentence"]}' "http://127.0.0.1:$PORT/v1/embed")
dim=$(python3 -c 'import json,sys; print(len(json.loads(sys.argv[1])["embeddings"][0]))' "$out")
[[ $dim == 384 ]] || { echo "unexpected embedding: $out" >&2; exit 1; }
log "embedded one text through the container: $dim dimensions"
"${ENGINE[@]}" exec "$name" aside healthcheck >/dev/null
python3 - "$GRPC_PORT" <<'PY'
import socket, sys
s = socket.create_connection(("127.0.0.1", int(sys.argv[1])), timeout=5)
s.sendall(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + bytes([0, 0, 0, 4, 0, 0, 0, 0, 0]))
frame = s.recv(9)
assert len(frame) == 9 and frame[3] == 4, "no HTTP/2 SETTINGS frame from the gRPC port"
PY
log "gRPC port answers HTTP/2"
log "ok"
