#!/usr/bin/env bash
# The local demo on its embedded defaults. For now it brings up the local control plane and shows
# what is running; later stages (build, serve, canary, rollback) extend it.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
"$here/hack/cluster.sh" up
eval "$("$here/hack/cluster.sh" env)"
kubectl get nodes -L nvidia.com/gpu.product -L nvidia.com/gpu.count
