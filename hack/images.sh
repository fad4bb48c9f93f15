#!/usr/bin/env bash
# Build the operator and CPU worker images with buildah: no daemon, no registry, no pulled base.
#
#   hack/images.sh [operator|worker-cpu]...   (default: both; `make images`)
#
# The base is a Debian minbase with python3 made by mmdebstrap from Debian's packages, imported
# as localhost/trtops-base:<suite>-<hash> and passed as the Dockerfile's PYTHON_IMAGE. The base
# tarball is cached by suite and package list; buildah keeps its layers (--layers), so a source
# edit rebuilds only the wheel and the last install. Storage is vfs and the runtime runc, with
# lowered ulimits (FACTS.md: crun and raised limits fail in this kind of machine).
# Images are tagged localhost/trtops-<target>:<version> and ghcr.io/trtops/trtops-<target>:<version>
# (the chart's default names); `podman --storage-driver vfs images` lists them.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$here"
# shellcheck source=/dev/null
source images/versions.env
log() { printf '[images] %s\n' "$*" >&2; }

cache="${TRTOPS_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/trtops}/images"
version="$(python3 -c 'import tomllib; print(tomllib.load(open("pyproject.toml", "rb"))["project"]["version"])')"
targets=("$@")
((${#targets[@]})) || targets=(operator worker-cpu)
storage=(--storage-driver vfs)
limits=(--ulimit nofile=1024:1024 --ulimit nproc=1024:1024)

packages="python3,python3-venv,ca-certificates"
key="$(printf '%s %s' "$DEBIAN_SUITE" "$packages" | sha256sum | cut -c1-12)"
base="localhost/trtops-base:$DEBIAN_SUITE-$key"
tarball="$cache/base-$DEBIAN_SUITE-$key.tar"
mkdir -p "$cache"
if [[ ! -f "$tarball" ]]; then
  log "making the base filesystem: mmdebstrap $DEBIAN_SUITE minbase + $packages"
  start=$SECONDS
  mmdebstrap --quiet --format=tar --variant=minbase --include="$packages" "$DEBIAN_SUITE" "$tarball.tmp"
  mv "$tarball.tmp" "$tarball"
  log "base filesystem in $((SECONDS - start)) s"
fi
if ! podman "${storage[@]}" image exists "$base"; then
  podman "${storage[@]}" import --quiet "$tarball" "$base" >/dev/null
fi

# Behind a TLS-intercepting proxy, TRTOPS_BUILD_CA=/path/to/bundle.crt lends the RUN steps that
# CA bundle and a pip.conf naming it, as bind mounts: nothing of them lands in an image layer.
mounts=()
if [[ -n "${TRTOPS_BUILD_CA:-}" ]]; then
  printf '[global]\ncert = /etc/ssl/certs/ca-certificates.crt\n' >"$cache/pip.conf"
  mounts=(-v "$TRTOPS_BUILD_CA:/etc/ssl/certs/ca-certificates.crt:ro" -v "$cache/pip.conf:/etc/pip.conf:ro")
fi

for target in "${targets[@]}"; do
  start=$SECONDS
  log "building $target"
  buildah "${storage[@]}" bud --runtime runc "${limits[@]}" --network host --pull=never "${mounts[@]}" \
    --layers --build-arg "PYTHON_IMAGE=$base" --build-arg "TENSORRT_IMAGE=$TENSORRT_IMAGE" \
    --build-arg "TENSORRT_VERSION=$TENSORRT_VERSION" --target "$target" \
    -t "localhost/trtops-$target:$version" -t "ghcr.io/trtops/trtops-$target:$version" . >&2
  size="$(podman "${storage[@]}" image inspect --format '{{.Size}}' "localhost/trtops-$target:$version")"
  log "$target: $((SECONDS - start)) s, $((size / 1000000)) MB"
done
