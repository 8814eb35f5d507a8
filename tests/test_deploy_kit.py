"""The two dependency kits: requirements.txt (local, README, CI) and Pipfile (Community Cloud).

Cloud reads Pipfile (it comes before requirements.txt in its lookup order) and installs CPU-only
torch from PyTorch's CPU index; this machine reaches PyPI only, so that index is not resolved
here. What is checked: every direct import of the app is declared in both kits, both kits pin
the same versions of everything but torch/torchvision, and (when PyPI answers) the pins have
wheels for Python 3.11-3.13 on Linux x86_64.
"""

from __future__ import annotations

import ast
import fnmatch
import importlib.metadata
import json
import os
import re
import subprocess
import sys
import tomllib
import urllib.request
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.specifiers import SpecifierSet
from packaging.utils import canonicalize_name

REPO = Path(__file__).resolve().parent.parent
CPU_INDEX = "https://download.pytorch.org/whl/cpu"
TORCH = ("torch", "torchvision")
CLOUD_PYTHONS = ("3.11", "3.12", "3.13")
# Cloud runs Debian 11 (glibc 2.31): wheels for manylinux up to 2_31 install there.
CLOUD_PLATFORMS = ["manylinux2014_x86_64", *(f"manylinux_2_{n}_x86_64" for n in range(17, 32))]
LOCAL_PACKAGES = {"core", "pages"}

# Installed with the app but not on a training-only machine (the GPU machine has torch only).
APP_ONLY = ("streamlit", "plotly", "pytorch_grad_cam")


def local_pins() -> dict[str, str]:
    pins = {}
    for line in (REPO / "requirements.txt").read_text().splitlines():
        line = line.split("#")[0].strip()
        if line:
            name, version = line.split("==")
            pins[canonicalize_name(name)] = version
    return pins


def cloud_packages() -> dict[str, dict]:
    """Pipfile [packages] as {name: {"version": "==X", "index": ...}}."""
    packages = tomllib.loads((REPO / "Pipfile").read_text())["packages"]
    return {
        canonicalize_name(name): spec if isinstance(spec, dict) else {"version": spec}
        for name, spec in packages.items()
    }


def cloud_pins() -> dict[str, str]:
    return {name: spec["version"].removeprefix("==") for name, spec in cloud_packages().items()}


def app_imports() -> set[str]:
    """Top-level names imported by the router, pages/ and core/ (stdlib and our own excluded)."""
    files = [
        REPO / "streamlit_app.py",
        *(REPO / "pages").rglob("*.py"),
        *(REPO / "core").rglob("*.py"),
    ]
    names = set()
    for path in files:
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                names |= {alias.name.split(".")[0] for alias in node.names}
            elif isinstance(node, ast.ImportFrom) and node.level == 0:
                names.add(node.module.split(".")[0])
    return names - set(sys.stdlib_module_names) - LOCAL_PACKAGES


@pytest.mark.parametrize("kit", ["requirements.txt", "Pipfile"])
def test_every_direct_import_is_declared(kit):
    for package in APP_ONLY:  # imports map to distributions only where the app is installed
        pytest.importorskip(package, reason=f"needs the app's environment ({package})")
    declared = set(local_pins() if kit == "requirements.txt" else cloud_pins())
    by_import = importlib.metadata.packages_distributions()
    missing = []
    for name in sorted(app_imports()):
        dists = {canonicalize_name(d) for d in by_import.get(name, [])}
        if not dists & declared:
            missing.append(f"{name} (distribution: {', '.join(sorted(dists)) or 'not installed'})")
    assert not missing, f"imported but not declared in {kit}: {missing}"


def test_cloud_and_local_kits_pin_the_same_versions_but_torch():
    local, cloud = local_pins(), cloud_pins()
    assert set(local) == set(cloud)
    different = {n: (local[n], cloud[n]) for n in local if n not in TORCH and local[n] != cloud[n]}
    assert not different, f"requirements.txt vs Pipfile: {different}"


def test_cloud_kit_takes_cpu_torch_and_only_torch_from_the_cpu_index():
    sources = {s["name"]: s["url"] for s in tomllib.loads((REPO / "Pipfile").read_text())["source"]}
    local, packages = local_pins(), cloud_packages()
    for name in TORCH:
        assert packages[name]["version"] == f"=={local[name]}+cpu"
        assert sources[packages[name]["index"]] == CPU_INDEX
    from_cpu_index = {n for n, spec in packages.items() if "index" in spec}
    assert from_cpu_index == set(TORCH)


def test_cloud_lookup_reaches_the_pipfile_first():
    """Cloud takes the first of these it finds next to the entrypoint (the repo root here)."""
    order = ["uv.lock", "Pipfile", "environment.yml", "requirements.txt", "pyproject.toml"]
    first = next(name for name in order if (REPO / name).exists())
    assert first == "Pipfile"
    assert "-r requirements.txt" in (REPO / "requirements-dev.txt").read_text()


# -- pins install on Cloud's Python versions (needs PyPI; skips when offline) ----------------


def pypi_files(dist: str) -> list[str]:
    request = urllib.request.Request(
        f"https://pypi.org/simple/{dist}/",
        headers={"Accept": "application/vnd.pypi.simple.v1+json"},
    )
    try:
        with urllib.request.urlopen(request, timeout=20) as response:
            return [f["filename"] for f in json.load(response)["files"]]
    except OSError as err:
        pytest.skip(f"PyPI unreachable: {err}")


@pytest.mark.network
@pytest.mark.parametrize("python", CLOUD_PYTHONS)
def test_torch_pins_have_linux_wheels(python):
    """The CPU index can't be reached here; PyPI's wheels of the same version stand in."""
    tag = "cp" + python.replace(".", "")
    for dist in TORCH:
        pattern = f"{dist}-{local_pins()[dist]}-{tag}-{tag}-manylinux*_x86_64.whl"
        assert fnmatch.filter(pypi_files(dist), pattern), f"no {pattern} on PyPI"


def test_grad_cam_is_pure_python_for_every_cloud_python():
    """grad-cam ships only an sdist: its Python range is checked here, its deps in the dry run."""
    try:
        metadata = importlib.metadata.metadata("grad-cam")
    except importlib.metadata.PackageNotFoundError:
        pytest.skip("grad-cam is not installed here (e.g. the GPU machine)")
    requires = SpecifierSet(metadata["Requires-Python"] or "")
    assert all(requires.contains(f"{python}.0") for python in CLOUD_PYTHONS)


def dry_run_requirements() -> list[str]:
    """Every pin but torch/torchvision/grad-cam, plus grad-cam's own non-torch dependencies."""
    pins = [f"{n}=={v}" for n, v in local_pins().items() if n not in (*TORCH, "grad-cam")]
    grad_cam = [Requirement(r) for r in importlib.metadata.requires("grad-cam")]
    pinned = {canonicalize_name(p.split("==")[0]) for p in pins}
    extra = [str(r) for r in grad_cam if canonicalize_name(r.name) not in pinned | set(TORCH)]
    return pins + extra


@pytest.mark.network
@pytest.mark.slow
@pytest.mark.parametrize("python", CLOUD_PYTHONS)
def test_pins_resolve_to_wheels_on_python(python, tmp_path):
    pypi_files("pip")  # skips when PyPI is unreachable
    env = dict(os.environ, PIP_CONFIG_FILE=os.devnull)  # PyPI only: no local indexes/constraints
    env.pop("PIP_FIND_LINKS", None)
    result = subprocess.run(
        [sys.executable, "-m", "pip", "install", "--dry-run", "--quiet", "--target", str(tmp_path),
         "--python-version", python, "--only-binary=:all:",
         *(f"--platform={platform}" for platform in CLOUD_PLATFORMS),
         "--index-url", "https://pypi.org/simple", *dry_run_requirements()],
        capture_output=True, text=True, env=env, timeout=900,
    )  # fmt: skip
    if result.returncode and re.search(r"NewConnectionError|Max retries|timed out", result.stderr):
        pytest.skip(f"PyPI unreachable: {result.stderr.strip().splitlines()[-1]}")
    assert result.returncode == 0, result.stderr[-2000:]


def test_the_app_polls_its_own_files_instead_of_watching_its_folder():
    """watchdog (Streamlit's default) watches the app folder recursively and hears every file
    opened there, .venv (where the README puts it) and data/ included: every import and patch
    read queued events, and Explain's first render went from ~5.4 s to ~7 s (bench/app_memory.py
    run in a checkout with its .venv inside). Polling watches the app's own files only."""
    config = tomllib.loads((REPO / ".streamlit" / "config.toml").read_text())
    assert config["server"]["fileWatcherType"] == "poll"
