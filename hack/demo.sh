#!/usr/bin/env bash
# The local demo on its embedded defaults (`make demo` runs hack/setup.sh first): the local control
# plane, a local node agent that really runs the operator's pods, Prometheus and the operator; a
# sample TrtEngine built and served on CPU, traffic from `trtops-worker bench`, a good canary
# promoted and a bad one rolled back, then an experiment (the stable precision against two others at
# fixed weights, to a recommendation and a Markdown + PNG report), then a summary table with
# output agreement and cost per 1M inferences. Everything it starts is stopped on exit
# and on Ctrl-C, the control plane too when this run started it (TRTOPS_KEEP_CLUSTER=1 keeps it up
# for a quicker next run; a cluster that was already up is left as it was).
# Flags go to tests/support/demo.py (--workdir, --node).
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
python="${PYTHON:-python3}"
started=0
"$here/hack/cluster.sh" status >/dev/null 2>&1 || started=1
stop_cluster() {
  if [[ $started == 1 && "${TRTOPS_KEEP_CLUSTER:-0}" != 1 ]]; then
    "$here/hack/cluster.sh" down >/dev/null 2>&1 || true
    echo "stopped the local control plane this run started (TRTOPS_KEEP_CLUSTER=1 keeps it)"
  fi
}
trap stop_cluster EXIT
"$here/hack/cluster.sh" up
eval "$("$here/hack/cluster.sh" env)"
cd "$here"
# In the foreground: Ctrl-C reaches the demo, which stops what it started, then the trap runs.
env PYTHONPATH="$here${PYTHONPATH:+:$PYTHONPATH}" "$python" -m tests.support.demo "$@"
