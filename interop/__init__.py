"""interop: the imaging-AI node (DICOM, DICOMweb, FHIR R4, HL7 v2 in; AI apps; results out)."""

__version__ = "0.1.0"
