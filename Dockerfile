#
# ChameleonLLM inference service image. One Dockerfile, two variants chosen by build arguments:
#
#   GPU (default):  docker build -t chameleon-serve:gpu .
#                   CUDA 12 + cuDNN 9 runtime base, Node copied in from NODE_IMAGE, onnxruntime-node with its
#                   CUDA 12 provider libraries, DEVICE=cuda.
#   CPU:            docker build -t chameleon-serve:cpu \
#                     --build-arg BASE_IMAGE=node:22-bookworm-slim \
#                     --build-arg ONNXRUNTIME_NODE_INSTALL=skip --build-arg DEVICE=cpu .
#
# Stages: deps (production node_modules) and build (tsc, with dev dependencies) run on NODE_IMAGE; the runtime
# stage starts from BASE_IMAGE and receives only the production node_modules, dist/ and models/default.
# Needs BuildKit (Docker's default builder since 23.0) or podman/buildah: one step uses RUN --mount.

# Runtime base. GPU default: CUDA 12 + cuDNN 9 runtime (onnxruntime-node 1.30's CUDA 12 build needs cuDNN 9).
ARG BASE_IMAGE=nvidia/cuda:12.8.1-cudnn-runtime-ubuntu24.04
# Node (>= 20) for the build stages; its node binary is copied into BASE_IMAGE when that has none.
ARG NODE_IMAGE=node:22-bookworm-slim
# cuda12: onnxruntime-node's postinstall fetches the CUDA provider libraries. skip: CPU only.
ARG ONNXRUNTIME_NODE_INSTALL=cuda12
# Default execution device of the image (environment variable DEVICE, overridable at run time).
ARG DEVICE=cuda
# Only for builds behind a TLS-intercepting proxy: path of a CA bundle mounted into the build.
ARG NODE_EXTRA_CA_CERTS=

# ---------------------------------------------------------------------------------------------------------------
FROM ${NODE_IMAGE} AS deps
ARG ONNXRUNTIME_NODE_INSTALL
ARG NODE_EXTRA_CA_CERTS
ENV ONNXRUNTIME_NODE_INSTALL=${ONNXRUNTIME_NODE_INSTALL} \
    NODE_EXTRA_CA_CERTS=${NODE_EXTRA_CA_CERTS} \
    npm_config_update_notifier=false \
    npm_config_fund=false \
    npm_config_audit=false
WORKDIR /app
COPY package.json package-lock.json .npmrc ./
# Production dependencies only. The environment variable ONNXRUNTIME_NODE_INSTALL wins over .npmrc's
# onnxruntime-node-install=skip. Then drop onnxruntime-node binaries for other platforms (about 240 MB).
RUN npm ci --omit=dev --no-audit --no-fund \
 && ort_bin=node_modules/onnxruntime-node/bin/napi-v6 \
 && keep="$(node -p 'process.platform + "/" + process.arch')" \
 && for d in "$ort_bin"/*/*; do case "$d" in "$ort_bin/$keep") ;; *) rm -rf "$d" ;; esac; done \
 && ls -la "$ort_bin/$keep" \
 && npm cache clean --force

# ---------------------------------------------------------------------------------------------------------------
FROM ${NODE_IMAGE} AS build
ARG NODE_EXTRA_CA_CERTS
ENV NODE_EXTRA_CA_CERTS=${NODE_EXTRA_CA_CERTS} \
    ONNXRUNTIME_NODE_INSTALL=skip \
    npm_config_update_notifier=false
WORKDIR /app
COPY package.json package-lock.json .npmrc ./
# All dependencies (TypeScript and types); install scripts are not needed to compile.
RUN npm ci --ignore-scripts --no-audit --no-fund
COPY tsconfig*.json ./
COPY src ./src
RUN npm run build && test -f dist/server.js

# ---------------------------------------------------------------------------------------------------------------
FROM ${NODE_IMAGE} AS node

# ---------------------------------------------------------------------------------------------------------------
FROM ${BASE_IMAGE} AS runtime
ARG DEVICE
# Node into bases that lack it (the CUDA image); a Node base keeps its own.
RUN --mount=type=bind,from=node,source=/usr/local/bin/node,target=/tmp/node-from-node-image \
    if ! command -v node >/dev/null 2>&1; then install -m 0755 /tmp/node-from-node-image /usr/local/bin/node; fi \
 && node -e 'const [maj] = process.versions.node.split(".").map(Number); if (maj < 20) { console.error("Node >= 20 required, found " + process.version); process.exit(1) } console.log("node " + process.version)' \
 && (getent group 10001 >/dev/null || groupadd --system --gid 10001 chameleon) \
 && (getent passwd 10001 >/dev/null || useradd --system --uid 10001 --gid 10001 --no-create-home --home-dir /app --shell /usr/sbin/nologin chameleon)

WORKDIR /app
# Configuration is the service's own environment variables (see README, "Configuration"); the image sets only
# what differs from the service defaults or what it depends on. Override any of them with -e / env.
# ORT_DISABLE_TELEMETRY is ONNX Runtime's own switch: no telemetry, whatever a build of it would collect.
ENV NODE_ENV=production \
    ORT_DISABLE_TELEMETRY=1 \
    HOST=0.0.0.0 \
    PORT=8080 \
    MODEL_DIR=/app/models/default \
    DEVICE=${DEVICE}

COPY --chown=root:root package.json ./
COPY --chown=root:root --from=deps /app/node_modules ./node_modules
COPY --chown=root:root --from=build /app/dist ./dist
COPY --chown=root:root models/default ./models/default

# GPU variant: fail the build, not the first request, when the CUDA provider that onnxruntime-node fetched needs
# CUDA/cuDNN libraries that BASE_IMAGE lacks (e.g. a CUDA major version mismatch). libcuda.so.1 comes from the
# host driver at run time (NVIDIA Container Toolkit) and is not checked here.
RUN provider="$(find node_modules/onnxruntime-node/bin -name libonnxruntime_providers_cuda.so | head -n 1)"; \
    if [ -n "$provider" ]; then \
      missing="$(ldd "$provider" | grep 'not found' | grep -v -E 'libcuda\.so|libnvidia' || true)"; \
      if [ -n "$missing" ]; then \
        echo "onnxruntime-node's CUDA provider needs libraries that BASE_IMAGE does not have:" >&2; \
        echo "$missing" >&2; \
        echo "Use a BASE_IMAGE with the CUDA major version and cuDNN 9 that the provider was built for." >&2; \
        exit 1; \
      fi; \
      ldd "$provider" | grep -E 'libcudart|libcublas|libcudnn|libcufft|libcurand' || true; \
    fi

# Files stay root-owned and read-only for the service user.
USER 10001:10001
EXPOSE 8080

# Ready = model loaded and warmed. Node's fetch, so no curl is needed in the image.
HEALTHCHECK --interval=15s --timeout=5s --start-period=120s --retries=3 \
  CMD ["node", "-e", "fetch('http://127.0.0.1:' + (process.env.PORT || 8080) + '/health/ready').then(r => process.exit(r.ok ? 0 : 1), () => process.exit(1))"]

# The server handles SIGTERM/SIGINT itself (stops accepting, drains in-flight batches, exits), so node may run as
# PID 1. Run with `docker run --init` (compose: init: true) to get tini for zombie reaping and signal forwarding.
STOPSIGNAL SIGTERM
CMD ["node", "dist/server.js"]
