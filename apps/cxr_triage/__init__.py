"""cxr_triage: frontal chest radiograph (CR/DX) -> five findings with Grad-CAM heat-maps (demonstration model)."""
