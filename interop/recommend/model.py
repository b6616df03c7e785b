"""What a recommendation is: the contract between retrieval (``interop.recommend``) and the report
builders (FHIR ServiceRequest, report text). Each one cites the snippet of our knowledge base it came from."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from operators.app_result import Coding


@dataclass(frozen=True)
class Recommendation:
    #: ``test`` (a next examination or lab test) or ``referral`` (a specialist).
    kind: Literal["test", "referral"]
    #: What to order: the ServiceRequest.code (LOINC for a test, SNOMED CT for a procedure or referral).
    code: Coding
    #: Our own words, from the snippet; never invented by a model.
    text: str
    #: The knowledge-base snippet it came from (``guidance/<file>.md#<id>``) and the source that snippet names.
    snippet_id: str
    source: str
    #: The finding (``Finding.name``) or classification it answers.
    finding: str
    #: Retrieval similarity, 0..1 (higher is closer).
    score: float
