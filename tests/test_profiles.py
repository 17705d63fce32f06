"""The cluster profiles shipped in the package: by name on --cluster, listed and printed by
``asn2n cluster-profiles``, and the same files as in the repository's cluster/ folder."""

from __future__ import annotations

import contextlib
from dataclasses import replace
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from asn2n_dask.cli import app
from asn2n_dask.errors import ConfigError
from asn2n_dask.hpc import builtin_profile, builtin_profiles, load_profile, make_cluster, profiles_location
from tests.conftest import ROOT

NAMES = ["lsf", "pbs", "pbs-gpu", "slurm", "slurm-gpu"]
runner = CliRunner()


@pytest.fixture
def home(tmp_path, monkeypatch):
    """``security: auto`` writes the workers' TLS key under ``$HOME/.asn2n/tls``."""
    h = tmp_path / "home"
    h.mkdir()
    monkeypatch.setenv("HOME", str(h))
    return h


def test_the_cluster_folder_holds_the_packaged_profiles_unchanged():
    packaged = {p.name: p.text for p in builtin_profiles()}
    in_repo = {p.stem: p.read_text(encoding="utf-8") for p in (ROOT / "cluster").glob("*.yaml")}
    assert sorted(packaged) == NAMES
    assert in_repo == packaged, "cluster/*.yaml and asn2n_dask/profiles/*.yaml must be the same files"


def test_each_profile_has_a_one_line_description_and_its_kind():
    for p in builtin_profiles():
        doc = yaml.safe_load(p.text)
        assert p.kind == doc["kind"] and p.kind in p.description.lower()
        assert ("GPU" in p.description) == bool(doc.get("gpu")), p.name
        assert p.description and "\n" not in p.description and not p.description.startswith("#")


@pytest.mark.parametrize("name", NAMES)
def test_a_name_loads_the_packaged_profile_and_renders_its_job(name, home, tmp_path, monkeypatch):
    pytest.importorskip("dask_jobqueue")
    monkeypatch.chdir(tmp_path)  # no file of that name here: the name is the built-in profile
    by_name = load_profile(name)
    from_file = load_profile(Path(profiles_location()) / f"{name}.yaml")
    assert by_name.path == f"{name} (built in)"
    assert by_name == replace(from_file, path=by_name.path)
    with make_cluster(by_name) as cluster:
        script = cluster.job_script()
    assert {"slurm": "#SBATCH", "pbs": "#PBS", "lsf": "#BSUB"}[by_name.kind] in script


def test_a_file_of_that_name_is_read_before_the_built_in_profile(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    Path("slurm").write_text("kind: pbs\nsecurity: none\ncluster:\n  cores: 2\n")
    prof = load_profile("slurm")
    assert prof.kind == "pbs" and prof.path == "slurm" and prof.options == {"cores": 2}


def test_an_unknown_name_gets_one_sentence_listing_the_known_ones(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ConfigError) as err:
        load_profile("sge-gpu")
    msg = str(err.value)
    assert "'sge-gpu'" in msg and "lsf, pbs, pbs-gpu, slurm, slurm-gpu" in msg
    assert msg.count(". ") == 0 and msg.endswith(".") and "\n" not in msg
    with pytest.raises(ConfigError, match=r"slurm-gpu\.yaml does not exist.*the built-in slurm-gpu is named without"):
        load_profile("slurm-gpu.yaml")
    with pytest.raises(ConfigError, match="no built-in cluster profile is called 'nope'"):
        builtin_profile("nope")


def test_the_pipeline_takes_a_profile_by_name(monkeypatch):
    """``--cluster slurm-gpu`` reaches the batch-system client as the name, and the
    worker's torch threads come from the packaged profile (8 cores booked, 4 chunks)."""
    import asn2n_dask.hpc as hpc
    from asn2n_dask.connect import ClusterOptions, open_client

    seen = []

    @contextlib.contextmanager
    def fake_client(path, jobs=None, echo=print, dashboard_address=None):
        seen.append((load_profile(path).path, jobs))
        yield "client"

    monkeypatch.setattr(hpc, "jobqueue_client", fake_client)
    with open_client(ClusterOptions(cluster="slurm-gpu", jobs=3), echo=print) as (client, threads):
        assert client == "client" and threads == 2
    assert seen == [("slurm-gpu (built in)", 3)]


def test_cluster_profiles_lists_name_scheduler_and_description():
    r = runner.invoke(app, ["cluster-profiles"])
    assert r.exit_code == 0, r.output
    rows = [line.split(None, 2) for line in r.stdout.splitlines()[: len(NAMES)]]
    assert [row[0] for row in rows] == NAMES
    for (name, kind, description), p in zip(rows, builtin_profiles()):
        assert (name, kind, description) == (p.name, p.kind, p.description)
    assert profiles_location() in r.stdout.replace("\n", "")
    quiet = runner.invoke(app, ["-q", "cluster-profiles"])
    assert quiet.exit_code == 0 and quiet.stdout.splitlines() == r.stdout.splitlines()[: len(NAMES)]


def test_cluster_profiles_show_prints_the_yaml_to_copy(tmp_path, monkeypatch):
    r = runner.invoke(app, ["cluster-profiles", "--show", "slurm-gpu"])
    assert r.exit_code == 0, r.output
    assert r.stdout == (ROOT / "cluster" / "slurm-gpu.yaml").read_text()
    monkeypatch.chdir(tmp_path)
    Path("site.yaml").write_text(r.stdout.replace("account: my-lab", "account: imaging"))
    site = load_profile("site.yaml")  # the copy, edited, is a profile
    assert site.options["account"] == "imaging" and site.gpu and site.kind == "slurm"


def test_unknown_names_on_the_command_line_are_one_sentence(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    r = runner.invoke(app, ["cluster-profiles", "--show", "sge"])
    assert r.exit_code == 2 and r.stdout == ""
    assert r.stderr.strip().splitlines() == [
        "error: no built-in cluster profile is called 'sge'; the built-in profiles are lsf, pbs, pbs-gpu, slurm, "
        "slurm-gpu (or give the path of a profile YAML file)."]
    args = ["denoise", "in.zarr", "-o", "out.zarr", "--model", "none.model", "--cluster"]
    bad = runner.invoke(app, [*args, "sge"])
    assert bad.exit_code == 2 and "no built-in cluster profile is called 'sge'" in bad.stderr
    good = runner.invoke(app, [*args, "slurm-gpu"])  # the profile is accepted; the missing input is what fails
    assert good.exit_code == 2 and "cluster profile" not in good.stderr and "in.zarr" in good.stderr
