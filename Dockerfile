# syntax=docker/dockerfile:1
# trtops images, one Dockerfile, two targets:
#   docker build --target operator -t ghcr.io/trtops/trtops-operator:0.1.0 .
#   docker build --target worker   -t ghcr.io/trtops/trtops-worker:0.1.0 .
# Layers go from least to most often changed: base, dependencies (resolved from pyproject.toml
# alone, so a source edit does not reinstall them), then the project wheel with --no-deps.

ARG PYTHON_IMAGE=python:3.11-slim-bookworm
# NVIDIA's TensorRT container. 26.08-py3 is reported to ship TensorRT 11.2 (11.2.1.2); NGC's release
# notes and the image itself could not be reached from the machine this file was written on (no
# container engine, no access to nvcr.io), so check `python3 -c "import tensorrt"` prints 11.x
# when you bump it. The RUN step below fails the build if the TensorRT major is not 11.
ARG TENSORRT_IMAGE=nvcr.io/nvidia/tensorrt:26.08-py3

# --- wheel: the project as one pure-Python wheel, plus the requirement lists per image --------
FROM ${PYTHON_IMAGE} AS wheel
WORKDIR /src
COPY pyproject.toml README.md ./
# Requirement lists from pyproject.toml only: this layer and the installs that use it stay cached
# until the dependencies change.
RUN python -c "import tomllib; p = tomllib.load(open('pyproject.toml', 'rb'))['project']; x = p['optional-dependencies']; open('operator.txt', 'w').write('\n'.join(p['dependencies']) + '\n'); open('worker.txt', 'w').write('\n'.join(p['dependencies'] + x['worker'] + x['tensorrt'] + x['modelopt']) + '\n')"
COPY operator/ operator/
COPY worker/ worker/
RUN pip wheel --no-cache-dir --no-deps --wheel-dir /dist .

# --- operator: slim Python, the base distribution only (no worker or GPU extras) --------------
FROM ${PYTHON_IMAGE} AS operator
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1
RUN useradd --uid 65532 --user-group --no-create-home --home-dir /nonexistent \
        --shell /usr/sbin/nologin trtops
COPY --from=wheel /src/operator.txt /tmp/requirements.txt
RUN pip install --no-cache-dir -r /tmp/requirements.txt && rm /tmp/requirements.txt
COPY --from=wheel /dist/ /tmp/dist/
RUN pip install --no-cache-dir --no-deps /tmp/dist/*.whl && rm -rf /tmp/dist
USER 65532:65532
# 8080: metrics, 8081: kopf liveness (/healthz)
EXPOSE 8080 8081
ENTRYPOINT ["trtops-operator"]

# --- worker: build and serve on NVIDIA's TensorRT container -----------------------------------
FROM ${TENSORRT_IMAGE} AS worker
SHELL ["/bin/bash", "-o", "pipefail", "-c"]
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_BREAK_SYSTEM_PACKAGES=1
RUN useradd --uid 65532 --user-group --no-create-home --home-dir /nonexistent \
        --shell /usr/sbin/nologin trtops
COPY --from=wheel /src/worker.txt /tmp/requirements.txt
# Pin `tensorrt` to the container's own build so pip never swaps it for PyPI's stub (which
# downloads a different wheel from NVIDIA's index), and refuse anything but TensorRT 11.
# Installs worker + tensorrt + modelopt extras (ModelOpt does the fp16/bf16/int8/fp8 conversion).
RUN python3 -c "import sys, tensorrt as t; v = t.__version__; print('tensorrt==' + v); sys.exit(None if v.startswith('11.') else 'TensorRT 11 expected, found ' + v)" > /tmp/constraints.txt \
    && python3 -m pip install --no-cache-dir -c /tmp/constraints.txt -r /tmp/requirements.txt \
    && rm /tmp/requirements.txt /tmp/constraints.txt
COPY --from=wheel /dist/ /tmp/dist/
RUN python3 -m pip install --no-cache-dir --no-deps /tmp/dist/*.whl && rm -rf /tmp/dist
USER 65532:65532
WORKDIR /tmp
# 8000: OIP v2 REST, 8001: OIP v2 gRPC, 8002: metrics
EXPOSE 8000 8001 8002
ENTRYPOINT ["trtops-worker"]
