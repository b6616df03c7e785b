"""``/ohif/`` without a browser: the prebuilt viewer's files moved under ``/ohif/``, client routes, media types,
the generated ``app-config.js`` (evaluated by node when it is installed), and the setup step that installs the
viewer from ``@ohif/app``'s package file. A small stand-in for OHIF's ``dist/`` keeps these fast; the browser
test (test_viewer.py) runs the real one."""

from __future__ import annotations

import io
import json
import shutil
import subprocess
import tarfile
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from interop.api.app import create_app
from interop.config import Settings
from interop.node import Node
from interop.ohif import viewer_url
from interop.ohif.appconfig import ViewerConfig, app_config_js
from interop.ohif.fetch import FetchError, unpack_dist
from interop.ohif.site import OhifSite, relocate

INDEX = (b'<!doctype html><html><head><link rel="manifest" href="/manifest.json">'
         b'<meta name="msapplication-TileImage" content="/assets/mstile-144x144.png">'
         b'<script>window.PUBLIC_URL="/"</script><script src="/app-config.js"></script>'
         b'<script defer src="/app.bundle.0f6159c501addfe9.js"></script><link href="/app.bundle.css" rel="stylesheet">'
         b'<a href="//cdn.example/x.js"></a></head><body><div id="root"></div></body></html>')
BUNDLE = b'(() => {\n__webpack_require__.p = "/";\n})();\nconsole.log("ohif");\n'
CSS = b"@font-face{src:url(/a34f9d1faa5f3315.woff2) format('woff2')}body{background:url(data:image/png;base64,AA)}"
WASM = b"\x00asm\x01\x00\x00\x00"


def fake_dist(root: Path) -> Path:
    """The files of OHIF's dist/ that matter to serving it: index.html, a bundle with webpack's runtime, CSS with
    a root-relative font, a codec, the manifest, an unchanged chunk."""
    root.mkdir(parents=True, exist_ok=True)
    (root / "index.html").write_bytes(INDEX)
    (root / "app.bundle.0f6159c501addfe9.js").write_bytes(BUNDLE)
    (root / "100.bundle.cb02411ce321d4e4.js").write_bytes(b"chunk();")
    (root / "app.bundle.css").write_bytes(CSS)
    (root / "0ddf166f7a343eda.wasm").write_bytes(WASM)
    (root / "manifest.json").write_bytes(b'{"icons": [{"src": "/assets/android-chrome-36x36.png"}]}')
    (root / "app-config.js").write_bytes(b"window.config = {name: 'OHIF default, not ours'};")
    return root


@pytest.fixture
def http(tmp_path: Path) -> TestClient:
    dist = fake_dist(tmp_path / "dist")
    node = Node(Settings(data_dir=tmp_path / "node", ohif={"dist_dir": dist}))
    return TestClient(create_app(node, manage_node=False))


def test_relocate_moves_root_paths_under_base_and_leaves_the_rest() -> None:
    html = relocate("index.html", INDEX, "/ohif/")
    assert b'src="/ohif/app.bundle.0f6159c501addfe9.js"' in html and b'href="/ohif/manifest.json"' in html
    assert b'content="/ohif/assets/mstile-144x144.png"' in html and b'window.PUBLIC_URL="/ohif/"' in html
    assert b'href="//cdn.example/x.js"' in html  # protocol-relative URLs are not paths of ours
    assert relocate("app.js", BUNDLE, "/ohif/").count(b'__webpack_require__.p = "/ohif/";') == 1
    assert b"url(/ohif/a34f9d1faa5f3315.woff2)" in relocate("app.bundle.css", CSS, "/ohif/")
    chunk = b"chunk();"
    assert relocate("100.bundle.js", chunk, "/ohif/") is chunk  # nothing to move: the same object back
    assert relocate("index.html", INDEX, "/") is INDEX


def test_viewer_files_are_public_with_media_types_and_caching(http: TestClient) -> None:
    index = http.get("/ohif/")
    assert index.status_code == 200 and index.headers["content-type"].startswith("text/html")
    assert b'src="/ohif/app.bundle.0f6159c501addfe9.js"' in index.content
    assert index.headers["cache-control"] == "no-cache"
    again = http.get("/ohif/", headers={"If-None-Match": index.headers["etag"]})
    assert again.status_code == 304 and not again.content
    js = http.get("/ohif/app.bundle.0f6159c501addfe9.js")
    assert js.headers["content-type"].startswith("text/javascript")
    assert b'__webpack_require__.p = "/ohif/"' in js.content
    assert "immutable" in js.headers["cache-control"]  # content-hashed name
    wasm = http.get("/ohif/0ddf166f7a343eda.wasm")
    assert wasm.headers["content-type"] == "application/wasm" and wasm.content == WASM
    assert http.get("/ohif/app.bundle.css").headers["content-type"].startswith("text/css")
    assert b'"/ohif/assets/' in http.get("/ohif/manifest.json").content
    assert http.head("/ohif/100.bundle.cb02411ce321d4e4.js").status_code == 200
    # The viewer's files carry no patient data and need no token; the data behind them still does.
    assert http.get("/dicomweb/studies").status_code == 401


def test_client_routes_get_index_and_missing_assets_404(http: TestClient) -> None:
    link = viewer_url("1.2.840.113619.2.55.3.604688119")
    assert link == "/ohif/viewer?StudyInstanceUIDs=1.2.840.113619.2.55.3.604688119"
    for path in (link, "/ohif/callback?code=abc&state=xyz", "/ohif/viewer/dicomweb", "/ohif/viewer/1.2.3.4"):
        r = http.get(path)
        assert r.status_code == 200 and b'window.PUBLIC_URL="/ohif/"' in r.content, path
    assert http.get("/ohif", follow_redirects=False).headers["location"] == "/ohif/"
    assert http.get("/ohif?x=1", follow_redirects=False).headers["location"] == "/ohif/?x=1"
    for path in ("/ohif/9999.bundle.deadbeefdeadbeef.js", "/ohif/missing.wasm", "/ohif/x.css"):
        assert http.get(path).status_code == 404, path
    for path in ("/ohif/../../etc/passwd", "/ohif/%2e%2e/%2e%2e/etc/passwd", "/ohif/..%2fnode%2fsecret.key"):
        assert b"root:" not in http.get(path).content


def test_site_never_serves_a_file_outside_dist(tmp_path: Path) -> None:
    dist = fake_dist(tmp_path / "dist")
    (tmp_path / "secret.key").write_bytes(b"s3cret")
    site = OhifSite(dist, "/ohif/")
    assert site.file("../secret.key") is None and site.file("/etc/passwd") is None
    assert site.file("a/../../secret.key") is None and site.file("index.html") == (dist / "index.html").resolve()
    asset = site.asset("../secret.key")
    assert asset is not None and asset.path.name == "index.html"  # a "client route", never the file


def test_app_config_is_ours_not_the_dist_one(http: TestClient) -> None:
    r = http.get("/ohif/app-config.js")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/javascript")
    assert b"not ours" not in r.content and b'"routerBasename": "/ohif"' in r.content


def _evaluate(js: str, origin: str) -> dict:  # type: ignore[type-arg]
    node = shutil.which("node")
    if node is None:
        pytest.skip("node is not installed (tests/run.sh: apt-get install npm)")
    script = f"global.window = {{location: {{origin: {json.dumps(origin)}}}}};\n{js}\n" \
             "process.stdout.write(JSON.stringify(window.config));"
    out = subprocess.run([node, "-e", script], capture_output=True, text=True, check=True)
    return json.loads(out.stdout)  # type: ignore[no-any-return]


def test_app_config_points_ohif_at_our_dicomweb_and_sign_in() -> None:
    cfg = ViewerConfig(router_basename="/ohif", public_url=None, client_id="interop-ohif",
                       scope="openid profile user/ImagingStudy.rs", authority=None)
    conf = _evaluate(app_config_js(cfg), "https://pacs.example:8443")
    assert conf["routerBasename"] == "/ohif" and conf["defaultDataSourceName"] == "interop"
    (source,) = conf["dataSources"]
    c = source["configuration"]
    assert source["namespace"] == "@ohif/extension-default.dataSourcesModule.dicomweb"
    assert c["qidoRoot"] == c["wadoRoot"] == c["wadoUriRoot"] == "https://pacs.example:8443/dicomweb"
    assert c["staticWado"] is False and c["qidoSupportsIncludeField"] is True and c["imageRendering"] == "wadors"
    assert c["loadMultiframeAsPart10"] is False  # SEG frames one by one (see interop.ohif.appconfig)
    (oidc,) = conf["oidc"]
    assert oidc["authority"] == "https://pacs.example:8443" and oidc["client_id"] == "interop-ohif"
    assert oidc["response_type"] == "code" and oidc["redirect_uri"] == "/callback"
    assert oidc["extraQueryParams"] == {"aud": "https://pacs.example:8443/fhir"}
    behind_proxy = _evaluate(app_config_js(ViewerConfig("/interop/ohif", "https://h.example/interop", "v", "openid",
                                                        authority="https://idp.example/realms/x/",
                                                        builtin_server=False)), "https://h.example")
    assert behind_proxy["dataSources"][0]["configuration"]["qidoRoot"] == "https://h.example/interop/dicomweb"
    assert behind_proxy["oidc"][0]["authority"] == "https://idp.example/realms/x"
    assert "extraQueryParams" not in behind_proxy["oidc"][0]


def test_not_installed_says_how_to_install(tmp_path: Path) -> None:
    node = Node(Settings(data_dir=tmp_path / "node"))
    r = TestClient(create_app(node, manage_node=False)).get("/ohif/viewer")
    assert r.status_code == 404 and b"python -m interop.ohif.fetch" in r.content
    assert str(tmp_path / "node" / "ohif" / "dist").encode() in r.content


def test_no_sign_in_no_viewer(tmp_path: Path) -> None:
    dist = fake_dist(tmp_path / "dist")
    off = Settings(data_dir=tmp_path / "node", ohif={"dist_dir": dist}, auth={"server": {"enabled": False}})
    r = TestClient(create_app(Node(off), manage_node=False)).get("/ohif/")
    assert r.status_code == 503 and b"ohif.authority" in r.content


def _package(path: Path, name: str = "@ohif/app", files: dict[str, bytes] | None = None) -> Path:
    files = files if files is not None else {"package/dist/index.html": INDEX, "package/dist/a/b.js": b"x"}
    with tarfile.open(path, "w:gz") as tar:
        for member, data in {"package/package.json": json.dumps({"name": name, "version": "3.13.2"}).encode(),
                             "package/README.md": b"readme", **files}.items():
            info = tarfile.TarInfo(member)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return path


def test_fetch_unpacks_dist_and_replaces_an_older_one(tmp_path: Path) -> None:
    dest = tmp_path / "data" / "ohif" / "dist"
    dest.mkdir(parents=True)
    (dest / "stale.js").write_bytes(b"old")
    assert unpack_dist(_package(tmp_path / "ohif-app-3.13.2.tgz"), dest) == "3.13.2"
    assert (dest / "index.html").read_bytes() == INDEX and (dest / "a" / "b.js").is_file()
    assert not (dest / "stale.js").exists() and not (dest.parent / "README.md").exists()
    assert sorted(p.name for p in dest.parent.iterdir()) == ["dist"]  # no work folders left behind


def test_fetch_refuses_other_packages_and_keeps_what_was_installed(tmp_path: Path) -> None:
    dest = fake_dist(tmp_path / "dist")
    with pytest.raises(FetchError, match="not the @ohif/app package"):
        unpack_dist(_package(tmp_path / "evil.tgz", name="ohif-app-lookalike"), dest)
    with pytest.raises(FetchError, match="no prebuilt dist"):
        unpack_dist(_package(tmp_path / "src.tgz", files={"package/src/index.js": b"x"}), dest)
    assert (dest / "index.html").read_bytes() == INDEX
