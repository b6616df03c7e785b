# The node's image: `interop serve` (default command) and `interop worker` (docker-compose.yml).
#
#   docker build -t interop-node:local .                                   # CPU torch
#   docker build -t interop-node:local-gpu --build-arg TORCH_VARIANT=cu128 .   # CUDA torch, same version
#
# torch is pinned (torch==2.13.0, as in pyproject.toml) and comes from PyTorch's own wheel index for the chosen
# variant: the same version from PyPI on Linux x86_64 is the CUDA build and pulls several GB of nvidia-* wheels.
# Everything else is then installed from PyPI held to the torch already there (a constraint on its exact
# version, local tag included), so no later step can swap it for another build.
FROM python:3.11-slim-bookworm

ARG TORCH_VERSION=2.13.0
ARG TORCH_VARIANT=cpu

ENV PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

RUN pip install --index-url "https://download.pytorch.org/whl/${TORCH_VARIANT}" "torch==${TORCH_VERSION}" \
 && pip freeze | grep -i '^torch==' > /etc/pip-torch.txt \
 && cat /etc/pip-torch.txt

WORKDIR /app

# Dependencies first, from pyproject.toml alone (an empty package stands in), so that a code change does not
# reinstall them.
COPY pyproject.toml README.md ./
RUN mkdir interop && touch interop/__init__.py \
 && pip install -c /etc/pip-torch.txt . \
 && pip uninstall -y interop \
 && rm -rf interop build *.egg-info

COPY interop ./interop
COPY fhir_profiles ./fhir_profiles
COPY operators ./operators
COPY apps ./apps
RUN pip install -c /etc/pip-torch.txt --no-deps . \
 && rm -rf build *.egg-info \
 && pip check \
 && python -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda)"

# Not root; the data directory is the volume docker-compose.yml mounts (the first mount takes this ownership).
RUN useradd --system --uid 10001 --home-dir /data --shell /usr/sbin/nologin interop \
 && mkdir -p /data /opt/ohif/dist && chown interop:interop /data
USER interop
ENV INTEROP_DATA_DIR=/data
WORKDIR /data

# DICOM, HTTP, HL7 MLLP
EXPOSE 11112 8080 2575
CMD ["interop", "serve"]
