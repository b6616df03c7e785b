"""Reports: what a succeeded job becomes for the people who read it (the FHIR report, its recommendations,
its sign-off task), and the physician's verdict on it. See :mod:`interop.reports.service`."""
