"""Placeholder router; replaced by the full DICOMweb implementation."""

from fastapi import APIRouter

router = APIRouter()
