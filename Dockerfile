# One image for every Tandem service (gateway, prefill worker, decode worker); compose.yaml picks
# the entry point. CPU build: torch is pinned to the CPU wheel (an unpinned torch pulls a
# multi-GB CUDA build).
FROM python:3.11-slim

ENV PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1
WORKDIR /app

RUN pip install torch==2.13.0 --index-url https://download.pytorch.org/whl/cpu

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
