FROM python:3.11-slim-bookworm
WORKDIR /app
COPY pyproject.toml README.md ./
COPY interop ./interop
RUN pip install --no-cache-dir .
EXPOSE 11112 8080
CMD ["interop", "serve"]
