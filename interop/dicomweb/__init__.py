"""DICOMweb (PS3.18): QIDO-RS, WADO-RS, STOW-RS at ``/dicomweb``."""

from interop.dicomweb.routes import router

__all__ = ["router"]
