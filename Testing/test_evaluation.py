"""Small runs of ``petstab evaluate`` (bundled subject, tiny DIP, short sweeps), its cache, report and helpers."""

from __future__ import annotations

import csv
import dataclasses
import json
import math
import shutil
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import SimpleITK as sitk

from PETStabilityDenoiseLib.cli import main
from PETStabilityDenoiseLib.engine.blend import blend
from PETStabilityDenoiseLib.engine.ddpm import sampling
from PETStabilityDenoiseLib.engine.filters import gaussian_fwhm
from PETStabilityDenoiseLib.evaluation import analysis, study
from PETStabilityDenoiseLib.evaluation.scoring import Scorer, at_matched_noise, below_least_noisy
from PETStabilityDenoiseLib.settings import DEFAULT_ALPHA, DEFAULT_ALPHAS, DDPMSamplingConfig, get_preset
from PETStabilityDenoiseLib.volumes.geometry import array_to_image

# A 2-epoch tiny DIP and short sweeps that still hold OSEM (FWHM 0) and the operating points (1.5, the default alpha).
QUICK = ["evaluate", "--preset", "tiny", "--epochs", "2", "--interval", "1", "--start", "1", "--dip-epochs", "1", "2",
         "--nlm-h", "1.0", "--fwhms", "0", "1.5", "3", "--alphas", "0", str(DEFAULT_ALPHA), "1"]
SMOKE = [*QUICK, "--doses", "1", "0.1", "--realisations", "2", "--ddpm-realisations", "0"]
SWEEP = [*QUICK, "--doses", "0.1", "--realisations", "1", "--count-sweep", "2", "--stress",
         "--ddpm-realisations", "1", "--ddpm-doses", "0.1", "--threads", "2"]
PER_CASE_AND_DOSE = {"gaussian": 3, "nlm": 1, "dip": 2, "blend": 3}


def read_rows(folder, name="results.csv"):
    with open(folder / name) as handle:
        return list(csv.DictReader(handle))


@pytest.fixture(scope="module")
def smoke_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("evaluation")
    started = time.perf_counter()
    assert main([*SMOKE, "--out", str(out)]) == 0
    print(f"smoke run: {time.perf_counter() - started:.0f} s")
    return out


def stand_in_ddpm(calls: list):
    """A stand-in for ``pipeline.denoise_ddpm`` with the same result fields: a Gaussian-smoothed 'mean' and a local
    residual 'std'. It checks the study's DDPM plumbing, not the model."""
    def denoise_ddpm(pet, mr, config, *, alpha=DEFAULT_ALPHA, **_):
        calls.append(config)
        x = sitk.GetArrayFromImage(pet).astype(np.float32)
        mean = gaussian_fwhm(x, 2.0)
        std = gaussian_fwhm(np.abs(x - mean), 2.0) + 1e-3
        std_mean = float(std[x > 0.1 * x.max()].mean())
        denoised, _ = blend(x, mean, std, alpha, stability_mean=std_mean)
        return SimpleNamespace(network_output=array_to_image(mean, pet), stability=array_to_image(std, pet),
                               stability_mean=std_mean, denoised=array_to_image(denoised, pet))
    return denoise_ddpm


def stand_in_baseline(folder, calls: list):
    """A regression baseline's model folder (its manifest only) and a stand-in for ``pipeline.predict_regression``."""
    folder.mkdir()
    (folder / "model.json").write_text(json.dumps({"kind": "regression", "sha256": "0" * 64,
                                                   "info": {"training": {"steps": 7}}}))

    def predict_regression(pet, mr, model_dir, **settings):
        calls.append((model_dir, settings))
        return array_to_image(gaussian_fwhm(sitk.GetArrayFromImage(pet).astype(np.float32), 1.0), pet)
    return predict_regression


@pytest.fixture(scope="module")
def sweep_run(tmp_path_factory):
    """1/10 dose only, one realisation, the count sweep at x2, the stress condition, a stand-in DDPM and baseline."""
    out = tmp_path_factory.mktemp("evaluation_sweep")
    calls, baseline_calls = [], []
    baseline = out.parent / "baseline_model"
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(study, "denoise_ddpm", stand_in_ddpm(calls))
        patch.setattr(study, "predict_regression", stand_in_baseline(baseline, baseline_calls))
        started = time.perf_counter()
        assert main([*SWEEP, "--baseline-model", str(baseline), "--out", str(out)]) == 0
        print(f"sweep run: {time.perf_counter() - started:.0f} s")
    return SimpleNamespace(out=out, ddpm_calls=calls, baseline_calls=baseline_calls, baseline=baseline)


@pytest.mark.slow
def test_smoke_run_writes_rows_figures_and_report(smoke_run):
    rows = read_rows(smoke_run)
    assert list(rows[0])[:len(study.ID_COLUMNS)] == list(study.ID_COLUMNS)
    assert len(rows) == 2 * 2 * sum(PER_CASE_AND_DOSE.values())
    for method, count in PER_CASE_AND_DOSE.items():
        for dose in ("1.0", "0.1"):
            for realisation in ("0", "1"):
                assert sum(r["method"] == method and r["dose"] == dose and r["realisation"] == realisation
                           for r in rows) == count, (method, dose, realisation)
    assert {r["condition"] for r in rows} == {"main"} and {r["regime"] for r in rows} == {"realistic"}
    for row in rows:
        for key in ("pvr", "wm_std", "wm_cov", "lesion_cr", "hypo_recovery", "psnr", "psnr_blurred", "ssim",
                    "ssim_blurred", "bias_truth_thalamus", "bias_fulldose_striatum", "mean_bias_fulldose"):
            assert math.isfinite(float(row[key])), (key, row)
    osem_full = next(r for r in rows if r["dose"] == "1.0" and r["method"] == "gaussian" and r["setting"] == "0.0")
    assert float(osem_full["bias_fulldose_thalamus"]) == 0.0  # full-dose OSEM is its own reference

    fits = read_rows(smoke_run, "fits.csv")
    assert len(fits) == 4 and {f["method"] for f in fits} == {"dip"}
    assert all(math.isfinite(float(f[key])) for f in fits for key in ("s_peaks_over_wm", "s_lesions_over_wm",
                                                                        "s_hypo_over_wm", "s_cortex_over_wm"))
    assert all(-1 <= float(f["std_error_spearman_blurred_truth"]) <= 1 for f in fits)

    text = (smoke_run / "report.md").read_text()
    for heading in ("## Targets at 1/10 dose", "Claim 1", "Claim 2", "Claim 3", "hypometabolism recovery at matched",
                    "## Stability-map contrast", "## Best of each sweep", "sd over realisations"):
        assert heading.lower() in text.lower(), heading
    assert "## Count sweep" not in text and "## Stress" not in text
    for figure in ("tradeoff_pvr_wm_cov.png", "lesion_cr_wm_cov.png", "hypo_recovery_wm_cov.png",
                   "roi_bias_truth.png", "roi_bias_fulldose.png", "panel_full_dose.png", "panel_1-10_dose.png"):
        assert (smoke_run / figure).stat().st_size > 10_000
        assert f"({figure})" in text
    found = json.loads((smoke_run / "targets.json").read_text())
    assert found["available"] and found["cases"] == 2
    assert {t["status"] for t in found["targets"].values()} <= {"PASS", "MISS", "N/A"}
    assert set(found["targets"]["d_roi_bias_vs_full_dose_osem"]["per_roi"]) == set(analysis.PAPER_ROIS)


@pytest.mark.slow
def test_cache_holds_one_file_per_case_and_realisations_differ_only_in_noise(smoke_run):
    folder = smoke_run / "cache" / "main"
    assert sorted(p.name for p in folder.iterdir()) == ["subject04_r0.json", "subject04_r0_panels.npz",
                                                        "subject04_r1.json"]  # no temporary files left
    records = [json.loads((folder / f"subject04_r{r}.json").read_text()) for r in (0, 1)]
    simulations = [r["simulation"] for r in records]
    assert [s.pop("noise_seed") for s in simulations] == [0, 1]
    assert simulations[0] == simulations[1]  # same phantom, doses, scanner: only the PET noise differs
    assert records[0]["full_dose_osem"]["wm_std"] != records[1]["full_dose_osem"]["wm_std"]


def forbid_computation(monkeypatch):
    def fail(*args, **kwargs):
        raise AssertionError("the study recomputed something that was cached")
    for name in ("simulate_case", "denoise", "denoise_ddpm"):
        monkeypatch.setattr(study, name, fail)


@pytest.mark.slow
def test_replot_and_rerun_use_the_cache(smoke_run, monkeypatch):
    forbid_computation(monkeypatch)
    (smoke_run / "report.md").unlink()
    assert main([*SMOKE, "--out", str(smoke_run), "--replot"]) == 0
    assert "redrawn from its cache" in (smoke_run / "report.md").read_text()
    assert main([*SMOKE, "--out", str(smoke_run)]) == 0


@pytest.mark.slow
def test_replot_refuses_stale_or_missing_cache(smoke_run, monkeypatch, caplog):
    forbid_computation(monkeypatch)
    changed = [("1.5" if a == "1.0" and SMOKE[i - 1] == "--nlm-h" else a) for i, a in enumerate(SMOKE)]
    assert main([*changed, "--out", str(smoke_run), "--replot"]) == 2
    assert "other settings" in caplog.text
    assert main([*SMOKE, "--realisations", "3", "--out", str(smoke_run), "--replot"]) == 2
    assert "no cached results for subject04, realisation 2" in caplog.text


def test_subjects_need_an_existing_labels_dir(tmp_path, caplog):
    assert main(["evaluate", "--subjects", "50", "--out", str(tmp_path)]) == 2
    assert "--labels-dir" in caplog.text
    assert main(["evaluate", "--subjects", "99", "--labels-dir", str(tmp_path), "--out", str(tmp_path)]) == 2
    assert "not found" in caplog.text


@pytest.mark.slow
def test_count_sweep_and_stress_conditions(sweep_run):
    out = sweep_run.out
    rows = read_rows(out)
    conditions = {r["condition"] for r in rows}
    assert conditions == {"main", "counts x2", "stress: legacy wholebody"}
    for condition in ("counts x2", "stress: legacy wholebody"):
        chosen = [r for r in rows if r["condition"] == condition]
        assert {r["method"] for r in chosen} == {"gaussian", "dip", "blend"}  # no NLM, no DDPM
        assert {(r["dose"], r["realisation"]) for r in chosen} == {("0.1", "0")}
        assert len(chosen) == sum(PER_CASE_AND_DOSE.values()) - PER_CASE_AND_DOSE["nlm"]
    stress = [r for r in rows if r["condition"].startswith("stress")]
    assert {(r["scanner"], r["regime"]) for r in stress} == {("wholebody", "legacy")}
    assert all(math.isnan(float(r["hypo_recovery"])) for r in stress)  # the legacy regime has no hypometabolism
    assert all(math.isfinite(float(r["hypo_recovery"])) for r in rows if r["condition"] != stress[0]["condition"])
    assert {float(r["count_scale"]) for r in rows if r["condition"] == "counts x2"} == {2.0}
    assert sorted(p.name for p in (out / "cache").iterdir()) == ["counts_x2", "main", "stress_legacy_wholebody"]

    text = (out / "report.md").read_text()
    for heading in ("## Count sweep", "## Stress condition", "## Targets at 1/10 dose", "Claim 1"):
        assert heading in text
    assert "| x1 | main |" in text and "| x2 | counts x2 |" in text
    assert "is positive at" in text
    assert "n/a (no such region in this regime)" in text  # hypometabolism in the legacy regime
    assert "Full dose was not in this run." in text
    assert (out / "count_sweep.png").stat().st_size > 10_000 and "(count_sweep.png)" in text
    found = json.loads((out / "targets.json").read_text())
    assert found["available"] and found["cases"] == 1
    assert found["targets"]["a_pvr_vs_full_dose_osem"]["target"] > 0  # the full-dose reference without a 1.0 dose


@pytest.mark.slow
def test_ddpm_plumbing_with_a_stand_in_model(sweep_run):
    """Rows, fits, threads and report of the DDPM path; the model itself is replaced (see stand_in_ddpm)."""
    assert len(sweep_run.ddpm_calls) == 1  # main condition, realisation 0, dose 0.1 only
    assert sweep_run.ddpm_calls[0].threads == 2 and sweep_run.ddpm_calls[0].samples == DDPMSamplingConfig().samples
    rows = read_rows(sweep_run.out)
    ddpm = [(r["condition"], r["dose"], r["method"], r["setting_name"], r["setting"]) for r in rows
            if r["method"].startswith("ddpm")]
    assert sorted(ddpm) == [("main", "0.1", "ddpm", "samples", "8"), *(  # the blend's alpha sweep, as DIP's,
        ("main", "0.1", "ddpm_blend", "alpha", alpha)  # and the DDPM's own default alpha
        for alpha in ("0.0", str(DEFAULT_ALPHA), str(DEFAULT_ALPHAS["ddpm"]), "1.0"))]
    # The baseline runs wherever the DDPM does, with its windows and threads; its setting is its training steps.
    assert [(Path(d), s["threads"]) for d, s in sweep_run.baseline_calls] == [(sweep_run.baseline.resolve(), 2)]
    baseline = [(r["condition"], r["dose"], r["setting_name"], r["setting"]) for r in rows if r["method"] == "unet"]
    assert baseline == [("main", "0.1", "training_steps", "7")]
    fits = [f for f in read_rows(sweep_run.out, "fits.csv") if f["method"] == "ddpm"]
    assert len(fits) == 1 and math.isfinite(float(fits[0]["s_peaks_over_wm"]))
    text = (sweep_run.out / "report.md").read_text()
    assert "DDPM mean (8) − OSEM + Gaussian" in text and "| DDPM mean | 1/10 dose |" in text
    assert "U-Net baseline (7) − OSEM + Gaussian" in text
    assert "Spearman(S, abs. error of the output" in text
    # The diffusion model's own targets, at the one dose it ran at, with the baseline's comparison.
    assert "## Targets of the diffusion model" in text
    [ddpm_targets] = json.loads((sweep_run.out / "targets.json").read_text())["ddpm"]
    assert ddpm_targets["dose"] == 0.1 and ddpm_targets["alpha"] == DEFAULT_ALPHAS["ddpm"]
    for name in ("f1_psnr_vs_best_gaussian", "f2_psnr_vs_unet", "f3_ssim_vs_best_gaussian", "f7_std_error_spearman"):
        assert ddpm_targets["targets"][name]["cases"] == 1, name  # one case ran the DDPM
        assert ddpm_targets["targets"][name]["status"] in ("PASS", "MISS"), name


@pytest.mark.slow
def test_a_new_ddpm_model_reruns_only_the_ddpm_rows(sweep_run, monkeypatch, tmp_path):
    folder = sweep_run.out / "cache" / "main"
    assert sorted(p.name for p in folder.iterdir()) == ["subject04_r0.json", "subject04_r0_ddpm.json",
                                                        "subject04_r0_ddpm_panels.npz", "subject04_r0_panels.npz"]
    before = read_rows(sweep_run.out)
    calls, baseline_calls = [], []
    monkeypatch.setattr(study, "denoise", lambda *a, **k: pytest.fail("DIP ran again"))
    monkeypatch.setattr(study, "denoise_ddpm", stand_in_ddpm(calls))
    monkeypatch.setattr(study, "predict_regression", stand_in_baseline(tmp_path / "retrained", baseline_calls))
    manifest = tmp_path / "retrained" / "model.json"
    manifest.write_text(manifest.read_text().replace("0" * 64, "1" * 64))  # another checksum: another model
    out = tmp_path / "out"
    for name in ("main", "counts_x2", "stress_legacy_wholebody"):
        (out / "cache").mkdir(parents=True, exist_ok=True)
        shutil.copytree(sweep_run.out / "cache" / name, out / "cache" / name)
    assert main([*SWEEP, "--baseline-model", str(tmp_path / "retrained"), "--out", str(out)]) == 0
    assert len(calls) == 1 and len(baseline_calls) == 1
    after = read_rows(out)
    assert [r for r in after if r["method"] == "dip"] == [r for r in before if r["method"] == "dip"]
    assert sorted(r["method"] for r in after) == sorted(r["method"] for r in before)


def test_cache_key_covers_what_changes_the_numbers(tmp_path, monkeypatch):
    def settings(dip_threads=None, **changes):
        fields = dict(doses=(0.1,), dip=get_preset("tiny", threads=dip_threads), dip_epochs=(2, 4, 6), realisations=2,
                      ddpm_realisations=1)
        return study.StudySettings(**{**fields, **changes})

    base, other_ddpm = settings(), settings(ddpm=DDPMSamplingConfig(steps=4))
    # The DDPM's rows have their own key: a new model or sampler reruns them only, not DIP.
    assert base.key(0) == other_ddpm.key(0) and base.ddpm_key(0) != other_ddpm.ddpm_key(0)
    assert base.ddpm_key(1) is None  # realisation 1 runs no DDPM
    with monkeypatch.context() as patch:  # a revised sampling chain is a new sampler
        patch.setattr(sampling, "SAMPLER_VERSION", sampling.SAMPLER_VERSION + 1)
        revised = base.ddpm_key(0), base.key(0)
    assert revised[0] != base.ddpm_key(0) and revised[1] == base.key(0)
    with_baseline = settings(baseline_model=str(tmp_path))  # a folder without a model: checksum "missing"
    assert with_baseline.ddpm_key(0) != base.ddpm_key(0) and with_baseline.key(0) == base.key(0)
    assert settings(dip_epochs=(2, 4)).ddpm_key(0) == base.ddpm_key(0)  # DIP's settings are not the DDPM's
    assert settings(seed=1).ddpm_key(0) != base.ddpm_key(0)  # another phantom is another case for both
    assert base.key(0) != base.key(1)
    # Threads and the number of realisations change no number.
    assert settings(dip_threads=1, realisations=5, ddpm=DDPMSamplingConfig(threads=1)).key(0) == base.key(0)
    conditions = study.study_conditions(base, (0.5, 1.0), 0.1, stress=True)
    assert [c.condition for c in conditions] == ["main", "counts x0.5", "stress: legacy wholebody"]
    assert conditions[1].key(0) != base.key(0) and conditions[1].simulated_doses == (1.0, 0.1)
    assert [c.slug for c in conditions] == ["main", "counts_x0.5", "stress_legacy_wholebody"]


def test_matched_noise_reads_the_leading_monotone_run_and_refuses_to_extrapolate():
    # Noise falls with the FWHM, then rises again (cortex blurred into white matter): the rise is ignored.
    sweep = [{"wm_cov": x, "pvr": y} for x, y in ((1.0, 1.4), (0.5, 1.2), (0.25, 1.0), (0.4, 0.5))]
    assert at_matched_noise(sweep, 0.75, "pvr") == pytest.approx(1.3)
    assert at_matched_noise(sweep, 0.35, "pvr") == pytest.approx(1.08)  # not 0.67, through the rising point
    assert math.isnan(at_matched_noise(sweep, 2.0, "pvr"))
    assert math.isnan(at_matched_noise(sweep, 0.2, "pvr"))
    assert math.isnan(at_matched_noise([], 0.5, "pvr"))
    assert analysis.wins([0.1, -0.2, math.nan, 0.3]) == "2/3"
    assert analysis.wins([math.nan]) == "outside the sweep's noise range"
    # Below the run's least noise (0.25, not the risen 0.4): compared with that least noisy setting instead.
    assert below_least_noisy(sweep, 0.2, "pvr") == pytest.approx(1.0)
    assert math.isnan(below_least_noisy(sweep, 0.3, "pvr"))  # within the run: at_matched_noise's job
    assert math.isnan(below_least_noisy(sweep, 2.0, "pvr"))
    assert math.isnan(below_least_noisy([], 0.2, "pvr"))


def test_mean_and_two_spreads_on_hand_made_numbers():
    summary = analysis.summarise([("a", 1.0), ("a", 3.0), ("b", 5.0), ("b", 7.0), ("b", math.nan)])
    assert summary.mean == pytest.approx(4.0)
    assert summary.sd_realisations == pytest.approx(math.sqrt(2.0))  # deviations ±1 around each subject's mean
    assert summary.sd_subjects == pytest.approx(math.sqrt(8.0))  # subject means 2 and 6
    assert (summary.n, summary.subjects) == (4, 2)
    assert summary.format("{:.2f}") == "4.00 ± 1.41/2.83"
    # Unbalanced: the mean is over cases, not over subject means.
    assert analysis.summarise([("a", 0.0), ("a", 0.0), ("b", 3.0)]).mean == pytest.approx(1.0)
    single = analysis.summarise([("a", 2.0)])
    assert single.mean == 2.0 and math.isnan(single.sd_realisations) and math.isnan(single.sd_subjects)
    assert single.format("{:.1f}") == "2.0 ± –/–"
    assert analysis.summarise([]).format("{:.1f}") == "n/a"


def test_extra_conditions_run_on_the_sweep_subjects_only(monkeypatch, tmp_path, caplog):
    main_condition = study.StudySettings(doses=(0.1,), dip=get_preset("tiny"), realisations=2)
    conditions = study.study_conditions(main_condition, (2.0,), 0.1, stress=True, sweep_subjects=("b",))
    assert [c.subjects for c in conditions] == [(), ("b",), ("b",)]
    assert conditions[1].key(0) == dataclasses.replace(conditions[1], subjects=()).key(0)  # not in the key
    calls = []
    monkeypatch.setattr(study, "evaluate_case", lambda subject, settings, realisation, *_args, **_kw:
                        calls.append((settings.condition, subject.name, realisation)) or {})
    study.evaluate([study.Subject("a", tmp_path), study.Subject("b", tmp_path)], conditions, tmp_path)
    assert [c for c in calls if c[0] != "main"] == [("counts x2", "b", 0), ("stress: legacy wholebody", "b", 0)]
    assert sum(c[0] == "main" for c in calls) == 4
    assert main(["evaluate", "--subjects", "04", "--count-sweep", "2", "--count-sweep-subjects", "05",
                 "--out", str(tmp_path)]) == 2
    assert "not among --subjects" in caplog.text


def test_error_ranking_is_one_for_a_map_that_is_the_error():
    rng = np.random.default_rng(0)
    truth = rng.random((6, 7, 8)).astype(np.float32)
    head = np.ones(truth.shape, bool)
    scorer = SimpleNamespace(masks={"head": head}, truth=truth, truth_blurred=truth)
    output = truth + rng.normal(0, 0.1, truth.shape).astype(np.float32)
    ranking = Scorer.error_ranking(scorer, output, np.abs(output - truth) ** 2)  # monotone in the error
    assert ranking["std_error_spearman_truth"] == pytest.approx(1.0)
    assert ranking["std_error_spearman_blurred_truth"] == pytest.approx(1.0)
    assert ranking["std_error_pearson_truth"] < 1.0


def test_the_ddpm_cache_key_follows_the_weights_and_a_corrective_models_base(tmp_path):
    manifest = tmp_path / "model.json"
    manifest.write_text(json.dumps({"sha256": "a" * 64}))
    plain = study.ddpm_model_checksum(DDPMSamplingConfig(model_dir=str(tmp_path)))
    assert plain == "a" * 64
    manifest.write_text(json.dumps({"sha256": "a" * 64, "base_sha256": "b" * 64}))
    with_base = study.ddpm_model_checksum(DDPMSamplingConfig(model_dir=str(tmp_path)))
    manifest.write_text(json.dumps({"sha256": "a" * 64, "base_sha256": "c" * 64}))
    assert len({plain, with_base, study.ddpm_model_checksum(DDPMSamplingConfig(model_dir=str(tmp_path)))}) == 3
