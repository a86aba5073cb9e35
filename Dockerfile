# The one streamrec image of the Docker path (docker-compose.yml): workers, trainer and tools.
FROM python:3.11-slim
WORKDIR /app
ENV PIP_NO_CACHE_DIR=1 HF_HUB_OFFLINE=1 PYTHONUNBUFFERED=1
# torch first, from PyTorch's CPU index: the default index would bring the CUDA build (gigabytes)
# that a CPU host never uses. A CUDA host swaps this line for its CUDA index; nothing else changes.
RUN pip install --index-url https://download.pytorch.org/whl/cpu torch==2.13.0
COPY pyproject.toml README.md ./
COPY streamrec ./streamrec
COPY stream ./stream
COPY serving ./serving
COPY training ./training
COPY local ./local
COPY models ./models
COPY state ./state
COPY ops ./ops
COPY bench ./bench
RUN pip install '.[text,image]'
ENTRYPOINT ["streamrec"]
CMD ["worker", "--loglevel", "info"]
