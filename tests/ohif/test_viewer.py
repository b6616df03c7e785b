"""OHIF over the node's DICOMweb, in headless Chromium (issue 6): a radiologist signs in at the node's own login
page (OpenID Connect code + PKCE; no token handed to the browser any other way), OHIF's study list lists the
study, the worklist's link opens it and the MR image is drawn, the node's SEG loads onto it with its segments in
the segmentation panel, and the node's TID 1500 SR opens with its measurement groups read.

Real peers: ``interop serve`` with the installed OHIF viewer (``@ohif/app``'s ``dist/``, fetched by tests/run.sh),
Chromium (``/usr/bin/chromium``) driven by playwright-core from node. The study is the Colin27 MR series with a
SEG and an SR made by the node's write-back code (tests/ohif/study.py). Screenshots:
``tests/_artifacts/screenshots/ohif-*.png``."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

from tests.conftest import REPO, ServerProc
from tests.ohif.study import SHOWN, TEMPLATES, make_study, stow

NPM = REPO / "tests" / "_artifacts" / "npm"
OHIF_DIST = NPM / "_ohif_app" / "package" / "dist"
PLAYWRIGHT = NPM / "playwright-core" / "package"
SHOTS = REPO / "tests" / "_artifacts" / "screenshots"
CHROMIUM = Path("/usr/bin/chromium")
USER, PASSWORD = "rad", "correct-horse-battery-staple"
#: Access tokens live this long here, so that OHIF renews its token (refresh token, ``online_access``) while
#: the test runs: oidc-client-ts renews 60 s before expiry.
TOKEN_TTL = 70


def _require_peers() -> str:
    node = shutil.which("node")
    missing = [what for what, ok in (
        ("Chromium at /usr/bin/chromium (tests/run.sh: apt-get install chromium)", CHROMIUM.exists()),
        ("node (tests/run.sh: apt-get install npm)", node is not None),
        (f"playwright-core in {PLAYWRIGHT} (tests/run.sh fetches it)", (PLAYWRIGHT / "index.mjs").is_file()),
        (f"the OHIF viewer in {OHIF_DIST} (tests/run.sh fetches @ohif/app)", (OHIF_DIST / "index.html").is_file()),
        (f"mricron-data's atlas in {TEMPLATES} (tests/run.sh: apt-get install mricron-data)",
         (TEMPLATES / "aal.nii.gz").is_file()),
    ) if not ok]
    if missing:
        pytest.skip("missing: " + "; ".join(missing))
    assert node is not None
    return node


def _bright_share(png: Path) -> tuple[float, float]:
    """(standard deviation of the grey levels, share of pixels brighter than 60) of a screenshot."""
    grey = np.asarray(Image.open(png).convert("L"), dtype=np.float32)
    return float(grey.std()), float((grey > 60).mean())


def _coloured_pixels(png: Path) -> int:
    """Pixels of strong colour (segment overlays) inside the image area: the MR itself is grey, and OHIF's own
    coloured text and icons sit along the viewport's edges, which are left out."""
    rgb = np.asarray(Image.open(png).convert("RGB"), dtype=np.int16)
    h, w = rgb.shape[:2]
    rgb = rgb[h // 8: h - h // 8, w // 8: w - w // 8]
    spread = rgb.max(axis=2) - rgb.min(axis=2)
    return int((spread > 60).sum())


def test_ohif_signs_in_lists_renders_and_loads_our_seg_and_sr(server_factory: Any, tmp_path: Path) -> None:
    node = _require_peers()
    started = time.monotonic()
    study = make_study(tmp_path / "study")
    srv: ServerProc = server_factory({"INTEROP_OHIF__DIST_DIR": str(OHIF_DIST),
                                      "INTEROP_AUTH__TOKEN_TTL_SECONDS": str(TOKEN_TTL)})
    subprocess.run([sys.executable, "-m", "interop", "user", "add", USER, "--role", "radiologist",
                    "--password-stdin"], input=PASSWORD + "\n", env=srv.env, text=True, check=True,
                   capture_output=True)
    with srv.client() as http:
        stow(http, study.files)
    prepared = time.monotonic() - started

    SHOTS.mkdir(parents=True, exist_ok=True)
    for old in SHOTS.glob("ohif-*.png"):
        old.unlink()
    config = tmp_path / "viewer.json"
    config.write_text(json.dumps({
        "playwright": str(PLAYWRIGHT), "base": srv.base_url, "study": study.study_uid, "user": USER,
        "password": PASSWORD, "shots": str(SHOTS), "viewport": {"width": 1400, "height": 900},
        "accession": "OHIF1", "segmentLabel": "Left hippocampus",
    }))
    out = subprocess.run([node, str(Path(__file__).with_name("viewer_check.mjs")), str(config)],
                         capture_output=True, text=True, timeout=240, env={**os.environ, "HOME": str(tmp_path)})
    lines = [ln for ln in out.stdout.splitlines() if ln.startswith("RESULT ")]
    assert lines, f"no result from the browser (rc {out.returncode}):\n{out.stderr[-3000:]}\n{srv.log()}"
    res = json.loads(lines[-1][len("RESULT "):])
    context = json.dumps({k: res.get(k) for k in ("error", "pageErrors", "httpErrors", "console")}, indent=1)
    assert res["ok"], f"{context}\nserver log:\n{srv.log()}"
    print(f"\nbrowser: {context}\ntoken grants: {res['tokenGrants']}\nSR notice: {res['steps']['sr'].get('notice')}")
    steps = res["steps"]

    # Signed in at the node's login page, asked for imaging read/search only; tokens by code, then refresh.
    assert "interop-ohif" in steps["login"]["page"] and "user/ImagingStudy.rs" in steps["login"]["page"]
    assert res["tokenGrants"][0] == "authorization_code"
    assert "refresh_token" in res["tokenGrants"], res["tokenGrants"]  # renewed before the 70 s token expired
    assert res["dicomweb"]["requests"] > 50 and res["dicomweb"]["withoutBearer"] == []
    assert [e for e in res["httpErrors"] if "/dicomweb" in e or "/ohif" in e] == [], res["httpErrors"]
    assert res["pageErrors"] == [], res["pageErrors"]

    # The study list: patient, accession, the three modalities, 47 instances.
    row = steps["studyList"]["row"] or steps["studyList"]["text"]
    assert "Viewer, Test" in row and "OHIF1" in row and "MR\\SEG\\SR" in row and "47" in row, row

    # The image: the middle slice of 45, decoded from our frames (12-bit MR), and drawn (not a blank canvas).
    state = steps["viewer"]["state"]
    assert state["count"] == len(study.images) and state["index"] == len(study.images) // 2, state
    assert state["dimensions"][:2] == [181, 217] and 500 < state["max"] <= 4095, state
    assert "/frames/1" in state["imageId"] and study.image_series_uid in state["imageId"]
    std, bright = _bright_share(Path(steps["viewer"]["viewport"]))
    assert std > 25 and bright > 0.15, (std, bright)
    series = steps["viewer"]["series"]
    assert "SEG" in series and "SR" in series and "DEMO not for clinical use" in series

    # The SEG: seven segments, named as in our SEG, listed in the panel and drawn in colour over the MR.
    (seg,) = steps["seg"]["segmentations"]
    assert sorted(seg["segments"]) == sorted(s.name for s in _shown()), seg
    panel = steps["seg"]["panel"]
    assert all(name in panel for name in seg["segments"])
    assert _coloured_pixels(Path(steps["seg"]["viewport"])) > 300
    assert _coloured_pixels(Path(steps["viewer"]["viewport"])) < 50  # before the SEG: grey only

    # The SR: OHIF read our TID 1500 report (its measurement groups by tracking identifier, the image library).
    (sr,) = steps["sr"]["sr"]
    assert sr["loaded"] and sr["imagingMeasurementReport"] and "DEMO not for clinical use" in sr["description"]
    assert sr["referencedImages"] == len(study.images)
    assert sorted(m["tracking"] for m in sr["measurements"]) == sorted(
        f"mr_segmentation: {s.name} volume" for s in _shown())
    # ... without an error (OHIF 3.13's SR loader throws on groups without image coordinates unless our
    # app-config.js guards it, see interop.ohif.appconfig) ...
    assert steps["sr"]["notice"] is None, steps["sr"]["notice"]
    # ... but what OHIF 3.13 cannot show: its measurement panel lists only measurements with image coordinates
    # (SCOORD/SCOORD3D), and ours (volumes) have none, so the panel stays empty. Asserted, so a change on either
    # side shows here.
    assert all(m["coords"] == 0 for m in sr["measurements"])
    assert "No tracked measurements" in steps["sr"]["panel"]

    print(f"\nOHIF: prepared {prepared:.1f} s; browser {res['totalMs'] / 1000:.1f} s; steps "
          + ", ".join(f"{k} {v['ms'] / 1000:.1f} s" for k, v in steps.items()))


def _shown() -> list[Any]:
    from apps.mr_segmentation.train import STRUCTURES

    return [s for s in STRUCTURES if s.number in SHOWN]
