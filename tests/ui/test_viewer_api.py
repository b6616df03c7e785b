"""The viewer's endpoints on a running node (interop.api.viewer): the worklist's counts, a report's images and
overlays manifest, the overlays as PNGs at the rendered frame's size, and the scope they need."""

from __future__ import annotations

import io

import httpx
import numpy as np
from PIL import Image

from interop.ui import overlays
from tests.ui.conftest import UiNode


def test_counts_match_the_pending_reports_by_priority_app_and_modality(ui_node: UiNode) -> None:
    with ui_node.http() as http:
        pending = http.get("/api/reports", params={"status": "preliminary", "limit": 1000}).json()
        counts = http.get("/api/worklist/counts").json()
        everything = http.get("/api/worklist/counts", params={"status": "preliminary,final,amended,cancelled"}).json()
        mine = http.get("/api/worklist/counts", params={"patient_id": ui_node.real_patient}).json()
        bad = http.get("/api/worklist/counts", params={"status": "pending"})
    assert counts["total"] == len(pending)
    assert counts["priority"] == {"stat": sum(r["priority"] == "stat" for r in pending),
                                  "routine": sum(r["priority"] == "routine" for r in pending)}
    assert counts["priority"]["stat"] >= 2  # the real result (a critical effusion) and seeded pneumothoraces
    assert counts["app"] == {"cxr_triage": sum(r["app"] == "cxr_triage" for r in pending),
                             "mr_segmentation": sum(r["app"] == "mr_segmentation" for r in pending)}
    # The study's own modality; the node's SR and heat-map images written back into the study don't count.
    assert counts["app_modalities"] == {"cxr_triage": ["CR"], "mr_segmentation": ["MR"]}
    assert counts["modality"] == {"CR": counts["app"]["cxr_triage"], "MR": counts["app"]["mr_segmentation"]}
    assert counts["status"]["preliminary"] == len(pending)
    assert everything["total"] == sum(everything["status"][s] for s in ("preliminary", "final", "amended", "cancelled"))
    assert mine["total"] == 1 and mine["priority"] == {"stat": 1, "routine": 0}
    assert bad.status_code == 400 and bad.json()["resourceType"] == "OperationOutcome"


def test_manifest_of_a_radiograph_lists_its_heatmaps_with_the_rendered_url(ui_node: UiNode) -> None:
    with ui_node.http() as http:
        report = http.get(f"/api/reports/{ui_node.real_report}").json()
        manifest = http.get(f"/api/reports/{ui_node.real_report}/overlays").json()
    result = report["result"]
    [image] = manifest["images"]
    inputs = result["inputs"]
    assert (image["study_uid"], image["series_uid"], image["sop_instance_uid"]) == (
        inputs["study_instance_uid"], inputs["series_instance_uid"], inputs["sop_instance_uids"][0])
    assert image["rendered"] == (f"/dicomweb/studies/{image['study_uid']}/series/{image['series_uid']}"
                                 f"/instances/{image['sop_instance_uid']}/rendered")
    assert (image["rows"], image["columns"], image["modality"]) == (1955, 1841, "CR")
    with_maps = {f["name"]: f for f in result["findings"] if f["heatmap"]}
    assert with_maps and {o["name"] for o in image["overlays"]} == set(with_maps)
    for o in image["overlays"]:
        assert o["kind"] == "heatmap"
        assert o["url"] == f"/api/reports/{ui_node.real_report}/overlays/heatmap/{o['name']}.png"
        assert o["probability"] == with_maps[o["name"]]["probability"]
    assert manifest["initial_image"] == 0 and manifest["modalities"] == ["CR"] and manifest["segmentations"] == []
    assert manifest["heatmap_ramp"][0][0] == 0.2 and 0 < manifest["default_opacity"] <= 1


def test_heatmap_png_lies_on_the_rendered_frame_pixel_for_pixel(ui_node: UiNode) -> None:
    with ui_node.http() as http:
        manifest = http.get(f"/api/reports/{ui_node.real_report}/overlays").json()
        [image] = manifest["images"]
        overlay = image["overlays"][0]
        frame = http.get(image["rendered"], params={"viewport": "512,512"}, headers={"Accept": "image/jpeg"})
        small = http.get(overlay["url"], params={"viewport": "512,512"})
        full = http.get(overlay["url"])
        array = http.get(f"/api/jobs/{manifest['job_id']}/arrays/heatmap_{overlay['name']}.npy")
    assert frame.status_code == small.status_code == full.status_code == 200
    assert small.headers["content-type"] == "image/png" and "immutable" in small.headers["cache-control"]
    picture = Image.open(io.BytesIO(small.content))
    assert picture.mode == "RGBA" and picture.size == Image.open(io.BytesIO(frame.content)).size == (482, 512)
    whole = np.asarray(Image.open(io.BytesIO(full.content)))
    assert whole.shape == (1955, 1841, 4)
    assert np.array_equal(whole, overlays.heatmap_rgba(np.load(io.BytesIO(array.content))))


def test_segmentation_manifest_orders_slices_and_starts_on_the_most_labelled(ui_node: UiNode) -> None:
    with ui_node.http() as http:
        report = http.get(f"/api/reports/{ui_node.mr_report}").json()
        manifest = http.get(f"/api/reports/{ui_node.mr_report}/overlays").json()
        seg = report["result"]["segmentations"][0]
        assert [i["sop_instance_uid"] for i in manifest["images"]] == seg["referenced_sop_instance_uids"]
        assert manifest["initial_image"] == 4  # the seeded structures grow slice by slice
        [legend] = manifest["segmentations"]
        assert [(s["number"], s["display"], s["laterality"]) for s in legend["legend"]] == [
            (1, "Hippocampus", "Left"), (2, "Hippocampus", "Right")]
        assert legend["legend"][0]["colour"] == overlays.hex_colour(overlays.segment_colour(1))
        [overlay] = manifest["images"][4]["overlays"]
        assert overlay["url"] == f"/api/reports/{ui_node.mr_report}/overlays/segmentation/0/4.png"
        picture = http.get(overlay["url"], params={"viewport": "128,128"})
        missing = http.get(f"/api/reports/{ui_node.mr_report}/overlays/segmentation/0/5.png")
    rgba = np.asarray(Image.open(io.BytesIO(picture.content)))
    assert rgba.shape == (128, 128, 4)
    colours = {tuple(p[:3]) for p in rgba.reshape(-1, 4) if p[3] == 255}
    assert colours == {overlays.segment_colour(1), overlays.segment_colour(2)}
    assert missing.status_code == 404


def test_viewer_endpoints_need_a_token_that_reads_reports(ui_node: UiNode) -> None:
    paths = ["/api/worklist/counts", f"/api/reports/{ui_node.real_report}/overlays",
             f"/api/reports/{ui_node.real_report}/overlays/heatmap/effusion.png"]
    labs_only = {"Authorization": f"Bearer {ui_node.srv.token('user/Observation.rs')}"}
    for path in paths:
        anonymous = httpx.get(ui_node.base + path)
        wrong_scope = httpx.get(ui_node.base + path, headers=labs_only)
        assert anonymous.status_code == 401, path
        assert wrong_scope.status_code == 403 and wrong_scope.json()["resourceType"] == "OperationOutcome", path
    with ui_node.http() as http:
        assert http.get(f"/api/reports/{ui_node.real_report}/overlays/heatmap/nothing.png").status_code == 404
        assert http.get("/api/reports/999999/overlays").status_code == 404
        for bad in ("0,10", "10,99999", "10"):
            assert http.get(f"/api/reports/{ui_node.real_report}/overlays/heatmap/effusion.png",
                            params={"viewport": bad}).status_code == 400, bad


def test_the_page_and_its_files_are_served_without_a_token(ui_node: UiNode) -> None:
    page = httpx.get(ui_node.base + "/")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert "script-src 'self'" in page.headers["content-security-policy"]
    assert page.headers["cache-control"] == "no-cache" and page.headers["referrer-policy"] == "no-referrer"
    again = httpx.get(ui_node.base + "/", headers={"If-None-Match": page.headers["etag"]})
    assert again.status_code == 304
    build = page.headers["etag"].strip('"')
    assert f'src="/ui/{build}/js/main.js"' in page.text
    script = httpx.get(f"{ui_node.base}/ui/{build}/js/main.js")
    assert script.status_code == 200 and "javascript" in script.headers["content-type"]
    assert "immutable" in script.headers["cache-control"]
    vendor = httpx.get(f"{ui_node.base}/ui/{build}/vendor/fhir-client.min.js")
    assert vendor.status_code == 200 and len(vendor.content) > 100_000
    assert httpx.get(f"{ui_node.base}/ui/js/main.js").headers["cache-control"] == "no-cache"
    assert httpx.get(f"{ui_node.base}/ui/{build}/../../pyproject.toml").status_code == 404
    assert httpx.get(ui_node.base + "/launch.html").status_code == 200
