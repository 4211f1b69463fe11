# vidfuse on CUDA: runs the `vidfuse` CLI, and serves as the Beam SDK worker container on GPU
# workers (Dataflow: --sdk_container_image=<this image> --experiments=use_runner_v2
# --dataflow_service_options="worker_accelerator=type:nvidia-l4;count:1;install-nvidia-driver").
# Launcher and workers must run the same Python minor and apache-beam: BEAM_VERSION is the one
# pyproject.toml pins, PYTHON_VERSION the one vidfuse extract expects of this image (it warns a
# launcher on another minor; Ubuntu 24.04's apt has 3.12, other minors need another source).
ARG PYTHON_VERSION=3.12
ARG BEAM_VERSION=2.77.0
FROM apache/beam_python${PYTHON_VERSION}_sdk:${BEAM_VERSION} AS beam_sdk
FROM nvidia/cuda:12.8.1-cudnn-runtime-ubuntu24.04
ARG PYTHON_VERSION
ARG BEAM_VERSION

ENV DEBIAN_FRONTEND=noninteractive PIP_NO_CACHE_DIR=1 PYTHONUNBUFFERED=1 \
    VIRTUAL_ENV=/opt/venv PATH=/opt/venv/bin:$PATH
RUN apt-get update \
 && apt-get install -y --no-install-recommends python${PYTHON_VERSION} python${PYTHON_VERSION}-venv ffmpeg ca-certificates \
 && rm -rf /var/lib/apt/lists/* \
 && python${PYTHON_VERSION} -m venv /opt/venv

# The Beam SDK harness must match the apache-beam version the job is launched with.
COPY --from=beam_sdk /opt/apache/beam /opt/apache/beam

WORKDIR /opt/vidfuse
COPY pyproject.toml README.md ./
COPY vidfuse vidfuse
COPY pipeline pipeline
COPY extractors extractors
COPY fusion fusion
COPY index index
COPY configs configs
# One CUDA major for everything: faiss-gpu's wheels need the CUDA 12 runtime, so torch and
# torchcodec come from PyTorch's CUDA 12.8 index (PyPI's torch brings CUDA 13), and the `gpu`
# extra brings faiss-gpu and no CPU build beside it. torchcodec decodes with the FFmpeg shared
# libraries of the `ffmpeg` package above (decode.backend auto, decode.device cuda for NVDEC).
# A regular (not editable) install, as users get.
RUN pip install --index-url https://download.pytorch.org/whl/cu128 "torch==2.14.1" "torchvision==0.29.1" torchcodec \
 && pip install ".[gpu,serve,onnx]" "apache-beam[gcp]==${BEAM_VERSION}" \
 && python -c "import torch; assert torch.version.cuda.startswith('12.'), torch.version.cuda"

# Model weights are not baked in: mount a cache (or pass local paths in the config).
ENV TORCH_HOME=/cache/torch HF_HOME=/cache/huggingface
ENTRYPOINT ["/opt/apache/beam/boot"]
