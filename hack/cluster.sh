#!/usr/bin/env bash
# The local control plane: a real kube-apiserver, kube-controller-manager, kube-scheduler and etcd
# (built from Go modules by hack/build-controlplane.sh), run by `kwokctl --runtime binary`, with kwok
# faking nodes (GPU nodes included) and pod lifecycles (kwok's default stages, except that trtops
# build pods stay Running until a test finishes them: hack/kwok/pod-complete.yaml).
#
#   hack/cluster.sh up       start the cluster, or reuse a healthy one; prints how to use it
#   hack/cluster.sh down     delete the cluster
#   hack/cluster.sh status   say whether it is up
#   hack/cluster.sh env      print `export ...` lines for KUBECONFIG and PATH
#
#   TRTOPS_CACHE           cache root (default ${XDG_CACHE_HOME:-~/.cache}/trtops)
#   TRTOPS_CLUSTER         cluster name (default trtops)
#   TRTOPS_APISERVER_PORT  fixed API server port (default: a free port chosen at creation)
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
# shellcheck source=/dev/null
source "$here/tools/controlplane/versions.env"
cache="${TRTOPS_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/trtops}"
name="${TRTOPS_CLUSTER:-trtops}"
bin="$cache/current"
kubeconfig="$cache/clusters/$name.kubeconfig"

export KWOK_WORKDIR="$cache/kwok"
export KWOK_KUBE_VERSION="$K8S_VERSION"
export KWOK_KUBECTL_BINARY="$bin/kubectl"
export PATH="$bin:$PATH"

log() { printf '[cluster] %s\n' "$*" >&2; }
die() { printf '[cluster] error: %s\n' "$*" >&2; exit 1; }

kc() { kubectl --kubeconfig "$kubeconfig" --request-timeout=10s "$@"; }

healthy() {
  [[ -f "$kubeconfig" ]] && kc get --raw /readyz >/dev/null 2>&1
}

port_free() {
  python3 - "$1" <<'PY'
import socket, sys
s = socket.socket()
try:
    s.bind(("127.0.0.1", int(sys.argv[1])))
except OSError:
    sys.exit(1)
PY
}

free_port() {
  python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'
}

apply_nodes() {
  # kwok manages nodes annotated kwok.x-k8s.io/node=fake: it keeps them Ready and runs their pods
  # through its stages (Running/Ready; Job pods Succeeded, trtops build pods excepted: see
  # write_kwok_stages). Two GPU products so pinning is visible.
  local nodes=""
  local i
  for i in 0 1; do
    nodes+="$(node_yaml "gpu-h100-$i" NVIDIA-H100-80GB-HBM3 8 9.0)"$'\n---\n'
  done
  nodes+="$(node_yaml gpu-l4-0 NVIDIA-L4 4 8.9)"$'\n---\n'
  nodes+="$(node_yaml cpu-0 "" 0 "")"
  printf '%s\n' "$nodes" | kc apply -f - >/dev/null
}

node_yaml() {
  local node="$1" product="$2" gpus="$3" cc="$4"
  local gpu_labels="" gpu_capacity=""
  if [[ -n "$product" ]]; then
    gpu_labels="    nvidia.com/gpu.present: \"true\"
    nvidia.com/gpu.product: $product
    nvidia.com/gpu.count: \"$gpus\"
    nvidia.com/gpu.compute.major: \"${cc%%.*}\"
    nvidia.com/gpu.compute.minor: \"${cc##*.}\""
    gpu_capacity="    nvidia.com/gpu: \"$gpus\""
  fi
  cat <<YAML
apiVersion: v1
kind: Node
metadata:
  name: $node
  annotations:
    node.alpha.kubernetes.io/ttl: "0"
    kwok.x-k8s.io/node: fake
  labels:
    kubernetes.io/hostname: $node
    kubernetes.io/os: linux
    kubernetes.io/arch: amd64
    type: kwok
$gpu_labels
status:
  allocatable: &res
    cpu: "32"
    memory: 256Gi
    pods: "110"
$gpu_capacity
  capacity: *res
  nodeInfo:
    architecture: amd64
    kubeletVersion: fake
    operatingSystem: linux
  phase: Running
YAML
}

apply_gateway_api_crds() {
  # Gateway API's standard-channel CRDs, from the sigs.k8s.io/gateway-api module's own YAML.
  local dir
  dir="$(GOFLAGS=-mod=mod go mod download -json "sigs.k8s.io/gateway-api@$GATEWAY_API_VERSION" \
    | python3 -c 'import json,sys; print(json.load(sys.stdin)["Dir"])')" \
    || die "could not fetch sigs.k8s.io/gateway-api@$GATEWAY_API_VERSION from the Go module proxy"
  local try
  for try in 1 2 3; do  # another `up` (a parallel test run) may be applying them too
    kc apply --server-side --force-conflicts -f "$dir/config/crd/standard/" >/dev/null && return 0
    sleep "$try"
  done
  die "could not apply the Gateway API CRDs"
}

apply_prometheus_operator_crds() {
  # The Prometheus Operator's PodMonitor and ServiceMonitor CRDs, from its Go module's own YAML,
  # so the chart's monitoring objects are checked against the real schema.
  local dir f
  dir="$(GOFLAGS=-mod=mod go mod download -json \
      "github.com/prometheus-operator/prometheus-operator@$PROMETHEUS_OPERATOR_VERSION" \
    | python3 -c 'import json,sys; print(json.load(sys.stdin)["Dir"])')" \
    || die "could not fetch prometheus-operator@$PROMETHEUS_OPERATOR_VERSION from the Go module proxy"
  for f in podmonitors servicemonitors; do
    local try ok=""
    for try in 1 2 3; do
      kc apply --server-side --force-conflicts \
        -f "$dir/example/prometheus-operator-crd/monitoring.coreos.com_$f.yaml" >/dev/null \
        && { ok=1; break; }
      sleep "$try"
    done
    [[ -n "$ok" ]] || die "could not apply the $f CRD"
  done
}

write_kwok_stages() {
  # kwokctl's default stages (taken from the pinned kwok module, as kwokctl embeds them), with
  # pod-complete replaced by hack/kwok/pod-complete.yaml: kwok leaves trtops build pods Running
  # for the tests to finish with the worker's result. Stages given to kwokctl replace all of its
  # defaults, so the node stages are passed too (node-heartbeat-with-lease: the binary runtime
  # runs node leases).
  local out="$1" dir stage
  dir="$(GOFLAGS=-mod=mod go mod download -json "sigs.k8s.io/kwok@$KWOK_VERSION" \
    | python3 -c 'import json,sys; print(json.load(sys.stdin)["Dir"])')" \
    || die "could not fetch sigs.k8s.io/kwok@$KWOK_VERSION from the Go module proxy"
  {
    for stage in node/fast/node-initialize node/heartbeat-with-lease/node-heartbeat-with-lease \
        pod/fast/pod-ready pod/fast/pod-delete; do
      cat "$dir/kustomize/stage/$stage.yaml"
      printf -- '---\n'
    done
    cat "$here/hack/kwok/pod-complete.yaml"
  } >"$out"
}

# The running cluster's kwok leaves build pods alone (hack/kwok/pod-complete.yaml), or says how.
check_kwok_stages() {
  local conf="$KWOK_WORKDIR/clusters/$name/kwok.yaml"
  if [[ -f "$conf" ]] && ! grep -q 'trtops.dev/component' "$conf"; then
    log "warning: cluster '$name' predates hack/kwok/pod-complete.yaml: its kwok finishes build pods without a result (tests that finish builds race it); recreate it: hack/cluster.sh down && hack/cluster.sh up"
  fi
}

cmd_up() {
  "$here/hack/build-controlplane.sh"
  local start=$SECONDS
  # A cluster that answers is reused even when `kwokctl get clusters` misses it (it can, while
  # another cluster is being created or deleted): recreating it would delete the kubeconfig of a
  # running cluster, and kwokctl, finding it "already exists", would not write a new one.
  if healthy || kwokctl get clusters 2>/dev/null | grep -qx "$name"; then
    if healthy; then
      log "reusing running cluster '$name'"
      check_kwok_stages
      apply_nodes
      apply_gateway_api_crds
      apply_prometheus_operator_crds
      print_usage
      return 0
    fi
    log "cluster '$name' exists but does not answer (stale, e.g. after a reboot): recreating it"
    kwokctl delete cluster --name "$name" >/dev/null 2>&1 9>&- || true
    rm -rf "$KWOK_WORKDIR/clusters/$name"
  fi
  local port="${TRTOPS_APISERVER_PORT:-}"
  # The controller manager and the scheduler run once each, without leader election: with it they
  # exit after 10 s without the API server, and nothing here restarts them as a kubelet would
  # (tests/faults stops the API server for 20 s).
  if [[ -n "$port" ]]; then
    port_free "$port" || die "port $port (TRTOPS_APISERVER_PORT) is in use by another program: free it or unset TRTOPS_APISERVER_PORT to pick a free port"
  else
    port="$(free_port)"
  fi
  mkdir -p "$(dirname "$kubeconfig")"
  rm -f "$kubeconfig"
  local stages="$cache/clusters/$name.stages.yaml"
  write_kwok_stages "$stages"
  log "creating cluster '$name' (Kubernetes $K8S_VERSION, API server on 127.0.0.1:$port)"
  if ! kwokctl create cluster --name "$name" --runtime binary --config "$stages" \
      --kube-apiserver-port "$port" \
      --kube-apiserver-binary "$bin/kube-apiserver" \
      --kube-controller-manager-binary "$bin/kube-controller-manager" \
      --kube-scheduler-binary "$bin/kube-scheduler" \
      --kwok-controller-binary "$bin/kwok" \
      --etcd-binary "$bin/etcd" \
      --kubeconfig "$kubeconfig" \
      --disable-qps-limits \
      --extra-args "kwok-controller=manage-all-nodes=false" \
      --extra-args "kwok-controller=manage-nodes-with-annotation-selector=kwok.x-k8s.io/node=fake" \
      --extra-args "kube-controller-manager=leader-elect=false" \
      --extra-args "kube-scheduler=leader-elect=false" \
      --timeout 3m --wait 2m >"$cache/clusters/$name.create.log" 2>&1 9>&-; then
    tail -20 "$cache/clusters/$name.create.log" >&2
    kwokctl delete cluster --name "$name" >/dev/null 2>&1 9>&- || true
    die "cluster creation failed (full log: $cache/clusters/$name.create.log)"
  fi
  local deadline=$((SECONDS + 180))
  until healthy; do
    ((SECONDS < deadline)) || die "API server did not become ready within 180s (see $cache/clusters/$name.create.log and $KWOK_WORKDIR/clusters/$name/logs)"
    sleep 1
  done
  apply_nodes
  apply_gateway_api_crds
  apply_prometheus_operator_crds
  # Pods need the namespace's default ServiceAccount, made by the controller manager.
  until kc -n default get serviceaccount default >/dev/null 2>&1; do
    ((SECONDS < deadline)) || die "default ServiceAccount never appeared: is kube-controller-manager running?"
    sleep 1
  done
  log "cluster '$name' ready in $((SECONDS - start))s"
  print_usage
}

print_usage() {
  cat <<TXT

Local cluster '$name' is up.
  export KUBECONFIG=$kubeconfig PATH=$bin:\$PATH
  kubectl get nodes -L nvidia.com/gpu.product
  hack/cluster.sh down     # delete it
TXT
}

cmd_down() {
  export PATH="$bin:$PATH"
  if command -v kwokctl >/dev/null && kwokctl get clusters 2>/dev/null | grep -qx "$name"; then
    kwokctl delete cluster --name "$name" >/dev/null 2>&1 9>&- || true
  fi
  # kwokctl misses a cluster (or fails to stop it) while another is being created or deleted:
  # whatever still runs from this cluster's folder is stopped here, or it would hold its ports.
  local pattern="$KWOK_WORKDIR/clusters/$name/"
  if pgrep -f "$pattern" >/dev/null; then
    pkill -TERM -f "$pattern" || true
    for _ in 1 2 3 4 5 6 7 8 9 10; do pgrep -f "$pattern" >/dev/null || break; sleep 0.5; done
    pkill -KILL -f "$pattern" || true
  fi
  rm -rf "$KWOK_WORKDIR/clusters/$name" "$kubeconfig" "$cache/clusters/$name.stages.yaml"
  log "cluster '$name' deleted"
}

# One `up` or `down` at a time per cluster: parallel test runs share it, and two creations racing
# would each see the other's half-made cluster as stale and tear it down.
locked() {
  mkdir -p "$cache/clusters"
  exec 9>"$cache/clusters/$name.lock"
  if ! flock -w 600 9; then
    die "another hack/cluster.sh has held $cache/clusters/$name.lock for 10 minutes"
  fi
  "$@"
}

case "${1:-}" in
  up) locked cmd_up ;;
  down) locked cmd_down ;;
  status) if healthy; then echo "up ($kubeconfig)"; else echo "down"; exit 1; fi ;;
  env) echo "export KUBECONFIG=$kubeconfig PATH=$bin:\$PATH" ;;
  *) echo "usage: $0 {up|down|status|env}" >&2; exit 2 ;;
esac
