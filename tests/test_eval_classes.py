"""fnet-eval with classes: confusion matrix and intervals (hand-made arrays), truth tables with classes (real
sdss/mixed, LAMOST, DR16, redrock files), and evaluation end to end (a fake predictor, a tiny class-head model)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from conftest import require_shared
from fnet.evaluate import (Predictions, collect_sample, evaluate, evaluate_sample, load_sample, normalise_class,
                           read_truth, score_outputs, summary_text)
from fnet.metrics import (binomial_interval, classification_report, confusion_matrix, median_interval,
                          redshift_by_class)
from fnet.runtime.constants import C_KMS
from fnet.runtime.heads import Decoded
from fnet.runtime.readers import read_spectra

Z95 = 1.959963984540054  # two-sided 95% normal quantile


def wilson(k: int, n: int) -> tuple[float, float]:
    """The Wilson score interval written out from its textbook formula, independently of fnet.metrics."""
    p = k / n
    centre = (p + Z95**2 / (2 * n)) / (1 + Z95**2 / n)
    half = Z95 / (1 + Z95**2 / n) * math.sqrt(p * (1 - p) / n + Z95**2 / (4 * n * n))
    return max(0.0, centre - half), min(1.0, centre + half)


# -- metrics on hand-made arrays -----------------------------------------------------------------------------------

def test_wilson_interval_matches_published_values():
    # Newcombe (1998), Table I: 8/10 -> 0.4902-0.9433, 0/10 -> 0-0.2775
    assert binomial_interval(8, 10) == pytest.approx((0.4902, 0.9433), abs=5e-5)
    assert binomial_interval(0, 10) == pytest.approx((0.0, 0.2775), abs=5e-5)


def test_confusion_matrix_counts_completeness_and_purity():
    true = ["QSO", "QSO", "QSO", "STAR", "STAR", "GALAXY", "GALAXY", "GALAXY", "GALAXY", ""]
    pred = ["QSO", "QSO", "STAR", "STAR", "", "GALAXY", "GALAXY", "QSO", "GALAXY", "QSO"]
    cm = confusion_matrix(true, pred, ["QSO", "STAR", "GALAXY"])
    assert cm["counts"] == [[2, 1, 0], [0, 1, 0], [1, 0, 3]]
    assert cm["unpredicted"] == [0, 1, 0]  # the STAR with no prediction counts against STAR completeness
    assert cm["n"] == 9 and cm["n_truth_unknown"] == 1
    expected_completeness = {"QSO": (2, 3), "STAR": (1, 2), "GALAXY": (3, 4)}
    expected_purity = {"QSO": (2, 3), "STAR": (1, 2), "GALAXY": (3, 3)}
    for name, (k, n) in expected_completeness.items():
        c = cm["completeness"][name]
        assert (c["k"], c["n"]) == (k, n) and c["fraction"] == pytest.approx(k / n)
        assert (c["lo"], c["hi"]) == pytest.approx(wilson(k, n), abs=1e-12)
    for name, (k, n) in expected_purity.items():
        p = cm["purity"][name]
        assert (p["k"], p["n"]) == (k, n)
        assert (p["lo"], p["hi"]) == pytest.approx(wilson(k, n), abs=1e-12)
    assert cm["completeness"]["GALAXY"]["lo"] == pytest.approx(0.3006418, abs=1e-6)  # 3/4, worked by hand


def test_confusion_matrix_keeps_a_true_class_the_model_does_not_know():
    rep = classification_report(["QSO", "AGN"], ["QSO", "QSO"], [1.0, 0.1], [1.0, 0.1], classes=None)
    assert rep["classes"] == ["QSO", "STAR", "GALAXY", "AGN"]
    assert rep["counts"][3] == [1, 0, 0, 0] and rep["completeness"]["AGN"]["fraction"] == 0.0
    assert rep["purity"]["STAR"]["fraction"] is None  # nothing predicted STAR: no purity, and JSON-safe


def z_with(dv_kms: np.ndarray, z_true: np.ndarray) -> np.ndarray:
    """Predicted z that sits dv km/s from z_true."""
    return z_true + dv_kms * (1 + z_true) / C_KMS


def test_redshift_accuracy_by_true_class():
    z_true = np.array([1.0, 2.0, 3.0, 0.0, 0.0001, 0.3])
    dv = np.array([500.0, -2000.0, 7000.0, 100.0, 30000.0, 0.0])
    z_pred = z_with(dv, z_true)
    z_pred[5] = np.nan  # a failed galaxy: a miss everywhere
    classes = ["QSO", "QSO", "QSO", "STAR", "STAR", "GALAXY"]
    by = redshift_by_class(z_pred, z_true, classes, ["QSO", "STAR", "GALAXY"])
    assert by["QSO"]["n"] == 3
    assert by["QSO"]["fractions"]["1000"]["k"] == 1 and by["QSO"]["fractions"]["6000"]["k"] == 2
    assert (by["QSO"]["fractions"]["6000"]["lo"], by["QSO"]["fractions"]["6000"]["hi"]) == pytest.approx(wilson(2, 3))
    assert by["QSO"]["median_abs_dv"] == pytest.approx(2000.0, rel=1e-9)
    assert by["STAR"]["median_abs_dv"] == pytest.approx(15050.0, rel=1e-9)  # |dv| w.r.t. the stars' own z ~ 0
    assert by["STAR"]["fractions"]["1000"]["k"] == 1
    assert by["GALAXY"]["n_failed"] == 1 and by["GALAXY"]["fractions"]["6000"]["k"] == 0


def test_median_interval_order_statistics():
    assert median_interval(np.arange(1, 11)) == (2.0, 9.0)  # n = 10: x(2), x(9), coverage 97.9%
    assert median_interval(np.arange(1, 101)) == (40.0, 61.0)  # n = 100: the tabulated ranks 40 and 61
    assert median_interval(np.arange(1, 6)) == (-math.inf, math.inf)  # 5 values cannot bound a median at 95%


def test_score_outputs_stays_z_only_for_z_only_outputs_and_adds_classes_when_given():
    head = {"kind": "regression", "output": "z_scaled", "classes": ["QSO", "STAR", "GALAXY"]}
    z = {"z_scaled": np.array([[0.1], [0.2], [0.3]], np.float32)}
    rep = score_outputs(z, head, np.array([0.7, 1.4, 2.1]))
    assert "classification" not in rep and rep["fractions"]["6000"]["k"] == 3
    logits = np.array([[5, 0, 0], [0, 5, 0], [5, 0, 0]], np.float32)
    rep = score_outputs({**z, "class_logits": logits}, head, np.array([0.7, 1.4, 2.1]), ["QSO", "STAR", "STAR"])
    assert rep["classification"]["counts"] == [[1, 0, 0], [1, 1, 0], [0, 0, 0]]


def test_class_names_are_normalised():
    assert [normalise_class(c) for c in ("qso", b"GALAXY ", "Star", "QUASAR", "Unknown", "")] == \
        ["QSO", "GALAXY", "STAR", "QSO", "", ""]


# -- truth tables ----------------------------------------------------------------------------------------------------

def test_mixed_truth_csv_by_file_name_with_classes_and_zwarning():
    mixed = require_shared("sdss", "mixed")
    truth = read_truth(mixed / "truth.csv")
    assert truth.has_classes and truth.class_source == "column CLASS"
    assert len(truth.by_file) == 30 and not truth.by_pmf and not truth.by_targetid
    assert sorted(truth.classes.tolist()).count("GALAXY") == 17 and list(truth.classes).count("STAR") == 3
    bad = read_spectra(mixed / "spec-0269-51581-0003.fits")[0]
    i, _ = truth.find(bad)
    assert truth.zwarning[i] == 6 and truth.classes[i] == "GALAXY"
    ngc = truth.find(read_spectra(mixed / "NGC3073_SDSS_DR18.fits")[0])[0]
    assert truth.classes[ngc] == "STAR"  # as the pipeline labels it (really a galaxy): the truth is read, not fixed
    dr7 = truth.find(read_spectra(mixed / "sample_sdss.fits")[0])[0]
    assert truth.zwarning[dr7] == -1  # blank ZWARNING: unknown, never excluded


def test_exclude_truth_zwarning_leaves_out_flagged_truth():
    mixed = require_shared("sdss", "mixed")
    kept = collect_sample([str(mixed)], read_truth(mixed / "truth.csv"))
    assert len(kept.spectra) == 30 and (kept.zwarning > 0).sum() == 2  # ZWARNING 6 and 16
    cut = collect_sample([str(mixed)], read_truth(mixed / "truth.csv"), exclude_zwarning=True)
    assert len(cut.spectra) == 28
    assert sum("--exclude-truth-zwarning" in s for s in cut.skipped) == 2
    assert not any(Path(s.source).name == "spec-0269-51581-0003.fits" for s in cut.spectra)


def test_lamost_truth_all_stars_matched_by_file():
    lamost = require_shared("lamost", "dr1")
    truth = read_truth(lamost / "truth.csv")
    assert len(truth.z) == 176 and set(truth.classes) == {"STAR"} and (truth.zwarning == -1).all()
    files = sorted(lamost.glob("spec-*.fits"))[:3]
    sample = collect_sample([str(f) for f in files], truth)
    assert len(sample.spectra) == 3 and list(sample.classes) == ["STAR"] * 3
    assert np.all(np.abs(sample.z_true) < 0.01)


def test_quasar_catalog_means_qso_unless_told_otherwise():
    dr16 = require_shared("sdss", "dr16")
    cat = dr16 / "cat_for_clustering_plate3655.fits.gz"
    auto = read_truth(cat)
    assert set(auto.classes) == {"QSO"} and "quasar catalog" in auto.class_source
    assert not read_truth(cat, truth_class="none").has_classes
    assert set(read_truth(cat, truth_class="GALAXY").classes) == {"GALAXY"}
    spall = read_truth(dr16 / "spAll-plate3655.fits")  # a CLASS column wins over any guess
    assert spall.class_source == "column CLASS" and "STAR" in set(spall.classes)
    sample = collect_sample([str(dr16)], auto)
    assert len(sample.spectra) == 67  # PLATE/MJD/FIBERID matching as before


def test_redrock_spectype_by_targetid():
    desi = require_shared("desi")
    truth = read_truth(desi / "redrock-4-80613-thru20210324.fits")
    assert truth.class_source == "column SPECTYPE"
    sample = collect_sample([str(desi / "coadd-4-80613-thru20210324.fits")], truth)
    assert list(sample.classes) == ["GALAXY"] and sample.z_true[0] == pytest.approx(0.369, abs=1e-3)
    assert list(sample.zwarning) == [0]


def test_file_truth_for_a_file_of_many_spectra_needs_a_row(tmp_path):
    desi = require_shared("desi")
    coadd = desi / "coadd-1-80693-thru20210204.fits"
    n = len(read_spectra(coadd))
    assert n > 1
    plain = tmp_path / "plain.csv"
    plain.write_text(f"file,CLASS,Z\n{coadd.name},QSO,1.5\n")
    sample = collect_sample([str(coadd)], read_truth(plain))
    assert not sample.spectra and sum(f"holds {n} spectra" in s for s in sample.skipped) == n
    rows = tmp_path / "rows.csv"
    rows.write_text(f"file,ROW,CLASS,Z\n{coadd.name}.gz,2,QSO,1.5\n")  # a .gz in the table still names the file
    sample = collect_sample([str(coadd)], read_truth(rows))
    assert [s.row for s in sample.spectra] == [2] and list(sample.classes) == ["QSO"]


# -- evaluation end to end ----------------------------------------------------------------------------------------

PICK = {  # file -> (true class, what the fake predicts, dv of its z in km/s)
    "spec-1931-53358-0251.fits": ("QSO", "QSO", 300.0),
    "sdss1.fits": ("QSO", "GALAXY", 9000.0),
    "spec-6782-56273-0568.fits": ("QSO", "QSO", -800.0),
    "sdss2.fits": ("STAR", "STAR", 50.0),
    "NGC3073_SDSS_DR18.fits": ("STAR", "GALAXY", 100.0),
    "spec-0266-51602-0638.fits": ("GALAXY", "GALAXY", -200.0),
    "spec-0403-51871-0462.fits": ("GALAXY", "QSO", 40000.0),
}
CLASSES = ("QSO", "STAR", "GALAXY")


def fake_predict(sample_z: dict[str, float]):
    """A Predict returning Decoded with p_class: the class and z offset PICK says for each file."""
    def predict(spectra):
        names = [Path(s.source).name for s in spectra]
        z_true = np.array([sample_z[n] for n in names])
        z = z_with(np.array([PICK[n][2] for n in names]), z_true)
        p = np.full((len(spectra), 3), 0.1)
        p[np.arange(len(spectra)), [CLASSES.index(PICK[n][1]) for n in names]] = 0.8
        return Decoded(z=z, z_err=np.full(len(z), 1e-3), p_class=p, classes=CLASSES)
    return predict


def test_evaluate_with_a_fake_class_predictor_on_real_files(tmp_path):
    mixed = require_shared("sdss", "mixed")
    sample = load_sample([str(mixed / f) for f in PICK], mixed / "truth.csv")
    assert [PICK[Path(s.source).name][0] for s in sample.spectra] == list(sample.classes)
    predict = fake_predict({Path(s.source).name: z for s, z in zip(sample.spectra, sample.z_true)})
    rep = evaluate_sample(predict, sample, ["as observed"])[0]
    cls = rep["classification"]
    assert cls["classes"] == list(CLASSES)
    assert cls["counts"] == [[2, 0, 1], [0, 1, 1], [1, 0, 1]]
    assert cls["completeness"]["QSO"]["k"] == 2 and cls["purity"]["GALAXY"]["n"] == 3
    zq = cls["redshift_by_true_class"]["QSO"]
    assert zq["n"] == 3 and zq["fractions"]["1000"]["k"] == 2 and zq["median_abs_dv"] == pytest.approx(800, rel=1e-6)
    assert cls["redshift_by_true_class"]["GALAXY"]["fractions"]["6000"]["k"] == 1
    assert [r["class_pred"] for r in rep["rows"]] == [PICK[Path(r["source"]).name][1] for r in rep["rows"]]
    text = summary_text([rep], {"name": "fake"}, sample, tmp_path / "report.json")
    assert "true / pred" in text and "completeness" in text and "purity" in text
    json.dumps(rep, allow_nan=False)  # the report is strict JSON


def test_no_class_head_or_no_truth_classes_means_no_classification():
    mixed = require_shared("sdss", "mixed")
    sample = load_sample([str(mixed / f) for f in list(PICK)[:3]], mixed / "truth.csv")
    z_only = lambda spectra: (sample.z_true, np.full(3, np.nan), np.zeros(3, int), np.ones(3))  # noqa: E731
    rep = evaluate_sample(z_only, sample, ["as observed"])[0]
    assert "classification" not in rep and rep["classification_skipped"] == "the model has no class head"
    assert "no classification: the model has no class head" in summary_text([rep], {}, sample, "r.json")
    predict = fake_predict({Path(s.source).name: z for s, z in zip(sample.spectra, sample.z_true)})
    rep = evaluate(predict, sample.spectra, sample.z_true)  # the old call: no truth classes
    assert "classification" not in rep and "truth has no classes" in rep["classification_skipped"]
    assert isinstance(Predictions.of(z_only(sample.spectra)), Predictions)


def class_head_model(path: Path) -> tuple[Path, np.ndarray, np.ndarray]:
    """A tiny linear package with a zbins head and a 3-class head; returns it with the class weights."""
    from onnx import TensorProto, helper, numpy_helper

    from fnet.runtime.model_package import build_metadata
    from fnet.runtime.onnx_wire import stamp_integrity
    from tiny_models import PAPER_GRID, linear_weights

    head = {"kind": "zbins", "output": "logits", "spacing": "log1p", "z_min": 0.0, "z_max": 7.0, "nbins": 32,
            "classes": list(CLASSES), "class_output": "class_logits"}
    npix = PAPER_GRID.npix
    w, b = linear_weights(npix, 32)
    wc, bc = linear_weights(npix, 3, seed=1)
    wc *= 30.0  # spread the logits so the classes differ from spectrum to spectrum
    graph = helper.make_graph(
        [helper.make_node("Flatten", ["flux"], ["flat"], axis=1),
         helper.make_node("Gemm", ["flat", "W", "B"], ["logits"]),
         helper.make_node("Gemm", ["flat", "WC", "BC"], ["class_logits"])], "tiny_classes",
        [helper.make_tensor_value_info("flux", TensorProto.FLOAT, ["N", 1, npix])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", 32]),
         helper.make_tensor_value_info("class_logits", TensorProto.FLOAT, ["N", 3])],
        initializer=[numpy_helper.from_array(a, n) for a, n in ((w, "W"), (b, "B"), (wc, "WC"), (bc, "BC"))])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    meta = build_metadata(model_name="tiny-classes", model_version="0.0-test", architecture="linear-test",
                          grid=PAPER_GRID, normalisation={"scheme": "ivar_unit_norm", "clip": 10.0}, head=head,
                          z_range=(0.0, 7.0), training={"note": "test fixture, not trained"})
    for key, value in meta.items():
        entry = model.metadata_props.add()
        entry.key, entry.value = key, value
    path.write_bytes(stamp_integrity(model.SerializeToString()))
    return path, wc, bc


def test_fnet_eval_cli_with_a_class_head_package(tmp_path):
    pytest.importorskip("onnxruntime")
    from fnet.cli import eval_command
    from fnet.runtime.backends import open_backend
    from fnet.runtime.model_package import load_model_package
    from fnet.runtime.pipeline import Predictor

    mixed = require_shared("sdss", "mixed")
    model, wc, bc = class_head_model(tmp_path / "classes.onnx")
    out = tmp_path / "eval"
    result = CliRunner().invoke(eval_command, [str(mixed), "--truth", str(mixed / "truth.csv"), "--model", str(model),
                                               "-o", str(out), "--exclude-truth-zwarning", "--device", "cpu"])
    assert result.exit_code == 0, result.output
    assert "true / pred" in result.output and "completeness" in result.output
    assert "true classes from column CLASS" in result.output
    rep = json.loads((out / "report.json").read_text())["reports"][0]
    assert rep["n"] == 28
    # the classes fnet-eval reports are the argmax of the class logits on exactly the inputs the runtime prepared
    package = load_model_package(model)
    sample = load_sample([str(mixed)], mixed / "truth.csv", exclude_truth_zwarning=True)
    _, usable, x, _ = Predictor(package, open_backend(package, device="cpu")).stage(sample.spectra)
    expected = [""] * len(sample.spectra)
    for k, i in enumerate(usable):
        expected[i] = CLASSES[int(np.argmax(x[k].astype(np.float64) @ wc + bc))]
    assert [r["class_pred"] for r in rep["rows"]] == expected
    counts = np.zeros((3, 3), int)
    for t, p in zip(sample.classes, expected):
        if p:
            counts[CLASSES.index(t), CLASSES.index(p)] += 1
    assert rep["classification"]["counts"] == counts.tolist()
    assert sum(rep["classification"]["unpredicted"]) == expected.count("")
