#!/usr/bin/env bash
# The edge install: builds the wheel, installs it with its [det] extra (the default detector) into a fresh virtual
# environment without torch, and, from outside the checkout, reads text with the shipped default model (found among
# the wheel's data files), reads a photo through runtime.TextReader and the tinytext-read console script, and runs
# the camera app headless on a rendered video. Exits non-zero when any of it fails. Needs the checkout's .venv.
set -euo pipefail
cd "$(dirname "$0")/.."
W=$(mktemp -d)
trap 'rm -rf "$W"' EXIT
quiet() {  # run a pip command, its output shown only when it fails
  if ! "$@" >"$W/pip.log" 2>&1; then cat "$W/pip.log" >&2; exit 1; fi
}
quiet .venv/bin/python -m pip wheel --no-deps -w "$W/dist" .
"${PYTHON:-python3}" -m venv "$W/venv"
WHEEL=$(ls "$W"/dist/tinytext-*.whl)
quiet "$W/venv/bin/pip" install "$WHEEL[det]"
echo "wheel_check: installed $(basename "$W"/dist/tinytext-*.whl) ($(du -sh "$W/venv" | cut -f1) venv, no torch)"
cd "$W"
"$W/venv/bin/python" - "$W/venv/bin/tinytext-read" <<'PY'
import importlib.util
import json
import subprocess
import sys

assert importlib.util.find_spec("torch") is None, "torch is installed in the edge venv"
from apps.synthetic_video import render_video, rois
from runtime.backends import open_recognizer
from runtime.weights import default_model

model = default_model()
assert model and "/share/tinytext/weights/" in model, f"default model not found among the wheel's data files: {model}"
truth = render_video("words.mp4", n_words=6, size=(240, 640), frames=30, font_px=20, speed=0.0, seed=1)
import cv2

frame = cv2.VideoCapture("words.mp4").read()[1]
crops = [cv2.cvtColor(frame[int(y0) - 2:int(y1) + 2, int(x0) - 2:int(x1) + 2], cv2.COLOR_BGR2RGB)
         for x0, y0, x1, y1 in (t["box"] for t in truth[0])]
reads = [d.text for d in open_recognizer(model)(crops)]
right = sum(r == t["text"] for r, t in zip(reads, truth[0]))
print(f"wheel_check: {model.split('/')[-1]} read {right}/{len(crops)} rendered words: {reads}")
assert right >= len(crops) - 1, reads
roi_args = sum([["--roi", ",".join(map(str, roi))] for roi in rois(truth[0])], [])
r = subprocess.run([sys.executable, "-m", "apps.camera", "--source", "words.mp4", "--headless", "--jsonl", "r.jsonl",
                    "--out", "annotated.mp4", *roi_args], capture_output=True, text=True)
assert r.returncode == 0, r.stderr
last = json.loads(open("r.jsonl").read().splitlines()[-1])
fused = sum(w["text"] == t["text"] for w, t in zip(last["words"], truth[-1]))
print(f"wheel_check: apps.camera on the video: {len(open('r.jsonl').readlines())} frames, last frame {fused}/6 right")
assert fused >= 5

from runtime import TextReader  # the API a user embeds: the default model and detector, no torch

photo = render_video("photo.avi", n_words=12, size=(720, 1280), frames=1, font_px=16, speed=0.0, seed=2)[0]
cv2.imwrite("photo.png", cv2.VideoCapture("photo.avi").read()[1])
words = [w.text for w in TextReader().read("photo.png")]
right = sum(t["text"] in words for t in photo)
print(f"wheel_check: TextReader().read('photo.png'): {right}/{len(photo)} words found and right: {words}")
assert right >= len(photo) - 1, words
assert importlib.util.find_spec("torch") is None
r = subprocess.run([sys.argv[1], "photo.png"], capture_output=True, text=True)
assert r.returncode == 0 and len(r.stdout.splitlines()) == len(words), (r.stdout, r.stderr)
print(f"wheel_check: tinytext-read photo.png printed {len(r.stdout.splitlines())} words")
PY
echo "wheel_check: ok"
