#!/usr/bin/env bash
# The local demo on its embedded defaults (`make demo` runs hack/setup.sh first): the local control
# plane, a local node agent that really runs the operator's pods, Prometheus and the operator; a
# sample TrtEngine built and served on CPU, traffic from `trtops-worker bench`, a good canary
# promoted and a bad one rolled back, then a summary table. Everything it starts is stopped on exit
# and on Ctrl-C (the cluster itself stays up for the next run: `hack/cluster.sh down` removes it).
# Flags go to tests/support/demo.py (--workdir, --node).
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
python="${PYTHON:-python3}"
"$here/hack/cluster.sh" up
eval "$("$here/hack/cluster.sh" env)"
cd "$here"
# exec: Ctrl-C and SIGTERM reach the demo itself, which stops what it started.
exec env PYTHONPATH="$here${PYTHONPATH:+:$PYTHONPATH}" "$python" -m tests.support.demo "$@"
