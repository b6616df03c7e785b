"""Install the prebuilt OHIF viewer for ``/ohif/``: ``python -m interop.ohif.fetch [--dest DIR]``.

Runs ``npm pack @ohif/app@<version>`` (the npm package carries OHIF's production build in ``dist/``, ~200 MB
unpacked) and unpacks that ``dist/`` into ``DIR`` (default: ``ohif.dist_dir``, else ``<data_dir>/ohif/dist``),
replacing what was there only once the new copy is complete. A site without access to a registry copies the
package file over and passes ``--tarball ohif-app-<version>.tgz``. This is a setup step: the node never
fetches anything at run time, and serves whatever this installed (:mod:`interop.ohif.router`).
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tarfile
import tempfile
from collections.abc import Sequence
from pathlib import Path

#: The OHIF release line the generated app-config.js is written for.
DEFAULT_VERSION = "3.13.x"
PACKAGE = "@ohif/app"


class FetchError(Exception):
    """The package could not be fetched or is not an OHIF build."""


def npm_pack(spec: str, into: Path, npm: str | None = None) -> Path:
    """``npm pack <spec>`` in the empty folder ``into``; the package file it wrote."""
    exe = npm or shutil.which("npm")
    if exe is None:
        raise FetchError("npm is not installed (apt-get install npm), or pass --tarball with the package file")
    out = subprocess.run([exe, "pack", "--silent", spec], cwd=into, capture_output=True, text=True)
    if out.returncode != 0:
        raise FetchError(f"npm pack {spec} failed: {out.stderr.strip() or out.stdout.strip()}")
    found = sorted(into.glob("*.tgz"))
    if len(found) != 1:
        raise FetchError(f"npm pack {spec} wrote {len(found)} package files")
    return found[0]


def unpack_dist(tarball: Path, dest: Path) -> str:
    """Unpack ``package/dist/`` of an ``@ohif/app`` package file into ``dest`` (replacing it); its version."""
    dest = dest.absolute()
    dest.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=".ohif-", dir=dest.parent) as tmp:
        work = Path(tmp)
        with tarfile.open(tarball, "r:gz") as tar:
            members = [m for m in tar.getmembers() if m.name in ("package/package.json",)
                       or m.name.startswith("package/dist/")]
            tar.extractall(work, members=members, filter="data")
        meta_path = work / "package" / "package.json"
        meta = json.loads(meta_path.read_text()) if meta_path.is_file() else {}
        if meta.get("name") != PACKAGE:
            raise FetchError(f"{tarball} is not the {PACKAGE} package (name: {meta.get('name')!r})")
        dist = work / "package" / "dist"
        if not (dist / "index.html").is_file():
            raise FetchError(f"{tarball} carries no prebuilt dist/index.html")
        old = work / "old"
        if dest.exists():
            dest.rename(old)
        try:
            dist.rename(dest)
        except OSError:
            if old.exists():
                old.rename(dest)
            raise
    return str(meta.get("version", "?"))


def fetch(dest: Path, version: str = DEFAULT_VERSION, tarball: Path | None = None) -> str:
    """Install ``@ohif/app@version``'s ``dist/`` (from ``tarball`` if given) into ``dest``; its version."""
    if tarball is not None:
        return unpack_dist(tarball, dest)
    with tempfile.TemporaryDirectory(prefix="interop-ohif-") as tmp:
        return unpack_dist(npm_pack(f"{PACKAGE}@{version}", Path(tmp)), dest)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m interop.ohif.fetch", description=__doc__.split("\n")[0])
    parser.add_argument("--dest", type=Path, help="where to put dist/ (default: ohif.dist_dir, else "
                                                  "<data_dir>/ohif/dist)")
    parser.add_argument("--version", default=DEFAULT_VERSION, help=f"npm version range (default {DEFAULT_VERSION})")
    parser.add_argument("--tarball", type=Path, help="install from this package file instead of npm")
    args = parser.parse_args(argv)
    dest = args.dest
    if dest is None:
        from interop.config import Settings
        from interop.ohif.router import dist_dir

        dest = dist_dir(Settings())
    try:
        version = fetch(dest, args.version, args.tarball)
    except FetchError as exc:
        print(f"interop.ohif.fetch: {exc}", file=sys.stderr)
        return 1
    files = sum(1 for p in dest.rglob("*") if p.is_file())
    print(f"installed {PACKAGE} {version} into {dest} ({files} files); served at /ohif/")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
