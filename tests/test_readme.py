"""The README's figures are the records': its measured section is rendered from
benchmarks/results/*.json, and no measured figure stands anywhere else in it."""

from __future__ import annotations

import importlib.util
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def readme_mod():
    spec = importlib.util.spec_from_file_location("bench_readme", ROOT / "benchmarks" / "readme.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_the_measured_section_is_what_the_records_render(readme_mod):
    text = (ROOT / "README.md").read_text()
    assert readme_mod.readme_block(text) == readme_mod.render(), "run: python benchmarks/readme.py"


def test_no_measured_figure_stands_outside_the_rendered_section(readme_mod):
    text = (ROOT / "README.md").read_text()
    outside = text.split(readme_mod.BEGIN)[0] + text.split(readme_mod.END)[1]
    figures = re.findall(r"\d[\d.]*\s*(?:dB|Mpx/s|GiB|MB/s|patches/s|minutes|hours|s a step)\b", outside)
    assert not figures, figures


def test_a_row_without_its_provenance_cannot_be_quoted(readme_mod):
    rows = {"sparse default": {"psnr": 40.0, "commit": "abc1234", "machine": "m", "wall_s": 3.0}}
    with pytest.raises(readme_mod.RecordError, match="lacks command"):
        readme_mod.quoted(rows, "sparse default", "quality")
    with pytest.raises(readme_mod.RecordError, match="has no row"):
        readme_mod.quoted(rows, "sparse global gaussian twins", "quality")
    rows["sparse default"]["command"] = "python benchmarks/quality.py --stage sparse-default"
    assert readme_mod.quoted(rows, "sparse default", "quality")["psnr"] == 40.0


def test_a_figure_changed_in_a_record_changes_the_rendering(readme_mod, monkeypatch):
    rows = {"mixed global": {"psnr": 33.6, "dense_psnr": 27.45, "sparse_false_obj": 0.0, "false_obj": 0.0,
                             "norm": {"mode": "global"}, "consistency": 0.0, "command": "c", "commit": "635dfcf",
                             "machine": "m", "wall_s": 811.0}}
    first = "\n".join(readme_mod.mixed_section(rows))
    rows["mixed global"]["psnr"] = 31.25
    second = "\n".join(readme_mod.mixed_section(rows))
    assert "33.60" in first and "31.25" in second and "33.60" not in second


def test_the_default_is_recognised_where_the_options_that_differ_cannot_act(readme_mod):
    from asn2n_dask.config import NormConfig

    default = NormConfig().to_dict()
    assert default["mode"] == "global"
    assert readme_mod.acts_as_default({"norm": default}, default)
    # global does not use the adaptive rule's options
    assert readme_mod.acts_as_default({"norm": {**default, "adaptive_floor": 0.05, "adaptive_weight": "class"}},
                                      default)
    # adaptive with the floor at 1 on data decided high-risk gives every patch the global scale
    adaptive = {**default, "mode": "adaptive", "adaptive_floor": 1.0}
    assert readme_mod.acts_as_default({"norm": adaptive, "dataset_mode": "global"}, default)
    assert not readme_mod.acts_as_default({"norm": adaptive, "dataset_mode": "local"}, default)
    assert not readme_mod.acts_as_default({"norm": {**adaptive, "adaptive_floor": 0.05}, "dataset_mode": "global"},
                                          default)
    assert not readme_mod.acts_as_default({"norm": {**default, "low_percentile": 1.0}}, default)
    assert not readme_mod.acts_as_default({"norm": {**default, "mode": "local"}, "dataset_mode": "global"}, default)
    assert not readme_mod.acts_as_default({}, default)


def test_the_dense_modes_compare_adaptive_with_global_per_photon_level(readme_mod):
    base = {"command": "python benchmarks/quality.py --stage dense-modes", "commit": "abc1234", "machine": "m",
            "wall_s": 10.0, "crop": 1024, "frames": 3, "steps": 800, "psnr_raw": 27.0, "ssim": 0.9,
            "high_risk_ratio": 0.02}
    rows = {"p5 dense global (800 steps)": {**base, "peak": 5, "norm": {"mode": "global"}, "psnr": 28.0,
                                            "false_obj": 0.5},
            "p5 dense adaptive (800 steps)": {**base, "peak": 5, "norm": {"mode": "adaptive"}, "psnr": 27.75,
                                              "false_obj": 0.0},
            "p15 dense global (800 steps)": {**base, "peak": 15, "norm": {"mode": "global"}, "psnr": 33.0,
                                             "false_obj": 0.0}}
    text = "\n".join(readme_mod.dense_section(rows))
    assert "5 photons: -0.25 dB, -0.50 false objects per Mpx" in text
    assert "15 photons" not in text.split("`adaptive` against `global`")[1]  # no adaptive row at 15 photons
    assert text.index("| 5 | global |") < text.index("| 5 | adaptive |") < text.index("| 15 | global |")


def test_the_whole_frame_default_is_checked_and_compared_with_the_earlier_default(readme_mod):
    base = {"command": "asn2n run noisy.tif -o out.tif", "machine": "m", "wall_s": 5000.0, "psnr_raw": 33.5,
            "ssim": 0.97, "seam": 1.01}
    rows = {"p5 best Gaussian (whole frame 1)": {**base, "commit": "b0bfd14", "psnr": 28.0, "false_obj": 6.7},
            readme_mod.P5_ADAPTIVE: {**base, "commit": "abe371a", "psnr": 34.19, "false_obj": 0.24}}
    text = "\n".join(readme_mod.p5_section(rows))
    assert "default then (`adaptive`) | 34.19" in text
    assert "The default command is not yet recorded" in text and "against the targets" not in text
    rows[readme_mod.P5_DEFAULT] = {**base, "commit": "4ba3208", "psnr": 34.5, "false_obj": 0.0,
                                   "norm": {"mode": "global"}, "dataset_mode": "local", "high_risk_ratio": 0.0}
    text = "\n".join(readme_mod.p5_section(rows))
    assert "psnr at least 31.5 dB: met" in text
    assert "`global` today, `adaptive` at `abe371a`" in text
    assert "+0.31 dB psnr, -0.24 false objects per Mpx" in text


def test_the_sparse_section_says_when_adaptive_is_the_global_scale_there(readme_mod):
    base = {"command": "python benchmarks/quality.py --stage same-norm", "commit": "abc1234", "machine": "m",
            "wall_s": 60.0}
    rows = {"sparse default": {**base, "psnr": 42.56, "psnr_raw": 42.0, "ssim": 0.98, "false_obj": 0.0},
            "sparse same-norm": {**base, "steps": 20, "max_abs_diff": 0.0, "dataset_mode": "global",
                                 "high_risk_ratio": 0.8867}}
    text = "\n".join(readme_mod.sparse_section(rows))
    assert "89% of patches at risk, dataset decision `global`, outputs the same to the bit" in text
    assert "normalise this frame alike" in text
    rows["sparse same-norm"]["max_abs_diff"] = 0.5
    text = "\n".join(readme_mod.sparse_section(rows))
    assert "largest difference 0.5 in input units" in text and "alike;" not in text


def test_the_w2s_ceiling_is_told_by_the_fields_it_learns_from_and_leaves_other_settings_out(readme_mod):
    def row(method: str, psnr: float) -> dict:
        return {"channel": 0, "method": method, "fields": [f"field{i:03d}_c0.tif" for i in range(16)],
                "scores": {"mean": {"psnr": psnr}}}

    rows = {"c0 best Gaussian per image": row("best Gaussian per image", 32.0)}
    for method, psnr in [("supervised ceiling (small, 3000 steps, 2 folds, cuda)", 33.0),
                         ("supervised ceiling (small, 3000 steps, 4 folds, cuda)", 33.5),
                         ("supervised ceiling (small, 3000 steps, 2 folds, cuda, lr 0.0003)", 40.0),
                         ("supervised ceiling (small, 8000 steps, 2 folds, cuda)", 41.0),
                         ("supervised ceiling (small, 3000 steps, 2 folds, lr 0.0003)", 42.0),
                         ("supervised ceiling (small, 3000 steps, 2 folds)", 32.5),  # on the processor, lower
                         ("supervised ceiling (small, 3000 steps, 3 folds)", 33.25)]:
        rows[f"c0 {method}"] = row(method, psnr)
    text = " ".join(readme_mod.w2s_ceiling(rows))
    assert ("channel 0: 8 fields 33.00 dB (+1.00 dB), 10-11 fields 33.25 dB (+1.25 dB), "
            "12 fields 33.50 dB (+1.50 dB).") in text
    assert not any(f in text for f in ("40.00", "41.00", "42.00", "32.50"))
