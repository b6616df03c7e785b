"""The worklist in headless Chromium (playwright-core driving Debian's Chromium, tests/ui/drive.mjs) against a
running node: the list, keyboard navigation without reloads, a case in full, the verdicts, a person who may
not sign, and the real standalone SMART sign-in. Screenshots land in tests/_artifacts/screenshots/."""

from __future__ import annotations

from typing import Any

import pytest

from tests.ui.conftest import PASSWORD, UiNode, drive

pytestmark = pytest.mark.usefixtures("browser")


def radiologist(node: UiNode) -> str:
    return node.person_token("drjane", "radiologist", "Jane Doe")


def pending(node: UiNode, **params: Any) -> list[dict[str, Any]]:
    with node.http() as http:
        return http.get("/api/reports", params={"status": "preliminary", "limit": 1000, **params}).json()  # type: ignore[no-any-return]


def status_of(node: UiNode, report_id: int) -> dict[str, Any]:
    with node.http() as http:
        return http.get(f"/api/reports/{report_id}").json()  # type: ignore[no-any-return]


def test_worklist_lists_pending_results_stat_first_with_counts(ui_node: UiNode) -> None:
    expected = pending(ui_node)
    seen = drive("list", base=ui_node.base, token=radiologist(ui_node), patient=ui_node.seeded_patients[1])
    assert seen["problems"] == []
    assert [r["id"] for r in seen["rows"]] == [r["id"] for r in expected]  # the API's order: stat, then oldest
    stats = [r["stat"] for r in seen["rows"]]
    assert any(stats) and stats == sorted(stats, reverse=True)
    by_id = {r["id"]: r for r in expected}
    for row in seen["rows"]:
        priority, age, patient, modality_app, critical, status = row["cells"]
        report = by_id[row["id"]]
        assert patient == report["patient_id"] and status == "Pending"
        assert modality_app == {"cxr_triage": "CR · cxr_triage",
                                "mr_segmentation": "MR · mr_segmentation"}[report["app"]]
        assert priority == ("STAT" if report["priority"] == "stat" else "routine")
        assert age.split()[-1] in ("s", "min", "h", "d")
    n_stat = sum(stats)
    assert f"{len(expected)} pending" in seen["counts"] and f"{n_stat} stat" in seen["counts"]
    assert f"Pending ({len(expected)})" in seen["options"]["f-status"]
    assert any(o.startswith("CR (") for o in seen["options"]["f-modality"])
    assert seen["focusedAfterSlash"] == "f-patient"
    assert seen["filtered"] == [r["id"] for r in pending(ui_node, patient_id=ui_node.seeded_patients[1])]
    assert seen["timings"]["navigations"] == 1 and seen["timings"]["listRendered"] > 0


def test_keyboard_moves_from_case_to_case_without_reloading(ui_node: UiNode) -> None:
    seen = drive("navigate", base=ui_node.base, token=radiologist(ui_node))
    ids = seen["ids"]
    # Enter opens the first; j, j, ↓ go on; k, ↑ come back.
    assert seen["opened"] == [ids[0], ids[1], ids[2], ids[3], ids[2], ids[1]]
    assert seen["state"]["noReload"] is True and seen["timings"]["navigations"] == 1
    assert [c["id"] for c in seen["timings"]["cases"]] == seen["opened"]
    assert seen["helpOpen"] is True
    assert seen["afterEscape"] == {"caseHidden": True, "caseId": None}
    assert seen["problems"] == []


def test_case_shows_image_with_heatmap_findings_model_card_labs_and_recommendations(ui_node: UiNode) -> None:
    report = status_of(ui_node, ui_node.real_report)
    seen = drive("case", base=ui_node.base, token=radiologist(ui_node), report=ui_node.real_report)
    first = seen["first"]
    assert seen["problems"] == []
    # The radiograph, rendered by WADO-RS, with the heat-map of the most probable present finding on it.
    assert first["image"]["complete"] and first["image"]["natural"][0] > 400
    result = report["result"]
    top = max((f for f in result["findings"] if f["present"] and f["heatmap"]), key=lambda f: f["probability"])
    assert first["overlayChoice"] == top["name"]
    ovl = first["overlay"]
    assert ovl["natural"] == first["image"]["natural"] and ovl["box"] == first["image"]["box"]
    assert not ovl["hidden"] and ovl["opacity"] == pytest.approx(0.6) and ovl["coloured"] > 0.05
    assert "heat-map" in first["legend"]
    assert seen["hidden"]["hidden"] is True  # o
    assert seen["brighter"]["opacity"] == pytest.approx(0.8)  # ] ]
    assert seen["second"]["overlayChoice"] != first["overlayChoice"] and seen["second"]["overlay"]["coloured"] > 0
    # Findings against thresholds, the model card with the demonstration notice (always in view).
    assert len(first["findings"]) == 5
    for f in result["findings"]:
        row = next(r for r in first["findings"] if r["name"] == f["name"])
        assert row["present"] == f["present"] and f["code"]["display"] in row["text"]
        assert f"{f['probability']:.2f}" in row["text"] and f"{f['threshold']:.2f}" in row["text"]
    assert result["model"]["name"] in first["modelCard"] and result["model"]["version"] in first["modelCard"]
    assert "Demonstration model, not for clinical use" in first["modelCard"] and first["demoNoticeVisible"]
    assert seen["laptop"]["demoNoticeVisible"] and seen["laptop"]["image"]["box"]["width"] > 300
    # The patient's labs (the liver panel sent by MLLP), the recommendations with their sources, the text.
    assert len(first["labs"]) == 6 and ["Bilirubin.total", "14.5 mg/dL"] in [lab[:2] for lab in first["labs"]]
    recs = report["recommendations"]
    assert recs and len(first["recommendations"]) == len(recs)
    for shown, rec in zip(first["recommendations"], recs, strict=True):
        assert shown["source"] == rec["source"] and shown["snippet"] == f"[{rec['snippet_id']}]"
        assert rec["code"]["display"] in shown["text"]
    assert first["reportText"].startswith("Preliminary AI result")
    assert "STAT" in first["title"] and ui_node.real_patient in first["title"]
    assert first["ohif"] == f"/ohif/viewer?StudyInstanceUIDs={report['study_uid']}"  # the study in OHIF


def test_segmentation_case_shows_the_label_map_slice_by_slice(ui_node: UiNode) -> None:
    seen = drive("mr", base=ui_node.base, token=radiologist(ui_node), report=ui_node.mr_report)
    first, previous = seen["first"], seen["previous"]
    assert seen["problems"] == []
    assert first["slice"] == "5 / 5" and previous["slice"] == "4 / 5"
    assert first["swatches"] == ["Hippocampus (Left)", "Hippocampus (Right)"]
    assert first["overlay"]["coloured"] > previous["overlay"]["coloured"] > 0  # the structures shrink
    assert first["measurements"] == [["Left hippocampus volume", "3.10 mL"], ["Right hippocampus volume", "3.40 mL"]]
    assert first["labsNote"] == "No lab results for this patient on this node."


def test_accept_signs_the_report_and_the_next_case_opens(ui_node: UiNode) -> None:
    target = ui_node.seeded[2]
    seen = drive("accept", base=ui_node.base, token=radiologist(ui_node), report=target)
    assert seen["problems"] == []
    assert seen["form"]["verdictOpen"] and not seen["form"]["actions"][0]["disabled"]
    after = status_of(ui_node, target)
    assert after["status"] == "final"
    [signoff] = after["signoffs"]
    name = "Jane Doe" if ui_node.roles else "drjane"  # the token's name claim, else its subject
    assert (signoff["action"], signoff["reader_id"], signoff["reader_name"]) == ("accept", "drjane", name)
    ids = seen["ids"]
    assert seen["next"]["id"] == ids[ids.index(target) + 1]  # the case after it
    assert target not in seen["rowsAfter"]  # out of the pending list
    assert seen["timings"]["navigations"] == 1


def test_amend_records_the_physicians_findings_and_conclusion(ui_node: UiNode) -> None:
    target = ui_node.seeded[5]
    finding = status_of(ui_node, target)["result"]["findings"][0]
    seen = drive("amend", base=ui_node.base, token=radiologist(ui_node), report=target, finding=finding["name"],
                 conclusion="Heart size normal on my reading.")
    assert seen["problems"] == []
    after = status_of(ui_node, target)
    assert after["status"] == "final"
    [signoff] = after["signoffs"]
    assert signoff["action"] == "amend" and signoff["conclusion"] == "Heart size normal on my reading."
    assert signoff["findings"] == {finding["name"]: not finding["present"]}
    assert seen["next"]["id"] != target


def test_reject_needs_a_reason(ui_node: UiNode) -> None:
    target = ui_node.seeded[6]
    seen = drive("reject", base=ui_node.base, token=radiologist(ui_node), report=target,
                 reason="Wrong patient's image attached.")
    assert seen["focused"] == "reason"  # r puts the cursor in the reason
    refused = seen["refused"]
    assert refused["id"] == target and refused["verdictOpen"] and refused["reasonErrorVisible"]
    after = status_of(ui_node, target)
    assert after["status"] == "cancelled"
    [signoff] = after["signoffs"]
    assert signoff["action"] == "reject" and signoff["reason"] == "Wrong patient's image attached."
    assert seen["next"]["id"] != target
    assert seen["problems"] == []


def test_a_viewer_sees_the_actions_disabled_with_the_reason(ui_node: UiNode) -> None:
    before = pending(ui_node)
    token = ui_node.person_token("vic", "viewer", "Vic Viewer", scope="openid fhirUser user/*.rs")
    seen = drive("viewer", base=ui_node.base, token=token)
    state = seen["state"]
    assert all(a["disabled"] for a in state["actions"])
    if ui_node.roles:
        assert state["actionsWhy"] == "Signing is for radiologists and physicians; you are signed in as viewer."
        assert "Vic Viewer" in seen["user"] and "Viewer" in seen["user"]
    else:  # a token without a role claim: its scopes decide
        assert state["actionsWhy"].startswith("Your sign-in does not allow signing reports")
    assert not state["verdictOpen"]
    assert pending(ui_node) == before  # nothing was signed
    assert seen["problems"] == []


def test_standalone_launch_signs_in_at_this_node_with_pkce(ui_node: UiNode) -> None:
    if not ui_node.users:
        pytest.skip("this node has no `interop user add` (the built-in authorization server) to sign in with")
    seen = drive("login", base=ui_node.base, user="drjane", password=PASSWORD)
    assert seen["problems"] == [] and seen["banner"] == ""
    authorize = next(u for u in seen["urls"] if "/auth/authorize?" in u)
    for part in ("client_id=interop-worklist", "code_challenge_method=S256", "code_challenge=",
                 f"aud={ui_node.base.replace(':', '%3A').replace('/', '%2F')}%2Ffhir", "response_type=code"):
        assert part in authorize, part
    assert any("/?code=" in u for u in seen["urls"])
    assert seen["url"] == f"{ui_node.base}/"  # the code is gone from the address bar
    assert "Jane Doe" in seen["user"] and "Radiologist" in seen["user"]
    assert seen["rows"] == len(pending(ui_node))
