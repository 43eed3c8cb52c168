# kdeploy's images, one file, one target each:
#
#   docker build --target trainer   -t kdeploy-trainer:0.1.0 .    # TensorFlow + kdeploy: train, export, verify
#   docker build --target server    -t kdeploy-server:0.1.0 .     # kdeploy serve, onnx backend, no TensorFlow
#   docker build --target server-gpu -t kdeploy-server-gpu:0.1.0 . # the same on onnxruntime-gpu (CUDA 13 wheels)
#   docker build --target tfserving -t kdeploy-tfserving:0.1.0 .  # tensorflow/serving + SavedModels + configs
#   docker build --target loadtest  -t kdeploy-loadtest:0.1.0 .   # Locust + kdeploy's locustfile, `kdeploy loadtest`
#
# The model repository is baked in at /models. By default it is trained and exported inside the build
# (MODEL_SOURCE=trained: RECIPE, MODEL_NAME); with MODEL_SOURCE=context it is copied from the build context
# (MODEL_REPOSITORY, default build/models, the only folder under build/ that .dockerignore lets through):
#
#   kdeploy export model.keras --repository build/models --name NAME
#   docker build --target server --build-arg MODEL_SOURCE=context -t kdeploy-server:0.1.0 .
#
# Nothing here is secret: no credentials are read, written or passed as build arguments.

ARG PYTHON_IMAGE=python:3.11.14-slim-bookworm
ARG TFSERVING_VERSION=2.20.0
# "" for the CPU build, -gpu for tensorflow/serving:VERSION-gpu.
ARG TFSERVING_VARIANT=""
ARG MODEL_SOURCE=trained

# ---------------------------------------------------------------------------------------------------------------
# tini: a tiny init as PID 1 that forwards SIGTERM to the server and reaps children (Locust, tf2onnx). Debian's
# package ships a static build, which also runs in the Ubuntu-based TF Serving image.
FROM ${PYTHON_IMAGE} AS tini
RUN apt-get update \
 && apt-get install -y --no-install-recommends tini=0.19.0-1+b3 \
 && rm -rf /var/lib/apt/lists/*

# ---------------------------------------------------------------------------------------------------------------
# builder: a virtualenv at /opt/venv with a pinned build backend, so `pip install --no-build-isolation .` never
# fetches an unpinned setuptools.
# Downloads go through a build cache mount (/root/.cache/pip): never in a layer, and shared by every target's
# build and rebuild, so where the index's answers are cacheable the trainer's TensorFlow wheel is fetched once per
# machine, not once per source change.
FROM ${PYTHON_IMAGE} AS builder
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PATH=/opt/venv/bin:$PATH
WORKDIR /src
COPY requirements/build.txt requirements/build.txt
RUN python -m venv /opt/venv \
 && pip install --no-cache-dir -r requirements/build.txt
# Only what `pip install .` packages: the five Python packages, the manifests (package data for `kdeploy k8s
# render`), pyproject.toml and its readme.
COPY pyproject.toml README.md ./
COPY kdeploy/ kdeploy/
COPY export/ export/
COPY serve/ serve/
COPY train/ train/
COPY loadtest/ loadtest/
COPY k8s/ k8s/

# ---------------------------------------------------------------------------------------------------------------
# runtime: the slim base every Python image below starts from: a non-root user, tini, the venv on PATH.
# ORT_DISABLE_TELEMETRY: onnxruntime (>= 1.32) otherwise starts Microsoft's 1DS telemetry, which writes a device ID
# under $HOME/.cache (a warning on a read-only root) and tries to upload over HTTPS; a server sends nothing out.
FROM ${PYTHON_IMAGE} AS runtime
RUN useradd --no-log-init --system --uid 10001 --user-group --home-dir /home/kdeploy --create-home \
        --shell /usr/sbin/nologin kdeploy
COPY --from=tini /usr/bin/tini-static /usr/local/bin/tini
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    ORT_DISABLE_TELEMETRY=1 \
    PATH=/opt/venv/bin:$PATH

# ---------------------------------------------------------------------------------------------------------------
# trainer: the whole tool with TensorFlow, kdeploy[all] (pins from constraints.txt).
FROM runtime AS trainer
COPY --from=builder /opt/venv /opt/venv
WORKDIR /src
COPY --from=builder /src /src
COPY constraints.txt ./
RUN --mount=type=cache,target=/root/.cache/pip,sharing=locked pip install --no-build-isolation -c constraints.txt '.[all]' \
 && pip check \
 && rm -rf /src/build \
 && install -d -o 10001 -g 10001 /models /workspace
WORKDIR /workspace
USER 10001:10001
ENTRYPOINT ["tini", "--", "kdeploy"]
CMD ["--help"]

# ---------------------------------------------------------------------------------------------------------------
# The model repository, from one of two sources (chosen by MODEL_SOURCE; BuildKit builds only the one used).
FROM trainer AS models-trained
ARG RECIPE=digits-cnn
ARG MODEL_NAME=digits
RUN kdeploy train --recipe "${RECIPE}" --out /tmp/train \
 && kdeploy export /tmp/train/model.keras --repository /models --name "${MODEL_NAME}" --version 1 \
 && rm -rf /tmp/train

FROM scratch AS models-context
ARG MODEL_REPOSITORY=build/models
COPY ${MODEL_REPOSITORY}/ /models/

# The image name is a stage name chosen by a build argument, not a registry image, so there is no tag to pin.
# hadolint ignore=DL3006
FROM models-${MODEL_SOURCE} AS models

# ---------------------------------------------------------------------------------------------------------------
# server: `kdeploy serve` with onnxruntime and LiteRT, kdeploy[serve]; TensorFlow is neither installed nor imported.
# requirements/server.txt pins the complete set the extra resolves to (as constraints: a package it lacked would
# show in tests/deploy/test_install.py, which installs the same way and compares).
FROM builder AS server-build
COPY requirements/server.txt requirements/server.txt
# Then what the server never loads goes (75 MB, a quarter of the venv; tests/images serve both backends from the
# result): pip itself, LiteRT's WebGPU accelerator, AOT compiler, vendor plugins and model tools, onnxruntime's
# offline model tools (quantization, transformers, tools), NumPy's test suites, f2py and distutils.
RUN --mount=type=cache,target=/root/.cache/pip,sharing=locked \
    pip install --no-build-isolation -c requirements/server.txt '.[serve]' \
 && pip check \
 && pip uninstall --yes setuptools \
 && site=/opt/venv/lib/python3.11/site-packages \
 && rm -r "$site"/ai_edge_litert/libLiteRtWebGpuAccelerator.so "$site"/ai_edge_litert/aot "$site"/ai_edge_litert/vendors \
          "$site"/ai_edge_litert/tools "$site"/onnxruntime/quantization "$site"/onnxruntime/transformers \
          "$site"/onnxruntime/tools "$site"/numpy/f2py "$site"/numpy/distutils \
 && find "$site"/numpy -depth -type d -name tests -exec rm -r {} + \
 && python -m pip uninstall --yes pip

# TF Serving's models.config, batching_parameters.txt and monitoring.config for the baked repository.
FROM server-build AS configs
COPY --from=models /models /models
RUN kdeploy configs --repository /models --out /configs --base-path /models

FROM runtime AS server
COPY --from=server-build /opt/venv /opt/venv
COPY --from=models /models /models
# Every `kdeploy serve` flag also reads KDEPLOY_<FLAG>; Kubernetes sets the same variables from a ConfigMap. Only
# what a container needs differently from the flags' defaults is set here (ports 8500/8501/8502 are the defaults).
ENV KDEPLOY_REPOSITORY=/models \
    KDEPLOY_HOST=0.0.0.0
LABEL org.opencontainers.image.title="kdeploy-server" \
      org.opencontainers.image.description="kdeploy serve (onnx, tflite): TF Serving gRPC/REST, KServe v2 gRPC/REST"
USER 10001:10001
WORKDIR /home/kdeploy
# gRPC (TF Serving, KServe v2, grpc.health.v1), REST, Prometheus metrics.
EXPOSE 8500 8501 8502
# Exec form: tini is PID 1 and passes SIGTERM straight to kdeploy, which drains and exits 0.
STOPSIGNAL SIGTERM
ENTRYPOINT ["tini", "--", "kdeploy", "serve"]

# ---------------------------------------------------------------------------------------------------------------
# server-gpu: the same server on onnxruntime-gpu; the CUDA and cuDNN libraries come as pip wheels (the node needs
# only the NVIDIA driver and container toolkit) and are registered with the dynamic loader.
FROM builder AS server-gpu-build
COPY requirements/server-gpu.txt requirements/server-gpu.txt
# onnxruntime-gpu stands in for the serve extra's onnxruntime (they install the same module), so kdeploy goes in
# without its extras on the pinned set, which `pip check` then finds complete for the base package.
RUN --mount=type=cache,target=/root/.cache/pip,sharing=locked pip install --no-deps -r requirements/server-gpu.txt \
 && pip install --no-cache-dir --no-deps --no-build-isolation . \
 && pip check \
 && pip uninstall --yes setuptools

FROM runtime AS server-gpu
SHELL ["/bin/bash", "-o", "pipefail", "-c"]
COPY --from=server-gpu-build /opt/venv /opt/venv
RUN find /opt/venv -path '*/nvidia/*' -name 'lib*.so*' -printf '%h\n' | sort -u > /etc/ld.so.conf.d/nvidia-wheels.conf \
 && ldconfig
COPY --from=models /models /models
ENV KDEPLOY_REPOSITORY=/models \
    KDEPLOY_HOST=0.0.0.0 \
    KDEPLOY_PROVIDERS=CUDAExecutionProvider,CPUExecutionProvider \
    NVIDIA_VISIBLE_DEVICES=all \
    NVIDIA_DRIVER_CAPABILITIES=compute,utility
LABEL org.opencontainers.image.title="kdeploy-server-gpu"
USER 10001:10001
WORKDIR /home/kdeploy
EXPOSE 8500 8501 8502
STOPSIGNAL SIGTERM
ENTRYPOINT ["tini", "--", "kdeploy", "serve"]

# ---------------------------------------------------------------------------------------------------------------
# tfserving: TensorFlow Serving on the repository's SavedModels (it ignores the other files in a version folder)
# with the configs generated above. TFSERVING_VARIANT=-gpu selects tensorflow/serving's GPU build.
FROM tensorflow/serving:${TFSERVING_VERSION}${TFSERVING_VARIANT} AS tfserving
COPY --from=tini /usr/bin/tini-static /usr/local/bin/tini
COPY --from=models /models /models
COPY --from=configs /configs/tfserving/ /config/
LABEL org.opencontainers.image.title="kdeploy-tfserving"
# Any non-root uid works: the model files are world-readable and TF Serving writes nothing.
USER 10001:10001
EXPOSE 8500 8501
STOPSIGNAL SIGTERM
# tini, not the image's shell entrypoint: a shell as PID 1 would swallow SIGTERM until the kill timeout.
ENTRYPOINT ["tini", "--", "tensorflow_model_server", "--port=8500", "--rest_api_port=8501", \
            "--model_config_file=/config/models.config", "--model_config_file_poll_wait_seconds=60", \
            "--enable_batching=true", "--batching_parameters_file=/config/batching_parameters.txt", \
            "--monitoring_config_file=/config/monitoring.config"]

# ---------------------------------------------------------------------------------------------------------------
# loadtest: Locust with kdeploy's locustfile (master, worker or standalone) and `kdeploy loadtest`. The model
# repository comes along for the signature and the held-out rows the requests are made of.
FROM builder AS loadtest-build
COPY requirements/loadtest.txt requirements/loadtest.txt
RUN --mount=type=cache,target=/root/.cache/pip,sharing=locked \
    pip install --no-build-isolation -c requirements/loadtest.txt '.[loadtest]' \
 && pip check \
 && pip uninstall --yes setuptools

FROM runtime AS loadtest
COPY --from=loadtest-build /opt/venv /opt/venv
COPY --from=models /models /models
COPY loadtest/locustfile.py /app/locustfile.py
ENV LOCUST_LOCUSTFILE=/app/locustfile.py \
    KDEPLOY_LOADTEST_REPOSITORY=/models \
    MPLCONFIGDIR=/tmp/matplotlib
LABEL org.opencontainers.image.title="kdeploy-loadtest"
USER 10001:10001
WORKDIR /home/kdeploy
# Locust's web UI, and the port its workers connect to.
EXPOSE 8089 5557
ENTRYPOINT ["tini", "--"]
CMD ["locust"]
