#!/usr/bin/env bash
# The serving benchmark (bench/serve_benchmark.py) on the lent 16-core device machine, its CPUs
# only, in one call of under 10 minutes. Run from the repository root there; nothing is fetched
# (that machine has no network): the wheels and Triton travel in an ignored bundle folder.
#
#   hack/device-bench.sh [--sizes 32,64] [--cores 16,2] [--variants defaults]
#                        [--peers triton,mlserver] [--seconds 2.5] [--budget 540]
#                        [--bundle .devbench] [--out DIR] [--dry-run] [-- more benchmark flags]
#
# --sizes    model input sides in px; max batch 32 at <= 32 px, 8 above (BENCHMARKS.md's models)
# --cores    server core counts, run in the order given; N < all usable cores pins raw ONNX
#            Runtime and the servers to cores 0..N-1 (--cpus) and the load generators to the rest
# --variants --peers --seconds   passed to bench/serve_benchmark.py as they are
# --budget   seconds from this script's start: a run whose estimate does not fit what is left is
#            skipped (said so), and a run is killed at the budget's end (its JSON is then lost)
# --dry-run  print the plan and its estimates (the core counts as given), install nothing
# --out      where the log and the JSON go (default: $OUT, the device tool's folder)
# DEVBENCH_TMP (default /tmp): where the bundle is installed and the runs work
#
# The bundle (built on the development machine by hack/device-bundle.sh): whl/ our
# dependencies the device image lacks (installed into /tmp/site), tritonserver-*.tar.xz (the
# `tritonserver` tree of PyPI's nvidia-pytriton 0.7.0 wheel, unpacked into /tmp/triton) and,
# optional, mls/ MLServer 1.7.1 with protobuf 6 (into /tmp/mls, started by the wrapper
# /tmp/mlserver that puts it first on PYTHONPATH: our gRPC stubs need protobuf 7).
# Out: $out/device-bench.log (everything printed, with timings) and $out/serve-benchmark.json
# ({"<size>px-<cores>c": the benchmark's --json}, rewritten after every run).
set -uo pipefail

sizes=32,64
cores=16,2
variants=defaults
peers=triton,mlserver
seconds=2.5
budget=540
bundle=.devbench
out=${OUT:-/tmp/device-bench-out}
dry_run=0
extra=()
while (($#)); do
  case $1 in
    --sizes) sizes=$2; shift 2 ;;
    --cores) cores=$2; shift 2 ;;
    --variants) variants=$2; shift 2 ;;
    --peers) peers=$2; shift 2 ;;
    --seconds) seconds=$2; shift 2 ;;
    --budget) budget=$2; shift 2 ;;
    --bundle) bundle=$2; shift 2 ;;
    --out) out=$2; shift 2 ;;
    --dry-run) dry_run=1; shift ;;
    --) shift; extra=("$@"); break ;;
    -h | --help) sed -n '2,/^set -uo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
    *) echo "unknown argument: $1 (see --help)" >&2; exit 2 ;;
  esac
done

PY=${PYTHON:-python3}
tmp=${DEVBENCH_TMP:-/tmp}  # where the bundle is installed and the runs work
repo=$(pwd)
mkdir -p "$out" "$tmp"
exec > >(tee -a "$out/device-bench.log") 2>&1
tee_pid=$!
trap 'exec >&- 2>&-; wait "$tee_pid"' EXIT  # the log's last lines reach the file
log() { printf '[%4d s] %s\n' "$SECONDS" "$*"; }
has_peer() { [[ ",$peers," == *",$1,"* ]]; }
usable=$(nproc)

# Seconds one run takes, from its parts: raw ORT sweeps every session shape (divisors of the
# cores) for 11/6 x --seconds, each wire format of each server costs 3 x --seconds (two loads and
# the raw brackets) plus about 4 s (load processes' start and 1 s warm-up each; the one-connection
# gRPC wire, saturation only, 2 x --seconds + 3 s), each server its
# start. On the device machine (2026-12-01) 32 px on 16 cores, defaults + Triton + MLServer at
# --seconds 1 took 84 s against this estimate's 86 s.
estimate() { # size cores
  local n=$2 shapes=0 d trtops_targets
  for ((d = 1; d <= n; d++)); do ((n % d == 0)) && ((shapes++)); done
  trtops_targets=$(tr ',' '\n' <<<"$variants" | grep -c .)
  awk -v s="$seconds" -v shapes="$shapes" -v t="$trtops_targets" \
    -v triton="$(has_peer triton && echo 1 || echo 0)" \
    -v mls="$(has_peer mlserver && [[ -d $bundle/mls ]] && echo 1 || echo 0)" 'BEGIN {
      wire = 3 * s + 4
      one = 2 * s + 3  # "gRPC 1 conn": saturation only
      raw = shapes * (11 * s / 6 + 0.5)
      printf "%d", 6 + raw + t * (3 * wire + one + 4) + triton * (2 * wire + one + 10) + mls * (2 * wire + 6)
    }'
}

plan=()
total=0
for size in ${sizes//,/ }; do
  for n in ${cores//,/ }; do
    ((n > usable && !dry_run)) && n=$usable  # a dry run plans for the device's cores
    est=$(estimate "$size" "$n")
    plan+=("$size:$n:$est")
    total=$((total + est))
  done
done
log "device-bench: sizes $sizes, cores $cores (usable $usable), variants $variants, peers $peers,"\
  "--seconds $seconds, budget $budget s; estimated $total s for ${#plan[@]} runs plus ~10 s setup"
for entry in "${plan[@]}"; do
  IFS=: read -r size n est <<<"$entry"
  echo "  ${size} px on $n cores: ~$est s"
done
((dry_run)) && exit 0

# -- setup -----------------------------------------------------------------------------------
export PIP_ROOT_USER_ACTION=ignore PIP_DISABLE_PIP_VERSION_CHECK=1
[[ -d $bundle/whl ]] || { log "no $bundle/whl: name the bundle folder in the run's carry"; exit 1; }
"$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
  --target "$tmp/site" "$bundle"/whl/*.whl || exit 1
export PYTHONPATH=$tmp/site:$repo/worker${PYTHONPATH:+:$PYTHONPATH}
export PYTHONUNBUFFERED=1
"$PY" - <<'EOF' || exit 1
import platform, sys
import google.protobuf, grpc, numpy, onnxruntime, orjson, uvicorn, uvloop
import trtops_worker.bench.cli, trtops_worker.serve.server  # what serve and bench import
print("python", platform.python_version(), sys.executable, "| onnxruntime", onnxruntime.__version__,
      "| numpy", numpy.__version__, "| grpcio", grpc.__version__, "| protobuf",
      google.protobuf.__version__, "| uvicorn", uvicorn.__version__, "| uvloop", uvloop.__version__)
EOF
log "cpu: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2) x $usable; installed our wheels"

peer_flags=()
if has_peer triton; then
  tarball=$(ls "$bundle"/tritonserver-*.tar.xz 2>/dev/null | head -1)
  if [[ -n $tarball ]]; then
    mkdir -p "$tmp/triton"
    if command -v xz >/dev/null; then
      tar -xJf "$tarball" -C "$tmp/triton"
    else
      "$PY" -c 'import sys, tarfile; tarfile.open(sys.argv[1]).extractall(sys.argv[2], filter="tar")' \
        "$tarball" "$tmp/triton"
    fi
    binary=$tmp/triton/pytriton/tritonserver/bin/tritonserver
    peer_flags+=(--tritonserver "$binary")
    missing=$(ldd "$binary" 2>&1 | grep 'not found')
    [[ -n $missing ]] && log "tritonserver lacks: $missing"
    log "unpacked Triton ($tarball)"
  else
    log "no $bundle/tritonserver-*.tar.xz: Triton will be reported as not measured"
  fi
fi
if has_peer mlserver && [[ -d $bundle/mls ]]; then
  "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target "$tmp/mls" "$bundle"/mls/*.whl || exit 1
  cat >"$tmp/mlserver" <<EOF
#!/bin/sh
# MLServer 1.7.1 on its own protobuf 6, ahead of ours (7) on the path
PYTHONPATH=$tmp/mls\${PYTHONPATH:+:\$PYTHONPATH} exec "$(command -v "$PY")" -c \
  'import sys; from mlserver.cli import main; sys.argv[0] = "mlserver"; sys.exit(main())' "\$@"
EOF
  chmod +x "$tmp/mlserver"
  peer_flags+=(--mlserver "$tmp/mlserver")
  log "installed MLServer: $("$tmp/mlserver" --version 2>&1 | tail -1)"
fi

# -- runs --------------------------------------------------------------------------------------
work=$tmp/device-bench
rm -rf "$work" && mkdir -p "$work"  # a warm machine keeps an earlier call's runs
merge() {
  "$PY" - "$work" "$out/serve-benchmark.json" <<'EOF'
import json, pathlib, sys
runs = {p.stem: json.loads(p.read_text()) for p in sorted(pathlib.Path(sys.argv[1]).glob("*.json"))}
pathlib.Path(sys.argv[2]).write_text(json.dumps(runs, indent=1))
EOF
}
for entry in "${plan[@]}"; do
  IFS=: read -r size n est <<<"$entry"
  name=${size}px-${n}c
  left=$((budget - SECONDS))
  if ((est > left)); then
    log "SKIPPED $name: estimated $est s, $left s left of the budget"
    continue
  fi
  mb=$((size <= 32 ? 32 : 8))
  cpus=()
  ((n < usable)) && cpus=(--cpus "0-$((n - 1))")
  log "RUN $name (estimated $est s, $left s left)"
  t0=$SECONDS
  timeout -s INT -k 20 "$left" "$PY" bench/serve_benchmark.py --seconds "$seconds" --image-size "$size" \
    --max-batch-size "$mb" "${cpus[@]}" --variants "$variants" --peers "$peers" \
    "${peer_flags[@]}" --json "$work/$name.json" "${extra[@]}"
  rc=$?
  log "END $name: exit $rc after $((SECONDS - t0)) s (estimated $est s)"
  merge
done
merge
log "done: $out/device-bench.log, $out/serve-benchmark.json"
