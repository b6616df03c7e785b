"""DICOMweb (PS3.18 ch. 10, the Studies Service) at ``/dicomweb``: STOW-RS, QIDO-RS, WADO-RS.

One router per concern, aggregated here. Search routes come before retrieve routes, so that
``/studies/{study}/series`` (a search) is never read as a retrieve of a series.
"""

from fastapi import APIRouter

from interop.dicomweb import frames, qido, render, stow, wado

router = APIRouter()
router.include_router(qido.router)
router.include_router(stow.router)
router.include_router(wado.router)
router.include_router(frames.router)
router.include_router(render.router)

__all__ = ["router"]
