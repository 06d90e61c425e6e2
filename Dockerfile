# One image for every Studio service: the migrate step and the workers.
# Build the GPU flavour with --build-arg TORCH_INDEX=https://download.pytorch.org/whl/cu128
FROM python:3.11-slim

ARG TORCH_INDEX=https://download.pytorch.org/whl/cpu
ENV PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    STUDIO_HOME=/data

RUN useradd --create-home --uid 1000 studio \
    && mkdir -p /data/images /data/models \
    && chown -R studio:studio /data

# torch first and on its own layer: it is by far the largest and changes least often.
RUN pip install --index-url "$TORCH_INDEX" torch==2.14.1 torchvision==0.29.1

WORKDIR /src
COPY pyproject.toml README.md ./
COPY studio ./studio
COPY migrations ./migrations
COPY plugins ./plugins
RUN pip install ".[celery]" ./plugins/studio-galip ./plugins/studio-clip-gen

USER studio
WORKDIR /data
ENTRYPOINT ["studio"]
CMD ["--help"]
