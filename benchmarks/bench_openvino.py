"""OpenVINO's execution provider against ONNX Runtime's CPU EP on the ResNet-50 layout, FP32 and INT8.

Run it with the OpenVINO venv's Python (``make install-openvino`` builds it):
``.venv-openvino/bin/python benchmarks/bench_openvino.py [--part all|preset|compare|alone]``.
Exporting needs torch, and the real photographs of ``builtin:photos`` need scikit-image's files, so the
files are made once with the main venv (``.venv/bin/toolchain``, ``.venv/bin/python``) in subprocesses
and cached under benchmarks/results/openvino/ (``--fresh`` remakes them).

Parts:

* ``preset``: the INT8 preset for openvino-cpu from measurements. The FP32 export is quantized (static QDQ,
  MinMax, calibrated on the 98 crops of ``builtin:photos``) under each configuration of :func:`candidates`
  (activations U8 or S8, per-channel or per-tensor weights, 7-bit weights, symmetric activations);
  every INT8 file then runs on openvino-cpu (OpenVINO EP, device CPU), timed interleaved run by run in
  one process (batch 1 and 8, spinning off) against FP32 on the same EP (speed-ups paired per round, with
  95% CIs), and its outputs on the 266 held-out crops of ``builtin:photos-test`` are compared with FP32 on
  the CPU EP: top-1 agreement, cosine, and the cosine of the input-dependent part of the logits
  (:func:`centred_cosine`: with random weights FP32 ranks one class first for every crop, so top-1
  agreement only measures near-ties). One more row runs the first candidate with the provider option
  ``enable_qdq_optimizer``. The pick: among the candidates with cosine >= 0.99 and a centred cosine within
  0.01 of the best, those whose speed-up CIs overlap the fastest's, the most faithful.
* ``compare``: FP32 against its INT8 as ``toolchain quantize --target openvino-cpu`` writes it (the chosen
  preset, with the accuracy guard), on x86-cpu (CPU EP) and openvino-cpu (OpenVINO EP), through
  :func:`toolchain.profile.run.compare_models` (``toolchain compare``): end to end (latency, energy
  per inference from the labelled ``estimate`` meter: no RAPL here, repeats, spread, 95% CI, ratios
  against FP32 on the CPU EP) and per layer (the CPU EP's per-module table; OpenVINO runs the graph as
  one fused node, shown as the one row the profiler reports, never split).
* ``alone``: each (model, EP) timed in a process of its own, nothing alternated (spinning as ONNX Runtime
  and OpenVINO default it), the processes taken in turn for ``--rounds`` rounds: the check of a ratio
  that alternation might have bent.

Every part records the CPU model and flags, the onnxruntime build (distribution, version, OpenVINO
version and device) and how much of the machine other processes used while it measured
(:mod:`toolchain.core.cpuload`). Writes benchmarks/results/openvino.json (each part replaces its own
section) and prints a table per part.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import time
import warnings
from dataclasses import asdict, replace
from pathlib import Path

warnings.filterwarnings("ignore")

ROOT = Path(__file__).resolve().parents[1]
RESULTS = Path(__file__).parent / "results"
WORK = RESULTS / "openvino"
MAIN_BIN = ROOT / ".venv" / "bin"
OUT = RESULTS / "openvino.json"
MODEL = "resnet-50"
CALIB = ("builtin:photos", 98)        # crops of 7 photographs
EVAL = ("builtin:photos-test", 266)   # crops of the other 19 (with Debian's mate-backgrounds installed)
# the bound of the pick: the toolchain's default cosine budget (toolchain.quantize.measure), and the cosine of
# the input-dependent part of the outputs (centred_cosine) within this much of the best candidate's
MIN_COSINE, CENTRED_COSINE_SLACK = 0.99, 0.01
# the configuration the enable_qdq_optimizer check runs
DEFAULT_PICK = "U8S8 per-channel"


def candidates() -> dict[str, dict]:
    """The configurations the preset part measures: name -> :class:`QuantConfig` fields (static QDQ MinMax)."""
    from toolchain.targets.presets import QuantConfig

    base = QuantConfig()  # static QDQ U8S8 per-channel minmax
    configs = {
        "U8S8 per-channel": base,
        "U8S8 per-channel 7-bit (x86)": replace(base, reduce_range=True),
        "S8S8 per-channel": replace(base, activations="int8"),
        "S8S8 per-channel 7-bit": replace(base, activations="int8", reduce_range=True),
        "S8S8 per-channel sym-act (gpu)": replace(base, activations="int8", symmetric_activations=True),
        "U8S8 per-tensor": replace(base, per_channel=False),
        "U8S8 per-tensor 7-bit": replace(base, per_channel=False, reduce_range=True),
        "S8S8 per-tensor": replace(base, activations="int8", per_channel=False),
    }
    return {name: asdict(c) for name, c in configs.items()}


# ------------------------------------------------------------------------------------------------ files

def main_venv(*args: str) -> None:
    """Run a command of the main venv (torch, scikit-image), failing loudly."""
    done = subprocess.run(list(args), capture_output=True, text=True, cwd=ROOT)
    if done.returncode != 0:
        sys.exit(f"{' '.join(args[:3])} failed:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}")


def prepare(fresh: bool = False) -> dict[str, Path]:
    """The FP32 export and the held-out photos as .npz (for this venv, which lacks scikit-image), cached."""
    WORK.mkdir(parents=True, exist_ok=True)
    fp32, held_out = WORK / "resnet50.onnx", WORK / "photos-test.npz"
    if fresh or not fp32.is_file():
        print(f"exporting {MODEL} with {MAIN_BIN}/toolchain", file=sys.stderr)
        main_venv(str(MAIN_BIN / "toolchain"), "export", MODEL, "-o", str(fp32), "-f")
    if fresh or not held_out.is_file():
        code = ("import sys, numpy as np\nfrom toolchain.data.load import load_dataset\n"
                "from toolchain.data.dataset import DataOptions\n"
                f"ds = load_dataset({EVAL[0]!r}, {str(fp32)!r}, DataOptions(samples={EVAL[1]}))\n"
                f"np.savez({str(held_out)!r}, **ds.feeds)\nprint(len(ds), ds.sha256)\n")
        main_venv(str(MAIN_BIN / "python"), "-c", code)
    return {"fp32": fp32, "held_out": held_out}


def quantize_candidate(fp32: Path, name: str, config: dict, fresh: bool) -> Path:
    """``fp32`` quantized under ``config`` (QuantConfig fields) by the main venv's onnxruntime, cached."""
    slug = "".join(c if c.isalnum() else "-" for c in name.lower()).strip("-")
    out = WORK / f"cand-{slug}.onnx"
    if out.is_file() and not fresh:
        return out
    print(f"quantizing: {name}", file=sys.stderr)
    code = ("import json\nfrom toolchain.data.dataset import DataOptions\nfrom toolchain.data.load import load_dataset\n"
            "from toolchain.quantize.static import quantize_model\nfrom toolchain.targets.presets import QuantConfig\n"
            f"cfg = json.loads({json.dumps(config)!r}); cfg['exclude'] = tuple(cfg['exclude'])\n"
            f"calib = load_dataset({CALIB[0]!r}, {str(fp32)!r}, DataOptions(samples={CALIB[1]}))\n"
            f"quantize_model({str(fp32)!r}, {str(out)!r}, QuantConfig(**cfg), calib, force=True, preset_name='bench')\n")
    main_venv(str(MAIN_BIN / "python"), "-c", code)
    return out


def quantize_with_preset(fp32: Path, fresh: bool) -> tuple[Path, dict]:
    """The INT8 model ``toolchain quantize --target openvino-cpu`` writes (its preset and accuracy guard;
    timed on the CPU EP, as the main venv has no OpenVINO), cached with its report."""
    out, report = WORK / "resnet50.int8.onnx", WORK / "resnet50.int8.json"
    if fresh or not out.is_file() or not report.is_file():
        print("quantizing with toolchain quantize --target openvino-cpu", file=sys.stderr)
        done = subprocess.run([str(MAIN_BIN / "toolchain"), "quantize", str(fp32), "-o", str(out), "-f",
                               "--target", "openvino-cpu", "--provider", "cpu", "--calib", CALIB[0],
                               "--calib-samples", str(CALIB[1]), "--eval", EVAL[0], "--eval-samples", str(EVAL[1]),
                               "--runs", "5", "--json"], capture_output=True, text=True, cwd=ROOT)
        if done.returncode != 0:
            sys.exit(f"toolchain quantize failed:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}")
        report.write_text(done.stdout)
    return out, json.loads(report.read_text())


# ------------------------------------------------------------------------------------------- conditions

def environment() -> dict:
    """CPU model and flags, the onnxruntime build (and OpenVINO's version and devices), the versions."""
    import onnxruntime as ort

    from toolchain.core.host import provenance_versions
    from toolchain.report.doctor import onnxruntime_build
    from toolchain.runtime.timing import conditions

    cond = conditions(None, runs=0, warmup=0)
    return {"cpu": cond["cpu"], "threads": cond["threads"], "loadavg": os.getloadavg(),
            "onnxruntime_build": onnxruntime_build(ort.get_available_providers()), "versions": provenance_versions()}


class Load:
    """Other processes' share of all CPUs over a stretch of measuring (None: /proc/stat not readable)."""

    def __enter__(self):
        from toolchain.core.cpuload import CpuLoadProbe

        self.probe = CpuLoadProbe()
        self.begin = self.probe.read()
        self.share = None
        return self

    def __exit__(self, *exc):
        from toolchain.core.cpuload import other_share

        self.share = other_share(self.begin, self.probe.read())
        return False


def ov_target_session(path: Path, target_name: str, *, alternating: bool = True):
    from toolchain.profile.run import session_for
    from toolchain.targets.target import load_target

    return session_for(path, load_target(target_name), None, alternating=alternating)


def pct(x: float | None) -> str:
    return "-" if x is None else f"{x:.0%}"


# ----------------------------------------------------------------------------------------------- preset

def centred_cosine(reference, candidate, mean) -> float:
    """Mean per-sample cosine of the input-dependent part of the outputs: both minus ``mean`` (FP32's mean
    output over the set). With random weights the logits share a large input-independent pattern (here
    FP32 ranks the same class first for every crop), which keeps the plain cosine near 1 whatever happens
    to the rest; this one is not."""
    import numpy as np

    a = reference.reshape(len(reference), -1).astype(np.float64) - mean
    b = candidate.reshape(len(candidate), -1).astype(np.float64) - mean
    return float(np.mean((a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))))


def part_preset(args, files) -> dict:
    """Every candidate on openvino-cpu: interleaved latency and fidelity against FP32 (CPU EP)."""
    import numpy as np

    from toolchain.core.stats import Summary
    from toolchain.data.dataset import DataOptions
    from toolchain.data.load import load_dataset
    from toolchain.runtime.outputs import fidelity, is_classifier, run_outputs
    from toolchain.runtime.session import create_session
    from toolchain.runtime.timing import interleaved_samples
    from toolchain.targets.target import load_target

    fp32 = files["fp32"]
    paths = {"FP32": fp32}
    paths.update({name: quantize_candidate(fp32, name, cfg, args.fresh) for name, cfg in candidates().items()})
    held_out = load_dataset(str(files["held_out"]), fp32, DataOptions(samples=EVAL[1]))
    classifier = is_classifier(fp32)
    reference = run_outputs(create_session(fp32, ["cpu"]), held_out)
    mean = reference.reshape(len(reference), -1).astype(np.float64).mean(0)
    target = load_target("openvino-cpu")
    sessions = {name: ov_target_session(p, "openvino-cpu") for name, p in paths.items()}
    # the OpenVINO EP's QDQ optimizer, documented for the NPU: does it change anything on the CPU?
    qdq_opt = f"{DEFAULT_PICK} + enable_qdq_optimizer"
    options = [{**target.provider_options()[0], "enable_qdq_optimizer": "true"}, *target.provider_options()[1:]]
    sessions[qdq_opt] = create_session(paths[DEFAULT_PICK], target.provider_names(), provider_options=options,
                                       alternating=True)
    paths[qdq_opt] = paths[DEFAULT_PICK]
    rows = {}
    for name, session in sessions.items():
        out = run_outputs(session, held_out)
        fid = fidelity(reference, out, None, classifier)
        cpu_out = out if name.endswith("enable_qdq_optimizer") else run_outputs(create_session(paths[name], ["cpu"]), held_out)
        rows[name] = {"config": name, "quant_config": candidates().get(name), "file": str(paths[name]),
                      "size_bytes": paths[name].stat().st_size, "agreement": fid.agreement, "cosine": fid.cosine,
                      "centred_cosine": centred_cosine(reference, out, mean),
                      "centred_cosine_cpu_ep": None if name.endswith("enable_qdq_optimizer")
                      else centred_cosine(reference, cpu_out, mean), "samples": fid.samples}
        print(f"  fidelity of {name}: centred cosine {rows[name]['centred_cosine']:.4f}", file=sys.stderr)
    loads = {}
    for batch in args.batches:
        feeds = {k: np.ascontiguousarray(v[:batch]) for k, v in held_out.feeds.items()}
        with Load() as load:
            samples = interleaved_samples({n: (lambda s=s, f=feeds: s.run(None, f)) for n, s in sessions.items()},
                                          warmup=3, runs=args.runs)
        loads[batch] = load.share
        base = samples["FP32"]
        for name, times in samples.items():
            paired = Summary.of([b / t for b, t in zip(base, times, strict=True)])  # FP32 time / this, per round
            rows[name].setdefault("latency", {})[batch] = Summary.of_seconds(times).to_latency_dict()
            rows[name].setdefault("speedup", {})[batch] = {"median": paired.median, "mean": paired.mean,
                                                           "ci95": list(paired.ci95), "p10": paired.p10,
                                                           "p90": paired.p90}
    best = max(r["centred_cosine"] for n, r in rows.items() if n != "FP32")
    for name, r in rows.items():
        r["speedup_geomean"] = math.exp(sum(math.log(v["median"]) for v in r["speedup"].values()) / len(args.batches))
        r["within_bound"] = (name != "FP32" and not name.endswith("enable_qdq_optimizer")
                             and r["centred_cosine"] >= best - CENTRED_COSINE_SLACK and r["cosine"] >= MIN_COSINE)
    eligible = [r for r in rows.values() if r["within_bound"]]
    fastest = max(eligible, key=lambda r: r["speedup_geomean"]) if eligible else None
    # tied with the fastest: every batch's speed-up CI overlaps the fastest's; of those, the most faithful
    tied = [r for r in eligible if fastest and all(r["speedup"][b]["ci95"][1] >= fastest["speedup"][b]["ci95"][0]
                                                   for b in args.batches)]
    chosen = max(tied, key=lambda r: r["centred_cosine"])["config"] if tied else None
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"INT8 candidates on openvino-cpu (OpenVINO EP, device CPU): {args.runs} interleaved runs; "
                        f"fidelity against FP32 on the CPU EP over {len(held_out)} held-out crops ({EVAL[0]})")
    for col in ("configuration", *[f"b{b} ms (median)" for b in args.batches],
                *[f"speed-up b{b} (95% CI)" for b in args.batches], "top-1 agree", "cosine", "centred cos",
                "centred cos on CPU EP", "in bound"):
        table.add_column(col, justify="left" if col == "configuration" else "right")
    for r in rows.values():
        table.add_row(r["config"] + (" [bold](chosen)[/]" if r["config"] == chosen else ""),
                      *[f"{r['latency'][b]['median_ms']:.1f}" for b in args.batches],
                      *[f"{r['speedup'][b]['median']:.2f}x ({r['speedup'][b]['ci95'][0]:.2f}-{r['speedup'][b]['ci95'][1]:.2f})"
                        for b in args.batches],
                      f"{r['agreement']:.1%}", f"{r['cosine']:.5f}", f"{r['centred_cosine']:.4f}",
                      "-" if r["centred_cosine_cpu_ep"] is None else f"{r['centred_cosine_cpu_ep']:.4f}",
                      "-" if r["config"] == "FP32" or r["config"].endswith("optimizer") else
                      ("yes" if r["within_bound"] else "no"))
    Console(width=190).print(table)
    top1 = reference.argmax(-1)
    print(f"FP32 ranks class {np.bincount(top1).argmax()} first for {np.bincount(top1).max()} of {len(top1)} crops "
          "(random weights): top-1 agreement measures near-ties with the runner-up, hence the centred cosine")
    print("other processes' share of the CPUs while timing: " + ", ".join(f"batch {b}: {pct(x)}" for b, x in loads.items()))
    print(f"bound: centred cosine within {CENTRED_COSINE_SLACK} of the best candidate's ({best:.4f}) and cosine >= "
          f"{MIN_COSINE}; chosen: the most faithful of those whose speed-up CIs overlap the fastest's "
          f"({fastest['config'] if fastest else None}): {chosen}")
    return {"runs": args.runs, "batches": list(args.batches), "calibration": {"data": CALIB[0], "samples": CALIB[1]},
            "evaluation": {"data": EVAL[0], "file": held_out.source, "samples": len(held_out),
                           "sha256": held_out.sha256, "reference": "FP32 on the CPU EP",
                           "fp32_distinct_top1": int(len(set(top1.tolist())))},
            "bound": {"centred_cosine_slack": CENTRED_COSINE_SLACK, "best_centred_cosine": best,
                      "min_cosine": MIN_COSINE},
            "rows": list(rows.values()), "fastest": fastest["config"] if fastest else None, "chosen": chosen,
            "other_cpu_share": loads,
            "timing": "interleaved run by run in one process, spinning off (ALTERNATING_CONFIG), OpenVINO EP "
                      "device CPU; speed-ups paired per round (FP32 time / candidate time)"}


# ---------------------------------------------------------------------------------------------- compare

def part_compare(args, files) -> dict:
    """FP32 and INT8 (the openvino-cpu preset) on x86-cpu and openvino-cpu through compare_models."""
    from toolchain.energy import MeterOptions
    from toolchain.profile.run import ProfileOptions, compare_models
    from toolchain.targets.target import load_target

    fp32 = files["fp32"]
    int8, qreport = quantize_with_preset(fp32, args.fresh)
    out: dict = {"quantization": {k: qreport.get(k) for k in ("preset", "preset_reason", "quantization", "guard",
                                                               "chosen", "recommendation", "notes")},
                 "batches": {}}
    for batch in args.batches:
        options = ProfileOptions(meter="estimate", meter_options=MeterOptions(), repeats=args.repeats,
                                 window_s=args.window, warmup=5, profile_runs=args.profile_runs, batch=batch,
                                 data=str(files["held_out"]))
        started = time.perf_counter()
        with Load() as load:
            comparison = compare_models([fp32, int8], [load_target("x86-cpu"), load_target("openvino-cpu")], options,
                                        progress=lambda text: print(f"  {text}", file=sys.stderr))
        data = comparison.to_dict()
        columns = data["columns"]
        tables = {f"{Path(m).name} @ {t}": table for (m, t), table in comparison.tables.items()}
        layers = {key: [{k: v for k, v in asdict(r).items() if k in ("module", "module_type", "kernels", "op_types",
                                                                     "latency_ms_mean", "latency_ms_std", "share",
                                                                     "energy_j_mean", "fused_by", "note")}
                        for r in t.rows] for key, t in tables.items()}
        profiles = {key: t.profile for key, t in tables.items()}
        out["batches"][batch] = {"columns": columns, "skipped": data["skipped"], "layers": layers,
                                 "ratios": ratios(columns), "interleaving": data.get("interleaving"),
                                 "layer_alignment": data.get("layer_alignment"),
                                 "profiles": profiles, "other_cpu_share": load.share,
                                 "seconds": round(time.perf_counter() - started, 1),
                                 "measurement_notes": {key: t.measurement.get("notes", []) for key, t in tables.items()}}
        print_compare(batch, out["batches"][batch], args)
    return out


def _col_name(c: dict) -> str:
    return f"{'INT8' if c['precision'] == 'int8' else 'FP32'} @ {c['target']}"


def ratios(columns: list[dict]) -> dict[str, float]:
    """Latency and energy ratios between the four columns (means): INT8 / FP32 on each EP, OpenVINO / CPU EP
    at each precision."""
    by = {_col_name(c): c for c in columns}
    out = {}
    pairs = [("INT8 @ x86-cpu", "FP32 @ x86-cpu"), ("INT8 @ openvino-cpu", "FP32 @ openvino-cpu"),
             ("FP32 @ openvino-cpu", "FP32 @ x86-cpu"), ("INT8 @ openvino-cpu", "INT8 @ x86-cpu"),
             ("INT8 @ openvino-cpu", "FP32 @ x86-cpu")]
    for a, b in pairs:
        if a in by and b in by:
            out[f"{a} / {b}"] = {
                "latency": by[a]["latency_ms"]["mean_ms"] / by[b]["latency_ms"]["mean_ms"],
                "latency_median": by[a]["latency_ms"]["median_ms"] / by[b]["latency_ms"]["median_ms"],
                "energy": by[a]["joules_per_inference"]["net"]["mean"] / by[b]["joules_per_inference"]["net"]["mean"]}
    return out


def print_compare(batch: int, result: dict, args) -> None:
    from rich.console import Console
    from rich.table import Table

    console = Console(width=170)
    cols = result["columns"]
    table = Table(title=f"ResNet-50 layout, batch {batch}: {args.repeats} windows of >= {args.window} s per column, "
                        "all four columns interleaved window by window; energy is an ESTIMATE (--meter estimate)")
    for col in ("column", "latency ms/call median", "mean ± sd", "95% CI of mean", "mJ/sample (est.) mean ± sd",
                "95% CI", "calls", "windows", "other load (max)"):
        table.add_column(col, justify="left" if col == "column" else "right")
    for c in cols:
        lat, j = c["latency_ms"], c["joules_per_inference"]["net"]
        load = (c.get("cpu_load") or {}).get("max_other_share")
        table.add_row(_col_name(c), f"{lat['median_ms']:.1f}", f"{lat['mean_ms']:.1f} ± {lat['std_ms']:.1f}",
                      f"{lat['ci95_ms'][0]:.1f}-{lat['ci95_ms'][1]:.1f}",
                      f"{1e3 * j['mean']:.0f} ± {1e3 * j['std']:.0f}", f"{1e3 * j['ci95'][0]:.0f}-{1e3 * j['ci95'][1]:.0f}",
                      str(lat["runs"]), str(c["repeats"]), pct(load))
    console.print(table)
    for name, r in result["ratios"].items():
        print(f"  {name:42s} latency {r['latency']:.2f}x (medians {r['latency_median']:.2f}x), "
              f"energy {r['energy']:.2f}x (estimated)")
    print(f"  other processes' share of the CPUs over the whole compare: {pct(result['other_cpu_share'])}")
    for key, notes in result["measurement_notes"].items():
        for note in notes:
            print(f"  note ({key}): {note}")
    for key, rows in result["layers"].items():
        prof = result["profiles"][key]
        t = Table(title=f"per layer, {key}: top {args.top} by time of {len(rows)} rows ({prof.get('runs')} profiled "
                        f"runs; fused share {prof.get('fused_share', 0):.0%})")
        for col in ("module", "type", "kernels", "ms", "share", "note"):
            t.add_column(col, justify="left" if col in ("module", "type", "note") else "right")
        for r in sorted(rows, key=lambda r: -r["latency_ms_mean"])[:args.top]:
            t.add_row(r["module"] or "(model)", r["module_type"], str(r["kernels"]), f"{r['latency_ms_mean']:.2f}",
                      f"{r['share']:.1%}", r.get("note") or "")
        console.print(t)


# ------------------------------------------------------------------------------------------------ alone

ALONE_CODE = r"""
import json, sys, time, numpy as np
sys.path.insert(0, {bench!r})
from bench_openvino import ov_target_session, Load
from toolchain.core.stats import Summary
x = np.load({held_out!r})["pixel_values"][:{batch}]
s = ov_target_session({path!r}, {target!r}, alternating=False)
feeds = {{s.get_inputs()[0].name: np.ascontiguousarray(x)}}
for _ in range(5):
    s.run(None, feeds)
times = []
with Load() as load:
    for _ in range({runs}):
        t = time.perf_counter(); s.run(None, feeds); times.append(time.perf_counter() - t)
print(json.dumps({{"latency": Summary.of_seconds(times).to_latency_dict(), "other_cpu_share": load.share}}))
"""


def part_alone(args, files) -> dict:
    """Each (model, target) in its own process, in turn, ``args.rounds`` rounds."""
    import statistics

    int8 = WORK / "resnet50.int8.onnx"
    if not int8.is_file():
        int8, _ = quantize_with_preset(files["fp32"], args.fresh)
    combos = [(label, path, target) for label, path in (("FP32", files["fp32"]), ("INT8", int8))
              for target in ("x86-cpu", "openvino-cpu")]
    out: dict = {"runs": args.alone_runs, "rounds": args.rounds, "batches": {}}
    for batch in args.batches:
        samples: dict[str, list[dict]] = {f"{label} @ {t}": [] for label, _, t in combos}
        for _ in range(args.rounds):
            for label, path, target in combos:
                code = ALONE_CODE.format(bench=str(Path(__file__).parent), held_out=str(files["held_out"]),
                                         batch=batch, path=str(path), target=target, runs=args.alone_runs)
                done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
                if done.returncode != 0:
                    sys.exit(f"alone run failed: {done.stderr[-2000:]}")
                samples[f"{label} @ {target}"].append(json.loads(done.stdout.strip().splitlines()[-1]))
        summary = {}
        for key, runs in samples.items():
            medians = [r["latency"]["median_ms"] for r in runs]
            summary[key] = {"median_ms_per_round": medians, "median_ms": statistics.median(medians),
                            "other_cpu_share": [r["other_cpu_share"] for r in runs]}
        base_rounds = summary["FP32 @ x86-cpu"]["median_ms_per_round"]
        for s in summary.values():  # against FP32 @ x86-cpu of the same round: the rounds' load differs
            s["ratio_per_round"] = [m / b for m, b in zip(s["median_ms_per_round"], base_rounds, strict=True)]
            s["ratio_median"] = statistics.median(s["ratio_per_round"])
        out["batches"][batch] = summary
        print(f"alone, batch {batch} ({args.rounds} rounds x {args.alone_runs} runs, each process by itself):")
        for key, s in summary.items():
            print(f"  {key:22s} {s['median_ms']:8.1f} ms  ({s['ratio_median']:.2f}x FP32@x86-cpu, median of "
                  "same-round ratios)  rounds "
                  + ", ".join(f"{m:.1f}" for m in s["median_ms_per_round"])
                  + "  other load " + ", ".join(pct(x) for x in s["other_cpu_share"]))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--part", choices=("all", "preset", "compare", "alone"), default="all")
    parser.add_argument("--batches", default="1,8", help="batch sizes (default 1,8)")
    parser.add_argument("--runs", type=int, default=30, help="preset part: interleaved runs per candidate")
    parser.add_argument("--repeats", type=int, default=5, help="compare part: windows per column")
    parser.add_argument("--window", type=float, default=2.0, help="compare part: seconds per window")
    parser.add_argument("--profile-runs", type=int, default=20, help="compare part: profiled runs per column")
    parser.add_argument("--top", type=int, default=8, help="compare part: layers shown per column")
    parser.add_argument("--rounds", type=int, default=3, help="alone part: rounds of one process per column")
    parser.add_argument("--alone-runs", type=int, default=20, help="alone part: timed runs per process")
    parser.add_argument("--fresh", action="store_true", help="remake the cached ONNX and data files")
    args = parser.parse_args()
    args.batches = tuple(int(b) for b in args.batches.split(","))

    import onnxruntime as ort

    if "OpenVINOExecutionProvider" not in ort.get_available_providers():
        sys.exit("this onnxruntime has no OpenVINO provider: run with .venv-openvino/bin/python "
                 "(`make install-openvino`)")
    files = prepare(args.fresh)
    env = environment()
    cpu = env["cpu"]
    build = env["onnxruntime_build"]
    ov = build.get("openvino", {})
    print(f"CPU: {cpu['model']} ({cpu['cores']} logical cores), flags "
          + ", ".join(f for f, on in cpu["flags"].items() if on)
          + f"; {build['distribution']} {build['version']}, OpenVINO {ov.get('version')} devices {ov.get('devices')}"
          + f"; load average {env['loadavg'][0]:.2f} at start")
    results = json.loads(OUT.read_text()) if OUT.is_file() else {}
    parts = ("preset", "compare", "alone") if args.part == "all" else (args.part,)
    for part in parts:
        started = time.strftime("%Y-%m-%dT%H:%M:%S")
        data = {"preset": part_preset, "compare": part_compare, "alone": part_alone}[part](args, files)
        results[part] = {"started": started, "environment": env, **data}
        OUT.parent.mkdir(exist_ok=True)
        OUT.write_text(json.dumps(results, indent=2, default=str))
    print(f"wrote {OUT}")


if __name__ == "__main__":
    main()
