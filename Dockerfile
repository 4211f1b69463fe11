# vidfuse on CUDA: runs the `vidfuse` CLI, and serves as the Beam SDK worker container on GPU
# workers (Dataflow: --sdk_container_image=<this image> --experiments=use_runner_v2
# --dataflow_service_options="worker_accelerator=type:nvidia-l4;count:1;install-nvidia-driver").
FROM nvidia/cuda:12.8.1-cudnn-runtime-ubuntu24.04

ENV DEBIAN_FRONTEND=noninteractive PIP_NO_CACHE_DIR=1 PYTHONUNBUFFERED=1 \
    VIRTUAL_ENV=/opt/venv PATH=/opt/venv/bin:$PATH
RUN apt-get update \
 && apt-get install -y --no-install-recommends python3.12 python3.12-venv ffmpeg ca-certificates \
 && rm -rf /var/lib/apt/lists/* \
 && python3.12 -m venv /opt/venv

# The Beam SDK harness must match the apache-beam version the job is launched with.
COPY --from=apache/beam_python3.12_sdk:2.77.0 /opt/apache/beam /opt/apache/beam

WORKDIR /opt/vidfuse
COPY pyproject.toml README.md ./
COPY vidfuse vidfuse
COPY pipeline pipeline
COPY extractors extractors
COPY fusion fusion
COPY index index
COPY configs configs
# faiss-gpu wheels pair with CUDA 12; torch from PyPI brings its own CUDA runtime.
RUN pip install -e ".[gpu,serve]" "apache-beam[gcp]==2.77.0"

# Model weights are not baked in: mount a cache (or pass local paths in the config).
ENV TORCH_HOME=/cache/torch HF_HOME=/cache/huggingface
ENTRYPOINT ["/opt/apache/beam/boot"]
