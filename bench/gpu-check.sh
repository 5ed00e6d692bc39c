#!/usr/bin/env bash
# GPU check: does the service run on an NVIDIA GPU (DEVICE=cuda), and what does that buy against DEVICE=cpu on the
# same machine? Prepared for a machine with a GPU and no network. Every step runs under `timeout`, budgeted to end by
# GPU_CHECK_LIMIT (450 s); with the kill grace periods and the final report the script ends within 8 minutes.
#
#   bash bench/gpu-check.sh [--fp16]
#
# Steps, each under `timeout`, each with its elapsed time printed:
#   1. node, node_modules, nvidia-smi present (no nvidia-smi: stop at once)
#   2. onnxruntime-node's CUDA provider libraries (bin/napi-v6/linux/x64/libonnxruntime_providers_{cuda,shared}.so);
#      when absent, `ONNXRUNTIME_NODE_INSTALL=cuda12 node node_modules/onnxruntime-node/script/install` (NuGet);
#      when that fails (no network), say why and stop
#   3. `ldd` of the CUDA provider: every CUDA 12 / cuDNN 9 library it needs found (else look in the usual places and
#      pip's nvidia-* wheels, add what is found to LD_LIBRARY_PATH, or stop naming what is missing)
#   4. nvidia-smi summary
#   5. `npm run build` when dist/server.js is missing or older than src/
#   6. models/default: the server (`node dist/server.js`, DEVICE=cuda, then DEVICE=cpu), /health/ready must name the
#      provider asked for; 1 and 32 streamed clients, GPU_CHECK_SECONDS each (bench/gpu-check.ts)
#   7. the same for the SmolLM2-135M-shaped package (~/.cache/chameleon/smollm2-135m-package, MAX_MODEL_LEN=512) when
#      cached; made first when /usr/bin/python3 has torch and onnx; else skipped
#   8. with --fp16: the same for a float16 import of a cached checkpoint (GPU_CHECK_FP16_HF_DIR)
#   9. the table: CUDA vs CPU tokens/s and their ratio, and the decoder run per decode step (the per-step host round
#      trip on CUDA) from /metrics' chameleon_forward_seconds{phase="decode"}
#
# Environment (all optional):
#   GPU_CHECK_ALLOW_CPU=1   no GPU needed: skip every CUDA part (steps 2-4, the DEVICE=cuda runs); for trying it out
#   GPU_CHECK_SECONDS       measured seconds per load (default 8)
#   GPU_CHECK_WARMUP        unmeasured seconds at the start of each load (default 2)
#   GPU_CHECK_LIMIT         the steps' time limit, s (default 450); steps that no longer fit are skipped
#   GPU_CHECK_SECTIONS      which packages: default,real-shape,fp16 (default all; fp16 only with --fp16)
#   GPU_CHECK_FP16_HF_DIR   Hugging Face folder to import in float16 (default ~/.cache/chameleon/smollm2-135m);
#                           its package is written beside it, <dir>-fp16-package
#   PYTHON                  the Python with torch and onnx for the imports (default /usr/bin/python3)
#
# Exit status: 0 all checks passed; 2 usage or environment; 3 the server did not run on the provider asked for;
# 4 no GPU / nvidia-smi failed; 5 CUDA provider libraries absent and not installable; 6 their dependencies missing;
# 7 build failed; 8 a load failed or timed out.
set -uo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.." || exit 2
T0=$(date +%s)
LIMIT=${GPU_CHECK_LIMIT:-450}
LOAD_SECONDS=${GPU_CHECK_SECONDS:-8}
WARMUP=${GPU_CHECK_WARMUP:-2}
ALLOW_CPU=${GPU_CHECK_ALLOW_CPU:-0}
SECTIONS=${GPU_CHECK_SECTIONS:-default,real-shape,fp16}
PYTHON=${PYTHON:-/usr/bin/python3}
CACHE="$HOME/.cache/chameleon"
FP16_HF_DIR=${GPU_CHECK_FP16_HF_DIR:-$CACHE/smollm2-135m}
RESERVE=20  # seconds kept for the report and the server's shutdown
FP16=0
for arg in "$@"; do
  case "$arg" in
    --fp16) FP16=1 ;;
    -h|--help) sed -n '2,/^set -uo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
    *) echo "unknown argument: $arg (only --fp16)" >&2; exit 2 ;;
  esac
done

WORK=$(mktemp -d "${TMPDIR:-/tmp}/gpu-check.XXXXXX")
RESULTS="$WORK/results.jsonl"
: > "$RESULTS"
TSX=node_modules/.bin/tsx
STATUS=0
STEP=""
STEP_T0=$T0

elapsed() { echo $(( $(date +%s) - T0 )); }
left() { echo $(( LIMIT - $(elapsed) )); }
step() { STEP=$1; STEP_T0=$(date +%s); printf '\n== %s (t=%ss)\n' "$STEP" "$(elapsed)"; }
done_step() { printf -- '-- %s: %ss%s (total %ss of %ss)\n' "$STEP" "$(( $(date +%s) - STEP_T0 ))" "${1:+, $1}" "$(elapsed)" "$LIMIT"; }
info() { printf '   %s\n' "$*"; }
SKIPPED=()
finish() {
  printf '\n== summary (t=%ss)\n' "$(elapsed)"
  if [ -s "$RESULTS" ]; then timeout -k 5 30 "$TSX" bench/gpu-check.ts report "$RESULTS" || { [ "$STATUS" -ne 0 ] || STATUS=8; }; fi
  for s in "${SKIPPED[@]}"; do info "skipped: $s"; done
  if [ "$STATUS" -eq 0 ] && ! grep -q '"device":"cpu"' "$RESULTS"; then info "no load finished"; STATUS=8; fi
  if [ "$STATUS" -eq 0 ] && [ "$ALLOW_CPU" != 1 ] && ! grep -q '"device":"cuda"' "$RESULTS"; then info "no DEVICE=cuda load finished"; STATUS=8; fi
  if [ "$ALLOW_CPU" = 1 ]; then info "GPU_CHECK_ALLOW_CPU=1: the CUDA parts were skipped; this run checked nothing about a GPU"; fi
  printf '\ngpu-check: %s (exit %s) in %ss; results %s\n' "$([ "$STATUS" -eq 0 ] && echo PASS || echo FAIL)" "$STATUS" "$(elapsed)" "$RESULTS"
  exit "$STATUS"
}
fail() { # status message...: print, stop, summarise what finished
  local code=$1; shift
  printf '   FAIL: %s\n' "$*"
  done_step "failed"
  STATUS=$code
  finish
}
# seconds a step may take: its own budget, capped by what is left of the limit less the reserve
budget() { local want=$1 rest; rest=$(( $(left) - RESERVE )); [ "$rest" -lt "$want" ] && want=$rest; echo "$want"; }
has_section() { case ",$SECTIONS," in *",$1,"*) return 0 ;; *) return 1 ;; esac; }

# ------------------------------------------------------------------------------------------------------------- 1
step "environment"
command -v node >/dev/null || fail 2 "node is not on PATH"
NODE_MAJOR=$(node -p 'process.versions.node.split(".")[0]')
[ "$NODE_MAJOR" -ge 20 ] || fail 2 "Node >= 20 needed, found $(node --version)"
[ -d node_modules/onnxruntime-node ] && [ -x "$TSX" ] || fail 2 "node_modules is missing or incomplete (no onnxruntime-node or tsx): run npm ci first (with ONNXRUNTIME_NODE_INSTALL=cuda12 where the network reaches NuGet)"
ORT_VERSION=$(node -p 'require("./node_modules/onnxruntime-node/package.json").version')
PLATFORM=$(node -p 'process.platform + "/" + process.arch')
ORT_BIN="node_modules/onnxruntime-node/bin/napi-v6/$PLATFORM"
info "node $(node --version), onnxruntime-node $ORT_VERSION ($ORT_BIN), $(nproc) CPUs, $(awk '/MemTotal/ {printf "%.0f GiB", $2 / 1048576}' /proc/meminfo) memory, $(uname -sr)"
info "loads: 1 and 32 streamed clients, each ${WARMUP} s unmeasured + ${LOAD_SECONDS} s measured, per package and device; limit ${LIMIT} s"
if [ "$ALLOW_CPU" = 1 ]; then
  info "GPU_CHECK_ALLOW_CPU=1: CUDA parts skipped"
elif ! command -v nvidia-smi >/dev/null; then
  fail 4 "nvidia-smi is not on PATH: no NVIDIA driver here (GPU_CHECK_ALLOW_CPU=1 runs the CPU half only)"
fi
done_step

if [ "$ALLOW_CPU" != 1 ]; then
  # ----------------------------------------------------------------------------------------------------------- 2
  step "CUDA provider libraries"
  [ "$PLATFORM" = linux/x64 ] || fail 5 "onnxruntime-node $ORT_VERSION has CUDA provider libraries for linux/x64 only, this is $PLATFORM"
  have_provider() { [ -f "$ORT_BIN/libonnxruntime_providers_cuda.so" ] && [ -f "$ORT_BIN/libonnxruntime_providers_shared.so" ]; }
  if have_provider; then
    info "present: $(ls -l "$ORT_BIN"/libonnxruntime_providers_cuda.so | awk '{printf "%s (%.0f MB)", $NF, $5 / 1e6}')"
  else
    info "absent from $ORT_BIN; trying ONNXRUNTIME_NODE_INSTALL=cuda12 node node_modules/onnxruntime-node/script/install (downloads Microsoft.ML.OnnxRuntime.Gpu.Linux $ORT_VERSION from api.nuget.org)"
    t=$(budget 90)
    ONNXRUNTIME_NODE_INSTALL=cuda12 timeout -k 5 "$t" node node_modules/onnxruntime-node/script/install > "$WORK/ort-install.log" 2>&1
    rc=$?
    sed 's/^/   | /' "$WORK/ort-install.log" | tail -n 15
    if [ "$rc" -ne 0 ] || ! have_provider; then
      why="the install exited with $rc"
      [ "$rc" -eq 124 ] && why="the install did not finish within ${t} s (a network that drops packets)"
      code=$(grep -o -m1 -E 'ENOTFOUND|EAI_AGAIN|ECONNREFUSED|ECONNRESET|ETIMEDOUT|ENETUNREACH|EHOSTUNREACH|CERT_[A-Z_]+|SELF_SIGNED_CERT_IN_CHAIN|UNABLE_TO_[A-Z_]+|HTTP status code = [0-9]+' "$WORK/ort-install.log")
      [ -n "$code" ] && why="$why: $code (api.nuget.org unreachable from here: no network or no DNS)"
      fail 5 "the CUDA provider libraries are not installed and could not be downloaded ($why). Install them where the network reaches api.nuget.org (ONNXRUNTIME_NODE_INSTALL=cuda12 npm ci), or copy libonnxruntime_providers_cuda.so and libonnxruntime_providers_shared.so (runtimes/linux-x64/native/ of the Microsoft.ML.OnnxRuntime.Gpu.Linux $ORT_VERSION NuGet package) into $ORT_BIN"
    fi
    info "installed"
  fi
  done_step

  # ----------------------------------------------------------------------------------------------------------- 3
  step "CUDA provider dependencies (ldd)"
  PROVIDER_SO="$ORT_BIN/libonnxruntime_providers_cuda.so"
  missing() { timeout 20 ldd "$PROVIDER_SO" 2>&1 | awk '/not found/ {print $1}' | sort -u; }
  MISSING=$(missing)
  if [ -n "$MISSING" ]; then
    info "not found: $(echo $MISSING)"
    info "looking in /usr/local/cuda*, /usr/lib*, /opt and pip's nvidia-* wheels"
    roots=(/usr/local/cuda*/lib64 /usr/local/cuda*/targets/*/lib /usr/lib/x86_64-linux-gnu /usr/lib64 /opt)
    while IFS= read -r d; do roots+=("$d"); done < <(timeout 10 "$PYTHON" -c 'import site, sys; print("\n".join(site.getsitepackages() + [site.getusersitepackages()]))' 2>/dev/null)
    names=()
    for lib in $MISSING; do names+=(${names[0]+-o} -name "$lib"); done
    found_dirs=""
    while IFS= read -r hit; do
      dir=$(dirname "$hit")
      case ":$found_dirs:" in *":$dir:"*) ;; *) found_dirs="${found_dirs:+$found_dirs:}$dir" ;; esac
    done < <(timeout 30 find "${roots[@]}" -maxdepth 6 \( "${names[@]}" \) \( -type f -o -type l \) 2>/dev/null)
    if [ -n "$found_dirs" ]; then
      export LD_LIBRARY_PATH="$found_dirs${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
      info "LD_LIBRARY_PATH=$LD_LIBRARY_PATH"
      MISSING=$(missing)
    fi
    [ -z "$MISSING" ] || fail 6 "the CUDA provider needs $(echo $MISSING), not found on this machine. onnxruntime-node $ORT_VERSION's provider is built for CUDA 12 and cuDNN 9: it needs libcudart.so.12, libcublas(Lt).so.12, libcufft.so.11, libcurand.so.10 and libcudnn.so.9 (a CUDA 13 driver runs them; a CUDA 13 toolkit alone does not provide them). Add their folder to LD_LIBRARY_PATH, or use nvidia/cuda:12.x-cudnn-runtime (the Dockerfile's base)"
  fi
  timeout 20 ldd "$PROVIDER_SO" | grep -E 'libcudart|libcublas|libcudnn|libcufft|libcurand|libcuda\.so' | awk '{print "   " $1 " => " $3}'
  done_step

  # ----------------------------------------------------------------------------------------------------------- 4
  step "nvidia-smi"
  timeout 15 nvidia-smi > "$WORK/nvidia-smi.txt" 2>&1 || { sed 's/^/   | /' "$WORK/nvidia-smi.txt" | tail -n 10; fail 4 "nvidia-smi failed (no usable GPU or driver)"; }
  info "$(grep -o -m1 -E 'Driver Version: *[0-9.]+ +CUDA Version: *[0-9.]+' "$WORK/nvidia-smi.txt")"
  timeout 15 nvidia-smi -L | sed 's/^/   /'
  timeout 15 nvidia-smi --query-gpu=index,name,memory.total,memory.used,utilization.gpu,temperature.gpu,power.draw,mig.mode.current --format=csv | sed 's/^/   /'
  info "CUDA_VISIBLE_DEVICES=${CUDA_VISIBLE_DEVICES:-<unset>} (the service uses deviceId 0)"
  done_step
fi

# --------------------------------------------------------------------------------------------------------------- 5
step "build"
if [ ! -f dist/server.js ] || [ -n "$(find src -newer dist/server.js -name '*.ts' -print -quit)" ]; then
  info "dist/server.js missing or older than src/: npm run build"
  timeout -k 5 "$(budget 150)" npm run build > "$WORK/build.log" 2>&1 || { tail -n 20 "$WORK/build.log" | sed 's/^/   | /'; fail 7 "npm run build failed"; }
else
  info "dist/ is up to date"
fi
done_step

# --------------------------------------------------------------------------------------------------------------- 6-8
DEVICES="cuda cpu"
[ "$ALLOW_CPU" = 1 ] && DEVICES="cpu"

# run_package LABEL DIR STARTUP_ESTIMATE [MAX_MODEL_LEN]: each device in turn, skipped when it no longer fits
run_package() {
  local label=$1 dir=$2 startup=$3 maxlen=${4:-} device need t rc
  for device in $DEVICES; do
    step "$label on DEVICE=$device"
    need=$(( startup + 2 * (WARMUP + LOAD_SECONDS) + 10 ))
    if [ $(( $(left) - RESERVE )) -lt "$need" ]; then
      info "skipped: about ${need} s needed, $(( $(left) - RESERVE )) s left"
      SKIPPED+=("$label on DEVICE=$device (no time left)")
      done_step "skipped"
      continue
    fi
    t=$(budget $(( 90 + 2 * (WARMUP + LOAD_SECONDS) + 50 )))
    # the server's stdout and stderr come through (its warnings: a CUDA fallback is one), less its answers to the
    # readiness polls while it loads
    timeout -k 10 "$t" "$TSX" bench/gpu-check.ts run --label "$label" --device "$device" --model "$dir" --out "$RESULTS" ${maxlen:+--max-model-len "$maxlen"} 2>&1 \
      | grep --line-buffered -v '"code":"not_ready"'
    rc=${PIPESTATUS[0]}
    case $rc in
      0) done_step ;;
      3) fail 3 "DEVICE=$device did not give the $device execution provider" ;;
      124|137) info "timed out after ${t} s"; STATUS=8; done_step "timed out" ;;
      *) info "exited with $rc"; STATUS=8; done_step "failed" ;;
    esac
  done
}

python_ok() { timeout 60 "$PYTHON" -c 'import torch, onnx' >/dev/null 2>&1; }

if has_section default; then
  run_package default models/default 10
fi

if has_section real-shape; then
  REAL_DIR="$CACHE/smollm2-135m-package"
  if [ ! -f "$REAL_DIR/manifest.json" ]; then
    step "real-shape package"
    if ! python_ok; then
      info "skipped: $REAL_DIR is not cached and $PYTHON has no torch/onnx to make it (npm run bench:real-shape -- smollm2-135m makes it)"
      SKIPPED+=("the real-shape package (not cached, no torch)")
      done_step "skipped"
    elif [ $(( $(left) - RESERVE )) -lt 200 ]; then
      info "skipped: $REAL_DIR is not cached and making it (about 90 s) and running it no longer fit"
      SKIPPED+=("the real-shape package (no time to make it)")
      done_step "skipped"
    else
      export OMP_NUM_THREADS=${OMP_NUM_THREADS:-4}
      ok=1
      if [ ! -f "$CACHE/smollm2-135m/config.json" ]; then
        timeout -k 5 "$(budget 90)" "$PYTHON" test/fixtures/hf/checkpoints.py --shape smollm2-135m 2>&1 | tail -n 3 | sed 's/^/   | /'
        [ "${PIPESTATUS[0]}" -eq 0 ] || ok=0
      fi
      if [ "$ok" = 1 ]; then
        timeout -k 5 "$(budget 150)" "$PYTHON" training/hf_import.py "$CACHE/smollm2-135m" "$REAL_DIR" 2>&1 | tail -n 3 | sed 's/^/   | /'
        [ "${PIPESTATUS[0]}" -eq 0 ] || ok=0
      fi
      [ "$ok" = 1 ] && [ -f "$REAL_DIR/manifest.json" ] && done_step || { info "could not make $REAL_DIR"; SKIPPED+=("the real-shape package (making it failed)"); done_step "failed"; }
    fi
  fi
  [ -f "$REAL_DIR/manifest.json" ] && run_package smollm2-135m "$REAL_DIR" 25 512
fi

if [ "$FP16" = 1 ] && has_section fp16; then
  FP16_NAME=$(basename "$FP16_HF_DIR")
  FP16_DIR="$FP16_HF_DIR-fp16-package"
  if [ ! -f "$FP16_DIR/manifest.json" ]; then
    step "float16 package"
    if [ ! -f "$FP16_HF_DIR/config.json" ]; then
      info "skipped: no checkpoint cached at $FP16_HF_DIR (GPU_CHECK_FP16_HF_DIR)"
      SKIPPED+=("float16 (no checkpoint at $FP16_HF_DIR)")
      done_step "skipped"
    elif ! python_ok; then
      info "skipped: $PYTHON has no torch/onnx to import $FP16_HF_DIR in float16"
      SKIPPED+=("float16 (no torch to import it)")
      done_step "skipped"
    elif [ $(( $(left) - RESERVE )) -lt 150 ]; then
      info "skipped: importing (about 60 s) and running it no longer fit"
      SKIPPED+=("float16 (no time to import it)")
      done_step "skipped"
    else
      info "npm run model:import -- $FP16_HF_DIR $FP16_DIR --dtype float16"
      OMP_NUM_THREADS=${OMP_NUM_THREADS:-4} timeout -k 5 "$(budget 150)" "$PYTHON" training/hf_import.py "$FP16_HF_DIR" "$FP16_DIR" --dtype float16 2>&1 | tail -n 3 | sed 's/^/   | /'
      [ "${PIPESTATUS[0]}" -eq 0 ] && [ -f "$FP16_DIR/manifest.json" ] && done_step || { info "the float16 import failed"; SKIPPED+=("float16 (the import failed)"); done_step "failed"; }
    fi
  fi
  if [ -f "$FP16_DIR/manifest.json" ]; then
    FP16_LEN=$(node -p "Math.min(512, JSON.parse(require('fs').readFileSync(process.argv[1], 'utf8')).dims.context)" "$FP16_DIR/manifest.json")
    run_package "$FP16_NAME-fp16" "$FP16_DIR" 25 "$FP16_LEN"
  fi
fi

finish
