FROM python:3.11-slim-bookworm
WORKDIR /app
COPY pyproject.toml README.md ./
COPY interop ./interop
COPY fhir_profiles ./fhir_profiles
COPY operators ./operators
COPY apps ./apps
RUN pip install --no-cache-dir .
# DICOM, HTTP, HL7 MLLP
EXPOSE 11112 8080 2575
CMD ["interop", "serve"]
