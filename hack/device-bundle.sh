#!/usr/bin/env bash
# Builds the bundle that hack/device-bench.sh installs on the lent device machine, which has no
# package index: run here (PyPI reachable), from the repository root; ~48 MB, under a minute
# of downloads and about one of xz.
#
#   hack/device-bundle.sh [DIR]      (default .devbench, added to .git/info/exclude)
#
# DIR/whl/  what `trtops-worker serve`/`bench` and bench/serve_benchmark.py import that the
#           device image (Python 3.12, KINDS.md's package list) lacks or has too old: our gRPC
#           stubs need protobuf 7 and grpcio >= 1.85.1, our gRPC server hpack
# DIR/tritonserver-2.51-pytriton-0.7.0.tar.xz  the `tritonserver` tree of PyPI's nvidia-pytriton
#           0.7.0 wheel with the libraries beside it, minus the other Pythons' backend stubs and
#           libpython 3.13 (27 MB)
# DIR/mls/  MLServer 1.7.1 and what it needs that the image lacks, with protobuf 6 (13 MB)
# Then the device call: `hack/device-bench.sh` with DIR in the run's carry.
set -euo pipefail

dir=${1:-.devbench}
ours=(uvicorn==0.54.0 httptools==0.9.0 orjson==3.13.0 protobuf==7.36.2 grpcio==1.85.3 hpack==4.1.0)
# mlserver==1.7.1's dependencies resolved for Python 3.12 with protobuf < 7, less what the
# image has (numpy, pandas, uvloop, aiohttp, click, anyio, ...) and what whl/ has
mlserver=(
  mlserver==1.7.1 protobuf==6.33.6 aiokafka==0.14.0 annotated_types==0.8.0 asgiref==3.13.0
  async_timeout==5.0.1 brotli==1.2.1 fastapi==0.115.14 gevent==26.9.0 geventhttpclient==2.6.1
  googleapis_common_protos==1.76.0 greenlet==3.3.2 importlib_resources==6.5.2
  opentelemetry_api==1.45.2 opentelemetry_exporter_otlp_common==0.66b2
  opentelemetry_exporter_otlp_proto_common==1.45.2 opentelemetry_exporter_otlp_proto_grpc==1.45.2
  opentelemetry_instrumentation==0.66b2 opentelemetry_instrumentation_asgi==0.66b2
  opentelemetry_instrumentation_fastapi==0.66b2 opentelemetry_instrumentation_grpc==0.66b2
  opentelemetry_proto==1.45.2 opentelemetry_sdk==1.45.2 opentelemetry_semantic_conventions==0.66b2
  opentelemetry_util_http==0.66b2 py_grpc_prometheus==0.8.0 pydantic==2.14.4 pydantic_core==2.50.5
  pydantic_settings==2.16.3 python_dotenv==1.2.4 python_multipart==0.0.34 python_rapidjson==1.25
  starlette==0.46.2 starlette_exporter==0.24.0 tritonclient==2.73.0 typing_inspection==0.4.5
  tzdata==2026.6 zope_event==6.2 zope_interface==8.7
)
download() { # folder requirement...
  local to=$1
  shift
  python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 \
    --implementation cp --platform manylinux_2_35_x86_64 --platform manylinux_2_28_x86_64 \
    --platform manylinux_2_27_x86_64 --platform manylinux_2_24_x86_64 \
    --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
    --platform manylinux_2_5_x86_64 --platform manylinux1_x86_64 -d "$to" "$@"
}

mkdir -p "$dir"
if [[ $(git rev-parse --show-toplevel) == "$(cd "$dir" && git rev-parse --show-toplevel 2>/dev/null)" ]] &&
  ! git check-ignore -q "$dir"; then
  echo "/$(realpath --relative-to="$(git rev-parse --show-toplevel)" "$dir")/" \
    >>"$(git rev-parse --git-common-dir)/info/exclude"
fi
rm -rf "$dir/whl" "$dir/mls" "$dir"/tritonserver-*.tar.xz
download "$dir/whl" "${ours[@]}"
download "$dir/mls" "${mlserver[@]}"

scratch=$(mktemp -d)
trap 'rm -rf "$scratch"' EXIT
download "$scratch" nvidia-pytriton==0.7.0
(
  cd "$scratch"
  unzip -q nvidia_pytriton-0.7.0-*.whl 'pytriton/tritonserver/*' 'nvidia_pytriton.libs/*'
  find pytriton/tritonserver/python_backend_stubs -mindepth 1 -maxdepth 1 ! -name 3.12 \
    -exec rm -rf {} +
  rm nvidia_pytriton.libs/libpython3-*.13.so.1.0
)
XZ_OPT=-T0 tar -cJf "$dir/tritonserver-2.51-pytriton-0.7.0.tar.xz" -C "$scratch" \
  pytriton nvidia_pytriton.libs

du -sh "$dir"/*
echo "bundle: $(du -sb "$dir" | cut -f1) bytes; with the tree that travels (tracked and" \
  "untracked-not-ignored files) $(($(git ls-files -z --cached --others --exclude-standard |
    du -cb --files0-from=- | tail -1 | cut -f1) + $(du -sb "$dir" | cut -f1))) of 67108864"
