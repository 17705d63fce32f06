"""The package as people install it.

The ``packaging`` tests build the wheel and the sdist (``python -m build``) from a copy
of the source tree, check what each holds, and install the wheel without network into a
fresh virtual environment, whose ``asn2n`` must run and find its cluster profiles in the
installed package, not in the source tree.  The other tests hold the metadata and the
install lines of the READMEs to the extras pyproject.toml declares.
"""

from __future__ import annotations

import os
import re
import shutil
import site
import subprocess
import sys
import tarfile
import zipfile
from pathlib import Path

import pytest

from asn2n_dask import __version__
from tests.conftest import ROOT

tomllib = pytest.importorskip("tomllib")  # Python 3.11+
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())
EXTRAS = set(PYPROJECT["project"]["optional-dependencies"])
PROFILES = sorted((p.name for p in (ROOT / "asn2n_dask" / "profiles").glob("*.yaml")), key=lambda n: n[:-5])
MODULES = sorted(p.name for p in (ROOT / "asn2n_dask").glob("*.py"))
#: Where the source tree is copied from: what the repository holds, without builds and caches.
IGNORED = shutil.ignore_patterns(".git", ".venv", "*.egg-info", "__pycache__", "*.pyc", "build", "dist",
                                 ".pytest_cache", ".mypy_cache", ".ruff_cache", ".hypothesis", "artifacts",
                                 "demo-output")


def _clean_env() -> dict[str, str]:
    """The environment without PYTHONPATH: nothing may be imported from the source tree."""
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV")}
    env["PIP_DISABLE_PIP_VERSION_CHECK"] = "1"
    return env


@pytest.fixture(scope="module")
def dists(tmp_path_factory):
    """The wheel and the sdist, built from a copy of the source tree (so the build leaves
    nothing in it); the wheel is built from the sdist, as ``python -m build`` does."""
    pytest.importorskip("build")
    tmp = tmp_path_factory.mktemp("dists")
    src = tmp / "src"

    def ignore(folder: str, names: list[str]) -> set[str]:
        skip = set(IGNORED(folder, names))
        if Path(folder).resolve() == (ROOT / "benchmarks").resolve():
            skip |= {"data", "work"}  # benchmark inputs and scratch: large, ignored by git
        return skip

    shutil.copytree(ROOT, src, ignore=ignore)
    out = tmp / "dist"
    r = subprocess.run([sys.executable, "-m", "build", "--no-isolation", "--outdir", str(out), str(src)],
                       env=_clean_env(), capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    wheels, sdists = sorted(out.glob("*.whl")), sorted(out.glob("*.tar.gz"))
    assert len(wheels) == 1 and len(sdists) == 1, sorted(p.name for p in out.iterdir())
    assert wheels[0].name == f"asn2n_dask-{__version__}-py3-none-any.whl"
    return wheels[0], sdists[0]


@pytest.mark.packaging
def test_the_wheel_holds_the_package_and_nothing_else(dists):
    wheel, _ = dists
    names = zipfile.ZipFile(wheel).namelist()
    info = f"asn2n_dask-{__version__}.dist-info/"
    for module in MODULES:
        assert f"asn2n_dask/{module}" in names, module
    for profile in PROFILES:
        assert f"asn2n_dask/profiles/{profile}" in names, profile
    assert "asn2n_dask/py.typed" in names and f"{info}licenses/LICENSE" in names
    assert "asn2n_dask/napari.yaml" in names  # the napari plugin's manifest
    strays = [n for n in names if not (n.startswith("asn2n_dask/") or n.startswith(info))
              or "__pycache__" in n or n.endswith(".pyc")]
    assert not strays, strays  # no tests, benchmarks, examples, work files or caches
    meta = zipfile.ZipFile(wheel).read(f"{info}METADATA").decode()
    assert "License-Expression: MIT" in meta and "License-File: LICENSE" in meta
    assert "Classifier: Typing :: Typed" in meta and "Requires-Python: >=3.10" in meta
    assert "# asn2n-dask" in meta  # the README is the long description
    for extra in EXTRAS:
        assert f"Provides-Extra: {extra}" in meta, extra
    entry = zipfile.ZipFile(wheel).read(f"{info}entry_points.txt").decode()
    assert "asn2n = asn2n_dask.cli:app" in entry
    assert "[napari.manifest]\nasn2n-dask = asn2n_dask:napari.yaml" in entry


@pytest.mark.packaging
def test_the_sdist_holds_the_source(dists):
    _, sdist = dists
    top = f"asn2n_dask-{__version__}/"
    with tarfile.open(sdist) as tar:
        names = {n[len(top):] for n in tar.getnames()}
    want = {"LICENSE", "README.md", "pyproject.toml", "MANIFEST.in", "asn2n_dask/py.typed", "asn2n_dask/napari.yaml",
            "tests/conftest.py",
            "cluster/README.md", "cluster/examples/denoise.sbatch", "cluster/examples/denoise.pbs"}
    want |= {f"asn2n_dask/{m}" for m in MODULES} | {f"asn2n_dask/profiles/{p}" for p in PROFILES}
    want |= {f"cluster/{p}" for p in PROFILES}
    assert want <= names, sorted(want - names)
    assert not [n for n in names if "__pycache__" in n or n.startswith(("benchmarks/data", "benchmarks/work"))]


@pytest.mark.packaging
def test_the_wheel_installs_offline_in_a_fresh_venv_and_finds_its_profiles(dists, tmp_path):
    wheel, _ = dists
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--system-site-packages", str(venv)], check=True, timeout=300,
                   env=_clean_env())
    py, exe = venv / "bin" / "python", venv / "bin" / "asn2n"
    purelib = subprocess.run([str(py), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                             capture_output=True, text=True, check=True, env=_clean_env()).stdout.strip()
    if sys.prefix != sys.base_prefix:
        # this test runs in a virtual environment: its packages stand for the system's (the
        # dependencies); a path line in a .pth file adds the folder alone, never its .pth
        # files, so the development install of the package there stays out of sight
        parent = [p for p in site.getsitepackages() if Path(p).is_dir()]
        (Path(purelib) / "_system_packages.pth").write_text("\n".join(parent) + "\n")
    env = _clean_env()

    def run(*args: str | Path) -> subprocess.CompletedProcess[str]:
        return subprocess.run([str(a) for a in args], cwd=tmp_path, env=env, capture_output=True, text=True,
                              timeout=300)

    pip = run(py, "-m", "pip", "install", "--no-deps", "--no-index", "--ignore-installed", wheel)
    assert pip.returncode == 0, pip.stdout + pip.stderr
    assert exe.is_file()
    installed = Path(purelib).resolve() / "asn2n_dask"

    version = run(exe, "--version")
    assert version.returncode == 0 and version.stdout.strip() == __version__, version.stdout + version.stderr
    usage = run(exe, "--help")
    assert usage.returncode == 0, usage.stderr
    for command in ("fit", "denoise", "run", "risk", "report", "cluster-profiles"):
        assert command in usage.stdout, command

    where = run(py, "-c", "import asn2n_dask, asn2n_dask.hpc as h; print(asn2n_dask.__file__); "
                "print(h.load_profile('slurm-gpu').kind)")
    assert where.returncode == 0, where.stderr
    module_file, kind = where.stdout.split()
    assert Path(module_file).resolve().parent == installed and kind == "slurm"

    listed = run(exe, "cluster-profiles")
    assert listed.returncode == 0, listed.stderr
    assert [line.split()[0] for line in listed.stdout.splitlines()[: len(PROFILES)]] == [
        p.removesuffix(".yaml") for p in PROFILES]
    folder = re.search(r"the files: (.+?)\)\.$", listed.stdout.replace("\n", ""), re.S)
    assert folder and Path(folder.group(1)).resolve() == installed / "profiles", listed.stdout
    shown = run(exe, "cluster-profiles", "--show", "slurm-gpu")
    assert shown.returncode == 0 and shown.stdout == (installed / "profiles" / "slurm-gpu.yaml").read_text()
    assert (installed / "py.typed").is_file()
    npe2 = run(py, "-m", "npe2", "validate", "asn2n-dask")  # the plugin napari finds: entry point, manifest
    assert npe2.returncode == 0 and "valid" in npe2.stdout, npe2.stdout + npe2.stderr


def test_the_metadata_declares_licence_readme_classifiers_and_data():
    project = PYPROJECT["project"]
    assert project["license"] == "MIT" and project["license-files"] == ["LICENSE"]
    assert "Permission is hereby granted" in (ROOT / "LICENSE").read_text()
    assert project["readme"] == "README.md" and project["scripts"] == {"asn2n": "asn2n_dask.cli:app"}
    trove = pytest.importorskip("trove_classifiers")
    unknown = [c for c in project["classifiers"] if c not in trove.classifiers]
    assert not unknown, unknown
    data = PYPROJECT["tool"]["setuptools"]["package-data"]["asn2n_dask"]
    assert "py.typed" in data and "profiles/*.yaml" in data and "napari.yaml" in data
    assert (ROOT / "asn2n_dask" / "py.typed").is_file()
    assert {"build", "pytest"} <= {re.split(r"[<>=\[ ]", r)[0] for r in project["optional-dependencies"]["dev"]}


def _install_lines(text: str) -> list[str]:
    """Every ``pip install ...`` command in a text, up to the end of its line or span."""
    return [m.group(0).strip() for m in re.finditer(r"pip install [^`\n#;)]*", text)]


def _targets(line: str) -> list[str]:
    return [w.strip("'\"") for w in line.split()[2:] if not w.startswith("-")]


DOCS = [ROOT / "README.md", ROOT / "cluster" / "README.md", *sorted((ROOT / "asn2n_dask").glob("*.py"))]


@pytest.mark.parametrize("path", DOCS, ids=[str(p.relative_to(ROOT)) for p in DOCS])
def test_install_lines_name_extras_that_exist(path):
    for line in _install_lines(path.read_text()):
        for target in _targets(line):
            found = re.fullmatch(r"(.+?)\[([\w,-]+)\]", target)
            if found is None:
                # the package itself is installed from a clone, a wheel, or (once installed) with an extra
                assert target != "asn2n-dask", f"{path.name}: {line!r}: asn2n-dask is not on a package index"
                continue
            base, names = found.groups()
            # a clone (".", or its path), a wheel, or the installed package by name
            assert base in (".", "asn2n-dask") or "/" in base or base.endswith(".whl"), f"{path.name}: {line!r}"
            missing = set(names.split(",")) - EXTRAS
            assert not missing, f"{path.name}: {line!r} names extras pyproject.toml lacks: {sorted(missing)}"


def test_the_readme_install_section_works_from_a_clone_and_names_every_extra():
    text = (ROOT / "README.md").read_text()
    section = text.split("\n## Install\n", 1)[1].split("\n## ", 1)[0]
    lines = _install_lines(section.split("```bash", 1)[1].split("```", 1)[0])
    assert lines and lines[0] == "pip install ."
    named: set[str] = set()
    for line in lines[1:]:
        for target in _targets(line):
            found = re.fullmatch(r"\.\[([\w,-]+)\]", target)
            if found:
                named |= set(found.group(1).split(","))
    assert named == EXTRAS - {"dev"}, sorted(named ^ (EXTRAS - {"dev"}))
