"""``python -m apps.benchmark {run,preprocess,pipeline,read,score,detect,profile,soak}``: accuracy/latency of models and peers in one table, and
the sub-benchmarks of the runtime. Every figure is measured in the run that prints it; ratios compare rows of
the same run on the same machine.

- ``run --models A.pt B.onnx C.int8.onnx [D.engine] ppocr [ppocr@32x128] tesseract --data PATH [--lr-from-hr]``:
  one row per model x backend x precision; each row runs in its own process (peak memory is that process's, a
  crash is a row with its error).
- ``preprocess``: C extension vs NumPy twin, packing 16 and 64 boxes of a 1280x720 frame.
- ``pipeline``: the camera pipeline on a rendered 1280x720 video with 16 moving words: FPS, per-stage ms,
  end-to-end latency p50/p95, and accuracy of single frames vs fused tracks.
- ``read``: ``TextReader.read`` on one frame against the camera's detector + recognizer stages on it.
- ``score``: word-frames right of an ``apps.camera --jsonl`` run against its scene's truth.
- ``detect``: text detectors' word recall and time per frame on rendered scenes of small words.
- ``profile MODEL``: where one ONNX model's CPU time goes, by operator, with its multiply-adds (``apps.profiling``).
- ``soak``: the camera pipeline for N minutes on a looping video fed like a 30 FPS camera: resident memory over
  time and frames dropped.
"""
from __future__ import annotations

import argparse
import csv
import io
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from runtime.cli import InputError, check_writable, console_script, non_negative, positive
from runtime.files import write_bytes_atomic, write_json_atomic
from runtime.timing import machine_name, sigma_clipped_times

from runtime.reader import DEFAULT_DETECTOR

from .crop_scene import DEFAULT_CROP_SETS

__all__ = ["Row", "main", "load_crops"]

ROOT = Path(__file__).resolve().parents[1]
REAL = ROOT.parent / "shared" / "data" / "real"


# -- run ---------------------------------------------------------------------------------------------------------

@dataclass
class Row:
    model: str
    format: str = ""
    precision: str = ""
    backend: str = ""
    how: str = ""
    size_mb: float = float("nan")
    accuracy: dict[str, float] = field(default_factory=dict)  # per split / condition
    weighted_accuracy: float = float("nan")
    ned: float = float("nan")
    p50_ms: float = float("nan")  # per image at batch 1
    p95_ms: float = float("nan")
    throughput: float = float("nan")  # images/s at the largest batch
    peak_mem_mb: float = float("nan")
    error: str = ""
    hits: dict[str, str] = field(default_factory=dict)  # per split / condition: SplitResult.hits, for --against


def load_crops(data: str, lr_from_hr: bool, max_samples: int) -> dict[str, tuple[list[np.ndarray], list[str]]]:
    """Split name -> (RGB crops, labels). With ``lr_from_hr``: the original crops ("hr") and the named conditions
    lr16 and lr16blur made from them; otherwise each data path is one split as stored."""
    from runtime.evaluation import input_sets

    sets = input_sets(data.split(","), ("lr16", "lr16blur") if lr_from_hr else (), hr=True, lr_from_hr=lr_from_hr,
                      max_samples=max_samples, who="benchmark")
    if lr_from_hr:  # per split hr first: the table's columns go from the easiest input to the hardest
        order = {name: i for i, name in enumerate(dict.fromkeys(s.split for s in sets))}
        sets = sorted(sets, key=lambda s: (order[s.split], s.condition != "HR"))
    return {f"{s.split} {s.condition.lower()}" if lr_from_hr else s.split: (s.images, s.labels) for s in sets}


def _run_row(spec: str, data: str, lr_from_hr: bool, max_samples: int, batches: list[int], runs: int,
             progress: bool = False) -> Row:
    """One model's row; ``progress``: a bar per input set (split x condition) on stderr."""
    from runtime.evaluation import InputSet, evaluate
    from runtime.metrics import weighted_average

    from .readers import open_reader

    row = Row(Path(spec).name)
    try:
        rd = open_reader(spec)
        row.model, row.format, row.precision, row.backend, row.how, row.size_mb = (
            rd.name, rd.format, rd.precision, rd.backend, rd.how, rd.size_mb)
        splits = load_crops(data, lr_from_hr, max_samples)
        results = []
        for name, (imgs, gts) in splits.items():
            bar = None
            if progress:
                from tqdm import tqdm

                bar = tqdm(total=len(imgs), desc=f"{row.model} {name}", unit="crop", file=sys.stderr)
            res = evaluate(rd.read, InputSet(name, name, imgs, gts), max(batches) if spec != "tesseract" else 1,
                           on_batch=bar.update if bar else None)
            if bar is not None:
                bar.close()
            results.append(res)
            row.accuracy[name], row.hits[name] = res.accuracy, res.hits
        avg = weighted_average(results)
        row.weighted_accuracy, row.ned = avg.accuracy, avg.ned
        # latency on the last split's crops (the hardest condition): batch 1 per image, then the largest batch
        imgs = list(splits.values())[-1][0]
        k = iter(range(1 << 30))
        t1 = sigma_clipped_times(lambda: rd.read([imgs[next(k) % len(imgs)]]), runs=runs if spec != "tesseract" else 10)
        row.p50_ms, row.p95_ms = float(np.percentile(t1, 50)), float(np.percentile(t1, 95))
        b = max(batches)
        if spec != "tesseract":
            tb = sigma_clipped_times(lambda: rd.read(imgs[:b] if len(imgs) >= b else (imgs * b)[:b]), runs=max(5, runs // 3))
            row.throughput = b / (statistics.median(tb) / 1000)
        else:
            row.throughput = 1000 / row.p50_ms
    except Exception as e:  # noqa: BLE001 - a model that fails is a row with its error
        row.error = f"{type(e).__name__}: {e}"
    row.peak_mem_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return row


def _row_subprocess(spec: str, args) -> Row:
    cmd = [sys.executable, "-m", "apps.benchmark", "_row", "--model", spec, "--data", args.data,
           "--max-samples", str(args.max_samples), "--batch", args.batch, "--runs", str(args.runs)]
    if args.lr_from_hr:
        cmd.append("--lr-from-hr")
    # progress bars go straight to the terminal; otherwise stderr is kept for a crashed row's last line
    progress = not args.quiet and sys.stderr.isatty()
    if progress:
        cmd.append("--progress")
    env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    r = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=None if progress else subprocess.PIPE, text=True, env=env)
    for line in r.stdout.splitlines()[::-1]:
        if line.startswith("{"):
            return Row(**json.loads(line))
    tail = ((r.stderr or "").strip().splitlines() or ["no output"])[-1]
    return Row(Path(spec).name, error=f"process exited {r.returncode}: {tail}")


def rows_markdown(rows: list[Row], machine: str) -> str:
    splits = list(dict.fromkeys(k for r in rows for k in r.accuracy))
    head = ["model", "format", "precision", "backend", "size MB"] + [f"acc {s}" for s in splits] + \
           ["acc avg", "NED", "p50 ms", "p95 ms", "img/s", "peak MB"]
    out = [f"Machine: {machine}", "", "| " + " | ".join(head) + " |", "|" + "---|" * 4 + "---:|" * (len(head) - 4)]
    f = lambda v, d=2: "-" if v != v else f"{v:.{d}f}"  # noqa: E731  (NaN -> "-")
    for r in rows:
        if r.error:
            out.append(f"| {r.model} | {r.format} | {r.precision} | {r.backend} | {f(r.size_mb)} | "
                       f"error: {r.error} |" + " |" * (len(head) - 6))
            continue
        cells = [r.model, r.format, r.precision, r.backend, f(r.size_mb)] + [f(r.accuracy.get(s, float('nan')))
                                                                             for s in splits]
        cells += [f(r.weighted_accuracy), f(r.ned, 4), f(r.p50_ms), f(r.p95_ms), f(r.throughput, 0), f(r.peak_mem_mb, 0)]
        out.append("| " + " | ".join(cells) + " |")
    out.append("")
    out += [f"- {r.model}: {r.how}" for r in rows if r.how]
    return "\n".join(out)


def paired_markdown(rows: list[Row], reference: int) -> str:
    """Each other row against ``rows[reference]`` on the same crops: points of difference, 95 % half-width, and
    the crops only it reads (+) and only the reference reads (-) (``runtime.metrics.paired_difference``)."""
    from runtime.metrics import paired_difference

    ref = rows[reference]
    splits = list(ref.hits)
    out = [f"Against {ref.model} on the same crops: accuracy points of difference ±95 % interval (crops only the "
           "row's model reads / only the reference reads)", "",
           "| model | " + " | ".join(splits) + " |", "|---|" + "---:|" * len(splits)]
    for i, r in enumerate(rows):
        if i == reference or r.error:
            continue
        out.append("| " + " | ".join([r.model] + [str(paired_difference(ref.hits[s], r.hits[s])) if s in r.hits
                                                  else "-" for s in splits]) + " |")
    return "\n".join(out)


def _plot(rows: list[Row], path: str) -> None:
    import cv2

    ok = [r for r in rows if not r.error and r.p50_ms == r.p50_ms]
    W, H, m = 900, 560, 70
    img = np.full((H, W, 3), 255, np.uint8)
    if ok:
        lat = np.log10([max(r.p50_ms, 1e-3) for r in ok])
        lo, hi = np.floor(lat.min()), np.ceil(lat.max() + 1e-9)
        hi = hi if hi > lo else lo + 1
        cv2.line(img, (m, H - m), (W - 20, H - m), (0, 0, 0), 1)
        cv2.line(img, (m, 20), (m, H - m), (0, 0, 0), 1)
        for d in np.arange(lo, hi + 1):
            x = int(m + (d - lo) / (hi - lo) * (W - m - 40))
            cv2.putText(img, f"{10 ** d:g} ms", (x - 15, H - m + 18), cv2.FONT_HERSHEY_SIMPLEX, 0.4, (0, 0, 0), 1)
        for a in range(0, 101, 20):
            y = int(H - m - a / 100 * (H - m - 40))
            cv2.putText(img, f"{a}%", (m - 40, y + 4), cv2.FONT_HERSHEY_SIMPLEX, 0.4, (0, 0, 0), 1)
        for i, (r, lx) in enumerate(zip(ok, lat)):
            x = int(m + (lx - lo) / (hi - lo) * (W - m - 40))
            y = int(H - m - r.weighted_accuracy / 100 * (H - m - 40))
            cv2.circle(img, (x, y), 5, (200, 60, 0), -1)
            dy = -5 - 14 * (i % 3)  # stagger labels: neighbouring points often share an accuracy
            cv2.line(img, (x, y), (x + 6, y + dy + 3), (150, 150, 150), 1)
            cv2.putText(img, f"{r.model} {r.precision}", (x + 7, y + dy), cv2.FONT_HERSHEY_SIMPLEX, 0.38, (0, 0, 0), 1)
    cv2.putText(img, "word accuracy (weighted avg) vs latency per image at batch 1 (log)", (m, 14),
                cv2.FONT_HERSHEY_SIMPLEX, 0.45, (0, 0, 0), 1)
    ok_, png = cv2.imencode(".png", img)
    write_bytes_atomic(png.tobytes(), path)


def distinct_names(specs: list[str]) -> list[str]:
    """Each model's file name, with as many parent folders as it takes to tell apart models that share one
    (``export_a/best.onnx`` and ``export_b/best.onnx``, not two rows named ``best.onnx``)."""
    parts = [Path(s).parts or (s,) for s in specs]
    k = [1] * len(specs)
    while True:
        names = ["/".join(p[-n:]) for p, n in zip(parts, k)]
        clash = {n for n in names if names.count(n) > 1}
        grow = [i for i, n in enumerate(names) if n in clash and k[i] < len(parts[i])]
        if not grow:
            return names
        for i in grow:
            k[i] += 1


def _batches(text: str) -> list[int]:
    try:
        b = [int(v) for v in text.split(",")]
    except ValueError:
        b = []
    if not b or min(b) < 1:
        raise InputError(f"--batch {text!r}: expected comma-separated batch sizes >= 1, e.g. 1,32")
    return b


def cmd_run(args) -> int:
    _batches(args.batch)
    non_negative("--max-samples", args.max_samples)
    positive("--runs", args.runs)
    for path in args.data.split(","):
        if not Path(path).exists():
            raise InputError(f"--data {path}: no such dataset")
    for opt, path, suf in (("--json", args.json, ()), ("--csv", args.csv, (".csv",)), ("--plot", args.plot, (".png",))):
        check_writable(path, opt, suf)
    if args.against is not None and args.against not in args.models:
        raise InputError(f"--against {args.against}: not one of --models")
    rows = [_row_subprocess(m, args) for m in args.models]
    for r, spec, name in zip(rows, args.models, distinct_names(args.models)):
        if r.model == Path(spec).name:  # a file's row; peers (ppocr, tesseract) keep their own names
            r.model = name
    machine = machine_name()
    print(rows_markdown(rows, machine))
    ref = None if args.against is None else args.models.index(args.against)
    if ref is not None and not rows[ref].error:
        print()
        print(paired_markdown(rows, ref))
    if args.json:
        write_json_atomic({"machine": machine, "data": args.data, "lr_from_hr": args.lr_from_hr,
                           "rows": [asdict(r) for r in rows]}, args.json)
    if args.csv:
        fh = io.StringIO(newline="")
        w = csv.writer(fh)
        splits = list(dict.fromkeys(k for r in rows for k in r.accuracy))
        w.writerow(["model", "format", "precision", "backend", "size_mb", *[f"acc {s}" for s in splits],
                    "acc_avg", "ned", "p50_ms", "p95_ms", "images_per_s", "peak_mem_mb", "error"])
        for r in rows:
            w.writerow([r.model, r.format, r.precision, r.backend, r.size_mb, *[r.accuracy.get(s) for s in splits],
                        r.weighted_accuracy, r.ned, r.p50_ms, r.p95_ms, r.throughput, r.peak_mem_mb, r.error])
        write_bytes_atomic(fh.getvalue().encode(), args.csv)
    if args.plot:
        _plot(rows, args.plot)
    failed = [r for r in rows if r.error]
    if failed:
        print(f"error: {len(failed)} of {len(rows)} rows failed: " + "; ".join(f"{r.model}: {r.error}" for r in failed),
              file=sys.stderr)
        return 1
    if args.min_acc is not None:
        bad = [r for r in rows if not r.weighted_accuracy >= args.min_acc]
        if bad:
            print(f"error: below --min-acc {args.min_acc}: {', '.join(r.model for r in bad)}", file=sys.stderr)
            return 3
    return 0


# -- preprocess --------------------------------------------------------------------------------------------------

def cmd_preprocess(args) -> int:
    from runtime import _native_py, fastpath

    if not fastpath.native_available():
        print("error: the C extension runtime._native is not built (pip install -e . with a C compiler)",
              file=sys.stderr)
        return 2
    from runtime import _native

    rng = np.random.default_rng(0)
    frame = rng.integers(0, 256, (720, 1280, 3), np.uint8)
    print(f"Machine: {machine_name()}; 1280x720 BGR frame -> (N, 3, 16, 64) float32, boxes ~96x28 px\n")
    print("| boxes | C ms | NumPy ms | C speed-up |\n|---:|---:|---:|---:|")
    out = {}
    for n in args.boxes:
        xy = np.stack([rng.uniform(0, 1150, n), rng.uniform(0, 680, n)], 1)
        wh = np.stack([rng.uniform(60, 130, n), rng.uniform(18, 36, n)], 1)
        boxes = np.concatenate([xy, xy + wh], 1)
        t = {}
        for name, impl in (("c", _native), ("numpy", _native_py)):
            fastpath._impl = impl
            t[name] = statistics.median(sigma_clipped_times(lambda: fastpath.pack(frame, boxes, (16, 64)), runs=args.runs))
        fastpath._impl = fastpath._load()[0]
        out[n] = t
        print(f"| {n} | {t['c']:.3f} | {t['numpy']:.3f} | {t['numpy'] / t['c']:.1f}x |")
    if args.json:
        write_json_atomic({"machine": machine_name(), "ms": out}, args.json)
    return 0


# -- pipeline ----------------------------------------------------------------------------------------------------

def scene_video(args, path: str) -> list:
    """Write the benchmark's scene to ``path`` and return its truth: rendered words (``--scene rendered``) or real
    word crops filmed through a simulated camera (``--scene real``, ``apps.crop_scene``)."""
    from .crop_scene import pick_crops, render_crop_video
    from .synthetic_video import parse_range, render_video

    if args.scene == "rendered":
        return render_video(path, n_words=args.words, size=(720, 1280), frames=args.frames, font_px=args.font_px,
                            speed=args.speed, blur=args.blur)
    for c in args.crops:
        if not Path(c).exists():
            raise InputError(f"--crops {c}: no such lmdb or folder")
    crops = pick_crops(args.crops, args.words, args.seed)
    return render_crop_video(path, crops, (720, 1280), args.frames, parse_range(args.text_px, "--text-px"),
                             args.speed, seed=args.seed)


def cmd_pipeline(args) -> int:
    from runtime.reader import TextReader, resolve_detector
    from runtime.video import read_frames
    from runtime.weights import model_or_default

    from .camera import schedule_from_args
    from .synthetic_video import match_words, same_word

    schedule = schedule_from_args(args)
    args.model = model_or_default(args.model)
    for opt in ("words", "frames", "font_px", "det_side", "detect_every"):
        positive("--" + opt.replace("_", "-"), getattr(args, opt))
    non_negative("--speed", args.speed)
    check_writable(args.json, "--json")
    det_path = resolve_detector(args.detector)
    with tempfile.TemporaryDirectory() as td:
        video = os.path.join(td, "words.mp4")
        truth = scene_video(args, video)
        # the camera app's front door; on 2 cores one core each: recognition in the main loop, detection in its thread
        reader = TextReader(args.model, det_path, threads=args.rec_threads, det_threads=args.det_threads,
                            det_side=args.det_side, schedule=schedule, detect_every=args.detect_every,
                            async_detect=not args.sync_detect)
        frames = read_frames(video)  # decoded up front: the benchmark measures processing, not the video decoder
        # warm-up: the first frame until its detection has arrived, so the measured frames carry tracked words
        for _ in range(3000):
            if reader.track(frames[0], 0).detected:
                break
            time.sleep(0.01)
        results, warm = [], 1
        t0 = time.perf_counter()
        for i, f in enumerate(frames[1:], start=1):
            results.append(reader.track(f, i, time.monotonic()))
            if args.realtime:  # pace like a 30 FPS camera
                time.sleep(max(0.0, i / 30 - (time.perf_counter() - t0)))
        wall = time.perf_counter() - t0
        reader.close()
    meas = results
    fps = len(meas) / wall
    lat = [r.latency_ms for r in meas]
    stages = {k: float(np.mean([r.ms[k] for r in meas])) for k in meas[0].ms}
    tracked = float(np.mean([len(r.words) for r in meas]))
    reads = float(np.mean([r.reads for r in meas]))
    # accuracy against the truth (synthetic_video.match_words, same_word): single-frame accuracy counts the words
    # read on that frame, fused accuracy every word on every frame
    single = single_n = fused = total = 0
    for r, tr in zip(results, truth[warm:]):
        total += len(tr)
        for t, j in zip(tr, match_words(tr, [w.box for w in r.words])):
            if j is None:
                continue
            if r.words[j].read:
                single_n += 1
                single += same_word(r.words[j].frame_text, t["text"])
            fused += same_word(r.words[j].text, t["text"])
    scene = (f"{args.words} real word crops ({args.text_px} px text, simulated camera)" if args.scene == "real" else
             f"{args.words} rendered words ({args.font_px} px font, blur {args.blur})")
    print(f"Machine: {machine_name()}\nVideo: 1280x720, {scene}, moving up to {args.speed} px/frame, "
          f"{len(frames)} frames; model {Path(args.model).name}; detector {Path(str(det_path)).name} "
          f"(side {args.det_side}, {'sync every ' + str(args.detect_every) if args.sync_detect else 'async'}); "
          f"{'every word read on every frame' if args.read_every_frame else f'scheduled reads ({schedule.fps:g} FPS kept)'}\n")
    print("| FPS | words tracked / frame | reads / frame | e2e p50 ms | e2e p95 ms | " +
          " | ".join(f"{k} ms" for k in stages) + " | single-frame acc | fused acc |")
    print("|" + "---:|" * (7 + len(stages)))
    print(f"| {fps:.1f} | {tracked:.1f} | {reads:.2f} | {np.percentile(lat, 50):.1f} | {np.percentile(lat, 95):.1f} | " +
          " | ".join(f"{v:.2f}" for v in stages.values()) +
          f" | {100 * single / max(single_n, 1):.1f}% | {100 * fused / max(total, 1):.1f}% |")
    print("\n(detect ms: mean per frame of detection time folded in on that frame; async detection runs beside "
          "recognition on the same cores)")
    if args.json:
        write_json_atomic({"machine": machine_name(), "scene": args.scene, "fps": fps, "tracked": tracked,
                           "reads_per_frame": reads, "read_every_frame": bool(args.read_every_frame),
                           "latency_p50_ms": float(np.percentile(lat, 50)),
                           "latency_p95_ms": float(np.percentile(lat, 95)), "stages_ms": stages,
                           "single_frame_acc": single / max(single_n, 1), "fused_acc": fused / max(total, 1)}, args.json)
    return 0


# -- read --------------------------------------------------------------------------------------------------------

def cmd_read(args) -> int:
    """``TextReader.read`` on one rendered 1280x720 frame against the camera's two stages on the same frame: the
    detector as the pipeline runs it, then the recognizer on every box it found."""
    from runtime.reader import TextReader
    from runtime.timing import sigma_clipped_times
    from runtime.weights import model_or_default

    from .synthetic_video import render_video

    positive("--runs", args.runs)
    with tempfile.TemporaryDirectory() as td:
        truth = render_video(os.path.join(td, "f.avi"), n_words=args.words, size=(720, 1280), frames=1,
                             font_px=args.font_px, speed=0.0)[0]
        import cv2

        frame = cv2.VideoCapture(os.path.join(td, "f.avi")).read()[1]
    reader = TextReader(model_or_default(args.model), args.detector, threads=1)
    words = reader.read(frame)
    read_ms = sigma_clipped_times(lambda: reader.read(frame), runs=args.runs)

    def camera_stages():
        dets = reader.detector(frame)
        reader.rec.read_boxes(frame, np.stack([d.quad for d in dets]).astype(np.float64))

    stage_ms = sigma_clipped_times(camera_stages, runs=args.runs)
    reader.close()
    right = sum(t["text"] in [w.text for w in words] for t in truth)
    r, c = float(np.median(read_ms)), float(np.median(stage_ms))
    print(f"Machine: {machine_name()}\nFrame: 1280x720, {args.words} rendered words ({args.font_px} px font); "
          f"{right}/{len(truth)} read right by TextReader.read\n")
    print("| call | ms (median) |\n|---|---:|")
    print(f"| `TextReader.read(frame)` | {r:.1f} |\n| camera stages: detector + recognizer on its boxes | {c:.1f} |")
    print(f"\nread / camera stages: {r / c:.2f}")
    if args.json:
        write_json_atomic({"machine": machine_name(), "read_ms": r, "camera_stages_ms": c, "right": right,
                           "words": len(truth)}, args.json)
    return 0


# -- score -------------------------------------------------------------------------------------------------------

def cmd_score(args) -> int:
    """Word-frames right of a camera run's JSONL against a scene's truth (``apps.synthetic_video``)."""
    from .synthetic_video import score_frames

    non_negative("--skip", args.skip)
    for opt, path in (("--jsonl", args.jsonl), ("--truth", args.truth)):
        if not Path(path).is_file():
            raise InputError(f"{opt} {path}: no such file")
    try:
        truth = json.loads(Path(args.truth).read_text())
    except (ValueError, UnicodeDecodeError) as e:
        raise InputError(f"--truth {args.truth}: not a truth JSON ({e})") from None
    rows, outs = [], []
    for n, line in enumerate(Path(args.jsonl).read_text().splitlines(), start=1):
        try:
            r = json.loads(line)
            f, words = int(r["frame"]), [(w["box"], w["text"]) for w in r["words"]]
        except (ValueError, KeyError, TypeError) as e:
            raise InputError(f"--jsonl {args.jsonl}: line {n} is not a camera result ({e})") from None
        if not 0 <= f < len(truth):
            raise InputError(f"--jsonl {args.jsonl}: line {n} is frame {f}, the truth has {len(truth)} frames")
        if f >= args.skip:
            rows.append(truth[f])
            outs.append(words)
    right, total = score_frames(rows, outs)
    print(f"score: {len(rows)} frames{f' from frame {args.skip}' if args.skip else ''}, {total} word-frames, "
          f"{100 * right / max(total, 1):.1f} % right")
    if args.json:
        write_json_atomic({"frames": len(rows), "word_frames": total, "right": right,
                           "accuracy": right / max(total, 1)}, args.json)
    return 0


# -- detect ------------------------------------------------------------------------------------------------------

def cmd_detect(args) -> int:
    """Word-box recall and time per frame of text detectors on rendered 1280x720 scenes of small words (text
    ``--font-px`` high, several sizes), at each detector input size and tiling asked for."""
    from runtime.detector import DBDetector
    from runtime.tracking import iou_matrix
    from runtime.video import read_frames

    from runtime.reader import resolve_detector

    from .camera import _tiles
    from .synthetic_video import render_video

    check_writable(args.json, "--json")
    sizes = [int(v) for v in args.font_px.split(",")]
    sides = [int(v) for v in args.det_sides.split(",")]
    tilings = [_tiles(t) for t in args.tiles.split(";")]
    scenes = []
    with tempfile.TemporaryDirectory() as td:
        for k, px in enumerate(sizes):
            for seed in range(args.scenes):
                v = os.path.join(td, f"s{k}-{seed}.avi")
                truth = render_video(v, n_words=16, size=(720, 1280), frames=1, font_px=px, seed=seed)[0]
                scenes.append((px, read_frames(v)[0], np.array([t["box"] for t in truth])))
    rows = []
    for name in args.detectors:
        path = resolve_detector(name)
        for side in sides:
            for tiles in tilings:
                det = DBDetector(path, max_side=side, tiles=tiles, threads=args.threads)
                hits, total, found, ms = {px: 0 for px in sizes}, {px: 0 for px in sizes}, 0, []
                for px, frame, truth in scenes:
                    t = time.perf_counter()
                    dets = det(frame)
                    ms.append((time.perf_counter() - t) * 1000)
                    found += len(dets)
                    if dets:
                        iou = iou_matrix(truth, np.stack([d.box for d in dets]))
                        hits[px] += int((iou.max(1) > 0.3).sum())
                    total[px] += len(truth)
                recall = {px: 100 * hits[px] / max(total[px], 1) for px in sizes}
                rows.append({"detector": name, "side": side, "tiles": f"{tiles[0]}x{tiles[1]}",
                             "recall": recall, "recall_all": 100 * sum(hits.values()) / max(sum(total.values()), 1),
                             "boxes_per_frame": found / len(scenes), "ms_p50": float(np.median(ms))})
    print(f"Machine: {machine_name()}; {len(scenes)} rendered 1280x720 scenes of 16 words, text "
          f"{', '.join(map(str, sizes))} px (font size); a word is found when a box overlaps it at IoU > 0.3 (as the tracker matches); "
          f"{args.threads} thread(s)\n")
    print("| detector | input side | tiles | " + " | ".join(f"recall {px} px" for px in sizes) +
          " | recall all | boxes / frame | ms / frame |")
    print("|---|---:|---:|" + "---:|" * (len(sizes) + 3))
    for r in rows:
        print(f"| {r['detector']} | {r['side']} | {r['tiles']} | " +
              " | ".join(f"{r['recall'][px]:.1f}" for px in sizes) +
              f" | {r['recall_all']:.1f} | {r['boxes_per_frame']:.1f} | {r['ms_p50']:.0f} |")
    if args.json:
        write_json_atomic({"machine": machine_name(), "rows": rows}, args.json)
    return 0


# -- soak --------------------------------------------------------------------------------------------------------

def _rss_mb() -> float:
    """Resident memory of this process now (Linux /proc; the peak from getrusage elsewhere)."""
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 1e6
    except (OSError, ValueError, IndexError):
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def cmd_soak(args) -> int:
    """The camera pipeline for ``--minutes`` on a looping rendered video, fed like a 30 FPS camera: a frame that
    arrives while the pipeline is busy replaces the one waiting (dropped, counted). Resident memory is sampled
    every ``--every`` seconds; the figure that matters is its growth after the first minute."""
    from runtime.reader import TextReader
    from runtime.video import read_frames
    from runtime.weights import model_or_default

    from .camera import schedule_from_args
    from .synthetic_video import render_video

    positive("--minutes", args.minutes)
    positive("--every", args.every)
    check_writable(args.json, "--json")
    schedule = schedule_from_args(args)
    model = model_or_default(args.model)
    with tempfile.TemporaryDirectory() as td:
        video = os.path.join(td, "loop.avi")
        render_video(video, n_words=args.words, size=(720, 1280), frames=args.frames, font_px=args.font_px)
        frames = read_frames(video)
    reader = TextReader(model, args.detector, threads=args.rec_threads, det_threads=args.det_threads,
                        det_side=args.det_side, schedule=schedule, async_detect=True)
    fps_in, period = 30.0, 1.0 / 30.0
    t0 = time.monotonic()
    end = t0 + args.minutes * 60
    samples, processed, dropped, last_cam = [], 0, 0, -1
    next_sample = t0
    while (now := time.monotonic()) < end:
        cam = int((now - t0) * fps_in)  # the newest frame the camera has delivered
        if cam == last_cam:
            time.sleep(max(0.0, t0 + (cam + 1) * period - now))
            continue
        dropped += max(0, cam - last_cam - 1)
        last_cam = cam
        reader.track(frames[cam % len(frames)], cam, t0 + cam * period)
        processed += 1
        if now >= next_sample:
            samples.append((now - t0, _rss_mb(), processed, dropped))
            next_sample += args.every
    reader.close()
    samples.append((time.monotonic() - t0, _rss_mb(), processed, dropped))
    after = [s for s in samples if s[0] >= 60.0] or samples[-1:]
    growth = after[-1][1] - after[0][1]
    print(f"Machine: {machine_name()}; model {Path(model).name}; {args.words} words, 30 FPS camera, "
          f"{'every word read on every frame' if schedule is None else 'scheduled reads'}\n")
    print("| minute | RSS MB | frames processed | frames dropped |\n|---:|---:|---:|---:|")
    for t, rss, n, d in samples:
        print(f"| {t / 60:.1f} | {rss:.1f} | {n} | {d} |")
    total = processed + dropped
    print(f"\nRSS growth after the first minute: {growth:+.1f} MB; processed {processed} of {total} camera frames "
          f"({100 * dropped / max(total, 1):.1f} % dropped)")
    if args.json:
        write_json_atomic({"machine": machine_name(), "model": Path(model).name, "minutes": args.minutes,
                           "samples": [{"t_s": t, "rss_mb": r, "processed": n, "dropped": d} for t, r, n, d in samples],
                           "rss_growth_after_1min_mb": growth, "processed": processed, "dropped": dropped}, args.json)
    return 0


# -- CLI ---------------------------------------------------------------------------------------------------------

def cmd_profile(args) -> int:
    from runtime import zoo

    from .profiling import profile_model
    from .readers import parse_hw

    for opt in ("batch", "threads", "runs", "top"):
        positive(f"--{opt}", getattr(args, opt))
    check_writable(args.json, "--json", (".json",))
    size = parse_hw(args.size.lower()) if args.size else None
    if args.size and size is None:
        raise InputError(f"--size {args.size}: expected HxW, e.g. 48x320")
    path = zoo.resolve(args.model) if zoo.is_zoo_name(args.model) else Path(args.model)
    prof = profile_model(path, args.batch, args.threads, args.runs, size)
    print(prof.to_markdown(args.top))
    if args.json:
        write_json_atomic(asdict(prof), args.json)
    return 0


def build_parser() -> argparse.ArgumentParser:
    from .camera import add_schedule_args

    p = argparse.ArgumentParser(prog="python -m apps.benchmark", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)
    F = argparse.ArgumentDefaultsHelpFormatter

    def run_args(r):
        r.add_argument("--data", required=True, help="STR/TextZoom lmdb or folder (comma-separated for several)")
        r.add_argument("--lr-from-hr", action="store_true", help="also score conditions lr16 and lr16blur made from "
                                                                 "the original crops")
        r.add_argument("--max-samples", type=int, default=0, help="crops per data path (0: all)")
        r.add_argument("--batch", default="1,32", help="batch sizes: latency at 1, throughput at the largest")
        r.add_argument("--runs", type=int, default=30, help="timed runs (at least; sigma-clipped)")

    r = sub.add_parser("run", help="accuracy/latency table of models and peers", formatter_class=F)
    r.add_argument("--models", nargs="+", required=True,
                   help=".pt, .onnx, .engine files, 'ppocr', 'ppocr@HxW' (PP-OCR at input height H, padded to >= W "
                        "px), 'tesseract'")
    run_args(r)
    r.add_argument("--json", default=None, help="write rows as JSON here; unset: not written")
    r.add_argument("--csv", default=None, help="write rows as CSV here; unset: not written")
    r.add_argument("--plot", default=None, help="write an accuracy-vs-latency PNG here; unset: not written")
    r.add_argument("--min-acc", type=float, default=None, help="exit 3 when a row's average is below; unset: no gate")
    r.add_argument("--against", default=None, metavar="MODEL",
                   help="one of --models: also print every other model's difference from it on the same crops, "
                        "with its 95 %% interval and the crops each reads that the other misses; unset: not printed")
    r.add_argument("--quiet", action="store_true",
                   help="no progress bars (default: a bar per model x input set when stderr is a terminal)")

    r = sub.add_parser("_row", help=argparse.SUPPRESS)
    r.add_argument("--model", required=True)
    r.add_argument("--progress", action="store_true")
    run_args(r)

    r = sub.add_parser("preprocess", help="C extension vs NumPy twin", formatter_class=F)
    r.add_argument("--boxes", type=int, nargs="+", default=[16, 64], help="box counts")
    r.add_argument("--runs", type=int, default=50, help="timed runs per case")
    r.add_argument("--json", default=None, help="write figures as JSON here; unset: not written")

    def pipeline_args(r, frames: int) -> None:
        """The options ``pipeline`` and ``soak`` share: models, the rendered video, threads, scheduling, JSON."""
        r.add_argument("--model", default=None,
                       help="recognizer (default: the shipped default, runtime.weights.DEFAULT_MODELS)")
        r.add_argument("--detector", default=DEFAULT_DETECTOR,
                       help="detector: ONNX file or model name (ppocrv6-det, ppocrv6-tiny-det, ppocrv4-det)")
        r.add_argument("--words", type=int, default=16, help="words in the video")
        r.add_argument("--frames", type=int, default=frames, help="frames of the video")
        r.add_argument("--font-px", type=int, default=18, help="font size")
        r.add_argument("--det-side", type=int, default=960, help="detector input longest side")
        r.add_argument("--det-threads", type=int, default=1, help="detector ONNX Runtime threads")
        r.add_argument("--rec-threads", type=int, default=0, help="recognizer ONNX Runtime threads (0: the cores the "
                                                                  "detector's threads leave; 1 on 2 cores)")
        r.add_argument("--json", default=None, help="write figures as JSON here; unset: not written")
        add_schedule_args(r)

    r = sub.add_parser("pipeline", help="camera pipeline on a 1280x720 video of rendered words or real crops",
                       formatter_class=F)
    pipeline_args(r, 150)
    r.add_argument("--scene", choices=("rendered", "real"), default="rendered",
                   help="rendered words, or real word crops filmed through a simulated camera (apps.crop_scene)")
    r.add_argument("--crops", nargs="+", default=[str(REAL / s) for s in DEFAULT_CROP_SETS],
                   help="real word crops of --scene real (STR lmdbs or image folders)")
    r.add_argument("--text-px", default="10,18", help="text height range of --scene real, px")
    r.add_argument("--speed", type=float, default=1.5, help="largest word speed, px per frame")
    r.add_argument("--seed", type=int, default=0, help="crops, placement, motion and camera effects of --scene real")
    r.add_argument("--blur", type=float, default=0.0, help="Gaussian blur sigma of the rendered frames")
    r.add_argument("--detect-every", type=int, default=5, help="frames between detections with --sync-detect")
    r.add_argument("--sync-detect", action="store_true", help="detect inline (default: background thread)")
    r.add_argument("--realtime", action="store_true", help="pace frames at 30 FPS like a camera (default: as fast "
                                                           "as processing allows)")

    r = sub.add_parser("read", help="TextReader.read on a 1280x720 frame against the camera's detector + recognizer",
                       formatter_class=F)
    r.add_argument("--model", default=None, help="recognizer (default: the shipped default)")
    r.add_argument("--detector", default=DEFAULT_DETECTOR, help="detector: ONNX file or model name")
    r.add_argument("--words", type=int, default=16, help="words in the frame")
    r.add_argument("--font-px", type=int, default=16, help="font size")
    r.add_argument("--runs", type=int, default=10, help="timed runs of each (sigma-clipped)")
    r.add_argument("--json", default=None, help="write the figures as JSON here; unset: not written")

    r = sub.add_parser("score", help="word-frames right of an apps.camera --jsonl run against a scene's truth",
                       formatter_class=F)
    r.add_argument("--jsonl", required=True, help="apps.camera --jsonl output")
    r.add_argument("--truth", required=True, help="the scene's truth (apps.synthetic_video writes VIDEO.truth.json)")
    r.add_argument("--skip", type=int, default=0, help="frames left out at the start (a detector's first second)")
    r.add_argument("--json", default=None, help="write the score as JSON here; unset: not written")

    r = sub.add_parser("detect", help="text detectors: word recall and ms on rendered small-text scenes",
                       formatter_class=F)
    r.add_argument("--detectors", nargs="+", default=["ppocrv4-det", "ppocrv6-det", "ppocrv6-tiny-det"],
                   help="ONNX files or model names")
    r.add_argument("--font-px", default="12,16,20", help="font sizes of the scenes")
    r.add_argument("--det-sides", default="960,1280", help="detector input longest sides")
    r.add_argument("--tiles", default="1,1", help="tilings rows,cols separated by ';', e.g. '1,1;2,2'")
    r.add_argument("--scenes", type=int, default=2, help="scenes per font size")
    r.add_argument("--threads", type=int, default=1, help="detector ONNX Runtime threads")
    r.add_argument("--json", default=None, help="write figures as JSON here; unset: not written")

    r = sub.add_parser("profile", help="one ONNX model's CPU time by operator, with its multiply-adds",
                       formatter_class=F)
    r.add_argument("model", help="ONNX file or model name (ppocrv6, ppocrv6-tiny, ppocrv4)")
    r.add_argument("--batch", type=int, default=32, help="crops per batch")
    r.add_argument("--threads", type=int, default=1, help="ONNX Runtime intra-op threads")
    r.add_argument("--runs", type=int, default=10, help="profiled runs after two warm-ups")
    r.add_argument("--size", default=None, help="input HxW for a model with dynamic height or width (PP-OCR: "
                                                "48x320); unset: the model's own")
    r.add_argument("--top", type=int, default=12, help="operators listed before the rest is summed")
    r.add_argument("--json", default=None, help="write the profile as JSON here; unset: not written")

    r = sub.add_parser("soak", help="the camera pipeline for N minutes: memory over time, frames dropped",
                       formatter_class=F)
    r.add_argument("--minutes", type=float, default=10.0, help="duration")
    r.add_argument("--every", type=float, default=30.0, help="seconds between memory samples")
    pipeline_args(r, 90)

    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.cmd == "run":
        return cmd_run(args)
    if args.cmd == "_row":
        row = _run_row(args.model, args.data, args.lr_from_hr, args.max_samples, _batches(args.batch), args.runs,
                       args.progress)
        print(json.dumps(asdict(row)))
        return 0
    if args.cmd == "preprocess":
        return cmd_preprocess(args)
    if args.cmd == "pipeline":
        return cmd_pipeline(args)
    if args.cmd == "soak":
        return cmd_soak(args)
    if args.cmd == "profile":
        return cmd_profile(args)
    if args.cmd == "detect":
        return cmd_detect(args)
    if args.cmd == "score":
        return cmd_score(args)
    if args.cmd == "read":
        return cmd_read(args)
    return 2


console = console_script(main)  # tinytext-* (pyproject.toml)

if __name__ == "__main__":
    sys.exit(console())
