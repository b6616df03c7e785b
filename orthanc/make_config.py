"""Write a variant of ``orthanc/orthanc.json`` with other ports, storage, stable age or access rules.

Orthanc substitutes ``${VAR:-default}`` only inside JSON strings, so string settings in ``orthanc.json``
(storage folder, our node's host/port/AE title, Orthanc's AE title, the DICOMweb ``Host``) are overridable
from the environment, but integers and booleans (``HttpPort``, ``DicomPort``, ``StableAge``,
``RemoteAccessAllowed``) are not. This script writes a copy with those changed, for tests, benchmarks and
containers. Paths it writes are absolute, so the copy can live anywhere.

    python orthanc/make_config.py --out /tmp/o/orthanc.json --http-port 18042 --dicom-port 14242 \
        --storage /tmp/o/db --stable-age 2 --interop-port 11113

    # container: listen for remote clients, with a user
    python orthanc/make_config.py --out orthanc.docker.json --storage /var/lib/orthanc/db \
        --remote-access --user orthanc:change-me --interop-host interop --lua /etc/orthanc/autoroute.lua

Usable as a library too: ``render(**overrides) -> dict``.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
BASE = HERE / "orthanc.json"


def render(
    *,
    http_port: int | None = None,
    dicom_port: int | None = None,
    storage: str | Path | None = None,
    stable_age: int | None = None,
    aet: str | None = None,
    interop_host: str | None = None,
    interop_port: int | None = None,
    interop_aet: str | None = None,
    remote_access: bool = False,
    users: dict[str, str] | None = None,
    lua: str | Path | None = None,
    dicomweb_plugin: bool = True,
    autoroute: bool = True,
) -> dict[str, Any]:
    """The Orthanc configuration of ``orthanc.json`` with the given settings replaced."""
    cfg: dict[str, Any] = json.loads(BASE.read_text())
    if http_port is not None:
        cfg["HttpPort"] = http_port
        cfg["DicomWeb"]["Host"] = f"127.0.0.1:{http_port}"
    if dicom_port is not None:
        cfg["DicomPort"] = dicom_port
    if storage is not None:
        cfg["StorageDirectory"] = cfg["IndexDirectory"] = str(Path(storage).resolve())
    if stable_age is not None:
        cfg["StableAge"] = stable_age
    if aet is not None:
        cfg["DicomAet"] = aet
    node = cfg["DicomModalities"]["interop"]
    if interop_host is not None:
        node["Host"] = interop_host
    if interop_port is not None:
        node["Port"] = interop_port
    if interop_aet is not None:
        node["AET"] = interop_aet
        cfg["InteropAutoRoute"]["OwnAets"] = [interop_aet]
    if remote_access:
        cfg["RemoteAccessAllowed"] = True
        cfg["AuthenticationEnabled"] = True
    if users:
        cfg["RegisteredUsers"] = dict(users)
        cfg["AuthenticationEnabled"] = True
    # A copy written elsewhere must still find the Lua script next to orthanc.json.
    cfg["LuaScripts"] = [str(Path(lua).resolve()) if lua else str(HERE / "autoroute.lua")]
    if not autoroute:
        cfg["LuaScripts"] = []
    if not dicomweb_plugin:
        cfg["Plugins"] = []
        cfg.pop("DicomWeb", None)
    return cfg


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", required=True, type=Path, help="where to write the configuration")
    p.add_argument("--http-port", type=int)
    p.add_argument("--dicom-port", type=int)
    p.add_argument("--storage", help="storage + SQLite index folder")
    p.add_argument("--stable-age", type=int, help="seconds without a new instance before a study is stable")
    p.add_argument("--aet", help="Orthanc's own AE title")
    p.add_argument("--interop-host")
    p.add_argument("--interop-port", type=int)
    p.add_argument("--interop-aet")
    p.add_argument("--remote-access", action="store_true", help="allow non-loopback HTTP clients (turns auth on)")
    p.add_argument("--user", action="append", default=[], metavar="NAME:PASSWORD", help="HTTP basic-auth user")
    p.add_argument("--lua", help="path of autoroute.lua as Orthanc will see it")
    p.add_argument("--no-dicomweb", action="store_true", help="do not load the DICOMweb plugin")
    p.add_argument("--no-autoroute", action="store_true", help="do not load autoroute.lua")
    a = p.parse_args(argv)
    users = dict(u.split(":", 1) for u in a.user)
    cfg = render(
        http_port=a.http_port,
        dicom_port=a.dicom_port,
        storage=a.storage,
        stable_age=a.stable_age,
        aet=a.aet,
        interop_host=a.interop_host,
        interop_port=a.interop_port,
        interop_aet=a.interop_aet,
        remote_access=a.remote_access,
        users=users or None,
        lua=a.lua,
        dicomweb_plugin=not a.no_dicomweb,
        autoroute=not a.no_autoroute,
    )
    a.out.parent.mkdir(parents=True, exist_ok=True)
    a.out.write_text(json.dumps(cfg, indent=2) + "\n")


if __name__ == "__main__":
    main()
