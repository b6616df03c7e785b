"""Follow-up recommendations: the real MiniLM model, a real chromadb index, real retrieval, and a real HTTP
endpoint in place of an LLM."""

from __future__ import annotations

import json
import re
import shutil
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from interop.recommend import (
    KB_NOTICE,
    KnowledgeBaseError,
    Recommendation,
    Recommender,
    build_report_text,
    load_knowledge_base,
    phraser_from_settings,
)
from interop.recommend.kb import GUIDANCE_DIR, parse_guidance
from interop.recommend.recommender import queries
from interop.recommend.report import PRELIMINARY
from interop.recommend.store import BUILT, chroma_settings
from operators.app_result import AppRef, AppResult, Classification, Coding, Finding, Measurement, ModelRef
from operators.model_bundle import DEMONSTRATION_NOTICE
from tests.support import free_port

REPO = Path(__file__).resolve().parents[2]
SNOMED = "http://snomed.info/sct"
CXR = json.loads((REPO / "apps/cxr_triage/model/configs/metadata.json").read_text())["findings"]
PBC = json.loads((REPO / "apps/lab_severity/model/configs/metadata.json").read_text())["classification"]
DISTRACTORS = {"cxr-nodule-ct", "cxr-lung-cancer-screening", "cxr-murmur-echo", "liver-hbv-surveillance",
               "liver-iron-overload", "mr-ms-monitoring", "mr-meningioma-neurosurgery"}


def _model(name: str) -> ModelRef:
    return ModelRef(name=name, version="0.1.0", path="model", sha256="0" * 64, demonstration=True,
                    notice=DEMONSTRATION_NOTICE)


def cxr_result(**probabilities: float) -> AppResult:
    """A cxr_triage result with the app's real findings, codes and thresholds; unnamed findings at 0.02."""
    findings = []
    for spec in CXR:
        p = probabilities.get(spec["name"], 0.02)
        findings.append(Finding(name=spec["name"], code=Coding(**spec["code"]), probability=p,
                                threshold=spec["threshold"], present=p >= spec["threshold"]))
    return AppResult(app=AppRef(name="cxr_triage", version="0.1.0"), model=_model("cxr_triage_densenet121_synthetic"),
                     notice=DEMONSTRATION_NOTICE, inputs={}, findings=findings)


def pbc_result(stage: str) -> AppResult:
    probabilities = {c: 0.1 for c in PBC["classes"]}
    probabilities[stage] = 1.0 - 0.1 * (len(probabilities) - 1)
    classification = Classification(name=PBC["name"], code=Coding(**PBC["code"]), predicted=stage,
                                    probabilities=probabilities)
    return AppResult(app=AppRef(name="lab_severity", version="1.0.0"), model=_model("pbc_stage_demo"),
                     notice=DEMONSTRATION_NOTICE, inputs={}, classifications=[classification])


def mr_result(left: float, right: float) -> AppResult:
    hippocampus = Coding(system=SNOMED, code="5366008", display="Hippocampus")
    volume = Coding(system=SNOMED, code="118565006", display="Volume")
    sides = [("Left", "7771000", left), ("Right", "24028007", right)]
    measurements = [Measurement(name=f"{side} hippocampus volume", code=volume, value=value, unit="mL",
                                finding_site=hippocampus, laterality=Coding(system=SNOMED, code=code, display=side))
                    for side, code, value in sides]
    measurements.append(Measurement(name="Cerebellum volume", code=volume, value=131.5, unit="mL",
                                    finding_site=Coding(system=SNOMED, code="113305005", display="Cerebellum")))
    return AppResult(app=AppRef(name="mr_segmentation", version="0.1.0"), model=_model("mr_brain_structures_demo"),
                     notice=DEMONSTRATION_NOTICE, inputs={}, measurements=measurements)


def snippet_ids(recs: list[Recommendation]) -> list[str]:
    return [r.snippet_id.split("#", 1)[1] for r in recs]


@pytest.fixture(scope="module")
def index_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("guidance-index")


@pytest.fixture(scope="module")
def recommender(index_dir: Path) -> Recommender:
    rec = Recommender(index_dir)
    rec.warm()
    return rec


# -- the knowledge base ------------------------------------------------------------------------------------


def test_knowledge_base_covers_every_finding_and_class_the_apps_produce() -> None:
    kb = load_knowledge_base()
    keys = {spec["name"] for spec in CXR} | {f"{PBC['name']}={c}" for c in PBC["classes"]}
    assert keys <= {k for s in kb.snippets.values() for k in s.applies_to}
    assert "hippocampal_volume_low" in kb.targets and kb.targets["hippocampal_volume_low"].site is not None
    for snippet in kb.snippets.values():
        assert snippet.source and snippet.code.system in (SNOMED, "http://loinc.org")
        if snippet.kind == "referral":
            assert snippet.code.system == SNOMED, snippet.id
        pattern = r"^\d+-\d$" if snippet.code.system == "http://loinc.org" else r"^\d{6,18}$"
        assert re.match(pattern, snippet.code.code), snippet.id
    for path in GUIDANCE_DIR.glob("*.md"):
        assert "Demonstration content, not clinical advice" in path.read_text()


def test_malformed_guidance_is_refused_with_file_and_section() -> None:
    good = "topic: chest\n\n## snippet: a-b\ntitle: T\napplies_to: x\nkind: test\ncode: http://loinc.org | 1-8 | X\n" \
           "source: S\n\nText.\n"
    targets, snippets = parse_guidance("f.md", good)
    assert targets == [] and snippets[0].ref == "guidance/f.md#a-b" and snippets[0].text == "Text."
    with pytest.raises(KnowledgeBaseError, match=r"f.md ## snippet: a-b: kind is 'test' or 'referral'"):
        parse_guidance("f.md", good.replace("kind: test", "kind: advice"))
    with pytest.raises(KnowledgeBaseError, match="missing source"):
        parse_guidance("f.md", good.replace("source: S\n", ""))
    with pytest.raises(KnowledgeBaseError, match="topic"):
        parse_guidance("f.md", good.replace("topic: chest", ""))
    with pytest.raises(KnowledgeBaseError, match="system | code | display"):
        parse_guidance("f.md", good.replace("| 1-8 | X", ""))


# -- retrieval ---------------------------------------------------------------------------------------------


def test_cardiomegaly_gets_echocardiography_citing_its_snippet(recommender: Recommender) -> None:
    recs = recommender.recommend(cxr_result(cardiomegaly=0.91))
    echo = next(r for r in recs if r.code.code == "34552-0")
    assert echo.snippet_id == "guidance/chest_radiograph.md#cxr-cardiomegaly-echo"
    assert echo.kind == "test" and echo.code.system == "http://loinc.org" and echo.finding == "cardiomegaly"
    assert echo.source.startswith("European Society of Cardiology") and "echocardiography" in echo.text
    assert recs[0] == echo and 0.35 <= echo.score <= 1.0
    assert {r.finding for r in recs} == {"cardiomegaly"}
    assert "cxr-murmur-echo" not in snippet_ids(recs)  # the same test, written for another finding


def test_pneumothorax_gets_same_day_assessment_and_a_repeat_film(recommender: Recommender) -> None:
    recs = recommender.recommend(cxr_result(pneumothorax=0.6))
    assert snippet_ids(recs) == ["cxr-pneumothorax-urgent", "cxr-pneumothorax-repeat-film"]
    assert recs[0].kind == "referral" and recs[0].code == Coding(
        system=SNOMED, code="306254002", display="Referral to Accident and Emergency doctor (procedure)")
    assert all("British Thoracic Society" in r.source for r in recs)


def test_all_absent_result_gets_no_recommendation(recommender: Recommender) -> None:
    result = cxr_result()
    assert not any(f.present for f in result.findings)
    assert recommender.recommend(result) == []


def test_each_chest_finding_gets_only_its_own_guidance(recommender: Recommender) -> None:
    for spec in CXR:
        recs = recommender.recommend(cxr_result(**{spec["name"]: 0.99}))
        assert recs, spec["name"]
        kb = recommender.kb
        for rec in recs:
            assert spec["name"] in kb.snippets[rec.snippet_id.split("#")[1]].applies_to


def test_pbc_stage_4_gets_hepatology_and_cirrhosis_follow_up(recommender: Recommender) -> None:
    recs = recommender.recommend(pbc_result("4"))
    assert set(snippet_ids(recs)) == {"pbc-hepatology-referral", "pbc-liver-cancer-surveillance",
                                      "pbc-varices-endoscopy"}
    referral = next(r for r in recs if r.kind == "referral")
    assert referral.code.code == "308476000" and referral.finding == "pbc_histologic_stage"
    assert all(r.source.startswith(("AASLD", "Baveno")) for r in recs)


def test_pbc_stage_1_gets_monitoring_but_no_cirrhosis_follow_up(recommender: Recommender) -> None:
    ids = set(snippet_ids(recommender.recommend(pbc_result("1"))))
    assert ids == {"pbc-alp-response", "pbc-bone-density", "pbc-elastography"}


def test_pbc_stage_3_gets_hepatology_and_fibrosis_follow_up(recommender: Recommender) -> None:
    ids = snippet_ids(recommender.recommend(pbc_result("3")))
    assert {"pbc-hepatology-referral", "pbc-elastography"} <= set(ids)
    assert not {"pbc-liver-cancer-surveillance", "pbc-varices-endoscopy"} & set(ids)


def test_small_hippocampus_gets_memory_assessment_and_normal_volumes_none(recommender: Recommender) -> None:
    recs = recommender.recommend(mr_result(left=5.1, right=7.4))
    assert snippet_ids(recs)[0] == "mr-hippocampus-memory-assessment"
    assert {r.finding for r in recs} == {"Left hippocampus volume"}
    assert recommender.recommend(mr_result(left=7.5, right=7.6)) == []  # the Colin27 atlas' own volumes


def test_distractors_are_never_recommended(recommender: Recommender) -> None:
    results = [cxr_result(**{s["name"]: 0.99 for s in CXR}), mr_result(2.0, 2.0)]
    results += [pbc_result(c) for c in PBC["classes"]]
    for result in results:
        assert not DISTRACTORS & set(snippet_ids(recommender.recommend(result)))


def test_retrieval_ranks_each_targets_own_guidance_first(recommender: Recommender) -> None:
    """The embedding does the work: searching a topic with a target's description (no filter on the target)
    puts a snippet written for it first, above the other findings' snippets and the distractors."""
    store = recommender.store()
    for key, target in recommender.kb.targets.items():
        hits = store.search(target.describes, topic=target.topic, k=3)
        assert key in hits[0].snippet.applies_to, (key, [(h.snippet.id, h.score) for h in hits])
        assert hits[0].score > hits[-1].score


def test_min_score_and_k_decide(index_dir: Path, recommender: Recommender) -> None:
    edema = cxr_result(edema=0.95)
    recs = recommender.recommend(edema)
    assert len(recs) == 3 and all(r.score >= 0.35 for r in recs)
    assert [r.score for r in recs] == sorted((r.score for r in recs), reverse=True)
    strict = Recommender(index_dir, min_score=recs[0].score - 1e-3)
    assert [r.snippet_id for r in strict.recommend(edema)] == [recs[0].snippet_id]
    assert Recommender(index_dir, min_score=0.99).recommend(edema) == []
    assert len(Recommender(index_dir, k=1).recommend(edema)) == 1


def test_recommendations_are_deduplicated(recommender: Recommender) -> None:
    recs = recommender.recommend(cxr_result(cardiomegaly=0.9, edema=0.9, pneumothorax=0.5, consolidation=0.9))
    ids = snippet_ids(recs)
    assert len(ids) == len(set(ids)) and ids.count("cxr-cardiomegaly-echo") == 1
    codes = [(r.code.system, r.code.code) for r in recs]
    assert len(codes) == len(set(codes))  # one chest radiograph, not one per finding
    assert ("http://loinc.org", "36643-5") in codes


def test_queries_follow_the_result_not_the_knowledge_base() -> None:
    kb = load_knowledge_base()
    assert [q.finding for q in queries(cxr_result(effusion=0.5, cardiomegaly=0.8), kb)] == ["cardiomegaly", "effusion"]
    assert [q.target.key for q in queries(pbc_result("2"), kb)] == ["pbc_histologic_stage=2"]
    assert [q.finding for q in queries(mr_result(5.0, 5.5), kb)] == ["Left hippocampus volume",
                                                                       "Right hippocampus volume"]


# -- the index on disk -------------------------------------------------------------------------------------


def test_index_is_reused_and_rebuilt_when_the_guidance_changes(tmp_path: Path, recommender: Recommender) -> None:
    kb_dir = tmp_path / "guidance"
    shutil.copytree(GUIDANCE_DIR, kb_dir)
    index = tmp_path / "index"
    first = Recommender(index, kb=load_knowledge_base(kb_dir)).store()
    assert first.build_seconds is not None and (first.path / BUILT).is_file()
    assert Recommender(index, kb=load_knowledge_base(kb_dir)).store().build_seconds is None  # reused
    text = (kb_dir / "chest_radiograph.md").read_text()
    (kb_dir / "chest_radiograph.md").write_text(text.replace("is the usual next test", "is the next test"))
    second = Recommender(index, kb=load_knowledge_base(kb_dir)).store()
    assert second.build_seconds is not None and second.path != first.path and not first.path.exists()
    assert Recommender(index, kb=load_knowledge_base(kb_dir)).recommend(cxr_result(cardiomegaly=0.9))


def test_chroma_never_embeds_with_its_own_model_and_sends_no_telemetry(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, recommender: Recommender) -> None:
    from chromadb.utils.embedding_functions import ONNXMiniLM_L6_V2

    def refuse(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError("chromadb's default embedding function was used")

    monkeypatch.setattr(ONNXMiniLM_L6_V2, "__call__", refuse)
    monkeypatch.setattr(ONNXMiniLM_L6_V2, "_download_model_if_not_exists", refuse)
    assert Recommender(tmp_path / "index").recommend(cxr_result(effusion=0.9))
    assert chroma_settings().anonymized_telemetry is False


# -- report text -------------------------------------------------------------------------------------------


def test_built_text_mentions_each_present_finding_source_and_the_notices(recommender: Recommender) -> None:
    result = cxr_result(cardiomegaly=0.87, effusion=0.64)
    recs = recommender.recommend(result)
    text = recommender.report_text(result, recs)
    assert text.startswith(PRELIMINARY) and DEMONSTRATION_NOTICE in text and KB_NOTICE in text
    assert "Cardiomegaly: probability 0.87" in text and "Pleural effusion: probability 0.64" in text
    for rec in recs:
        assert rec.source in text and rec.snippet_id in text and rec.code.code in text
    present = text.split("Findings not present")[0]
    assert "Pneumothorax" not in present and "Pulmonary edema" not in present


def test_built_text_mentions_nothing_the_result_does_not_contain(recommender: Recommender) -> None:
    result = cxr_result(pneumothorax=0.42)
    text = recommender.report_text(result, recommender.recommend(result))
    numbers = set(re.findall(r"(?<![\d.])\d+\.\d+(?![\d.])", text.replace("0.1.0", "")))  # less the versions
    said = {f"{v:.2f}" for f in result.findings for v in (f.probability, f.threshold)}
    assert numbers and numbers <= said
    for word in ("hippocamp", "biliary", "nodule", "echocardiograph", "cardiolog", "edema is present"):
        assert word not in text.lower()
    assert "Follow-up suggestions:" in text and text.count("[guidance/") == 2


def test_built_text_without_recommendations_says_none() -> None:
    result = cxr_result()
    text = build_report_text(result, [])
    assert "Findings present" not in text and "Follow-up suggestions:\n- none." in text and KB_NOTICE in text


def test_built_text_of_a_classification_and_of_measurements(recommender: Recommender) -> None:
    pbc = pbc_result("4")
    text = recommender.report_text(pbc, recommender.recommend(pbc))
    assert "predicted 4, probability 0.70 (1: 0.10, 2: 0.10, 3: 0.10, 4: 0.70)" in text
    assert "For: Primary biliary cholangitis histologic stage (1-4), predicted from labs = 4\n" in text
    mr = mr_result(5.1, 7.4)
    text = recommender.report_text(mr, recommender.recommend(mr))
    assert "Left hippocampus volume: 5.10 mL." in text and "For: Left hippocampus volume 5.10 mL\n" in text


# -- LLM phrasing through a real OpenAI-compatible endpoint --------------------------------------------------


class _ChatEndpoint(BaseHTTPRequestHandler):
    """Answers POST /v1/chat/completions with ``server.reply(user message)``; keeps each request body."""

    def do_POST(self) -> None:  # noqa: N802 (http.server's name)
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        self.server.requests.append((self.path, body))  # type: ignore[attr-defined]
        draft = body["messages"][-1]["content"]
        answer = {"id": "chatcmpl-1", "object": "chat.completion", "created": 0, "model": body["model"],
                  "choices": [{"index": 0, "finish_reason": "stop",
                               "message": {"role": "assistant", "content": self.server.reply(draft)}}],  # type: ignore[attr-defined]
                  "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2}}
        data = json.dumps(answer).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, format: str, *args: Any) -> None:  # quiet
        pass


@pytest.fixture
def chat_server() -> Iterator[ThreadingHTTPServer]:
    server = ThreadingHTTPServer(("127.0.0.1", free_port()), _ChatEndpoint)
    server.requests = []  # type: ignore[attr-defined]
    server.reply = lambda draft: "Phrased by the model.\n" + draft  # type: ignore[attr-defined]
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()
    thread.join(5)


def _with_llm(recommender: Recommender, base_url: str) -> Recommender:
    phraser = phraser_from_settings(base_url, "tiny-local", None, timeout=5, max_retries=0)
    return Recommender(recommender.persist_dir, llm=phraser, kb=recommender.kb)


def test_llm_phrasing_is_used(chat_server: ThreadingHTTPServer, recommender: Recommender) -> None:
    result = cxr_result(cardiomegaly=0.8)
    recs = recommender.recommend(result)
    llm = _with_llm(recommender, f"http://127.0.0.1:{chat_server.server_port}/v1")
    text = llm.report_text(result, recs)
    assert text.startswith("Phrased by the model.\n")
    [(path, body)] = chat_server.requests  # type: ignore[attr-defined]
    assert path == "/v1/chat/completions" and body["model"] == "tiny-local" and body["temperature"] == 0
    system, user = body["messages"]
    assert system["role"] == "system" and "Use only the facts in the draft" in system["content"]
    assert user["role"] == "user" and user["content"] == build_report_text(result, recs)


def test_llm_text_that_drops_a_citation_is_not_used(chat_server: ThreadingHTTPServer,
                                                    recommender: Recommender) -> None:
    chat_server.reply = lambda draft: re.sub(r"\[guidance/[^\]]*\]", "", draft)  # type: ignore[attr-defined]
    result = cxr_result(effusion=0.9)
    recs = recommender.recommend(result)
    text = _with_llm(recommender, f"http://127.0.0.1:{chat_server.server_port}/v1").report_text(result, recs)
    assert text == build_report_text(result, recs) and chat_server.requests  # type: ignore[attr-defined]


def test_unreachable_llm_falls_back_to_the_built_text(recommender: Recommender,
                                                      caplog: pytest.LogCaptureFixture) -> None:
    result = cxr_result(consolidation=0.7)
    recs = recommender.recommend(result)
    text = _with_llm(recommender, f"http://127.0.0.1:{free_port()}/v1").report_text(result, recs)
    assert text == build_report_text(result, recs)
    assert "report phrasing by tiny-local" in caplog.text and "failed" in caplog.text


def test_phraser_only_with_a_base_url_and_a_model() -> None:
    assert phraser_from_settings(None, "m", None) is None and phraser_from_settings("", None, None) is None
    with pytest.raises(ValueError, match="model"):
        phraser_from_settings("http://127.0.0.1:9/v1", None, None)
