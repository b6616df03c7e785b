"""lab_severity: PBC histologic stage (1-4) from a patient's FHIR labs (demonstration model, not for clinical use)."""
