"""A small run of ``petstab evaluate`` (bundled subject, tiny DIP), its cache and its report."""

from __future__ import annotations

import csv
import math

import pytest

from PETStabilityDenoiseLib.cli import main
from PETStabilityDenoiseLib.evaluation import report, study

SMOKE = ["evaluate", "--preset", "tiny", "--dip-epochs", "2", "4", "6", "--doses", "1", "0.1", "--nlm-h", "1.0",
         "--lesions", "2"]


@pytest.fixture(scope="module")
def smoke_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("evaluation")
    assert main([*SMOKE, "--out", str(out)]) == 0
    return out


def test_smoke_run_writes_rows_figures_and_report(smoke_run):
    with open(smoke_run / "results.csv") as handle:
        rows = list(csv.DictReader(handle))
    per_dose = {"gaussian": 9, "nlm": 1, "dip": 3, "blend": 11}
    assert len(rows) == 2 * sum(per_dose.values())
    for method, count in per_dose.items():
        assert sum(r["method"] == method and r["dose"] == "0.1" for r in rows) == count
    for row in rows:
        for key in ("pvr", "wm_std", "wm_cov", "lesion_cr", "psnr", "ssim", "bias_truth_thalamus",
                    "bias_fulldose_striatum"):
            assert math.isfinite(float(row[key])), (key, row)
    osem_full = next(r for r in rows if r["dose"] == "1.0" and r["method"] == "gaussian" and r["setting"] == "0.0")
    assert float(osem_full["bias_fulldose_thalamus"]) == 0.0  # full-dose OSEM is its own reference

    text = (smoke_run / "report.md").read_text()
    for heading in ("Claim 1", "Claim 2", "Claim 3", "Best PSNR"):
        assert heading in text
    for figure in ("tradeoff_pvr_wm_std.png", "lesion_cr_wm_cov.png", "roi_bias_truth.png", "roi_bias_fulldose.png",
                   "panel_full_dose.png", "panel_1-10_dose.png"):
        assert (smoke_run / figure).stat().st_size > 10_000
        assert f"({figure})" in text


def forbid_computation(monkeypatch):
    def fail(*args, **kwargs):
        raise AssertionError("the study recomputed something that was cached")
    monkeypatch.setattr(study, "simulate_case", fail)
    monkeypatch.setattr(study, "denoise", fail)


def test_replot_and_rerun_use_the_cache(smoke_run, monkeypatch):
    forbid_computation(monkeypatch)
    (smoke_run / "report.md").unlink()
    assert main([*SMOKE, "--out", str(smoke_run), "--replot"]) == 0
    assert (smoke_run / "report.md").is_file()
    assert main([*SMOKE, "--out", str(smoke_run)]) == 0


def test_replot_with_other_settings_refuses_stale_cache(smoke_run, monkeypatch, caplog):
    forbid_computation(monkeypatch)
    changed = [("1.5" if a == "1.0" and SMOKE[i - 1] == "--nlm-h" else a) for i, a in enumerate(SMOKE)]
    assert main([*changed, "--out", str(smoke_run), "--replot"]) == 2
    assert "other settings" in caplog.text


def test_subjects_need_an_existing_labels_dir(tmp_path, caplog):
    assert main(["evaluate", "--subjects", "04", "--out", str(tmp_path)]) == 2
    assert "--labels-dir" in caplog.text
    assert main(["evaluate", "--subjects", "99", "--labels-dir", str(tmp_path), "--out", str(tmp_path)]) == 2
    assert "not found" in caplog.text


def test_interpolation_reads_a_sweep_and_refuses_to_extrapolate():
    rows = [{"subject": "s", "dose": 0.1, "method": "gaussian", "wm_std": x, "pvr": y}
            for x, y in ((1.0, 1.4), (0.5, 1.2), (0.25, 1.0))]
    assert report.interpolate_at(rows, "s", 0.1, "gaussian", 0.75, "wm_std", "pvr") == pytest.approx(1.3)
    assert math.isnan(report.interpolate_at(rows, "s", 0.1, "gaussian", 2.0, "wm_std", "pvr"))
    assert report.wins([0.1, -0.2, math.nan, 0.3]) == "2/3"
