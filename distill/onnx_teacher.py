"""Any recognizer ONNX file as an HR teacher, read by ``runtime.ppocr`` (its own letterbox input and dictionary).

The teacher's output is turned into targets for one of our CTC students:

* **charset mapping**: each teacher class goes to the student class of the same character, upper case folds onto
  lower case when the student has no upper case, anything else is dropped; the dropped probability is either
  renormalised away (``unmapped: renorm``, default) or given to the blank (``unmapped: blank``). The mapping and
  the mean dropped mass are reported.
* **frame alignment**: the teacher reads a crop resized to its height with the aspect kept, padded on the right;
  the student reads the whole crop stretched to 16x64. The teacher frames that cover the crop (not the padding)
  are resampled to the student's frame count along the width by area weighting: student frame i averages the
  teacher frames overlapping [i, i+1) * valid / F, weighted by overlap (probabilities, not logits). Downsampling
  this way merges neighbouring characters (PP-OCRv4 on svt_train: its targets at 32 frames decode right for
  83.3 % of crops where its own string is right for 87.9 %). ``resample: peaks`` then gives each emitted
  character a frame of its own (``resample_peaks``), which gives back the 87.9 %; in one 1,500-step run of the
  PP-OCRv4 recipe it trained a worse student than ``area`` (svt_test lr16 62.4 vs 66.6), so ``area`` stays the
  default.
* **features** (optional, ``feature: head`` or a tensor name): the teacher's frames before its classifier (or any
  (N, T, D) / (N, D, 1, T) tensor of its graph, added as an extra graph output), area-resampled to the student's
  frames like the probabilities; or a map (N, C, H, W) when the teacher's input has one width, its columns over
  the crop resampled to the map's width (the student reads the crop stretched over its input). The student
  matches its own tensor of the same name (its graph is the teacher's, on the same grid).
* **pseudo-label**: the teacher's greedy CTC string and its sequence confidence (product of per-character
  maxima), folded to the student's charset; used as the CTC target of unlabeled crops above a threshold.

Targets are computed once per sample and cached in an lmdb (``TeacherCache``) beside the data, or under the
run's directory when the data folder is read-only, so epochs never pay for the teacher again.
"""
from __future__ import annotations

import hashlib
import io
import json
import math
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from runtime.ppocr import PPOCR_INPUT, Letterbox, LetterboxRecognizer, resolve_recognizer

__all__ = ["OnnxTeacher", "TorchSession", "TeacherTargets", "TeacherCache", "charset_mapping", "resample_frames", "resample_peaks",
           "frames_read"]


def charset_mapping(teacher_classes: list[str], student_charset: str, blank: int = 0) -> tuple[np.ndarray, dict]:
    """(map, report): ``map[t]`` is the student class of teacher class t (blank -> 0, -1 = dropped). Student class
    k + 1 is ``student_charset[k]`` (CTC: blank 0)."""
    pos = {c: k + 1 for k, c in enumerate(student_charset)}
    has_upper = any(c.isupper() for c in student_charset)
    m = np.full(len(teacher_classes), -1, np.int64)
    exact = folded = 0
    for t, c in enumerate(teacher_classes):
        if t == blank:
            m[t] = 0
        elif c in pos:
            m[t], exact = pos[c], exact + 1
        elif not has_upper and len(c) == 1 and c.lower() in pos and c.isascii():
            m[t], folded = pos[c.lower()], folded + 1
    missing = [c for c in student_charset if c not in set(teacher_classes) and
               not (not has_upper and c.upper() in set(teacher_classes))]
    report = {"teacher_classes": len(teacher_classes), "student_classes": len(student_charset) + 1,
              "mapped_exact": exact, "merged_case": folded, "dropped": int((m < 0).sum()),
              "student_chars_without_teacher_class": "".join(missing)}
    return m, report


def resample_frames(p: np.ndarray, frames: int) -> np.ndarray:
    """(V, C) per-frame distributions -> (frames, C) by area weighting along the width (see the module doc)."""
    v = p.shape[0]
    if v == frames:
        return p.copy()
    edges = np.linspace(0.0, v, frames + 1)
    r = np.zeros((frames, v), np.float64)
    for i in range(frames):
        a, b = edges[i], edges[i + 1]
        for j in range(int(math.floor(a)), min(v, int(math.ceil(b)))):
            r[i, j] = max(0.0, min(b, j + 1) - max(a, j))
    r /= r.sum(1, keepdims=True)
    return (r @ p.astype(np.float64)).astype(np.float32)


def frames_read(probs: np.ndarray, charset: str) -> str:
    """Greedy CTC reading (blank 0) of per-frame distributions over ``charset``: what a student that matched these
    targets exactly would read. Compared with the teacher's own string it tells whether resampling kept the word:
    PP-OCRv4's 40 frames area-resampled to 16 read its string on 53-68 % of real crops, and a student trained on
    such targets lost 16 points on svt_test; resampled to 32, or taken from the teacher at 32x128 (16 frames of its
    own), 97-99 %."""
    from runtime.fastpath import decode

    d = decode(np.asarray(probs, np.float32)[None], "ctc", 0)
    return "".join(charset[k - 1] for k in d.ids[0][: d.lengths[0]])


def resample_peaks(p: np.ndarray, frames: int) -> np.ndarray:
    """Like ``resample_frames``, but each character the teacher emits (a run of frames whose arg-max is the same
    non-blank class) keeps a student frame of its own holding the run's most confident teacher frame, in order,
    with a blank frame between repeated characters; other frames keep the area average unless its arg-max is a
    character, then they become blank. Area averaging alone merges neighbouring characters when it downsamples
    (see the module doc); this keeps the teacher's greedy reading whenever it fits in ``frames``."""
    v = p.shape[0]
    out = resample_frames(p, frames)
    am = p.argmax(1)
    used = np.zeros(frames, bool)
    prev_s, prev_c, j = -2, -1, 0
    while j < v:
        c, k = am[j], j
        while k + 1 < v and am[k + 1] == c:
            k += 1
        if c != 0:
            s = int(np.clip(np.floor((j + k + 1) / 2 * frames / v), 0, frames - 1))
            s = max(s, prev_s + (2 if c == prev_c else 1))
            if s >= frames:
                break
            out[s] = p[j + int(np.argmax(p[j : k + 1, c]))]
            used[s] = True
            prev_s, prev_c = s, c
        j = k + 1
    stray = ~used & (out.argmax(1) != 0)
    out[stray] = 0.0
    out[stray, 0] = 1.0
    return out


@dataclass
class TeacherTargets:
    """One crop's targets in the student's classes."""

    probs: np.ndarray  # (F, C_student) float16, rows sum to 1
    text: str  # pseudo-label, folded to the student's charset
    conf: float  # sequence confidence of the pseudo-label
    dropped: float  # mean probability mass of teacher classes the student does not have
    feats: np.ndarray | None = None  # (F, D) float16: the teacher's feature tensor on the student's frames


class OnnxTeacher(LetterboxRecognizer):
    """An ONNX recognizer (``runtime.ppocr``: letterbox input, dictionary, CTC) + the mapping of its classes to a
    student charset, and the student's targets from its outputs.

    feature: ``head`` (the classifier's input) or a tensor name of the graph to expose as features; "" = none."""

    def __init__(self, path: str, student_charset: str, frames: int, preproc: Letterbox = PPOCR_INPUT,
                 dictionary: str | None = None, space_char: bool = True, unmapped: str = "renorm",
                 threads: int = 0, resample: str = "area", feature: str = "") -> None:
        if unmapped not in ("renorm", "blank"):
            raise ValueError(f"onnx teacher unmapped: expected renorm or blank, got {unmapped!r}")
        if resample not in ("peaks", "area"):
            raise ValueError(f"onnx teacher resample: expected peaks or area, got {resample!r}")
        self.unmapped, self.frames, self.resample = unmapped, int(frames), resample
        self.feature, model = "", None
        if feature:
            model, self.feature = _with_feature_output(resolve_recognizer(path), feature)
        super().__init__(path, preproc, dictionary, space_char, threads, model)
        from runtime.charset import make_tokenizer

        self.student_charset = student_charset
        self._tok = make_tokenizer("ctc", student_charset)  # folds the pseudo-label onto the student's charset
        self.map, self.report = charset_mapping(self.classes, student_charset)
        keep = np.flatnonzero(self.map >= 0)
        self._keep, self._to = keep, self.map[keep]

    def fingerprint(self) -> str:
        """Changes whenever the targets would: model bytes, preprocessing, dictionary, student charset, frames."""
        h = hashlib.sha256()
        st = os.stat(self.path)
        h.update(f"{os.path.basename(self.path)}:{st.st_size}".encode())
        with open(self.path, "rb") as f:
            h.update(f.read(1 << 20))
        key = [asdict(self.pre), self.classes[:50], len(self.classes), self.student_charset, self.frames,
               self.unmapped, self.resample, 2]
        if self.feature:  # caches made without features keep their fingerprint
            key.append(self.feature)
        h.update(json.dumps(key).encode())
        return h.hexdigest()[:16]

    def _features(self, extra: list[np.ndarray], out: np.ndarray) -> np.ndarray | None:
        """The feature tensor as (N, T, D) frames, or as (N, C, H, W) maps when it still has rows (H > 1)."""
        if not self.feature:
            return None
        feats = extra[-1].astype(np.float32)
        if feats.ndim == 4 and feats.shape[2] == 1:  # (N, D, 1, T) maps -> (N, T, D)
            feats = feats[:, :, 0].transpose(0, 2, 1)
        elif feats.ndim == 4:  # every batch must give the map the same width, which the student's grid mirrors
            if self.pre.min_width != self.pre.max_width:
                raise ValueError(f"{self.path}: feature tensor {self.feature!r} is a map {feats.shape[1:]}; maps need "
                                 "the teacher's input at one width: set onnx_teacher.min_width = max_width")
            return feats
        if feats.ndim != 3 or feats.shape[:2] != out.shape[:2]:
            raise ValueError(f"{self.path}: feature tensor {self.feature!r} has shape {feats.shape}; expected "
                             f"(N, T, D) with the output's N, T = {out.shape[:2]}, (N, D, 1, T) or (N, C, H, W)")
        return feats

    def targets(self, crops_rgb: list[np.ndarray]) -> list[TeacherTargets]:
        probs, valid, extra = self.outputs(crops_rgb)
        feats = self._features(extra, probs)
        read = self.decode(probs)
        out = []
        C = len(self.student_charset) + 1
        for i in range(len(crops_rgb)):
            p = probs[i, : valid[i]]
            mapped = np.zeros((p.shape[0], C), np.float32)
            np.add.at(mapped.T, self._to, p[:, self._keep].T)  # sum the teacher classes of each student class
            kept = mapped.sum(1, keepdims=True)
            dropped = 1.0 - kept
            if self.unmapped == "blank":
                mapped[:, :1] += dropped
            else:
                mapped /= np.maximum(kept, 1e-8)
            r = (resample_peaks if self.resample == "peaks" else resample_frames)(mapped, self.frames)
            r /= r.sum(1, keepdims=True)
            text, conf = read[i]
            if feats is None:
                f = None
            elif feats.ndim == 4:  # a map: the columns over the crop, stretched back to the map's width
                f = _crop_columns(feats[i], valid[i] / probs.shape[1]).astype(np.float16)
            else:
                f = resample_frames(feats[i, : valid[i]], self.frames).astype(np.float16)
            out.append(TeacherTargets(r.astype(np.float16), self._tok.adapt(text), conf, float(dropped.mean()), f))
        return out


class TorchSession:
    """The teacher's graph as an ``OnnxNet`` on a torch device behind ONNX Runtime's ``run``: set as an
    ``OnnxTeacher``'s ``session`` (``onnx_teacher.runner: torch``), the targets for the training crops come from the
    GPU instead of ONNX Runtime on the CPU cores. Only the first output (the probabilities): no feature tensors."""

    def __init__(self, path: str, classes: int, device: str = "cuda") -> None:
        import torch

        from .models.onnx_net import OnnxNet

        self.torch, self.device = torch, torch.device(device)
        self.net = OnnxNet(classes, img_size=(1, 1), lr=False, graph=Path(resolve_recognizer(path)).read_bytes())
        self.net.to(self.device).eval()

    def run(self, names, feeds: dict) -> list[np.ndarray]:
        (x,) = feeds.values()
        with self.torch.inference_mode():
            return [self.net(self.torch.from_numpy(x).to(self.device)).float().cpu().numpy()]


def _crop_columns(fmap: np.ndarray, share: float) -> np.ndarray:
    """The first ``share`` of a (C, H, W) map's columns (those over the crop, not the padding), area-resampled back
    to W columns: the grid of a student that reads the crop stretched to its full input width."""
    C, H, W = fmap.shape
    cols = min(W, max(1, int(math.ceil(share * W - 1e-6))))
    if cols == W:
        return fmap
    f = resample_frames(fmap[:, :, :cols].reshape(C * H, cols).T, W)  # (W, C*H)
    return np.ascontiguousarray(f.T.reshape(C, H, W))


def _with_feature_output(path: str, feature: str) -> tuple[bytes, str]:
    """The model with ``feature`` (``head``: the classifier's input) added as its last graph output."""
    import onnx

    from runtime.onnxfile import load_proto

    m = load_proto(path)
    g = m.graph
    if feature == "head":
        from .models.onnx_net import classifier_input  # the student resolves its head the same way

        try:
            name = classifier_input(m)
        except (ValueError, KeyError, StopIteration) as e:
            raise ValueError(f"{path}: onnx teacher feature 'head': no MatMul/Gemm classifier found ({e})") from None
    elif any(feature in n.output for n in g.node):
        name = feature
    else:
        raise ValueError(f"{path}: onnx teacher feature {feature!r}: no node of the graph outputs that tensor")
    if name not in {o.name for o in g.output}:
        g.output.append(onnx.helper.make_empty_tensor_value_info(name))
        g.output[-1].type.tensor_type.elem_type = onnx.TensorProto.FLOAT
    return m.SerializeToString(), name


# -- the cache -----------------------------------------------------------------------------------------------------
def _pack(t: TeacherTargets) -> bytes:
    buf = io.BytesIO()
    np.save(buf, t.probs, allow_pickle=False)
    if t.feats is not None:
        np.save(buf, t.feats, allow_pickle=False)
    head = json.dumps({"text": t.text, "conf": t.conf, "dropped": t.dropped, "feats": t.feats is not None}).encode()
    return len(head).to_bytes(4, "little") + head + buf.getvalue()


def _unpack(b: bytes) -> TeacherTargets:
    n = int.from_bytes(b[:4], "little")
    head = json.loads(b[4 : 4 + n])
    buf = io.BytesIO(b[4 + n :])
    probs = np.load(buf, allow_pickle=False)
    feats = np.load(buf, allow_pickle=False) if head.get("feats") else None
    return TeacherTargets(probs, head["text"], float(head["conf"]), float(head["dropped"]), feats)


def _writable(d: Path) -> bool:
    try:
        d.mkdir(parents=True, exist_ok=True)
        probe = d / f".probe-{os.getpid()}"
        probe.write_bytes(b"")
        probe.unlink()
        return True
    except OSError:
        return False


class TeacherCache:
    """An lmdb of ``TeacherTargets`` keyed by sample key, for one (source, teacher fingerprint).

    Location: ``<cache_dir>/<source name>-<path hash>.teacher-<fingerprint>.lmdb`` when a cache_dir is given,
    else ``<source>.teacher-<fingerprint>.lmdb`` beside the source when its folder is writable, else the same
    name as the first under ``fallback_dir``. ``build`` adds only the samples it
    lacks, committing batch by batch: an interrupted build loses nothing, the next one completes it."""

    def __init__(self, source: str | Path, fingerprint: str, cache_dir: str | Path | None = None,
                 fallback_dir: str | Path = "teacher-cache") -> None:
        src = Path(source).resolve()
        beside = src.parent / f"{src.name}.teacher-{fingerprint}.lmdb"
        tag = hashlib.sha1(str(src).encode()).hexdigest()[:8]
        elsewhere = f"{src.name}-{tag}.teacher-{fingerprint}.lmdb"
        if cache_dir:  # an explicit place wins (shared data folders are read-only by policy, writable or not)
            self.path = Path(cache_dir) / elsewhere
        elif beside.exists() or _writable(src.parent):
            self.path = beside
        else:
            self.path = Path(fallback_dir) / elsewhere

    def _open_write(self):
        import lmdb

        self.path.mkdir(parents=True, exist_ok=True)
        return lmdb.open(str(self.path), map_size=1 << 36, subdir=True, lock=True)

    def get(self, key: str) -> TeacherTargets | None:
        from runtime.datasets import open_lmdb

        if not (self.path / "data.mdb").is_file():
            raise FileNotFoundError(f"{self.path}: teacher cache not built")
        with open_lmdb(self.path).begin() as txn:  # one cached handle per process (fork-safe)
            b = txn.get(key.encode())
        return _unpack(b) if b is not None else None

    def _peek(self, fn):
        """Run ``fn(txn)`` on a short-lived read-only environment: the process then holds no environment when it
        forks DataLoader workers (lmdb refuses a second open of an inherited one)."""
        from runtime.datasets import open_lmdb, release_lmdb

        env = open_lmdb(self.path)
        try:
            with env.begin() as txn:
                return fn(txn)
        finally:
            release_lmdb(env)

    def keys(self) -> set[str]:
        if not (self.path / "data.mdb").is_file():
            return set()
        return self._peek(lambda txn: {k.decode() for k, _ in txn.cursor()} - {"__summary__"})

    def build(self, teacher: OnnxTeacher, reader, n: int | None = None, batch: int = 16, workers: int = 1,
              progress: bool = True, chunk: int = 4096) -> dict:
        """Run the teacher once over the first ``n`` samples of ``reader`` that the cache lacks, in batches of
        similar aspect ratio (little padding), ``workers`` batches at a time (ONNX Runtime releases the GIL).
        Returns a summary (also stored in the cache)."""
        from tqdm import tqdm

        from runtime.datasets import CorruptSample

        n = len(reader) if n is None else min(n, len(reader))
        have = self.keys()
        todo = [i for i in range(n) if reader.keys[i] not in have]
        if not todo and have:
            return self.summary()
        env = self._open_write()
        conf, dropped, agree = [], [], []
        bar = tqdm(total=len(todo), desc=f"teacher -> {self.path.name}", disable=not progress, dynamic_ncols=True)

        def run(group):
            return group, teacher.targets([img for _, img in group])

        pool = ThreadPoolExecutor(max(1, workers))
        try:
            for c in range(0, len(todo), chunk):
                loaded = []
                for i in todo[c : c + chunk]:
                    try:
                        s = reader[i]
                    except CorruptSample:
                        continue  # the dataset skips it too
                    loaded.append((s.key, s.image))
                loaded.sort(key=lambda s: s[1].shape[1] / max(s[1].shape[0], 1))
                groups = [loaded[k : k + batch] for k in range(0, len(loaded), batch)]
                for group, tg in pool.map(run, groups):
                    with env.begin(write=True) as txn:
                        for (k, _), t in zip(group, tg):
                            txn.put(k.encode(), _pack(t))
                            conf.append(t.conf)
                            dropped.append(t.dropped)
                            agree.append(frames_read(t.probs, teacher.student_charset) == t.text)
                    bar.update(len(group))
        finally:
            pool.shutdown()
            bar.close()
        summary = {"samples": len(have) + len(conf), "new": len(conf),
                   "mean_conf": float(np.mean(conf)) if conf else None,
                   "mean_dropped_mass": float(np.mean(dropped)) if dropped else None, "mapping": teacher.report,
                   "frames_agree": float(np.mean(agree)) if agree else None,
                   "teacher": os.path.basename(teacher.path)}
        with env.begin(write=True) as txn:
            txn.put(b"__summary__", json.dumps(summary).encode())
        env.sync()
        env.close()
        return summary

    def summary(self) -> dict:
        b = self._peek(lambda txn: txn.get(b"__summary__"))
        return json.loads(b) if b else {}
