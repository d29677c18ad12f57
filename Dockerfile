# The service image: one image, four roles (api, consumer, worker, migrate) chosen by the command.
# The code is root-owned and read-only to the service, which runs as `analytics` and writes only
# DATA_DIR (/var/lib/analytics: the tracking log behind every 202, the metrics of the API's workers, file
# storage when STORAGE_URL is file://). Mount a volume there, one per container.
FROM python:3.11-slim
ENV UV_PYTHON_DOWNLOADS=never UV_PROJECT_ENVIRONMENT=/app/.venv UV_COMPILE_BYTECODE=1 \
    PATH=/app/.venv/bin:$PATH PYTHONDONTWRITEBYTECODE=1 DATA_DIR=/var/lib/analytics
RUN pip install --no-cache-dir uv==0.13.9 \
    && groupadd --system --gid 10001 analytics \
    && useradd --system --uid 10001 --gid analytics --home-dir /var/lib/analytics \
        --shell /usr/sbin/nologin analytics \
    && install -d -o analytics -g analytics -m 0700 /var/lib/analytics
WORKDIR /app
COPY pyproject.toml uv.lock README.md ./
RUN uv sync --frozen --no-dev --no-install-project
COPY . .
RUN uv sync --frozen --no-dev
USER analytics:analytics
VOLUME ["/var/lib/analytics"]
EXPOSE 8000
CMD ["analytics", "api"]
