FROM python:3.11-slim
WORKDIR /app
COPY pyproject.toml README.md ./
COPY engine engine
COPY connectors connectors
COPY workers workers
RUN pip install --no-cache-dir . && useradd --create-home herald && mkdir /data && chown herald /data
COPY rules rules
USER herald
EXPOSE 8080
CMD ["herald", "run", "--role", "all"]
