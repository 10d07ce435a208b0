# goodput-operator image: `docker build -t goodput-operator:0.1.0 .`
# Two stages: the first builds the project's wheel and fetches its dependencies' wheels; the
# second installs them offline (no compiler, no build backend, no pip left behind) and runs as an
# unprivileged user. The Helm chart (helm/goodput-operator) runs it with a read-only root
# filesystem, all capabilities dropped and a writable /tmp only.

FROM python:3.11-slim AS build
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_CACHE_DIR=1
WORKDIR /src
COPY pyproject.toml README.md ./
COPY operator ./operator
RUN python -m pip wheel --wheel-dir /wheels .

# The dev harness (local control plane, demo, vLLM emulator) is no part of the operator: the import
# contracts keep the runtime from importing it, and the image leaves it out (`goodput demo` then
# says so; tests/unit/test_image_runtime.py runs the package without it).
FROM python:3.11-slim
LABEL org.opencontainers.image.title="goodput-operator" \
      org.opencontainers.image.description="Kubernetes operator that sizes vLLM inference fleets" \
      org.opencontainers.image.licenses="Apache-2.0"
ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_CACHE_DIR=1 HOME=/tmp
RUN --mount=type=bind,from=build,source=/wheels,target=/wheels \
    python -m pip install --no-index --find-links /wheels goodput-operator \
    && python -c "import goodput, pathlib, shutil; root = pathlib.Path(goodput.__file__).parent; \
[shutil.rmtree(root / p) for p in ('devcluster', 'demo', 'emulator')]" \
    && python -m pip uninstall --yes pip setuptools wheel \
    && groupadd --system --gid 65532 goodput \
    && useradd --system --uid 65532 --gid 65532 --no-create-home --home-dir /tmp --shell /usr/sbin/nologin goodput
USER 65532:65532
WORKDIR /tmp
# 8080: kopf's health endpoint (/healthz); 8081: the operator's /metrics (ports set by the chart).
EXPOSE 8080 8081
ENTRYPOINT ["goodput", "operator"]
