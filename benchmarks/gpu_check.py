"""Helper of benchmarks/gpu_check.sh: GPU detection, the NVML meter check, and the summary.

Standard library only at import (it runs under whichever python3 is there); ``nvml-window`` alone
imports the toolchain, in the GPU venv. Subcommands:

  detect OUTDIR [--python PY ...] [--force]   write OUTDIR/detect.json; exit 0 with a GPU, 3 without
  nvml-window [--seconds S]                   open the toolchain's NVML meter, measure one idle window, print JSON
  x86-missing COMPARE_JSON                    exit 0 when that comparison has no x86-cpu column (or no JSON)
  summarize OUTDIR                            write OUTDIR/summary.json, summary.md and steps.json; print one line
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

NVML_SNIPPET = r"""
import json
try:
    import pynvml
except ImportError:
    print(json.dumps({"module": False, "readable": False, "detail": "the pynvml module is not installed"}))
    raise SystemExit(0)
try:
    pynvml.nvmlInit()
except Exception as exc:
    print(json.dumps({"module": True, "readable": False,
                      "detail": f"NVML cannot initialise ({type(exc).__name__}: {exc})"}))
    raise SystemExit(0)
gpus = []
try:
    for i in range(pynvml.nvmlDeviceGetCount()):
        h = pynvml.nvmlDeviceGetHandleByIndex(i)
        name = pynvml.nvmlDeviceGetName(h)
        name = name.decode() if isinstance(name, bytes) else str(name)
        try:
            pynvml.nvmlDeviceGetTotalEnergyConsumption(h)
            counter = True
        except Exception:
            counter = False
        gpus.append({"index": i, "name": name, "energy_counter": counter})
    driver = pynvml.nvmlSystemGetDriverVersion()
    driver = driver.decode() if isinstance(driver, bytes) else str(driver)
finally:
    pynvml.nvmlShutdown()
print(json.dumps({"module": True, "readable": bool(gpus), "gpus": gpus, "driver": driver,
                  "detail": f"{len(gpus)} GPU(s)" if gpus else "NVML sees no GPU"}))
"""


def _one_line(text: str, limit: int = 300) -> str:
    line = " ".join(text.split())
    return line if len(line) <= limit else line[: limit - 3] + "..."


def _nvidia_smi() -> dict[str, Any]:
    path = shutil.which("nvidia-smi")
    if not path:
        return {"path": None, "gpus": [], "error": "no nvidia-smi on PATH"}
    try:
        p = subprocess.run([path, "-L"], capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return {"path": path, "gpus": [], "error": f"nvidia-smi -L failed: {_one_line(str(exc))}"}
    gpus = [line.strip() for line in p.stdout.splitlines() if line.strip().startswith("GPU ")]
    error = None
    if p.returncode != 0 or not gpus:
        error = f"nvidia-smi -L (exit {p.returncode}) lists no GPU: {_one_line(p.stderr or p.stdout) or 'no output'}"
    return {"path": path, "gpus": gpus, "error": error}


def _nvml(pythons: list[str]) -> dict[str, Any]:
    tried = []
    for py in dict.fromkeys(pythons):
        if not (shutil.which(py) or Path(py).is_file()):
            continue
        try:
            p = subprocess.run([py, "-c", NVML_SNIPPET], capture_output=True, text=True, timeout=60)
            info = json.loads(p.stdout.strip().splitlines()[-1])
        except (OSError, subprocess.TimeoutExpired, ValueError, IndexError) as exc:
            tried.append(py)
            last = {"module": False, "readable": False, "detail": f"{py} failed the NVML check: {_one_line(str(exc))}"}
            continue
        info["python"] = py
        if info.get("module"):
            return info
        tried.append(py)
        last = info
    if not tried:
        return {"module": False, "readable": False, "detail": "no python to try NVML with", "python": None}
    last = dict(last)
    last["detail"] = f"{last['detail']} (tried {', '.join(tried)})"
    last["python"] = None
    return last


def detect(pythons: list[str], force: bool = False) -> dict[str, Any]:
    """Is there an NVIDIA GPU? Any of nvidia-smi, /dev/nvidia0 or NVML seeing one says yes."""
    smi = _nvidia_smi()
    dev = os.path.exists("/dev/nvidia0")
    nvml = _nvml(pythons)
    found = bool(smi["gpus"]) or dev or bool(nvml.get("readable"))
    parts = [smi["error"] or f"nvidia-smi lists {len(smi['gpus'])} GPU(s): {'; '.join(smi['gpus'])}",
             "/dev/nvidia0 present" if dev else "no /dev/nvidia0",
             f"NVML readable: {nvml['detail']}" if nvml.get("readable") else f"NVML unreadable: {nvml['detail']}"]
    names = [g["name"] for g in nvml.get("gpus", [])] or [s.split(":", 1)[-1].split("(UUID")[0].strip()
                                                          for s in smi["gpus"]]
    gpu = None
    if found or force:
        gpu = {"names": names, "count": len(names), "driver": nvml.get("driver"),
               "energy_counter": [g["energy_counter"] for g in nvml.get("gpus", [])] or None}
        if force and not found:
            gpu["forced"] = True
    return {"gpu": gpu, "found": found, "forced": force and not found, "reason": "; ".join(parts),
            "nvidia_smi": smi, "dev_nvidia0": dev, "nvml": nvml}


def nvml_mode(source: str | None) -> str | None:
    """Which NVML reading a meter source string names: the energy counter, sampled power, or both."""
    if not source or "NVML" not in source:
        return None
    counter, sampled = "energy counter" in source, "sampled power" in source
    return "energy counter + sampled power" if counter and sampled else (
        "energy counter" if counter else "sampled power" if sampled else None)


def nvml_window(seconds: float) -> dict[str, Any]:
    from toolchain.energy import nvml

    meter = nvml.open()
    try:
        token = meter.begin()
        time.sleep(max(seconds, meter.min_window_s))
        reading = meter.end(token)
    finally:
        meter.close()
    return {"source": meter.source, "mode": nvml_mode(meter.source), "min_window_s": meter.min_window_s,
            "joules": reading.joules, "total_j": reading.total_j, "seconds": reading.seconds,
            "samples": reading.samples, "watts": reading.total_j / reading.seconds if reading.seconds else None}


def _load(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def _stat(d: dict | None, *keys: str) -> Any:
    for k in keys:
        if not isinstance(d, dict):
            return None
        d = d.get(k)
    return d


def _mj(x: Any) -> float | None:
    return None if x is None else x * 1000.0


def compare_rows(doc: dict, source: str = "") -> tuple[list[dict], list[dict]]:
    """The rows of one `toolchain compare --json` document, and the targets it skipped."""
    rows = []
    for c in doc.get("columns", []):
        j = _stat(c, "joules_per_inference", "net") or {}
        meter = c.get("meter") or {}
        rows.append({
            "model": Path(str(c.get("model", ""))).name, "precision": c.get("precision"), "target": c.get("target"),
            "latency_ms": _stat(c, "latency_ms", "mean_ms"), "latency_median_ms": _stat(c, "latency_ms", "median_ms"),
            "mj_per_inference": _mj(j.get("mean")), "mj_ci95": [_mj(x) for x in j.get("ci95", [])] or None,
            "watts": _stat(c, "watts", "gross", "mean"), "watts_net": _stat(c, "watts", "net", "mean"),
            "gco2e_per_1000": _stat(c, "gco2e_per_1000", "mean"),
            "energy": _stat(c, "joules_per_inference", "kind") or meter.get("kind"),
            "meter": meter.get("name"), "meter_source": meter.get("source"), "nvml_mode": nvml_mode(meter.get("source")),
            "idle_watts": meter.get("idle_watts"), "repeats": c.get("repeats"),
            "latency_ratio": c.get("latency_ratio"), "energy_ratio": c.get("energy_ratio"), "source": source})
    skipped = [{"target": s.get("target"), "reason": s.get("reason"), "source": source} for s in doc.get("skipped", [])]
    return rows, skipped


def build_table(docs: list[tuple[str, dict]]) -> tuple[list[dict], list[dict]]:
    """Rows of every comparison, sorted model, precision, then target in x86-cpu, cuda, tensorrt order."""
    order = {"x86-cpu": 0, "cuda": 1, "tensorrt": 2}
    rows, skipped = [], []
    for source, doc in docs:
        r, s = compare_rows(doc, source)
        rows += r
        skipped += s
    rows.sort(key=lambda r: (r["model"].replace(".int8", ""), r["precision"] or "", order.get(r["target"], 9),
                             r["target"] or ""))
    return rows, skipped


def profile_row(doc: dict, source: str = "") -> dict:
    m = doc.get("measurement") or {}
    meter = doc.get("meter") or {}
    j = _stat(m, "joules_per_inference", "net") or {}
    return {"model": _stat(doc, "model", "name"), "precision": _stat(doc, "model", "precision"),
            "target": _stat(doc, "target", "name"), "providers": _stat(doc, "target", "providers"),
            "latency_ms": _stat(m, "latency_ms", "mean_ms"), "mj_per_inference": _mj(j.get("mean")),
            "watts": _stat(m, "watts", "gross", "mean"), "energy": _stat(m, "joules_per_inference", "kind"),
            "meter": meter.get("name"), "meter_source": meter.get("source"), "nvml_mode": nvml_mode(meter.get("source")),
            "repeats": m.get("repeats"), "source": source}


def read_steps(outdir: Path) -> list[dict]:
    steps = []
    path = outdir / "steps.tsv"
    if not path.is_file():
        return steps
    for line in path.read_text().splitlines():
        parts = line.split("\t")
        if len(parts) < 7:
            continue
        name, rc, seconds, limit, stdout, log, cmd = parts[:7]
        step = {"name": name, "rc": None, "seconds": float(seconds or 0), "limit_s": int(limit or 0),
                "stdout": stdout or None, "log": log or None, "cmd": cmd.strip()}
        if rc.startswith("skipped"):
            step["status"] = rc
        else:
            step["rc"] = int(rc)
            step["status"] = ("ok" if step["rc"] == 0 else
                              "timed out" if step["rc"] in (124, 137) else f"failed (exit {step['rc']})")
            if step["rc"] != 0 and log:  # the last line of its log: the toolchain's one-line error
                try:
                    tail = [x for x in (outdir / log).read_text(errors="replace").splitlines() if x.strip()]
                except OSError:
                    tail = []
                step["error"] = _one_line(tail[-1], 600) if tail else None
        steps.append(step)
    return steps


def _targets(outdir: Path) -> dict[str, dict]:
    doc = _load(outdir / "json" / "targets.json") or {}
    return {t["name"]: {"usable": t.get("usable"), "reason": t.get("reason") or ""}
            for t in doc.get("targets", []) if isinstance(t, dict) and "name" in t}


def build_summary(outdir: Path) -> dict[str, Any]:
    outdir = Path(outdir)
    det = _load(outdir / "detect.json") or {"gpu": None, "reason": "detection did not run", "nvml": {}}
    steps = read_steps(outdir)
    targets = _targets(outdir)
    doctor = _load(outdir / "json" / "doctor.json")
    jdir = outdir / "json"
    compares = [(str(p.relative_to(outdir)), d) for p in sorted(jdir.glob("compare-*.json"))
                if isinstance(d := _load(p), dict) and "columns" in d]
    rows, skipped = build_table(compares)
    profiles = [profile_row(d, str(p.relative_to(outdir))) for p in sorted(jdir.glob("profile-*.json"))
                if isinstance(d := _load(p), dict) and "measurement" in d]
    probe = _load(jdir / "nvml-window.json")
    doctor_nvml = next((m for m in (doctor or {}).get("meters", []) if m.get("name") == "nvml"), None)
    modes = sorted({r["nvml_mode"] for r in rows + profiles if r["nvml_mode"]})
    nvml = {"readable": (doctor_nvml or {}).get("readable", det.get("nvml", {}).get("readable")),
            "detail": (doctor_nvml or {}).get("detail") or det.get("nvml", {}).get("detail"),
            "window": probe, "modes_used": modes or ([probe["mode"]] if probe and probe.get("mode") else [])}
    ran = [s for s in steps if s["rc"] is not None]
    failed = [s["name"] for s in ran if s["rc"] != 0]
    gpu = det.get("gpu")
    if gpu is None:
        result = "no GPU"
    elif not failed:
        result = f"GPU: all {len(ran)} steps passed"
    else:
        result = f"GPU: {len(failed)} of {len(ran)} steps failed ({', '.join(failed)})"
    exports = []
    for p in sorted(jdir.glob("export-*.json")):
        d = _load(p)
        if isinstance(d, dict) and "path" in d:
            exports.append({"model": d.get("source"), "path": d.get("path"), "size_bytes": d.get("size_bytes"),
                            "parity": [x.get("passed") for x in d.get("parity", [])], "seconds": d.get("seconds")})
    quant = []
    for p in sorted(jdir.glob("quantize-*.json")):
        d = _load(p)
        if isinstance(d, dict) and "rows" in d:
            int8 = next((r for r in d["rows"] if r.get("label") != "FP32"), {})
            quant.append({"model": d.get("model"), "output": d.get("output"), "preset": d.get("preset"),
                          "chosen": d.get("chosen"), "fidelity": int8.get("fidelity"),
                          "size_bytes": int8.get("size_bytes"), "failed": d.get("failed")})
    return {
        "gpu": gpu, "result": result, "reason": det.get("reason"), "forced": bool(det.get("forced")),
        "cuda": targets.get("cuda"), "tensorrt": targets.get("tensorrt"), "x86-cpu": targets.get("x86-cpu"),
        "nvml": nvml,
        "doctor": {"text": "logs/doctor.txt" if (outdir / "logs" / "doctor.txt").is_file() else None,
                   "json": "json/doctor.json" if doctor is not None else None,
                   "versions": (doctor or {}).get("versions"), "problems": (doctor or {}).get("problems"),
                   "providers": [p["name"] for p in (doctor or {}).get("providers", []) if p.get("usable")]},
        "table": rows, "skipped_targets": skipped, "profiles": profiles, "exports": exports, "quantization": quant,
        "steps": steps, "failed_steps": failed, "output": str(outdir),
    }


def _f(x: Any, fmt: str = ".3g") -> str:
    return "-" if x is None else format(x, fmt)


def render_markdown(s: dict) -> str:
    out = ["# GPU check", "", f"**Result: {s['result']}**", "", f"- decided by: {s['reason']}"]
    if s.get("gpu"):
        g = s["gpu"]
        out.append(f"- GPU: {', '.join(g.get('names') or []) or 'unknown'} (driver {g.get('driver') or '?'})"
                   + (" - FORCED (no GPU really found)" if g.get("forced") else ""))
    for t in ("cuda", "tensorrt"):
        info = s.get(t)
        if info:
            out.append(f"- target {t}: " + ("usable" if info["usable"] else f"refused: {info['reason']}"))
    n = s.get("nvml") or {}
    out.append(f"- NVML: {'readable' if n.get('readable') else 'unreadable'}: {n.get('detail') or '-'}"
               + (f"; reading used: {', '.join(n['modes_used'])}" if n.get("modes_used") else ""))
    if s.get("table"):
        out += ["", "## Models x targets (`toolchain compare`; energy net of idle)", "",
                "| model | precision | target | latency ms | x first | mJ/inference | 95% CI | W | energy | meter |",
                "|---|---|---|---:|---:|---:|---|---:|---|---|"]
        for r in s["table"]:
            ci = "-" if not r["mj_ci95"] else f"{_f(r['mj_ci95'][0], '.4g')}-{_f(r['mj_ci95'][1], '.4g')}"
            meter = r["meter"] or "-"
            if r["nvml_mode"]:
                meter += f" ({r['nvml_mode']})"
            out.append(f"| {r['model']} | {r['precision']} | {r['target']} | {_f(r['latency_ms'], '.3f')} | "
                       f"{_f(r['latency_ratio'], '.2f')} | {_f(r['mj_per_inference'], '.4g')} | {ci} | "
                       f"{_f(r['watts'])} | {r['energy'] or '-'} | {meter} |")
    for sk in s.get("skipped_targets", []):
        out.append(f"- skipped {sk['target']} ({sk['source']}): {sk['reason']}")
    if s.get("profiles"):
        out += ["", "## Profiles (`toolchain profile`)", "", "| model | target | latency ms | mJ/inference | W | meter |",
                "|---|---|---:|---:|---:|---|"]
        for r in s["profiles"]:
            out.append(f"| {r['model']} | {r['target']} | {_f(r['latency_ms'], '.3f')} | "
                       f"{_f(r['mj_per_inference'], '.4g')} | {_f(r['watts'])} | {r['meter_source'] or r['meter']} |")
    out += ["", "## Steps", "", "| step | status | seconds | command |", "|---|---|---:|---|"]
    for st in s.get("steps", []):
        status = st["status"] + (f": {st['error']}" if st.get("error") else "")
        out.append(f"| {st['name']} | {status.replace('|', '/')} | {st['seconds']:.1f} | "
                   f"`{st['cmd'].replace('|', '/')}` |")
    return "\n".join(out) + "\n"


def one_line(s: dict) -> str:
    if s["gpu"] is None:
        msg = f"gpu_check: no GPU ({s['reason']})"
    else:
        msg = f"gpu_check: {s['result']}"
    for t in ("cuda", "tensorrt"):
        info = s.get(t)
        if info and not info["usable"]:
            msg += f"; {t} refused: {_one_line(info['reason'].split(': ')[0], 160)}"
        elif info:
            msg += f"; {t} usable"
    if s.get("table"):
        msg += f"; {len(s['table'])} measured columns"
    return msg + f"; summary in {s['output']}/summary.json"


def summarize(outdir: Path) -> dict[str, Any]:
    s = build_summary(outdir)
    (outdir / "steps.json").write_text(json.dumps(s["steps"], indent=2) + "\n")
    (outdir / "summary.json").write_text(json.dumps(s, indent=2) + "\n")
    (outdir / "summary.md").write_text(render_markdown(s))
    return s


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    d = sub.add_parser("detect")
    d.add_argument("outdir", type=Path)
    d.add_argument("--python", action="append", default=[])
    d.add_argument("--force", action="store_true")
    w = sub.add_parser("nvml-window")
    w.add_argument("--seconds", type=float, default=0.5)
    x = sub.add_parser("x86-missing")
    x.add_argument("compare_json", type=Path)
    s = sub.add_parser("summarize")
    s.add_argument("outdir", type=Path)
    a = ap.parse_args(argv)
    if a.cmd == "detect":
        det = detect(a.python or [sys.executable], force=a.force)
        (a.outdir / "detect.json").write_text(json.dumps(det, indent=2) + "\n")
        return 0 if det["gpu"] is not None else 3
    if a.cmd == "nvml-window":
        try:
            print(json.dumps(nvml_window(a.seconds), indent=2))
        except Exception as exc:  # MeterUnavailableError and the like: one line, on stdout's JSON and stderr
            msg = _one_line(f"{type(exc).__name__}: {exc}", 600)
            print(json.dumps({"error": msg}))
            print(msg, file=sys.stderr)
            return 1
        return 0
    if a.cmd == "x86-missing":
        doc = _load(a.compare_json)
        cols = doc.get("columns", []) if isinstance(doc, dict) else []
        return 1 if any(c.get("target") == "x86-cpu" for c in cols) else 0
    print(one_line(summarize(a.outdir)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
