"""The deployment files, checked without a Docker engine.

docker-compose.yml against the compose specification's essentials; every command the
files run exists in this code base; the images install from the project's own
requirement files, in the project's own way.
"""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
import tomllib
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
COMPOSE = ROOT / "docker-compose.yml"
DOCKERFILES = {"Dockerfile": ROOT / "Dockerfile", "Dockerfile.gpu": ROOT / "Dockerfile.gpu"}

TOP_LEVEL = {"version", "name", "services", "networks", "volumes", "configs", "secrets", "include"}
SERVICE_KEYS = {
    "build",
    "image",
    "command",
    "entrypoint",
    "environment",
    "env_file",
    "ports",
    "expose",
    "volumes",
    "depends_on",
    "healthcheck",
    "restart",
    "deploy",
    "stop_grace_period",
    "stop_signal",
    "user",
    "working_dir",
    "networks",
    "labels",
    "logging",
    "profiles",
    "ulimits",
    "shm_size",
    "init",
}
CONDITIONS = {"service_started", "service_healthy", "service_completed_successfully"}
DURATION = re.compile(r"^(\d+(\.\d+)?(us|ms|s|m|h))+$")
EXPECTED_SERVICES = {"postgres", "redis", "migrate", "api", "worker"}


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    data = yaml.safe_load(COMPOSE.read_text())
    assert isinstance(data, dict)
    return data


@pytest.fixture(scope="module")
def pyproject() -> dict[str, Any]:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())


def _services(compose: dict[str, Any]) -> dict[str, dict[str, Any]]:
    services = compose["services"]
    assert isinstance(services, dict) and services
    return services


def test_compose_top_level_and_services(compose: dict[str, Any]) -> None:
    unknown = {k for k in compose if k not in TOP_LEVEL and not k.startswith("x-")}
    assert not unknown, f"not compose top-level keys: {unknown}"
    services = _services(compose)
    assert set(services) == EXPECTED_SERVICES
    for name, svc in services.items():
        extra = set(svc) - SERVICE_KEYS
        assert not extra, f"{name}: unknown keys {extra}"
        assert "image" in svc or "build" in svc, f"{name}: needs an image or a build"
        if "build" in svc:
            build = svc["build"]
            context = ROOT / (build if isinstance(build, str) else build.get("context", "."))
            dockerfile = "Dockerfile" if isinstance(build, str) else build.get("dockerfile", "Dockerfile")
            assert (context / dockerfile).is_file(), f"{name}: {dockerfile} missing"
        for key in ("command", "entrypoint"):
            if key in svc:
                assert isinstance(svc[key], (list, str)), f"{name}.{key}"


def test_compose_depends_on_and_healthchecks(compose: dict[str, Any]) -> None:
    services = _services(compose)
    for name, svc in services.items():
        deps = svc.get("depends_on", {})
        assert isinstance(deps, dict), f"{name}: use the long depends_on form with conditions"
        for dep, spec in deps.items():
            assert dep in services, f"{name} depends on unknown {dep}"
            assert spec.get("condition") in CONDITIONS, f"{name} -> {dep}: condition {spec.get('condition')}"
            if spec["condition"] == "service_healthy":
                assert "healthcheck" in services[dep], (
                    f"{name} waits for {dep} to be healthy; it has no healthcheck"
                )
        if "healthcheck" in svc:
            hc = svc["healthcheck"]
            test = hc["test"]
            assert isinstance(test, str) or test[0] in ("CMD", "CMD-SHELL", "NONE"), (
                f"{name}: healthcheck test"
            )
            for key in ("interval", "timeout", "start_period"):
                if key in hc:
                    assert DURATION.match(str(hc[key])), f"{name}: healthcheck {key}={hc[key]}"
    for app in ("api", "worker"):
        assert services[app]["depends_on"]["migrate"]["condition"] == "service_completed_successfully"
    assert services["migrate"].get("restart") == "no"


def test_compose_volumes_and_gpu(compose: dict[str, Any]) -> None:
    services = _services(compose)
    declared = set(compose.get("volumes") or {})
    for name, svc in services.items():
        for vol in svc.get("volumes", []):
            source = vol.split(":", 1)[0] if isinstance(vol, str) else vol["source"]
            if not source.startswith((".", "/")):
                assert source in declared, f"{name}: volume {source} is not declared"
    devices = services["worker"]["deploy"]["resources"]["reservations"]["devices"]
    assert any("gpu" in d.get("capabilities", []) for d in devices)
    # Artifacts written by the worker are read by the API: one shared volume.
    assert services["api"]["volumes"] == services["worker"]["volumes"]
    env = services["api"]["environment"]
    assert env == services["worker"]["environment"] == services["migrate"]["environment"]
    assert (
        env["FISHDIP_DATABASE_URL"].startswith("postgresql://")
        and "@postgres:" in env["FISHDIP_DATABASE_URL"]
    )
    assert env["FISHDIP_BROKER_URL"].startswith("redis://redis:")


# --- commands -------------------------------------------------------------------------------


def _dockerfile_cmds(text: str) -> list[list[str]]:
    cmds = []
    for line in _logical_lines(text):
        if line.upper().startswith("CMD "):
            body = line[4:].strip()
            cmds.append(yaml.safe_load(body) if body.startswith("[") else shlex.split(body))
    return cmds


def _logical_lines(text: str) -> list[str]:
    return [
        ln.strip() for ln in text.replace("\\\n", " ").splitlines() if ln.strip() and not ln.startswith("#")
    ]


def _all_commands(compose: dict[str, Any]) -> list[list[str]]:
    cmds: list[list[str]] = []
    for svc in _services(compose).values():
        if "command" in svc:
            cmd = svc["command"]
            cmds.append(cmd if isinstance(cmd, list) else shlex.split(cmd))
        test = svc.get("healthcheck", {}).get("test")
        if isinstance(test, list) and test[0] == "CMD":
            cmds.append(test[1:])
    for path in DOCKERFILES.values():
        cmds += _dockerfile_cmds(path.read_text())
    return cmds


def _run_python(code: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "FISHDIP_DATABASE_URL": "sqlite:///:memory:"}
    return subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120
    )


def _check_command(cmd: list[str], scripts: dict[str, str]) -> None:
    prog = cmd[0]
    if prog in scripts:
        module, _, func = scripts[prog].partition(":")
        sub = [a for a in cmd[1:] if not a.startswith("-")][:1]
        proc = _run_python(f"import sys; from {module} import {func} as m; sys.exit(m({[*sub, '--help']!r}))")
        assert proc.returncode == 0, f"{' '.join(cmd)}: {proc.stderr[-2000:]}"
    elif prog == "uvicorn":
        target = next(a for a in cmd[1:] if ":" in a and not a.startswith("-"))
        module, _, attr = target.partition(":")
        proc = _run_python(f"import {module} as m; assert getattr(m, {attr!r}) is not None")
        assert proc.returncode == 0, f"{target}: {proc.stderr[-2000:]}"
    elif prog == "python":
        assert cmd[1] == "-c"
        compile(cmd[2], "<healthcheck>", "exec")
    else:
        # Images' own tools (pg_isready, redis-cli, redis-server) are not ours to check.
        assert prog in {"pg_isready", "redis-cli", "redis-server"}, f"unknown program {prog}"


def test_every_command_exists(compose: dict[str, Any], pyproject: dict[str, Any]) -> None:
    scripts: dict[str, str] = pyproject["project"]["scripts"]
    commands = _all_commands(compose)
    assert ["fishdip", "migrate"] in commands and ["fishdip", "worker"] in commands
    seen: set[tuple[str, ...]] = set()
    for cmd in commands:
        if tuple(cmd) not in seen:
            seen.add(tuple(cmd))
            _check_command(cmd, scripts)


# --- install steps --------------------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(DOCKERFILES))
def test_dockerfiles_install_like_the_project(name: str, pyproject: dict[str, Any]) -> None:
    lines = _logical_lines(DOCKERFILES[name].read_text())
    runs = " ".join(ln for ln in lines if ln.upper().startswith("RUN "))
    assert re.search(r"pip install [^&]*-r requirements\.lock", runs), "installs the lock"
    assert re.search(r"pip install --no-deps -r requirements-nodeps\.txt", runs), "no-deps extras"
    assert re.search(r"pip install --no-deps \.(\s|$)", runs), "the project itself, without deps"
    copies = [ln.split()[1:] for ln in lines if ln.upper().startswith("COPY ")]
    copied = {src.rstrip("/") for parts in copies for src in parts[:-1] if not src.startswith("--")}
    for src in copied:
        assert (ROOT / src).exists(), f"{name} copies {src}, which does not exist"
    assert {"requirements.lock", "requirements-nodeps.txt", "pyproject.toml"} <= copied
    packages = pyproject["tool"]["setuptools"]["packages"]["find"]["include"]
    for pattern in packages:
        assert pattern.rstrip("*") in copied, f"{name} does not copy package {pattern}"
    # The lock is installed before the sources are copied, so code edits keep the layer.
    first_source = min(i for i, ln in enumerate(lines) if ln.startswith("COPY core"))
    lock_install = min(i for i, ln in enumerate(lines) if "requirements.lock" in ln and ln.startswith("RUN"))
    assert lock_install < first_source


def test_dockerignore_keeps_what_the_images_copy() -> None:
    ignored = [
        ln.strip()
        for ln in (ROOT / ".dockerignore").read_text().splitlines()
        if ln.strip() and not ln.startswith("#")
    ]
    for path in DOCKERFILES.values():
        for line in _logical_lines(path.read_text()):
            if line.upper().startswith("COPY "):
                for src in line.split()[1:-1]:
                    assert src.rstrip("/") not in ignored, f"{src} is copied but .dockerignore drops it"
    assert ".venv" in ignored and ".git" in ignored and ".env" in ignored


def test_requirement_files_are_pinned() -> None:
    for name in ("requirements.lock", "requirements-nodeps.txt"):
        for line in (ROOT / name).read_text().splitlines():
            line = line.strip()
            if line and not line.startswith("#"):
                assert re.match(r"^[A-Za-z0-9_.\-\[\]]+==[^=\s]+$", line), f"{name}: unpinned {line!r}"
