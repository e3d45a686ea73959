# syntax=docker/dockerfile:1
# The API image (also runs the one-shot `fishdip migrate`). CPU only: the API loads models
# just for /extract, so it takes torch's CPU wheels and stays a fraction of the GPU image.
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

WORKDIR /app

# Dependencies first, from the same files as a developer install, so this layer is
# rebuilt only when the lock changes. torch==X in the lock also matches X+cpu, which the
# extra index serves.
ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu
COPY requirements.lock requirements-nodeps.txt ./
RUN pip install --extra-index-url "${TORCH_INDEX_URL}" -r requirements.lock \
 && pip install --no-deps -r requirements-nodeps.txt

COPY pyproject.toml alembic.ini ./
COPY core ./core
COPY store ./store
COPY api ./api
COPY worker ./worker
COPY migrations ./migrations
RUN pip install --no-deps .

RUN useradd --create-home --uid 10001 fishdip \
 && mkdir -p /data/artifacts /data/cache \
 && chown -R fishdip /data
USER fishdip

ENV FISHDIP_DATA_DIR=/data \
    FISHDIP_ARTIFACT_URL=/data/artifacts \
    FISHDIP_CACHE_DIR=/data/cache

EXPOSE 8000
HEALTHCHECK --interval=10s --timeout=5s --start-period=30s --retries=3 \
  CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8000/healthz', timeout=4)"]
CMD ["uvicorn", "api.app:app", "--host", "0.0.0.0", "--port", "8000", "--proxy-headers"]
