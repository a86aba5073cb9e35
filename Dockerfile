# The streamrec image for the Docker path (docker-compose.yml): worker, replay and later the trainer.
FROM python:3.11-slim
WORKDIR /app
ENV PIP_NO_CACHE_DIR=1 HF_HUB_OFFLINE=1 PYTHONUNBUFFERED=1
COPY pyproject.toml README.md ./
COPY streamrec ./streamrec
COPY stream ./stream
COPY models ./models
COPY state ./state
COPY ops ./ops
COPY bench ./bench
RUN pip install torch==2.13.0 && pip install '.[text,image]'
ENTRYPOINT ["streamrec"]
CMD ["worker", "--loglevel", "info"]
