# One image for every Tandem service (gateway, prefill worker, decode worker); compose.yaml picks
# the entry point. CPU build by default: torch is pinned to the CPU wheel (an unpinned torch pulls
# a multi-GB CUDA build). The GPU image (compose's gpu profile) passes a CUDA wheel index:
#   docker build --build-arg TORCH_VERSION=2.11.0 \
#       --build-arg TORCH_INDEX_URL=https://download.pytorch.org/whl/cu128 -t tandem-serve:gpu .
FROM python:3.11-slim

ARG TORCH_VERSION=2.13.0
ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu

ENV PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1
WORKDIR /app

RUN pip install torch==${TORCH_VERSION} --index-url ${TORCH_INDEX_URL}

COPY pyproject.toml README.md ./
COPY services services
COPY kernels kernels
COPY orchestration orchestration
COPY loadgen loadgen
COPY proto proto
RUN pip install .

# Nothing runs as root inside the container.
RUN useradd --create-home tandem
USER tandem
