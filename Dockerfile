# The service image: one image, three roles (api, consumer, worker) chosen by the command.
FROM python:3.11-slim
ENV UV_PYTHON_DOWNLOADS=never UV_PROJECT_ENVIRONMENT=/app/.venv PATH=/app/.venv/bin:$PATH
RUN pip install --no-cache-dir uv
WORKDIR /app
COPY pyproject.toml uv.lock README.md ./
RUN uv sync --frozen --no-dev --no-install-project
COPY . .
RUN uv sync --frozen --no-dev
USER nobody
EXPOSE 8000
CMD ["analytics", "api"]
