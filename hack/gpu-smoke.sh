#!/usr/bin/env bash
# The first thing to run on a machine with TensorRT 11 and an NVIDIA GPU (the worker image on a
# GPU node, for example). TensorRT cannot run where trtops is developed: its calls are checked
# there by name only (tests/builder/test_tensorrt_api.py), so this is where they first execute.
#
# For each sample model (conv, transformer) and precision (fp32, fp16, int8) it builds a plan
# with `trtops-worker build --backend tensorrt` and the default gate (both stages: converted.onnx
# on ONNX Runtime, the plan through the serving executor), benchmarks it, then serves the conv
# fp16 plan with `trtops-worker serve` and checks one OIP v2 inference against FP32 ONNX Runtime.
# It ends with `compare`'s table per model (from the same store: no second build).
#
#   hack/gpu-smoke.sh [WORKDIR]      # default: a new temporary folder, kept for reading
#   TRTOPS_SMOKE_BACKEND=onnxruntime hack/gpu-smoke.sh    # the same steps on CPU: checks the
#                                    # script itself where TensorRT is missing (no GPU claim)
#   TRTOPS_SMOKE_MODELS=conv ...     # fewer sample models (default: "conv transformer")
#
# Exit: 0 all passed; 1 something failed (each failure is printed); 3 no TensorRT or GPU here.
set -uo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
python="${PYTHON:-python3}"
export PYTHONPATH="$here/worker${PYTHONPATH:+:$PYTHONPATH}"
backend="${TRTOPS_SMOKE_BACKEND:-tensorrt}"
read -ra models <<<"${TRTOPS_SMOKE_MODELS:-conv transformer}"

# --- preflight: TensorRT and a GPU, before anything else ---------------------------------------
if [[ $backend != tensorrt ]]; then
  probe="backend $backend (a dry run of the script: no TensorRT involved)"
elif ! probe="$("$python" - 2>&1 <<'EOF'
from trtops_worker.serve.backend_tensorrt import environment
target = environment()
print(f"TensorRT {target.tensorrt_version}, {target.gpu} (compute capability {target.compute_capability})")
EOF
)"; then
  echo "gpu-smoke: TensorRT is not usable here, nothing was built." >&2
  echo "gpu-smoke: run it on a machine with TensorRT 11, cuda-python and an NVIDIA GPU (the trtops" >&2
  echo "gpu-smoke: worker image on a GPU node has all three). What failed: ${probe##*$'\n'}" >&2
  exit 3
fi
echo "gpu-smoke: $probe"

work="${1:-$(mktemp -d "${TMPDIR:-/tmp}/trtops-gpu-smoke.XXXXXX")}"
mkdir -p "$work"
store="$work/store"
echo "gpu-smoke: working in $work"
failures=()

"$python" - "$work" <<'EOF'
import sys
from pathlib import Path

import numpy as np

from trtops_worker import samples

work = Path(sys.argv[1])
for name, model in (("conv", samples.conv_classifier()), ("transformer", samples.transformer_classifier())):
    samples.save(model, work / f"{name}.onnx")
    np.savez(work / f"{name}.calibration.npz", **samples.calibration_inputs(model, 256, seed=1))
    np.savez(work / f"{name}.validation.npz", **samples.calibration_inputs(model, 256, seed=7))
EOF

declare -A profile=(
  [conv]="input:1x3x32x32:8x3x32x32:32x3x32x32"
  [transformer]="input_ids:1x16:8x16:32x16"
)
printf '\n%-12s %-6s %-8s %s\n' model precision gate "result"
for model in "${models[@]}"; do
  for precision in fp32 fp16 int8; do
    result="$work/$model.$precision.json"
    "$python" -m trtops_worker build --model "$work/$model.onnx" --precision "$precision" \
      --backend "$backend" --storage "$store" --profile "${profile[$model]}" \
      --calibration "$work/$model.calibration.npz" --validation "$work/$model.validation.npz" \
      --benchmark-batch-sizes 1,8,32 --termination-log "$result" \
      >"$work/$model.$precision.log" 2>&1
    code=$?
    summary="$("$python" -c '
import json, sys
r = json.load(open(sys.argv[1]))
if r.get("ok"):
    b = {x["batchSize"]: x for x in r["benchmark"]["batches"]}
    print("passed", "stages", r["accuracy"].get("stages"), "p50 ms", {k: v["p50Ms"] for k, v in b.items()},
          "peak MiB", r["benchmark"].get("peakMemoryMiB"), "key", r["key"][:12])
else:
    print(r["reason"], r["message"][:300])
' "$result" 2>&1)"
    gate=$([[ $code == 0 ]] && echo passed || echo "exit $code")
    printf '%-12s %-6s %-8s %s\n' "$model" "$precision" "$gate" "$summary"
    [[ $code == 0 ]] || failures+=("build $model $precision: $summary (log: $work/$model.$precision.log)")
  done
done

# --- serve the conv fp16 plan and ask it once ------------------------------------------------
key="$("$python" -c 'import json,sys; r=json.load(open(sys.argv[1])); print(r.get("key",""))' "$work/conv.fp16.json" 2>/dev/null)"
if [[ -n "$key" ]]; then
  port=18000
  "$python" -m trtops_worker serve --artifact-dir "$store/$key" --model-name conv \
    --http-port $port --grpc-port 18001 --metrics-port 18002 --front-ends 1 --host 127.0.0.1 \
    >"$work/serve.log" 2>&1 &
  server=$!
  if "$python" - "$work" $port "$backend" <<'EOF'
import json, sys, time, urllib.request
from pathlib import Path

import numpy as np
import onnxruntime as ort

work, port = Path(sys.argv[1]), int(sys.argv[2])
base = f"http://127.0.0.1:{port}"
for _ in range(120):
    try:
        if urllib.request.urlopen(f"{base}/v2/health/ready", timeout=1).status == 200:
            break
    except OSError:
        time.sleep(0.5)
else:
    sys.exit("the server did not become ready in 60 s (see serve.log)")
x = np.load(work / "conv.validation.npz")["input"][:4]
body = {"inputs": [{"name": "input", "shape": list(x.shape), "datatype": "FP32", "data": x.ravel().tolist()}]}
request = urllib.request.Request(f"{base}/v2/models/conv/infer", json.dumps(body).encode(), {"Content-Type": "application/json"})
out = json.load(urllib.request.urlopen(request, timeout=30))["outputs"][0]
served = np.asarray(out["data"], np.float32).reshape(out["shape"])
(fp32,) = ort.InferenceSession(str(work / "conv.onnx"), providers=["CPUExecutionProvider"]).run(None, {"input": x})
agree = float(np.mean(served.argmax(-1) == fp32.argmax(-1)))
cos = float(np.mean(np.sum(served * fp32, -1) / (np.linalg.norm(served, axis=-1) * np.linalg.norm(fp32, axis=-1))))
print(f"gpu-smoke: served conv fp16 ({sys.argv[3]}) over OIP v2: top-1 agreement {agree:.2f}, cosine {cos:.5f} vs FP32 ONNX Runtime")
sys.exit(0 if cos > 0.99 else "served outputs differ from FP32")
EOF
  then :; else failures+=("serve conv fp16 (log: $work/serve.log)"); fi
  kill "$server" 2>/dev/null; wait "$server" 2>/dev/null
else
  failures+=("serve: no conv fp16 plan to serve")
fi

# --- compare's table per model, from the same store (cache hits, no rebuild) -------------------
for model in "${models[@]}"; do
  echo; echo "## $model ($backend, from $store)"
  "$python" -m trtops_worker compare --model "$work/$model.onnx" --backend "$backend" \
    --storage "$store" --out "$work/compare-$model" --profile "${profile[$model]}" \
    --calibration "$work/$model.calibration.npz" --validation "$work/$model.validation.npz" \
    --benchmark-batch-sizes 1,8,32 || failures+=("compare $model")
done

echo
if ((${#failures[@]})); then
  printf 'gpu-smoke: FAILED: %s\n' "${failures[@]}"
  exit 1
fi
echo "gpu-smoke: all builds passed the gate, the plan served; reports in $work"
