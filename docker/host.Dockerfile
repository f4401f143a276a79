# syntax=docker/dockerfile:1.7
# The workstation build environment: python 3.11, the CPU torch wheel, edge-llm's host extras.
#   docker build -f docker/host.Dockerfile -t edge-llm/host .       (from the repository root)
#   docker run --rm -v "$PWD/../shared:/shared:ro" -v "$PWD/bundles:/src/bundles" edge-llm/host \
#       build --model /shared/models/stories260K/stories260K.bin --out bundles/model
FROM python:3.11-slim-bookworm

ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1 PYTHONDONTWRITEBYTECODE=1
WORKDIR /src

# torch from the PyTorch CPU index first: the PyPI wheel of the same version pulls CUDA (GBs).
# Keep the version in step with pyproject.toml's host extra.
RUN pip install --index-url https://download.pytorch.org/whl/cpu torch==2.13.0

COPY pyproject.toml README.md ./
COPY host/ host/
COPY board/ board/
COPY deploy/ deploy/
RUN pip install -e '.[host,board]'

RUN useradd --create-home --uid 1000 builder && chown 1000 /src
USER 1000
ENTRYPOINT ["python", "-m", "host"]
CMD ["--help"]
