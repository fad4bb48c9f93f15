# syntax=docker/dockerfile:1
# trtops images, one Dockerfile, three targets (`make images` builds the first two with buildah,
# without a daemon or a registry; the release workflow builds all three for amd64 and arm64):
#   operator    ghcr.io/trtops/trtops-operator      the kopf operator
#   worker-cpu  ghcr.io/trtops/trtops-worker-cpu    build + serve on ONNX Runtime (CPU)
#   worker      ghcr.io/trtops/trtops-worker        build + serve on TensorRT (NVIDIA's base)
# Layers go from least to most often changed: base, dependencies (resolved from pyproject.toml
# alone, so a source edit does not reinstall them), then the project wheel with --no-deps.
# Python stages install into a venv at /opt/venv: the same on python:3.11-slim and on a plain
# Debian base with python3-venv (where pip may not touch the system Python, PEP 668).

# Any Debian-family image with python3 (>= 3.11) and python3-venv: `make images` passes a base
# made by mmdebstrap from Debian's packages (hack/images.sh), CI and releases this default.
ARG PYTHON_IMAGE=python:3.11-slim-bookworm
# NVIDIA's TensorRT container and the TensorRT release it ships: pinned in one place,
# images/versions.env (read by `make images`, the release workflow and its cache key). No default
# here, so a build can never pick a different TensorRT silently.
ARG TENSORRT_IMAGE

# --- wheel: the project as one pure-Python wheel, plus the requirement lists per image --------
FROM ${PYTHON_IMAGE} AS wheel
WORKDIR /src
RUN python3 -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH
COPY pyproject.toml README.md ./
# Requirement lists from pyproject.toml only: this layer and the installs that use it stay cached
# until the dependencies change.
# The workers never import kopf or the Kubernetes client (the operator does): leaving them out
# keeps their pins (kubernetes>=37: python-dateutil>=3) from fighting botocore's (<3).
RUN python3 -c "import tomllib; p = tomllib.load(open('pyproject.toml', 'rb'))['project']; x = p['optional-dependencies']; w = [d for d in p['dependencies'] if not d.startswith(('kopf', 'kubernetes'))] + x['worker']; open('operator.txt', 'w').write('\n'.join(p['dependencies']) + '\n'); open('worker-cpu.txt', 'w').write('\n'.join(w) + '\n'); open('worker.txt', 'w').write('\n'.join(w + x['tensorrt'] + x['modelopt']) + '\n')"
COPY operator/ operator/
COPY worker/ worker/
RUN pip install --no-cache-dir --upgrade "pip>=24" && pip wheel --no-cache-dir --no-deps --wheel-dir /dist .

# --- operator: the base distribution only (no worker or GPU extras) ---------------------------
FROM ${PYTHON_IMAGE} AS operator
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PATH=/opt/venv/bin:$PATH
RUN useradd --uid 65532 --user-group --no-create-home --home-dir /nonexistent \
        --shell /usr/sbin/nologin trtops \
    && python3 -m venv /opt/venv
# Every dependency pinned with its hashes (requirements/operator.lock, from pip-compile
# --generate-hashes over pyproject.toml): a changed or substituted package fails the build.
COPY requirements/operator.lock /tmp/requirements.txt
RUN pip install --no-cache-dir --require-hashes --no-deps -r /tmp/requirements.txt \
    && rm /tmp/requirements.txt
COPY --from=wheel /dist/ /tmp/dist/
RUN pip install --no-cache-dir --no-deps /tmp/dist/*.whl && rm -rf /tmp/dist
USER 65532:65532
# 8080: metrics, 8081: kopf liveness (/healthz)
EXPOSE 8080 8081
ENTRYPOINT ["trtops-operator"]

# --- worker-cpu: build and serve on ONNX Runtime (spec.serving.backend onnxruntime) -----------
# No TensorRT and no ModelOpt (torch): fp32 builds, serving, fetch from object stores.
FROM ${PYTHON_IMAGE} AS worker-cpu
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PATH=/opt/venv/bin:$PATH
RUN useradd --uid 65532 --user-group --no-create-home --home-dir /nonexistent \
        --shell /usr/sbin/nologin trtops \
    && python3 -m venv /opt/venv
COPY --from=wheel /src/worker-cpu.txt /tmp/requirements.txt
RUN pip install --no-cache-dir -r /tmp/requirements.txt && rm /tmp/requirements.txt
COPY --from=wheel /dist/ /tmp/dist/
RUN pip install --no-cache-dir --no-deps /tmp/dist/*.whl && rm -rf /tmp/dist
USER 65532:65532
WORKDIR /tmp
# 8000: OIP v2 REST, 8001: OIP v2 gRPC, 8002: metrics
EXPOSE 8000 8001 8002
ENTRYPOINT ["trtops-worker"]

# --- worker: build and serve on NVIDIA's TensorRT container -----------------------------------
FROM ${TENSORRT_IMAGE} AS worker
# The TensorRT release TENSORRT_IMAGE ships (images/versions.env); the build fails on another.
ARG TENSORRT_VERSION
SHELL ["/bin/bash", "-o", "pipefail", "-c"]
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_BREAK_SYSTEM_PACKAGES=1
RUN useradd --uid 65532 --user-group --no-create-home --home-dir /nonexistent \
        --shell /usr/sbin/nologin trtops
COPY --from=wheel /src/worker.txt /tmp/requirements.txt
# Pin `tensorrt` to the container's own build so pip never swaps it for PyPI's stub (which
# downloads a different wheel from NVIDIA's index), and refuse anything but the pinned release
# (TensorRT 11: the API the worker is written against).
# Installs worker + tensorrt + modelopt extras (ModelOpt does the fp16/bf16/int8/fp8 conversion).
RUN python3 -c "import os, sys, tensorrt as t; v, want = t.__version__, os.environ['TENSORRT_VERSION']; print('tensorrt==' + v); sys.exit(None if v == want and v.startswith('11.') else f'TensorRT {want} (11.x) expected, the base image has {v}')" > /tmp/constraints.txt \
    && python3 -m pip install --no-cache-dir -c /tmp/constraints.txt -r /tmp/requirements.txt \
    && rm /tmp/requirements.txt /tmp/constraints.txt
COPY --from=wheel /dist/ /tmp/dist/
RUN python3 -m pip install --no-cache-dir --no-deps /tmp/dist/*.whl && rm -rf /tmp/dist
USER 65532:65532
WORKDIR /tmp
# 8000: OIP v2 REST, 8001: OIP v2 gRPC, 8002: metrics
EXPOSE 8000 8001 8002
ENTRYPOINT ["trtops-worker"]
