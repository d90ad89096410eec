# Ingestion worker: CUDA torch from the base image, catalogue-indexer on top.
FROM pytorch/pytorch:2.6.0-cuda12.4-cudnn9-runtime

WORKDIR /app
COPY pyproject.toml README.md ./
COPY indexer ./indexer
COPY search ./search
COPY catalogue_cli ./catalogue_cli
# torch is already in the image and satisfies the requirement: nothing large is downloaded.
RUN pip install --no-cache-dir '.[efficientnet]'

# Decoding threads; the GPU does the rest.
ENV PYTHONUNBUFFERED=1
ENTRYPOINT []
CMD ["indexer", "sync", "/dam"]
