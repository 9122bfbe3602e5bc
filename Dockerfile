# gradtape API server image.
#
#   docker build -t gradtape:cpu .
#   docker build --build-arg JAX_EXTRA=cuda12 -t gradtape:cuda12 .
#   docker run --rm -p 8000:8000 gradtape:cpu
#
# JAX_EXTRA empty (the default) gives a CPU-only image. `cuda12` or `cuda13`
# installs jax[cuda12] / jax[cuda13] (CUDA comes from pip wheels, so the slim
# base image is enough; the host needs the NVIDIA driver and container toolkit).

FROM python:3.11-slim-bookworm AS builder

ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONDONTWRITEBYTECODE=1

RUN python -m venv /opt/venv
ENV PATH="/opt/venv/bin:$PATH"

WORKDIR /src

ARG JAX_EXTRA=""

# Dependencies go in their own layer, so that a code change does not reinstall
# JAX. The list is read from pyproject.toml; with JAX_EXTRA set, the jax
# requirement gains the extra and keeps its version range.
COPY pyproject.toml ./
RUN case "$JAX_EXTRA" in \
      ""|cuda12|cuda13) ;; \
      *) echo "JAX_EXTRA must be empty, cuda12 or cuda13, not '$JAX_EXTRA'" >&2; exit 1 ;; \
    esac \
    && python -c 'import os, re, sys, tomllib; extra = os.environ.get("JAX_EXTRA", ""); deps = tomllib.load(open("pyproject.toml", "rb"))["project"]["dependencies"]; reqs = [re.sub(r"^jax(?=[<>=!~;\s]|$)", f"jax[{extra}]", d) if extra else d for d in deps]; sys.exit("pyproject.toml has no jax requirement to extend") if extra and reqs == deps else print("\n".join(reqs))' \
      > requirements.txt
RUN pip install --no-cache-dir -r requirements.txt

# README* is optional (pyproject.toml names README.md): a glob next to a file
# that exists lets the build go on, with either builder, while there is none.
COPY pyproject.toml README* ./
COPY engine ./engine
COPY service ./service
RUN pip install --no-cache-dir . \
    && gradtape --help > /dev/null


FROM python:3.11-slim-bookworm AS runtime

LABEL org.opencontainers.image.title="gradtape" \
      org.opencontainers.image.description="Gradients as a service: an HTTP API over JAX" \
      org.opencontainers.image.licenses="Apache-2.0"

# Arrays of 1 MiB and more are mapped and unmapped on their own rather than carved from
# glibc's heap, so memory a finished request freed goes back to the system instead of
# fragmenting the heap (up to 1.7x the peak, benchmarks/memory_estimate.py).
ENV PATH="/opt/venv/bin:$PATH" \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    MALLOC_MMAP_THRESHOLD_=1048576

RUN groupadd --system --gid 10001 gradtape \
    && useradd --system --uid 10001 --gid gradtape --no-log-init \
       --create-home --home-dir /home/gradtape --shell /usr/sbin/nologin gradtape \
    && install -d -o gradtape -g gradtape /var/cache/gradtape/xla

# Same path as in the builder: the venv's scripts point at /opt/venv/bin/python.
COPY --from=builder /opt/venv /opt/venv

USER 10001:10001
WORKDIR /home/gradtape

EXPOSE 8000

# Exec form, in Python: slim images have no curl or wget. urlopen raises on a
# non-2xx answer or a refused connection, which makes the exit status non-zero.
HEALTHCHECK --interval=30s --timeout=5s --start-period=30s --retries=3 \
    CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8000/v1/health/ready', timeout=4)"]

CMD ["gradtape", "serve", "--host", "0.0.0.0", "--port", "8000"]
