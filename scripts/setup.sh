#!/usr/bin/env bash
# Sets up a virtual environment in .venv on a fresh Debian/Ubuntu machine (Python 3.10+).
#   bash scripts/setup.sh          core + train + export + peers + dev extras
# Environment: PYTHON (default python3), TORCH_SPEC (default torch==2.13.0),
#              TORCH_INDEX_URL (optional extra index for the torch wheel, e.g. PyTorch's CPU index).
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
TORCH_SPEC=${TORCH_SPEC:-torch==2.13.0}

# Debian packages: fonts for the synthesizer (Pillow's built-in font is the fallback when apt is unavailable),
# tesseract-ocr, a peer in apps.benchmark run (optional: its rows say so when it is missing), chromium, the
# headless browser the live view's test opens, GStreamer's RTSP server with python3-gi and x264, the network
# camera of the RTSP test, and python3-opencv, an OpenCV with GStreamer for the source-pipeline test (all for the
# system python3, not .venv; optional: those tests skip, with their reason, without them).
FONT_PKGS="fonts-dejavu-core fonts-liberation fonts-freefont-ttf tesseract-ocr chromium gir1.2-gst-rtsp-server-1.0
python3-gi gstreamer1.0-plugins-base gstreamer1.0-plugins-good gstreamer1.0-plugins-ugly python3-opencv"
if command -v apt-get >/dev/null 2>&1; then
  missing=""
  for p in $FONT_PKGS; do dpkg -s "$p" >/dev/null 2>&1 || missing="$missing $p"; done
  if [ -n "$missing" ]; then
    SUDO=""; [ "$(id -u)" -ne 0 ] && command -v sudo >/dev/null 2>&1 && SUDO="sudo"
    ($SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq $missing >/dev/null) \
      || echo "setup: could not install$missing; the synthesizer falls back to the fonts it finds, the live view and RTSP tests skip" >&2
  fi
fi

if [ ! -x .venv/bin/python ]; then
  "$PYTHON" -m venv .venv
fi
PY=.venv/bin/python
# Install torch first: without a GPU take the CPU build, so that pip never resolves the CUDA wheels (GBs).
if ! "$PY" -c "import torch" >/dev/null 2>&1; then
  extra=()
  [ -n "${TORCH_INDEX_URL:-}" ] && extra=(--extra-index-url "$TORCH_INDEX_URL")
  if ! command -v nvidia-smi >/dev/null 2>&1 && [ -z "${TORCH_INDEX_URL:-}" ]; then
    echo "setup: no GPU found; installing $TORCH_SPEC (CPU build where pip's configured indexes/find-links offer it)" >&2
  fi
  "$PY" -m pip install -q "${extra[@]}" "$TORCH_SPEC"
fi
"$PY" -m pip install -q -e ".[train,export,peers,dev]"
echo "setup: ready ($("$PY" -c 'import torch,sys;print("python",sys.version.split()[0],"torch",torch.__version__)'))"
