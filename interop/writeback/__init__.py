"""Write-back: turning an app's result into the objects clinicians see (DICOM SR/SEG, FHIR reports)."""
