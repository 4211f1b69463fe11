"""What pyproject.toml and the Dockerfile promise: every library the code imports is declared,
the ``gpu`` extra resolves to one FAISS build whose CUDA major is the one the Dockerfile's torch
brings, and launcher and worker image agree on Beam and Python."""

from __future__ import annotations

import ast
import json
import re
import subprocess
import sys
import tomllib
from importlib import metadata

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from stage_fixtures import REPO

OUR_PACKAGES = ("vidfuse", "pipeline", "extractors", "fusion", "index", "configs")
PYPROJECT = tomllib.loads((REPO / "pyproject.toml").read_text())
DOCKERFILE = (REPO / "Dockerfile").read_text()


def _requirements(*extras: str) -> list[Requirement]:
    project = PYPROJECT["project"]
    found = [Requirement(r) for r in project["dependencies"]]
    for extra in extras:
        found += [Requirement(r) for r in project["optional-dependencies"][extra]]
    return found


def _imported_libraries() -> dict[str, str]:
    """Top-level import name -> a file importing it, for every third-party import of our packages."""
    found: dict[str, str] = {}
    for package in OUR_PACKAGES:
        for path in sorted((REPO / package).rglob("*.py")):
            for node in ast.walk(ast.parse(path.read_text())):
                if isinstance(node, ast.Import):
                    names = [alias.name for alias in node.names]
                elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                    names = [node.module]
                else:
                    continue
                for name in names:
                    top = name.split(".")[0]
                    if top not in OUR_PACKAGES and top not in sys.stdlib_module_names and top != "__future__":
                        found.setdefault(top, str(path.relative_to(REPO)))
    return found


def test_every_imported_library_is_declared():
    declared = {canonicalize_name(r.name) for extra in [(), *[(e,) for e in PYPROJECT["project"]["optional-dependencies"]]]
                for r in _requirements(*extra)}
    providers = metadata.packages_distributions()
    undeclared = {}
    for module, where in _imported_libraries().items():
        dists = {canonicalize_name(d) for d in providers.get(module, [module])}  # not installed: same name
        if not dists & declared:
            undeclared[module] = where
    assert undeclared == {}


def _faiss(requirements) -> list[str]:
    return sorted(canonicalize_name(r.name) for r in requirements if canonicalize_name(r.name).startswith("faiss"))


def _pip_metadata(requirements: list[str]) -> dict[str, dict]:
    """Name -> metadata of what pip picks for ``requirements`` (no dependencies, no download of
    wheels: pip reads the index's metadata)."""
    done = subprocess.run([sys.executable, "-m", "pip", "install", "--dry-run", "--quiet", "--no-deps", "--ignore-installed",
                           "--report", "-", *requirements], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    report = json.loads(done.stdout)
    return {canonicalize_name(item["metadata"]["name"]): item["metadata"] for item in report["install"]}


def _dependency_names(dist_metadata: dict) -> set[str]:
    names = set()
    for text in dist_metadata.get("requires_dist") or []:
        req = Requirement(text)
        if req.marker is None or req.marker.evaluate({"extra": ""}):
            names.add(canonicalize_name(req.name))
    return names


def _installed_closure(names: set[str]) -> set[str]:
    """``names`` and everything their installed metadata requires (markers for this machine)."""
    seen, todo = set(), list(names)
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        seen.add(name)
        try:
            requires = metadata.requires(name) or []
        except metadata.PackageNotFoundError:
            continue
        for text in requires:
            req = Requirement(text)
            if req.marker is None or req.marker.evaluate({"extra": ""}):
                todo.append(canonicalize_name(req.name))
    return seen


def test_each_install_resolves_to_one_faiss_and_the_gpu_one_to_cuda_12_like_the_dockerfile():
    assert _faiss(_requirements()) == []  # the build is the extra's choice
    assert _faiss(_requirements("cpu")) == ["faiss-cpu"]
    assert _faiss(_requirements("gpu")) == ["faiss-gpu"]
    gpu_only = [str(r) for r in PYPROJECT["project"]["optional-dependencies"]["gpu"]]
    picked = _pip_metadata(gpu_only)
    # nothing else that the gpu set brings pulls a CPU build in beside it
    core = {canonicalize_name(r.name) for r in _requirements()}
    brought = _installed_closure(core) | set(picked) | set().union(*(_dependency_names(m) for m in picked.values()))
    assert sorted(n for n in brought if n.startswith("faiss")) == ["faiss-gpu"]
    # faiss-gpu's CUDA runtime major is the one of the torch the Dockerfile installs first
    runtimes = {m.group(1) for m in map(re.compile(r"nvidia-cuda-runtime-cu(\d+)").match, _dependency_names(picked["faiss-gpu"])) if m}
    assert runtimes == {"12"}, runtimes
    torch_index = re.search(r"download\.pytorch\.org/whl/cu(\d\d)\d", DOCKERFILE)
    assert torch_index and torch_index.group(1) == "12"
    assert re.search(r'pip install "\.\[gpu(,\w+)*\]"', DOCKERFILE) and "faiss-cpu" not in DOCKERFILE


def test_launcher_and_worker_image_agree_on_beam_and_python():
    from pipeline.extract_job import WORKER_IMAGE_PYTHON

    (beam,) = [r for r in _requirements() if r.name == "apache-beam"]
    pinned = str(beam.specifier).removeprefix("==")
    assert str(beam.specifier) == f"=={pinned}" and metadata.version("apache-beam") == pinned
    assert re.search(rf"^ARG BEAM_VERSION={re.escape(pinned)}$", DOCKERFILE, re.M)
    assert re.search(rf"^ARG PYTHON_VERSION={re.escape(WORKER_IMAGE_PYTHON)}$", DOCKERFILE, re.M)
    assert "apache/beam_python${PYTHON_VERSION}_sdk:${BEAM_VERSION}" in DOCKERFILE


def test_a_launcher_on_another_python_minor_is_told_at_launch():
    from apache_beam.options.pipeline_options import PipelineOptions

    from pipeline.extract_job import WORKER_IMAGE_PYTHON, worker_image_warning

    image = PipelineOptions(["--runner=DataflowRunner", "--sdk_container_image=registry/vidfuse:latest"])
    other = (3, 99)
    said = worker_image_warning(image, launcher=other)
    assert said and "Python 3.99" in said and f"Python {WORKER_IMAGE_PYTHON}" in said and "PYTHON_VERSION=3.99" in said
    major, minor = map(int, WORKER_IMAGE_PYTHON.split("."))
    assert worker_image_warning(image, launcher=(major, minor)) is None
    assert worker_image_warning(PipelineOptions(["--runner=DataflowRunner"]), launcher=other) is None
