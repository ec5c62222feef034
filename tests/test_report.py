"""The pipeline's sustainability report on a synthetic run (no ONNX, no measuring): the arithmetic of every
derived metric on known numbers, labels, n/a for missing figures, and the atomic three-file output."""

from __future__ import annotations

import base64
import copy
import json

import pytest

from toolchain.core.errors import ToolchainError
from toolchain.formats.costs import CostTable, LayerCost, grams_co2e_per_1000
from toolchain.report.build import build_report
from toolchain.report.documents import html, markdown, write_report
from toolchain.report.figures import figures

G_PER_KWH = 360.0  # 1 J per inference -> 0.1 gCO2e per 1,000 inferences


def _meas(j: float, lat: float, kind: str = "measured", ci: float = 0.0002, n: int = 5) -> dict:
    stat = {"mean": j, "std": j * 0.02, "ci95": [j - ci, j + ci], "n": n, "cv_pct": 2.0}
    return {
        "latency_ms": {"median_ms": lat, "mean_ms": lat * 1.05, "std_ms": 0.1, "p10_ms": lat * 0.9,
                       "p90_ms": lat * 1.2, "ci95_ms": [lat - 0.1, lat + 0.1], "runs": 200},
        "joules_per_inference": {"net": stat, "gross": {**stat, "mean": j * 2}, "kind": kind},
        "watts": {"gross": {"mean": 10.0}, "net": {"mean": 5.0}, "kind": kind},
        "gco2e_per_1000": {"mean": grams_co2e_per_1000(j, G_PER_KWH),
                           "ci95": [grams_co2e_per_1000(j - ci, G_PER_KWH), grams_co2e_per_1000(j + ci, G_PER_KWH)],
                           "kind": kind, "intensity_g_per_kwh": G_PER_KWH, "intensity_source": "test grid"},
        "repeats": n, "meter": {"name": "rapl" if kind == "measured" else "estimate", "kind": kind,
                                "source": "/sys/class/powercap" if kind == "measured" else "TDP x utilisation"},
        "idle_baseline": {"watts": 3.0, "seconds": 2.0},
    }


def _table(name: str, j: float, lat: float, rows: list[tuple[str, float]]) -> dict:
    """A valid cost table whose rows split ``j`` by the given time shares."""
    layer_rows = [LayerCost(module=m, module_type="torch.nn.Conv2d", onnx_nodes=[f"/{m}/op"], kernels=1,
                            op_types=["Conv"], latency_ms_mean=lat * s, latency_ms_std=0.0, share=s,
                            energy_j_mean=j * s, energy_j_std=0.0, macs=1000, params=10, bytes_moved=100)
                  for m, s in rows]
    m = _meas(j, lat)
    m["gco2e_per_1000"] = {**m["gco2e_per_1000"]}
    return CostTable(
        model={"name": name, "sha256": "ab" * 32, "precision": "fp32"},
        target={"name": "cpu", "providers": ["CPUExecutionProvider"]},
        meter={"name": "rapl", "kind": "measured", "source": "/sys/class/powercap", "idle_watts": 3.0},
        measurement=m,
        profile={"runs": 10, "layers_sum_ms": lat, "end_to_end_ms": lat, "gap_pct": 0.0, "unmapped_share": 0.0},
        rows=layer_rows, versions={"onnxruntime": "test"}).to_dict()


def _run() -> dict:
    def variant(name, metric, params, size, j=None, lat=None, table=None):
        return {"name": name, "onnx": f"{name}.onnx", "metric": metric, "params": params, "size_bytes": size,
                "measurement": _meas(j, lat) if j is not None else None, "cost_table": table}

    before = _table("base", 0.010, 20.0, [("conv1", 0.6), ("layer1.conv", 0.3), ("fc", 0.1)])
    after = _table("full", 0.004, 8.0, [("conv1", 0.5), ("fc", 0.375), ("(unmapped)", 0.125)])
    return {
        "title": "tiny-resnet pipeline",
        "model": {"source": "tiny-resnet", "sha256": "cd" * 32, "task": "image-classification"},
        "target": {"name": "cpu", "carbon_g_per_kwh": G_PER_KWH, "carbon_source": "test grid"},
        "metric_name": "accuracy %",
        "variants": [
            variant("baseline (FP32)", 90.0, 1000, 4000, 0.010, 20.0, before),
            variant("pruning only", 88.0, 500, 2000, 0.006, 12.0),
            variant("INT8 only", 89.0, 1000, 1000, 0.005, 10.0),
            variant("distillation only", 87.0, 250, 1000),  # skipped: no measurement
            variant("full pipeline", 88.2, 250, 250, 0.004, 8.0, after),
        ],
        "pareto": [
            {"label": "a", "metric": 90.0, "joules": 0.010, "latency_ms": 20.0, "config": {"sparsity": 0.0}},
            {"label": "b", "metric": 88.0, "joules": 0.004, "latency_ms": 25.0, "config": {"sparsity": 0.5}},
            {"label": "c", "metric": 87.0, "joules": 0.005, "latency_ms": 9.0, "config": {"sparsity": 0.7}},
        ],
        "stages": [{"name": "prune", "status": "done", "seconds": 12.5}],
        "notes": ["synthetic run"],
    }


@pytest.fixture(scope="module")
def report():
    return build_report(_run())


def _v(report, name):
    return next(v for v in report["variants"] if v["name"] == name)


def test_comparison_and_paper_metrics_arithmetic(report):
    json.dumps(report, allow_nan=False)  # JSON-able
    base, full = _v(report, "baseline (FP32)"), _v(report, "full pipeline")
    assert base["paper_metrics"] is None and base["compression"] == {"params_x": 1.0, "bytes_x": 1.0}
    assert base["reduction_pct"] == {"energy": 0.0, "latency": 0.0, "carbon": 0.0}
    assert full["compression"] == {"params_x": pytest.approx(4.0), "bytes_x": pytest.approx(16.0)}
    assert full["metric_delta_points"] == pytest.approx(-1.8)
    assert full["gco2e_per_1000"]["mean"] == pytest.approx(0.0004)
    assert full["reduction_pct"] == {"energy": pytest.approx(60.0), "latency": pytest.approx(60.0),
                                     "carbon": pytest.approx(60.0)}
    p = full["paper_metrics"]
    assert p["arp_pct"] == pytest.approx(98.0)
    assert p["epr_pct"] == pytest.approx(60.0)
    assert p["lsi_x"] == pytest.approx(2.5)
    assert p["mse_storage_pct"] == pytest.approx(93.75)
    assert p["cfa_pct"] == pytest.approx(60.0)
    assert base["green_score"] == pytest.approx(90.0 / 0.001)
    assert full["green_score"] == pytest.approx(88.2 / 0.0004)
    assert full["green_score_x"] == pytest.approx((88.2 / 0.0004) / (90.0 / 0.001))
    assert report["green_score"]["unit"] == "points per gCO2e/1k inferences"
    int8 = _v(report, "INT8 only")
    assert int8["compression"]["params_x"] == pytest.approx(1.0) and int8["compression"]["bytes_x"] == 4.0
    assert int8["paper_metrics"]["lsi_x"] == pytest.approx(2.0)
    assert full["provenance"]["meter"] == "rapl" and full["provenance"]["repeats"] == 5
    assert full["joules_per_inference"]["cv_pct"] == 2.0 and full["joules_per_inference"]["n"] == 5


def test_headline_compares_the_last_variant_with_every_other(report):
    facts = report["headline_facts"]
    assert facts["energy_reduction_pct"] == pytest.approx(60.0)
    assert facts["beaten"] == ["pruning only", "INT8 only"] and facts["not_beaten"] == []
    assert facts["not_compared"] == ["distillation only"]
    assert facts["beats_every_single_technique"] is None  # one technique was not measured
    h = report["headline"]
    assert "full pipeline vs baseline (FP32)" in h and "-60.0%" in h and "-1.80 points" in h
    assert "distillation only" in h

    run = _run()
    run["variants"][3]["measurement"] = _meas(0.0035, 9.0)  # distillation alone uses less than the pipeline
    facts = build_report(run)["headline_facts"]
    assert facts["beats_every_single_technique"] is False and facts["not_beaten"] == ["distillation only"]
    run["variants"][3]["measurement"] = _meas(0.0041, 9.0, ci=0.0005)
    r = build_report(run)
    assert r["headline_facts"]["beats_every_single_technique"] is True
    assert r["headline_facts"]["ci_overlap"] == ["distillation only"] and "not resolved" in r["headline"]


def test_missing_measurement_is_na(report):
    d = _v(report, "distillation only")
    assert not d["measured"] and d["joules_per_inference"] is None and d["green_score"] is None
    assert d["paper_metrics"]["epr_pct"] is None and d["paper_metrics"]["arp_pct"] == pytest.approx(87 / 90 * 100)
    assert d["compression"]["params_x"] == pytest.approx(4.0)
    row = next(line for line in markdown(report).splitlines() if line.startswith("| distillation only"))
    assert row.count("n/a") >= 8
    assert any("distillation only" in w and "n/a" in w for w in report["warnings"])


def test_zero_or_missing_baseline_values_give_none():
    run = _run()
    base = run["variants"][0]
    base["params"], base["size_bytes"], base["metric"] = 0, None, 0.0
    base["measurement"]["joules_per_inference"]["net"]["mean"] = 0.0
    base["measurement"]["gco2e_per_1000"]["mean"] = 0.0
    r = build_report(run)
    full = _v(r, "full pipeline")
    assert full["compression"] == {"params_x": None, "bytes_x": None}
    assert full["reduction_pct"]["energy"] is None and full["reduction_pct"]["carbon"] is None
    assert full["paper_metrics"]["arp_pct"] is None and full["paper_metrics"]["mse_storage_pct"] is None
    assert full["paper_metrics"]["lsi_x"] == pytest.approx(2.5)
    assert _v(r, "baseline (FP32)")["green_score"] is None and full["green_score_x"] is None
    assert "n/a" in markdown(r) and "change n/a" in r["headline"]
    json.dumps(r, allow_nan=False)

    run = _run()
    run["variants"][0]["measurement"] = None
    r = build_report(run)
    assert all(v["reduction_pct"]["energy"] is None for v in r["variants"])
    markdown(r)


def test_estimated_energy_is_labelled_loudly():
    run = _run()
    for v in run["variants"]:
        if v["measurement"]:
            v["measurement"] = _meas(v["measurement"]["joules_per_inference"]["net"]["mean"],
                                     v["measurement"]["latency_ms"]["median_ms"], kind="estimated")
    r = build_report(run)
    assert r["estimated"] and r["energy_kinds"] == ["estimated"]
    assert any(w.startswith("ENERGY IS ESTIMATED") for w in r["warnings"])
    assert "ESTIMATED" in r["headline"]
    md = markdown(r)
    assert "> **WARNING:** ENERGY IS ESTIMATED" in md and "ESTIMATED (not measured)" in md
    assert "net mJ/inference" in md and "| ESTIMATED |" in md
    assert "ESTIMATED" in html(r, pngs={})

    run["variants"][2]["measurement"] = _meas(0.005, 10.0)  # one measured, the others estimated
    assert any("not comparable" in w for w in build_report(run)["warnings"])


def test_where_the_energy_went(report):
    layers = report["layers"]
    assert layers["before"]["variant"] == "baseline (FP32)" and layers["after"]["variant"] == "full pipeline"
    assert [r["module"] for r in layers["before"]["top"]] == ["conv1", "layer1.conv", "fc"]
    assert layers["before"]["top"][0]["energy_mj"] == pytest.approx(6.0)
    moves = {r["module"]: r for r in layers["where_energy_went"]}
    assert moves["conv1"]["status"] == "kept" and moves["conv1"]["delta_mj"] == pytest.approx(-4.0)
    assert moves["layer1.conv"]["status"].startswith("absent after") and moves["layer1.conv"]["after_mj"] is None
    assert moves["layer1.conv"]["delta_mj"] == pytest.approx(-3.0)
    assert moves["fc"]["delta_mj"] == pytest.approx(0.5)
    assert moves["(unmapped)"]["status"] == "unmapped" and moves["(unmapped)"]["before_mj"] is None
    assert layers["totals"] == {"before_mj": pytest.approx(10.0), "after_mj": pytest.approx(4.0),
                                "delta_mj": pytest.approx(-6.0)}
    assert any("INT8" in n for n in layers["notes"])
    assert any("rapl" in n for n in layers["before"]["notes"])  # charts.table_notes provenance


def test_pareto_front(report):
    pts = {p["label"]: p for p in report["pareto"]["points"]}
    assert [pts[k]["front_energy"] for k in "abc"] == [True, True, False]  # c: less metric, more J than b
    assert [pts[k]["front_latency"] for k in "abc"] == [True, False, True]  # b: dominated by a


def test_write_report_is_atomic_and_refuses_to_overwrite(report, tmp_path):
    out = tmp_path / "report"
    written = write_report(report, out)
    names = sorted(p.name for p in written)
    assert names == ["layers.png", "pareto.png", "report.html", "report.json", "report.md", "variants.png"]
    assert json.loads((out / "report.json").read_text()) == json.loads(json.dumps(report))
    md = (out / "report.md").read_text()
    for png in ("variants.png", "pareto.png", "layers.png"):
        assert f"]({png})" in md and (out / png).read_bytes().startswith(b"\x89PNG")
    assert [p.name for p in tmp_path.iterdir()] == ["report"]  # no scratch directory left behind

    changed = copy.deepcopy(report)
    changed["title"] = "second"
    with pytest.raises(ToolchainError, match="already exists"):
        write_report(changed, out)
    assert json.loads((out / "report.json").read_text())["title"] == report["title"]
    write_report(changed, out, force=True)
    assert json.loads((out / "report.json").read_text())["title"] == "second"


def test_html_is_self_contained_and_escaped():
    run = _run()
    run["title"] = "<b>bold</b> & co"
    r = build_report(run)
    pngs = figures(r)
    page = html(r, pngs)
    assert "<b>bold" not in page and "&lt;b&gt;bold&lt;/b&gt; &amp; co" in page
    assert page.count("data:image/png;base64,") == len(pngs) == 3
    b64 = page.split("data:image/png;base64,", 1)[1].split("'", 1)[0]
    assert base64.b64decode(b64).startswith(b"\x89PNG")
    assert "src='variants.png'" not in page and "http" not in page
    md = markdown(r)
    assert "<b>" not in md and "\\<b\\>" in md
