FROM python:3.11-slim
RUN apt-get update && apt-get install -y --no-install-recommends postgresql-client && rm -rf /var/lib/apt/lists/*
WORKDIR /app
COPY pyproject.toml README.md alembic.ini ./
COPY services services
COPY raft raft
COPY broker broker
COPY hashring hashring
COPY bench bench
COPY scenarios scenarios
COPY migrations migrations
# editable: alembic.ini and migrations/ are read from /app
RUN pip install --no-cache-dir -e .
ENV TXLAB_HOST=0.0.0.0
# one image, one process per container: `python -m services.run order|inventory|payment|admin|broker|coordinator-N`
CMD ["python", "-m", "services.run", "order"]
