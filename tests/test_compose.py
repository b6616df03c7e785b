"""``docker-compose.yml`` and ``docker-compose.gpu.yml``, checked without Docker: the compose CLI's own ``config``
(Compose v2's ``docker compose`` where it is installed, else Debian's ``docker-compose`` 1.29, which
``tests/run.sh`` installs) parses, validates and interpolates the files with ``.env.example``; then the
services the design names are there, wired with health checks and start conditions, and the environment of the
server and the workers is what :class:`interop.config.Settings` accepts (an ``INTEROP_*`` name it does not know,
or a value it refuses, fails here as it would fail the container at start-up).

The topology itself runs as processes in ``tests/test_topology.py``."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from interop.config import Settings
from tests.peers import make_config_module

REPO = Path(__file__).resolve().parents[1]
BASE = REPO / "docker-compose.yml"
GPU = REPO / "docker-compose.gpu.yml"
ENV_EXAMPLE = REPO / ".env.example"
NODE_SERVICES = ("interop", "worker-1", "worker-2")
#: Services of the design's stack (DESIGN.md, issue 7), and the one-shots that prepare the object store and the
#: viewer's files.
SERVICES = {"interop", "worker-1", "worker-2", "postgres", "minio", "minio-init", "redis", "orthanc", "ohif"}
ONE_SHOTS = {"minio-init", "ohif"}


def compose_cli() -> list[str]:
    """``docker compose`` (v2 plugin) if it answers, else ``docker-compose`` (v1); skip when neither is here."""
    docker = shutil.which("docker")
    if docker and subprocess.run([docker, "compose", "version"], capture_output=True).returncode == 0:
        return [docker, "compose"]
    legacy = shutil.which("docker-compose")
    if legacy:
        return [legacy]
    pytest.skip("no compose CLI: neither `docker compose` (v2 plugin) nor `docker-compose` "
                "(tests/run.sh: apt-get install docker-compose)")


def compose_config(*files: Path, env_file: Path | None = ENV_EXAMPLE) -> subprocess.CompletedProcess[str]:
    """``<compose> [--env-file F] -f A [-f B] config`` in a clean environment (nothing from this shell)."""
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": os.environ.get("HOME", "/tmp")}
    args = [*compose_cli(), "--project-directory", str(REPO)]
    if env_file is not None:
        args += ["--env-file", str(env_file)]
    for f in files:
        args += ["-f", str(f)]
    return subprocess.run([*args, "config"], cwd=REPO, env=env, capture_output=True, text=True, timeout=120)


def resolved(*files: Path) -> dict[str, Any]:
    out = compose_config(*files)
    assert out.returncode == 0, out.stderr
    config: dict[str, Any] = yaml.safe_load(out.stdout)
    return config


@pytest.fixture(scope="module")
def stack() -> dict[str, Any]:
    return resolved(BASE)


@pytest.fixture(scope="module")
def gpu_stack() -> dict[str, Any]:
    return resolved(BASE, GPU)


def environment(service: dict[str, Any]) -> dict[str, str]:
    env = service.get("environment") or {}
    if isinstance(env, list):  # KEY=VALUE items
        env = dict(item.split("=", 1) for item in env)
    return {k: "" if v is None else str(v) for k, v in env.items()}


def image_env() -> dict[str, str]:
    """``INTEROP_*`` variables the node's image sets (Dockerfile ``ENV``): the containers see them too."""
    found: dict[str, str] = {}
    for line in (REPO / "Dockerfile").read_text().splitlines():
        m = re.match(r"^ENV\s+(INTEROP_\w+)=(\S+)\s*$", line)
        if m:
            found[m.group(1)] = m.group(2)
    return found


def settings_from(env: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> Settings:
    """``Settings()`` as the container would build it: its environment only (none of this shell's INTEROP_*)."""
    for key in list(os.environ):
        if key.upper().startswith("INTEROP_"):
            monkeypatch.delenv(key)
    for key, value in {**image_env(), **env}.items():
        monkeypatch.setenv(key, value)
    return Settings()


def node_env(service: dict[str, Any]) -> dict[str, str]:
    """The service's ``INTEROP_*`` environment (the object-store names included: Settings checks them)."""
    return {k: v for k, v in environment(service).items() if k.startswith("INTEROP_")}


def ports(service: dict[str, Any]) -> set[int]:
    """Published container ports (v1 and v2 write them differently)."""
    out: set[int] = set()
    for p in service.get("ports") or []:
        if isinstance(p, dict):
            out.add(int(p["target"]))
        else:
            out.add(int(str(p).split(":")[-1].split("/")[0]))
    return out


# -- the file parses and names the stack ------------------------------------------------------------------------


def test_config_parses_with_the_example_env_and_names_every_service(stack: dict[str, Any]) -> None:
    assert set(stack["services"]) == SERVICES
    images = {name: s.get("image", "") for name, s in stack["services"].items()}
    assert images["postgres"].startswith("postgres:15")
    assert images["redis"].startswith("redis:")
    assert images["minio"].startswith("minio/minio:") and images["minio-init"] == images["minio"]
    assert images["ohif"].startswith("ohif/app:")
    # The node and Orthanc are built here (the Dockerfile, orthanc/Dockerfile).
    assert Path(stack["services"]["interop"]["build"]["context"]).resolve() == REPO
    assert Path(stack["services"]["orthanc"]["build"]["context"]).resolve() == REPO / "orthanc"
    assert {"interop-data", "pg-data", "minio-data", "orthanc-db", "ohif-dist"} <= set(stack["volumes"])
    # Each node process has its own data directory; what they share is the database and the object store.
    data = {name: next(str(v) for v in stack["services"][name]["volumes"] if str(v).split(":")[1] == "/data"
                       if isinstance(v, str)) for name in NODE_SERVICES}
    assert len(set(data.values())) == len(NODE_SERVICES), data


def test_server_serves_and_two_workers_run_interop_worker(stack: dict[str, Any]) -> None:
    services = stack["services"]
    assert services["interop"]["command"] == ["interop", "serve"]
    for name in ("worker-1", "worker-2"):
        assert services[name]["command"][:2] == ["interop", "worker"], services[name]["command"]
        assert services[name]["image"] == services["interop"]["image"]
    assert {11112, 8080, 2575} <= ports(services["interop"])
    assert {4242, 8042} <= ports(services["orthanc"])
    for name in ("postgres", "redis", "minio", "worker-1", "worker-2"):
        assert not ports(services[name]) - {9001}, f"{name} publishes {ports(services[name])}"


def test_long_running_services_have_healthchecks_and_start_in_order(stack: dict[str, Any]) -> None:
    services = stack["services"]
    for name in SERVICES - ONE_SHOTS:
        check = services[name].get("healthcheck") or {}
        assert check.get("test") and not check.get("disable"), f"{name} has no health check"

    def conditions(name: str) -> dict[str, str]:
        deps = services[name].get("depends_on") or {}
        assert isinstance(deps, dict), f"{name}: depends_on without conditions"
        return {d: c["condition"] for d, c in deps.items()}

    assert conditions("interop") == {"postgres": "service_healthy", "redis": "service_healthy",
                                     "minio-init": "service_completed_successfully",
                                     "ohif": "service_completed_successfully"}
    for name in ("worker-1", "worker-2"):
        # After the server is healthy: it has migrated the schema.
        assert conditions(name) == {"interop": "service_healthy", "postgres": "service_healthy",
                                    "redis": "service_healthy", "minio-init": "service_completed_successfully"}
    assert conditions("minio-init") == {"minio": "service_healthy"}
    assert services["interop"]["volumes"] and any("/opt/ohif/dist" in str(v) for v in services["interop"]["volumes"])


# -- the node's environment is what Settings accepts ------------------------------------------------------------


@pytest.mark.parametrize("name", NODE_SERVICES)
def test_node_environment_is_accepted_by_settings(stack: dict[str, Any], name: str,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    env = node_env(stack["services"][name])
    s = settings_from(env, monkeypatch)
    assert s.jobs.executor == "celery"
    assert s.jobs.broker_url and s.jobs.broker_url.startswith("redis://") and "@redis:6379/" in s.jobs.broker_url
    assert s.db_url.startswith("postgresql+psycopg://interop:") and s.db_url.endswith("@postgres:5432/interop")
    assert str(s.data_dir) == "/data"
    assert s.ohif.dist_dir is not None and str(s.ohif.dist_dir) == "/opt/ohif/dist"
    [pacs] = s.writeback.destinations
    assert (pacs.kind, pacs.host, pacs.port, pacs.ae_title) == ("dicom", "orthanc", 4242, "ORTHANC")
    # Orthanc's auto-routing recognises our results by the AE title they come from.
    orthanc_env = environment(stack["services"]["orthanc"])
    assert pacs.calling_ae == s.dicom.ae_title == orthanc_env["INTEROP_AET"]
    assert orthanc_env["INTEROP_DICOM_HOST"] == "interop" and int(orthanc_env["INTEROP_DICOM_PORT"]) == s.dicom.port
    # The server and the workers share one configuration.
    assert env == node_env(stack["services"]["interop"])


def test_object_store_settings_are_accepted(stack: dict[str, Any], monkeypatch: pytest.MonkeyPatch) -> None:
    env = {k: v for k, v in environment(stack["services"]["interop"]).items() if k.startswith("INTEROP_")}
    store = {k: v for k, v in env.items() if k.startswith("INTEROP_STORAGE__")}
    assert store["INTEROP_STORAGE__BACKEND"] == "s3"
    assert store["INTEROP_STORAGE__S3__ENDPOINT_URL"] == "http://minio:9000"
    minio_init = environment(stack["services"]["minio-init"])
    # The node uses the bucket and the user that the one-shot creates, not MinIO's root user.
    assert store["INTEROP_STORAGE__S3__BUCKET"] == minio_init["S3_BUCKET"]
    assert store["INTEROP_STORAGE__S3__ACCESS_KEY_ID"] == minio_init["S3_ACCESS_KEY_ID"]
    assert store["INTEROP_STORAGE__S3__ACCESS_KEY_ID"] != minio_init["MINIO_ROOT_USER"]
    settings = settings_from(env, monkeypatch)
    assert settings.storage.backend == "s3" and settings.storage.s3 is not None
    assert settings.storage.s3.endpoint_url == "http://minio:9000"


@pytest.mark.parametrize(("name", "said"), [("INTEROP_JOBS__LEASE_SECOND", "lease_second"),
                                             ("INTEROP_HTTP_PUBLIC_URL", "INTEROP_HTTP_PUBLIC_URL")])
def test_a_misspelt_interop_name_fails_the_check(stack: dict[str, Any], monkeypatch: pytest.MonkeyPatch, name: str,
                                                said: str) -> None:
    """The check above can fail: a misspelt name is refused the way the server refuses it."""
    env = node_env(stack["services"]["interop"])
    env[name] = "30"
    with pytest.raises(ValueError, match=said):
        settings_from(env, monkeypatch)


# -- secrets ---------------------------------------------------------------------------------------------------


def test_secrets_come_from_the_env_file_and_none_is_written_in_the_compose_file() -> None:
    raw = yaml.safe_load(BASE.read_text())
    secret = re.compile(r"PASSWORD|SECRET|ACCESS_KEY|_KEY_ID")

    def walk(node: Any, where: str) -> None:
        if isinstance(node, dict):
            for k, v in node.items():
                if isinstance(v, str) and secret.search(str(k)):
                    assert re.fullmatch(r"\$\{[A-Z0-9_]+:\?[^}]*\}", v), f"{where}.{k} is not a required ${{VAR}}: {v}"
                walk(v, f"{where}.{k}")
        elif isinstance(node, list):
            for i, v in enumerate(node):
                walk(v, f"{where}[{i}]")

    walk(raw, "compose")
    # Credentials inside URLs (database, broker) are required references too.
    urls = [v for k, v in raw["x-node-env"].items() if k.endswith("_URL") and "@" in v]
    assert urls and all(re.search(r":\$\{[A-Z0-9_]+:\?[^}]*\}@", u) for u in urls), urls
    # Without an env file, the stack refuses to be configured and says which variable is missing.
    out = compose_config(BASE, env_file=None)
    assert out.returncode != 0 and "PASSWORD" in out.stderr, out.stderr


def test_env_example_sets_every_required_variable_and_none_is_an_interop_name() -> None:
    text = BASE.read_text() + GPU.read_text()
    required = set(re.findall(r"\$\{([A-Z0-9_]+):\?", text))
    example = dict(line.split("=", 1) for line in ENV_EXAMPLE.read_text().splitlines()
                   if line and not line.startswith("#") and "=" in line)
    assert required and required <= set(example), required - set(example)
    # Variables of the stack are not node settings: `interop` refuses unknown INTEROP_* names in its environment.
    stack_vars = set(re.findall(r"\$\{([A-Za-z0-9_]+)", text)) | set(example)
    assert not [v for v in stack_vars if v.startswith("INTEROP_")], stack_vars


# -- the GPU variant -------------------------------------------------------------------------------------------


def test_gpu_override_reserves_nvidia_gpus_for_the_workers(gpu_stack: dict[str, Any],
                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    services = gpu_stack["services"]
    for name in ("worker-1", "worker-2"):
        devices = services[name]["deploy"]["resources"]["reservations"]["devices"]
        assert len(devices) == 1
        [dev] = devices
        assert dev["driver"] == "nvidia" and "gpu" in dev["capabilities"]
        assert dev.get("count") or dev.get("device_ids")
        assert services[name]["build"]["args"]["TORCH_VARIANT"].startswith("cu")
        s = settings_from(node_env(services[name]), monkeypatch)
        assert s.jobs.gpus == ["0"] and s.jobs.executor == "celery"
        assert services[name]["command"][:2] == ["interop", "worker"]
    gpus = [services[n]["deploy"]["resources"]["reservations"]["devices"][0].get("device_ids") for n in
            ("worker-1", "worker-2")]
    assert gpus[0] != gpus[1], "one GPU each by default"
    # The server and the rest keep their CPU form.
    assert "deploy" not in services["interop"]
    assert services["interop"]["build"]["args"]["TORCH_VARIANT"] == "cpu"
    assert services["interop"]["image"] != services["worker-1"]["image"]


# -- the images ------------------------------------------------------------------------------------------------


def test_dockerfile_pins_torch_from_pytorchs_cpu_index() -> None:
    text = (REPO / "Dockerfile").read_text()
    pin = re.search(r'"torch==([0-9.]+)"', (REPO / "pyproject.toml").read_text())
    assert pin, "pyproject.toml pins torch"
    assert f"ARG TORCH_VERSION={pin.group(1)}" in text
    assert "ARG TORCH_VARIANT=cpu" in text
    assert '--index-url "https://download.pytorch.org/whl/${TORCH_VARIANT}" "torch==${TORCH_VERSION}"' in text
    # Everything else is held to that torch.
    installs = [ln for ln in text.splitlines() if "pip install" in ln and "download.pytorch.org" not in ln]
    assert installs and all("-c /etc/pip-torch.txt" in ln for ln in installs), installs


def test_orthanc_docker_config_is_make_config_output() -> None:
    """``orthanc/orthanc.docker.json`` is ``orthanc.json`` for a container, written by ``make_config``; a change
    to ``orthanc.json`` that was not carried over fails here."""
    committed = json.loads((REPO / "orthanc" / "orthanc.docker.json").read_text())
    expected = make_config_module().render(storage="/var/lib/orthanc/db", remote_access=True,
                                           users={"interop": "${ORTHANC_PASSWORD}"},
                                           lua="/etc/orthanc/autoroute.lua")
    assert committed == expected
    assert committed["RemoteAccessAllowed"] and committed["AuthenticationEnabled"]
    assert committed["DicomModalities"]["interop"]["Host"].startswith("${INTEROP_DICOM_HOST")
    assert committed["Plugins"] == ["/usr/share/orthanc/plugins/libOrthancDicomWeb.so"]
    dockerfile = (REPO / "orthanc" / "Dockerfile").read_text()
    assert "orthanc-dicomweb" in dockerfile and "orthanc.docker.json autoroute.lua" in dockerfile
