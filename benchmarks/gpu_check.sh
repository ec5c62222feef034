#!/usr/bin/env bash
# GPU check: the CUDA / TensorRT targets and the NVML meter, end to end, in one run.
#
#   benchmarks/gpu_check.sh [OUTDIR]      (default: $OUT if set, else benchmarks/results/gpu_check)
#
# With an NVIDIA GPU (nvidia-smi lists one, /dev/nvidia0 exists, or NVML sees one):
#   1. makes .venv-gpu (torch-free; like `make install-openvino`): the project's light dependencies and its `gpu`
#      extra (onnxruntime-gpu, nvidia-ml-py), then `pip install --no-deps -e .`. Offline machines: wheels in
#      $GPU_CHECK_WHEELHOUSE (default .whl/) are installed with --no-index; and the packages of the python that
#      made the venv stay visible (a .pth file; GPU_CHECK_INHERIT_SITE=0 turns that off), so what is already
#      installed there (nvidia-ml-py, numpy, onnx ...) is used instead of downloaded
#   2. `toolchain doctor` (tables and --json), `toolchain targets --json`, nvidia-smi -q, and one idle window of
#      the toolchain's NVML meter (which reading it uses: the energy counter or sampled power)
#   3. exports resnet-50 and minilm and quantizes them to INT8 with the `gpu` preset, in .venv (torch), or in a
#      python3 that has torch when there is no .venv; the two models' chains run side by side
#   4. `toolchain profile` of both FP32 models on cuda and tensorrt with --meter nvml
#   5. `toolchain compare FP32 INT8 --targets x86-cpu,cuda,tensorrt` per model (target meters: rapl, nvml); when
#      x86-cpu was skipped (no RAPL in a VM) a second compare measures it with --meter estimate, labelled so
#   6. writes under OUTDIR: detect.json, nvidia-smi-q.txt, json/ (stdout of every --json command), logs/,
#      profiles/ and compare/ (cost tables, charts), steps.json and summary.json / summary.md
# Every step has a timeout and all share one budget (GPU_CHECK_BUDGET_S, default 450 s); a failing step never
# stops the others. Exit 0 when every step passed, 1 otherwise.
#
# Without an NVIDIA GPU: runs doctor, `toolchain targets --json` and `toolchain targets cuda` on the CPU build
# (.venv), records the GPU steps as skipped, writes summary.json {"gpu": null, "result": "no GPU", "reason": ...}
# and exits 0 (a few seconds).
#
# On the lent device machine only 8 files come back from $OUT: run it into a scratch folder and bring back an
# archive, e.g.  bash benchmarks/gpu_check.sh /tmp/gc; tar czf "$OUT/gc.tgz" -C /tmp gc; cp /tmp/gc/summary.* "$OUT"
#
# Knobs (testing): GPU_CHECK_MODELS ("resnet-50 minilm"), GPU_CHECK_VENV (.venv-gpu), GPU_CHECK_SKIP_INSTALL=1,
# GPU_CHECK_PYTHON (python3), GPU_CHECK_WORK (models and the TensorRT engine cache), GPU_CHECK_FORCE_GPU=1 (take
# the GPU branch without a GPU, to rehearse it).
set -u

SELF="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)/$(basename "${BASH_SOURCE[0]}")"
ROOT="$(cd "$(dirname "$SELF")/.." && pwd)"
HELPER="$ROOT/benchmarks/gpu_check.py"
MAIN='import sys; from toolchain.cli import main; sys.argv[0] = "toolchain"; sys.exit(main())'
BASE_PY="${GPU_CHECK_PYTHON:-python3}"
VENV_GPU="${GPU_CHECK_VENV:-$ROOT/.venv-gpu}"
WHEELHOUSE="${GPU_CHECK_WHEELHOUSE:-$ROOT/.whl}"

# ---- internal: the GPU venv's install, run as its own process so that the step's timeout applies ------------
if [ "${1:-}" = "__install_gpu_venv" ]; then
    set -o pipefail
    venv="$2"
    rc=0
    if [ ! -x "$venv/bin/python" ]; then
        echo "+ $BASE_PY -m venv $venv"
        "$BASE_PY" -m venv "$venv" || exit 10
    fi
    vpy="$venv/bin/python"
    if [ "${GPU_CHECK_INHERIT_SITE:-1}" = 1 ]; then
        site="$("$vpy" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')"
        "$BASE_PY" -c 'import site; print("\n".join(site.getsitepackages()))' >"$site/_gpu_check_base.pth" || rc=11
        echo "+ packages of $BASE_PY visible in $venv through $site/_gpu_check_base.pth:"
        cat "$site/_gpu_check_base.pth"
    fi
    # the project's dependencies without the heavy ones (as `make install-openvino`), then the `gpu` extra
    light="$("$vpy" -c 'import tomllib; p = tomllib.load(open("'"$ROOT"'/pyproject.toml", "rb"))["project"]
heavy = ("torch", "torch-pruning", "transformers", "onnxscript")
print(" ".join(d.split(";")[0].replace(" ", "") for d in p["dependencies"] if not d.startswith(heavy)))')" || rc=12
    gpu_extra="$("$vpy" -c 'import tomllib; p = tomllib.load(open("'"$ROOT"'/pyproject.toml", "rb"))["project"]
print(" ".join(p["optional-dependencies"]["gpu"]))')" || rc=12
    pip=("$vpy" -m pip install --disable-pip-version-check --no-input)
    if compgen -G "$WHEELHOUSE/*.whl" >/dev/null; then
        pip+=(--no-index --find-links "$WHEELHOUSE")
        echo "+ installing from the wheelhouse $WHEELHOUSE (no index)"
    else
        pip+=(--timeout 15 --retries 1)
    fi
    read -r -a light_a <<<"$light"
    read -r -a gpu_a <<<"$gpu_extra"
    ort=() others=()
    for req in "${gpu_a[@]}"; do
        case "$req" in onnxruntime*) ort+=("$req") ;; *) others+=("$req") ;; esac
    done
    # separately: onnxruntime-gpu is the one an offline machine may lack; the others may be there already
    echo "+ ${pip[*]} ${light_a[*]} ${others[*]}"
    "${pip[@]}" "${light_a[@]}" "${others[@]}" || rc=13
    echo "+ ${pip[*]} ${ort[*]}"
    "${pip[@]}" "${ort[@]}" || rc=14
    # the project itself: with the setuptools already there (offline), else in an isolated build (needs
    # setuptools>=77 for the license string: from the index or the wheelhouse). Failing both, the script runs
    # the toolchain from the repo on PYTHONPATH with this venv's python
    echo "+ $vpy -m pip install --no-deps --no-build-isolation -e $ROOT"
    if ! "$vpy" -m pip install --disable-pip-version-check --no-input --no-deps --no-build-isolation -e "$ROOT"; then
        echo "+ ${pip[*]} --no-deps -e $ROOT"
        "${pip[@]}" --no-deps -e "$ROOT" || rc=15
    fi
    "$vpy" -m pip list 2>/dev/null | grep -i -E '^(onnxruntime|nvidia-ml-py|numpy|onnx|toolchain) ' || true
    exit "$rc"
fi

# ---- set-up ------------------------------------------------------------------------------------------------
OUTDIR="${1:-${OUT:-$ROOT/benchmarks/results/gpu_check}}"
mkdir -p "$OUTDIR" || { echo "gpu_check: cannot create $OUTDIR" >&2; exit 2; }
OUTDIR="$(cd "$OUTDIR" && pwd)"
# only what this script writes is cleared
rm -rf "$OUTDIR/json" "$OUTDIR/logs" "$OUTDIR/profiles" "$OUTDIR/compare"
rm -f "$OUTDIR/steps.tsv" "$OUTDIR/steps.json" "$OUTDIR/summary.json" "$OUTDIR/summary.md" \
      "$OUTDIR/detect.json" "$OUTDIR/nvidia-smi-q.txt"
mkdir -p "$OUTDIR/json" "$OUTDIR/logs"
BUDGET_S="${GPU_CHECK_BUDGET_S:-450}"
START=$SECONDS
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 PIP_DISABLE_PIP_VERSION_CHECK=1 PYTHONUNBUFFERED=1 COLUMNS=200
command -v "$BASE_PY" >/dev/null 2>&1 || BASE_PY="$ROOT/.venv/bin/python"

now() { echo "${EPOCHREALTIME:-$(date +%s)}"; }

# record NAME STATUS SECONDS LIMIT STDOUT LOG CMD... -> one line of steps.tsv
record() {
    local name="$1" status="$2" secs="$3" limit="$4" out="$5" log="$6"
    shift 6
    printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$name" "$status" "$secs" "$limit" "${out#"$OUTDIR"/}" \
        "${log#"$OUTDIR"/}" "$(printf '%q ' "$@")" >>"$OUTDIR/steps.tsv"
}

# step NAME TIMEOUT_S STDOUT_FILE CMD... : run CMD with its own timeout (capped by what is left of the budget)
step() {
    local name="$1" limit="$2" out="$3"
    shift 3
    local log="$OUTDIR/logs/$name.log" left=$((BUDGET_S - (SECONDS - START)))
    if [ "$left" -lt 10 ]; then
        record "$name" "skipped: out of time (budget ${BUDGET_S}s)" 0 0 "" "" "$@"
        return 124
    fi
    [ "$limit" -gt "$left" ] && limit=$left
    local t0 rc
    t0="$(now)"
    timeout -k 5 "$limit" "$@" >"$out" 2>"$log" </dev/null
    rc=$?
    record "$name" "$rc" "$(awk -v a="$t0" -v b="$(now)" 'BEGIN { printf "%.2f", b - a }')" "$limit" "$out" "$log" "$@"
    return "$rc"
}

skip() {  # skip NAME REASON CMD...
    local name="$1" reason="$2"
    shift 2
    record "$name" "skipped: $reason" 0 0 "" "" "$@"
}

# tc_for ARRAY PYTHON: ARRAY=(the toolchain command of PYTHON): its console script, else the repo on PYTHONPATH
tc_for() {
    local -n _tc="$1"
    local py
    py="$(command -v "$2" || echo "$2")"
    if [ -x "$(dirname "$py")/toolchain" ]; then
        _tc=("$(dirname "$py")/toolchain")
    else
        _tc=(env "PYTHONPATH=$ROOT" "$py" -c "$MAIN")
    fi
}

# ---- detect ------------------------------------------------------------------------------------------------
pythons=()
[ -x "$VENV_GPU/bin/python" ] && pythons+=(--python "$VENV_GPU/bin/python")
[ -x "$ROOT/.venv/bin/python" ] && pythons+=(--python "$ROOT/.venv/bin/python")
pythons+=(--python "$BASE_PY")
force=()
[ "${GPU_CHECK_FORCE_GPU:-0}" = 1 ] && force=(--force)
if "$BASE_PY" "$HELPER" detect "$OUTDIR" "${pythons[@]}" "${force[@]}" 2>"$OUTDIR/logs/detect.log"; then
    HAVE_GPU=1
else
    HAVE_GPU=0
fi

MODELS=()
read -r -a MODELS <<<"${GPU_CHECK_MODELS:-resnet-50 minilm}"

if [ "$HAVE_GPU" = 0 ]; then
    # ---- no GPU: the CPU build tells what it can, and the GPU targets' refusal ----------------------------
    TC=()
    if [ -x "$ROOT/.venv/bin/python" ]; then tc_for TC "$ROOT/.venv/bin/python"; else tc_for TC "$BASE_PY"; fi
    step doctor_json 120 "$OUTDIR/json/doctor.json" "${TC[@]}" doctor --json &
    step doctor 120 "$OUTDIR/logs/doctor.txt" "${TC[@]}" doctor &
    step targets_json 120 "$OUTDIR/json/targets.json" "${TC[@]}" targets --json &
    step targets_cuda 120 "$OUTDIR/logs/targets-cuda.txt" "${TC[@]}" targets cuda tensorrt &
    wait
    skip nvidia_smi_q "no GPU" nvidia-smi -q
    skip install_gpu_venv "no GPU" bash "$SELF" __install_gpu_venv "$VENV_GPU"
    skip nvml_window "no GPU" "$HELPER" nvml-window
    for m in "${MODELS[@]}"; do
        skip "export-$m" "no GPU" toolchain export "$m"
        skip "quantize-$m" "no GPU" toolchain quantize "$m.onnx" --target gpu
        for t in cuda tensorrt; do skip "profile-$m-$t" "no GPU" toolchain profile "$m.onnx" --target "$t" --meter nvml; done
        skip "compare-$m" "no GPU" toolchain compare "$m.onnx" "$m.int8.onnx" --targets x86-cpu,cuda,tensorrt
    done
    "$BASE_PY" "$HELPER" summarize "$OUTDIR"
    exit 0
fi

# ---- GPU ---------------------------------------------------------------------------------------------------
WORK="${GPU_CHECK_WORK:-${TMPDIR:-/tmp}/gpu_check_work}"  # the models and the TensorRT engine cache
mkdir -p "$WORK" && WORK="$(cd "$WORK" && pwd)"
if command -v nvidia-smi >/dev/null 2>&1; then
    step nvidia_smi_q 60 "$OUTDIR/nvidia-smi-q.txt" nvidia-smi -q
else
    skip nvidia_smi_q "no nvidia-smi on PATH" nvidia-smi -q
fi

# 1. the GPU venv
if [ "${GPU_CHECK_SKIP_INSTALL:-0}" = 1 ] && [ -x "$VENV_GPU/bin/python" ]; then
    skip install_gpu_venv "GPU_CHECK_SKIP_INSTALL=1 (using $VENV_GPU as it is)" bash "$SELF" __install_gpu_venv "$VENV_GPU"
else
    step install_gpu_venv 300 "$OUTDIR/logs/install_gpu_venv.txt" bash "$SELF" __install_gpu_venv "$VENV_GPU"
fi
GPU_PY="$BASE_PY"
[ -x "$VENV_GPU/bin/python" ] && GPU_PY="$VENV_GPU/bin/python"
TC_GPU=()
tc_for TC_GPU "$GPU_PY"

# export and quantize need torch: .venv, else a python3 that has it (the device image's)
if [ -x "$ROOT/.venv/bin/python" ] && "$ROOT/.venv/bin/python" -c 'import torch' >/dev/null 2>&1; then
    EXPORT_PY="$ROOT/.venv/bin/python"
else
    EXPORT_PY="$BASE_PY"
fi
TC_EXPORT=()
tc_for TC_EXPORT "$EXPORT_PY"

# 2. doctor, targets, the NVML meter
step doctor_json 120 "$OUTDIR/json/doctor.json" "${TC_GPU[@]}" doctor --json
step doctor 120 "$OUTDIR/logs/doctor.txt" "${TC_GPU[@]}" doctor
step targets_json 120 "$OUTDIR/json/targets.json" "${TC_GPU[@]}" targets --json
step targets_cuda 120 "$OUTDIR/logs/targets-cuda.txt" "${TC_GPU[@]}" targets cuda tensorrt
step nvml_window 60 "$OUTDIR/json/nvml-window.json" env "PYTHONPATH=$ROOT" "$GPU_PY" "$HELPER" nvml-window --seconds 0.5

# 3. export + INT8 (gpu preset), one chain per model, side by side. The guard is opened wide: resnet-50 has
#    random weights and the calibration data is synthetic, so accuracy means nothing here (fidelity is recorded)
chain() {
    local m="$1"
    step "export-$m" 240 "$OUTDIR/json/export-$m.json" "${TC_EXPORT[@]}" export "$m" -o "$WORK/$m.onnx" -f --json \
        || rm -f "$WORK/$m.onnx"
    if [ -f "$WORK/$m.onnx" ]; then
        step "quantize-$m" 240 "$OUTDIR/json/quantize-$m.json" "${TC_EXPORT[@]}" quantize "$WORK/$m.onnx" \
            --target gpu --calib random --calib-samples 32 --eval-samples 32 --runs 3 --batch-sizes 1 \
            --max-accuracy-drop 100 --min-cosine 0 -o "$WORK/$m.int8.onnx" -f --json || rm -f "$WORK/$m.int8.onnx"
    else
        rm -f "$WORK/$m.int8.onnx"
        skip "quantize-$m" "no FP32 model (export failed)" toolchain quantize "$m.onnx" --target gpu
    fi
}
for m in "${MODELS[@]}"; do chain "$m" & done
wait

# 4. profiles on the GPU targets (one at a time: measurements must not overlap). cwd WORK: the TensorRT
#    engine cache (trt_engines/) goes there and is reused by the compare below
cd "$WORK" || exit 2
MEASURE=(--repeats 3 --window 0.5 --idle 1 --warmup 3 --profile-runs 5)
mkdir -p "$OUTDIR/profiles" "$OUTDIR/compare"
for m in "${MODELS[@]}"; do
    for t in cuda tensorrt; do
        if [ -f "$WORK/$m.onnx" ]; then
            limit=90
            [ "$t" = tensorrt ] && limit=240  # the first session builds the TensorRT engines
            step "profile-$m-$t" "$limit" "$OUTDIR/json/profile-$m-$t.json" "${TC_GPU[@]}" profile "$WORK/$m.onnx" \
                --target "$t" --meter nvml "${MEASURE[@]}" -o "$OUTDIR/profiles/$m-$t" -f --json
        else
            skip "profile-$m-$t" "no FP32 model (export failed)" toolchain profile "$m.onnx" --target "$t" --meter nvml
        fi
    done
done

# 5. FP32 vs INT8 on CPU, CUDA and TensorRT
for m in "${MODELS[@]}"; do
    files=()
    for f in "$WORK/$m.onnx" "$WORK/$m.int8.onnx"; do [ -f "$f" ] && files+=("$f"); done
    if [ "${#files[@]}" = 0 ]; then
        skip "compare-$m" "no model (export failed)" toolchain compare "$m.onnx" "$m.int8.onnx" --targets x86-cpu,cuda,tensorrt
        continue
    fi
    step "compare-$m" 300 "$OUTDIR/json/compare-$m.json" "${TC_GPU[@]}" compare "${files[@]}" \
        --targets x86-cpu,cuda,tensorrt "${MEASURE[@]}" -o "$OUTDIR/compare/$m" -f --json
    if "$BASE_PY" "$HELPER" x86-missing "$OUTDIR/json/compare-$m.json"; then
        step "compare-$m-cpu-estimate" 120 "$OUTDIR/json/compare-$m-cpu-estimate.json" "${TC_GPU[@]}" compare \
            "${files[@]}" --targets x86-cpu --meter estimate "${MEASURE[@]}" -o "$OUTDIR/compare/$m-cpu-estimate" -f --json
    fi
done

# 6. summary
cd "$ROOT" || exit 2
"$BASE_PY" "$HELPER" summarize "$OUTDIR"
if "$BASE_PY" -c 'import json, sys; sys.exit(1 if json.load(open(sys.argv[1]))["failed_steps"] else 0)' \
    "$OUTDIR/summary.json"; then
    exit 0
fi
exit 1
