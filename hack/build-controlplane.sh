#!/usr/bin/env bash
# Build the local control plane's binaries from Go modules (no release downloads) into a cache
# keyed by version, outside the clone, so fresh clones on the same machine reuse them.
#
#   TRTOPS_CACHE   cache root (default: ${XDG_CACHE_HOME:-~/.cache}/trtops)
#
# Each binary is built into a temporary file and renamed into place only when `go build`
# succeeded, so an interrupted build never leaves a half-written binary that looks valid.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
tools="$here/tools/controlplane"
# shellcheck source=/dev/null
source "$tools/versions.env"

cache="${TRTOPS_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/trtops}"
bin="$cache/bin"
mkdir -p "$bin" "$cache/tmp"
export GOFLAGS="${GOFLAGS:-} -trimpath"
export CGO_ENABLED=0

log() { printf '[build-controlplane] %s\n' "$*" >&2; }

# install NAME VERSION DIR PKG [LDFLAGS]: build PKG (from module dir DIR, or "@" for go install)
build_one() {
  local name="$1" version="$2" dir="$3" pkg="$4" ldflags="${5:-}"
  local out="$bin/$name-$version"
  if [[ -x "$out" ]] && "$out" --help >/dev/null 2>&1; then
    return 0
  fi
  rm -f "$out"  # a half-built or broken binary from an earlier run
  local tmp
  tmp="$(mktemp "$cache/tmp/$name.XXXXXX")"
  log "building $name $version ..."
  local start=$SECONDS
  if [[ "$dir" == "@" ]]; then
    local gobin
    gobin="$(mktemp -d "$cache/tmp/gobin.XXXXXX")"
    GOBIN="$gobin" go install -ldflags "$ldflags" "$pkg@$version"
    mv "$gobin/$(basename "$pkg")" "$tmp"
    rm -rf "$gobin"
  else
    (cd "$dir" && go build -ldflags "$ldflags" -o "$tmp" "$pkg")
  fi
  chmod +x "$tmp"
  mv -f "$tmp" "$out"
  log "built $name $version in $((SECONDS - start))s"
}

k8s_ld="-s -w -X k8s.io/component-base/version.gitVersion=$K8S_VERSION"
k8s_ld+=" -X k8s.io/component-base/version.gitMajor=1"
k8s_ld+=" -X k8s.io/component-base/version.gitMinor=$(echo "$K8S_VERSION" | cut -d. -f2)"
k8s_ld+=" -X k8s.io/component-base/version.gitTreeState=clean"
k8s_ld+=" -X k8s.io/client-go/pkg/version.gitVersion=$K8S_VERSION"

kwok_ld="-s -w -X sigs.k8s.io/kwok/pkg/consts.Version=$KWOK_VERSION"
kwok_ld+=" -X sigs.k8s.io/kwok/pkg/consts.KubeVersion=$K8S_VERSION"
helm_ld="-s -w -X helm.sh/helm/v3/internal/version.version=$HELM_VERSION"
helm_ld+=" -X helm.sh/helm/v3/pkg/lint/rules.k8sVersionMajor=1"
helm_ld+=" -X helm.sh/helm/v3/pkg/lint/rules.k8sVersionMinor=$(echo "$K8S_VERSION" | cut -d. -f2)"
helm_ld+=" -X helm.sh/helm/v3/pkg/chartutil.k8sVersionMajor=1"
helm_ld+=" -X helm.sh/helm/v3/pkg/chartutil.k8sVersionMinor=$(echo "$K8S_VERSION" | cut -d. -f2)"

want="${*:-etcd kube-apiserver kube-controller-manager kube-scheduler kubectl kwok kwokctl helm actionlint}"
for name in $want; do
  case "$name" in
    etcd) build_one etcd "$ETCD_VERSION" "$tools/etcd" go.etcd.io/etcd/server/v3 "-s -w" ;;
    kube-apiserver|kube-controller-manager|kube-scheduler|kubectl)
      build_one "$name" "$K8S_VERSION" "$tools/kubernetes" "k8s.io/kubernetes/cmd/$name" "$k8s_ld" ;;
    kwok|kwokctl) build_one "$name" "$KWOK_VERSION" @ "sigs.k8s.io/kwok/cmd/$name" "$kwok_ld" ;;
    helm) build_one helm "$HELM_VERSION" @ helm.sh/helm/v3/cmd/helm "$helm_ld" ;;
    actionlint) build_one actionlint "$ACTIONLINT_VERSION" @ github.com/rhysd/actionlint/cmd/actionlint \
      "-s -w -X github.com/rhysd/actionlint.version=$ACTIONLINT_VERSION" ;;
    *) log "unknown binary: $name"; exit 2 ;;
  esac
done

# Stable names for scripts and users: symlinks to the versioned binaries.
mkdir -p "$cache/current"
for name in $want; do
  case "$name" in
    etcd) v=$ETCD_VERSION ;; kwok|kwokctl) v=$KWOK_VERSION ;; helm) v=$HELM_VERSION ;;
    actionlint) v=$ACTIONLINT_VERSION ;; *) v=$K8S_VERSION ;;
  esac
  ln -sfn "$bin/$name-$v" "$cache/current/$name"
done
log "binaries in $cache/current"
