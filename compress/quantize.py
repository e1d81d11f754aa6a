"""INT8 (explicit Q/DQ) and FP16 ONNX from a float ONNX model.

INT8: ONNX Runtime static quantization in QDQ format with per-channel symmetric int8 weights, in one of two
flavours (``INT8_TARGETS``), because the two runtimes want different activations:

- ``tensorrt``: symmetric int8 activations (zero point 0), only Conv/MatMul/Gemm quantized: the explicitly
  quantized network TensorRT 8.6/10/11 builds. ONNX Runtime runs it too, but slowly on x86 CPUs (measured 1.7x
  *slower* than FP32 at batch 32 on the shipped CTC student: MLAS has no fast s8 x s8 path and re-quantizes).
- ``cpu``: asymmetric uint8 activations x int8 weights, residual Adds quantized too: the U8S8 kernels of ONNX
  Runtime's CPU provider (VNNI on x86, dot-product on ARM). Measured 0.41x of FP32 at batch 32, same accuracy.
  GELU becomes one node (``erf_gelu_to_gelu``), and HardSwish, GELU, squeeze-excitation gates and means then run
  in integer kernels too (``graph_rewrites.qdq_integer_activations``). Not
  TensorRT-buildable (zero points are not 0): ``trt_check`` says so.

Softmax and layer norm stay in float, and so does the output head by default (``keep_head_float``), where
quantization costs the most accuracy.
"""
from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from runtime.charset import make_tokenizer
from runtime.modelfile import PREFIX, model_info, path_for, read_metadata

from .calibration import FINETUNE_VIEWS, CalibrationError
from .graph_rewrites import (conv_to_scalar_affine, erf_gelu_to_gelu, fitted_gelu_gates, gelu_inputs,
                             qdq_integer_activations)

__all__ = ["quantize_int8", "quantize_from_data", "prepare_for_quantization", "quantized_op_types", "convert_fp16", "head_nodes", "float_prefix", "int8_path",
           "CALIBRATORS", "INT8_TARGETS"]

CALIBRATORS = ("minmax", "entropy", "percentile")
INT8_TARGETS = ("cpu", "tensorrt")


def int8_path(fp32_path: str | os.PathLike, target: str) -> Path:
    """Where the INT8 flavour of a float model goes: ``m.int8.onnx`` (cpu) or ``m.int8-trt.onnx`` (tensorrt)."""
    return path_for(fp32_path, "onnx-int8" if target == "cpu" else "onnx-int8-trt")


def head_nodes(model) -> list[str]:
    """Names of the nodes that compute the logits: the MatMul/Gemm (and bias Add) feeding the final Softmax."""
    by_output = {o: n for n in model.graph.node for o in n.output}
    out_name = model.graph.output[0].name
    node = by_output.get(out_name)
    names = []
    # walk back from the output through Softmax / Add / reshapes to the first MatMul or Gemm
    for _ in range(6):
        if node is None:
            break
        if node.op_type in ("MatMul", "Gemm"):
            names.append(node.name)
            break
        if node.op_type == "Add":
            names.append(node.name)
        node = next((by_output[i] for i in node.input if i in by_output), None)
    return names


def float_kept_nodes(model) -> list[str]:
    """Nodes that stay float besides the head: MatMuls of two activations (attention scores and their weighted
    sums: per-token ranges that one calibrated scale serves badly) and Adds with a constant operand (biases and
    affine offsets in graphs imported from other frameworks; residual Adds of two activations are quantized)."""
    consts = {i.name for i in model.graph.initializer}
    consts |= {n.output[0] for n in model.graph.node if n.op_type == "Constant"}
    keep = []
    for n in model.graph.node:
        computed = [i for i in n.input if i and i not in consts]
        if n.op_type == "MatMul" and len(computed) == 2:
            keep.append(n.name)
        elif n.op_type == "Add" and len(computed) < 2:
            keep.append(n.name)
    return keep


def float_prefix(model, convs: int) -> list[str]:
    """Names of the nodes before the (convs + 1)-th convolution in graph order (unnamed ones get a name, in place).

    The first layers of a mobile network quantize worst and cost least: few channels, and per-tensor uint8 ranges
    crush the small channels that depthwise convolutions then amplify. On the PP-OCRv4 student (input x1, last
    release) the 12 convolutions on its full 16x64 grid (16 to 128 channels) cost 5.6 of the 6.3 points INT8 lost
    on svt_test lr16 (percentile calibration); kept float they add 1-3 ms to 40-46 ms for a batch of 32 on 2 cores
    (kernels on one thread: 96 vs 83 ms). Int8 weights alone cost 1.2 points: the loss is in the activations."""
    names, seen = [], 0
    for i, n in enumerate(model.graph.node):
        if n.op_type == "Conv":
            seen += 1
            if seen > convs:
                break
        if not n.name:
            n.name = f"float_prefix_{i}"
        names.append(n.name)
    return names


class _Reader:
    """Batches of ``x`` for ONNX Runtime's calibrators; ``set_range`` (in batches) serves its strided collection."""

    def __init__(self, name: str, x: np.ndarray, batch: int) -> None:
        self.name, self.x, self.batch = name, x, batch
        self.set_range(0, len(self))

    def __len__(self) -> int:
        return -(-len(self.x) // self.batch)

    def set_range(self, start_index: int, end_index: int) -> None:
        self.i, self.end = start_index, end_index

    def get_next(self):
        if self.i >= self.end:
            return None
        b = self.x[self.i * self.batch : (self.i + 1) * self.batch]
        self.i += 1
        return {self.name: b}

    def rewind(self) -> None:
        self.set_range(0, len(self))


GELU_FIT_IMAGES = 128  # calibration images whose uint8 GELU inputs fit the integer gates (graph_rewrites)


def _code_histograms(model, names: list[str], x: np.ndarray, batch: int) -> dict[str, np.ndarray]:
    """name -> counts of each of the 256 codes the uint8 tensor ``name`` takes when ``model`` reads ``x``."""
    import onnx
    import onnxruntime as ort

    if not names:
        return {}
    m = onnx.ModelProto()
    m.CopyFrom(model)
    m.graph.output.extend(onnx.helper.make_tensor_value_info(n, onnx.TensorProto.UINT8, None) for n in names)
    s = ort.InferenceSession(m.SerializeToString(), providers=["CPUExecutionProvider"])
    hist = {n: np.zeros(256, np.int64) for n in names}
    for i in range(0, len(x), batch):
        for n, codes in zip(names, s.run(names, {m.graph.input[0].name: x[i:i + batch]})):
            hist[n] += np.bincount(codes.ravel(), minlength=256)
    return hist


def _activation_bytes(model) -> int:
    """Bytes of the float tensors ``model`` computes for one input image (shapes inferred at batch 1; tensors
    whose size depends on more than the batch are left out)."""
    import onnx

    m = onnx.ModelProto()
    m.CopyFrom(model)
    dims = m.graph.input[0].type.tensor_type.shape.dim
    if dims:
        dims[0].dim_value = 1
    vi = onnx.shape_inference.infer_shapes(m).graph.value_info
    total = 0
    for v in vi:
        d = [x.dim_value for x in v.type.tensor_type.shape.dim]
        if v.type.tensor_type.elem_type == onnx.TensorProto.FLOAT and d and all(x > 0 for x in d):
            total += int(np.prod(d)) * 4
    return total


def _available_bytes() -> int | None:
    """MemAvailable of /proc/meminfo (None where there is none)."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        return None
    return None


_CALIB_MEMORY_SHARE = 0.7  # of the available memory for the kept activations; the rest for ONNX Runtime itself


def _calibration_budget(model) -> tuple[int, int] | None:
    """(bytes the calibrator's kept activations may take, bytes of activations per image); None where unknown."""
    avail, per = _available_bytes(), _activation_bytes(model)
    if avail is None or per == 0:
        return None
    return int(avail * _CALIB_MEMORY_SHARE), per


def check_calibration_memory(model, n: int) -> None:
    """ONNX Runtime's calibrators keep every activation of every calibration image they are given at once: too many
    are an out-of-memory kill with no message (the PP-OCRv6 student: 31 MB an image, 1,536 images on 24 GiB).
    One line naming ``--calib-n`` instead, with the count that fits (minmax, whose moving average a split would
    change; the histogram calibrators go in passes, ``calibration_stride``)."""
    budget = _calibration_budget(model)
    if budget is None:
        return
    avail, per = budget
    if per * n <= avail:
        return
    raise CalibrationError(f"--calib-n {n}: ONNX Runtime's calibrator keeps every activation of every calibration "
                           f"image, {per * n / 1e6:,.0f} MB for this model against {avail / 1e6:,.0f} MB it may use: "
                           f"use --calib-n {max(1, avail // per)} or fewer")


def calibration_stride(model, n_batches: int, batch: int) -> int | None:
    """Batches per pass for the histogram calibrators (entropy, percentile) when all ``n_batches`` would not fit in
    memory at once: their histograms add up pass by pass (ONNX Runtime's strided collection), so ``--calib-n`` is
    not bounded by memory. The largest divisor of ``n_batches`` that fits (ONNX Runtime wants equal passes);
    None: one pass."""
    budget = _calibration_budget(model)
    if budget is None:
        return None
    avail, per = budget
    fit = avail // (per * batch)
    if fit >= n_batches:
        return None
    if fit < 1:
        raise CalibrationError(f"calibration: one batch of {batch} images keeps {per * batch / 1e6:,.0f} MB of "
                               f"activations, more than the {avail / 1e6:,.0f} MB it may use")
    return max(d for d in range(1, fit + 1) if n_batches % d == 0)


def prepare_for_quantization(fp32_path: str, workdir: str, target: str = "cpu"):
    """(path, ModelProto) of the graph ONNX Runtime's quantizer reads: shapes inferred and folded
    (``quant_pre_process``), and for the tensorrt target the export's affine convolutions back to Mul/Add, left
    float for TensorRT to fuse. Node names here are what ``float_nodes`` and ``only_nodes`` name."""
    import onnx
    from onnxruntime.quantization.shape_inference import quant_pre_process

    pre, src_path = os.path.join(workdir, "pre.onnx"), fp32_path
    if target == "tensorrt":
        src = onnx.load(fp32_path)
        if conv_to_scalar_affine(src):
            src_path = os.path.join(workdir, "affine.onnx")
            onnx.save(src, src_path)
    quant_pre_process(src_path, pre, skip_symbolic_shape=True)
    return pre, onnx.load(pre)


def quantized_op_types(target: str) -> list[str]:
    """The op types each INT8 flavour quantizes: residual Adds too on CPUs (integer kernels), not for TensorRT."""
    return ["Conv", "MatMul", "Gemm"] if target == "tensorrt" else ["Conv", "MatMul", "Gemm", "Add"]


def quantize_int8(fp32_path: str, out_path: str, calib: np.ndarray, method: str = "minmax",
                  keep_head_float: bool = True, batch: int = 16, target: str = "cpu",
                  integer_activations: bool = True, float_convs: int = 0,
                  calib_conditions: Sequence[str] = (), finetune_steps: int = 0,
                  finetune_x: np.ndarray | None = None, float_nodes: Sequence[str] = (),
                  only_nodes: Sequence[str] | None = None, ranges_cache: str | os.PathLike | None = None,
                  finetune_targets: Sequence[Sequence[int]] | None = None, finetune_ctc: float = 0.0,
                  finetune_lr: float = 1e-5, finetune_seed: int = 0, finetune_scale_lr: float = 0.0,
                  finetune_views=None, finetune_rounding: bool = False) -> Path:
    """``integer_activations`` (cpu target): HardSwish, GELU, squeeze-excitation gates and means between INT8 layers
    run in ONNX Runtime's integer kernels instead of float islands (``graph_rewrites.qdq_integer_activations``).
    ``float_convs``: the first that many convolutions and everything before the next one stay float
    (``float_prefix``). ``calib_conditions``: how the LR calibration images were made, recorded in the metadata.
    ``finetune_steps``: then fine-tune the weights through the file's own quantization points on ``finetune_x``
    (default ``calib``), distilled from the float model (``qdq_finetune``); 0: off. ``finetune_ctc`` > 0: CTC on
    ``finetune_targets`` (class indices per ``finetune_x`` input, ``ctc_targets``) weighs in too; ``finetune_lr``:
    the peak rate; ``finetune_seed``: the batch order; ``finetune_scale_lr`` > 0: the activation scales learn too,
    at that peak rate (``qdq_finetune``); ``finetune_views``: ``(step, batch) -> (inputs, targets)``, new inputs at
    every step instead of ``finetune_x`` (``finetune_views.FreshViews``); ``finetune_rounding``: only the int8 weights
    learn, each between its two nearest codes (``qdq_finetune``). ``float_nodes``: these nodes (by name) stay float too, the
    islands a sensitivity scan chose (``compress.sensitivity``). ``only_nodes``: quantize these nodes alone (the
    scan's one-layer files). ``ranges_cache``: a JSON file of calibrated ranges, written by the first call and read
    by later ones on the same model, data and calibrator instead of calibrating again (ONNX Runtime's
    ``calibration_cache_path``); the caller keys its name by all three."""
    import onnx
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static

    if method not in CALIBRATORS:
        raise ValueError(f"--calibrator: expected one of {CALIBRATORS}, got {method!r}")
    if target not in INT8_TARGETS:
        raise ValueError(f"--int8-target: expected one of {INT8_TARGETS}, got {target!r}")
    if float_convs < 0:
        raise ValueError(f"--int8-float-convs: expected a count >= 0, got {float_convs}")
    trt = target == "tensorrt"
    cm = {"minmax": CalibrationMethod.MinMax, "entropy": CalibrationMethod.Entropy,
          "percentile": CalibrationMethod.Percentile}[method]
    out = Path(out_path)
    out.parent.mkdir(parents=True, exist_ok=True)  # before minutes of calibration, not after
    with tempfile.TemporaryDirectory() as td:
        pre, m = prepare_for_quantization(fp32_path, td, target)
        reader = _Reader(m.graph.input[0].name, calib, batch)
        stride = None
        if method == "minmax":
            check_calibration_memory(m, len(calib))
        else:
            stride = calibration_stride(m, len(reader), batch)
        exclude = (head_nodes(m) if keep_head_float else []) + float_kept_nodes(m) + list(float_nodes)
        unknown = sorted(set(float_nodes) - {n.name for n in m.graph.node})
        if unknown:
            raise ValueError(f"--int8-float-nodes: no node named {', '.join(unknown[:5])} in {fp32_path}")
        if float_convs:
            exclude += float_prefix(m, float_convs)
            onnx.save(m, pre)  # float_prefix names unnamed nodes: exclusion goes by name
        ops = quantized_op_types(target)
        tmp = out.with_name(f".{out.name}.tmp-{os.getpid()}")
        quantize_static(pre, str(tmp), reader, quant_format=QuantFormat.QDQ,
                        activation_type=QuantType.QInt8 if trt else QuantType.QUInt8, weight_type=QuantType.QInt8,
                        per_channel=True, calibrate_method=cm,
                        op_types_to_quantize=ops,
                        nodes_to_exclude=exclude, nodes_to_quantize=list(only_nodes) if only_nodes else None,
                        calibration_cache_path=ranges_cache,
                        # QuantizeBias off: int32 bias Q/DQ is not something TensorRT builds; biases stay float.
                        extra_options={"ActivationSymmetric": trt, "WeightSymmetric": True, "QuantizeBias": False,
                                       "CalibMovingAverage": method == "minmax",
                                       **({"CalibStridedMinMax": stride} if stride else {})})
        q = onnx.load(str(tmp))
        n_gelu = 0 if trt else erf_gelu_to_gelu(q)  # TensorRT builds standard ops only and fuses GELU itself
        integer = integer_activations and not trt
        hist = _code_histograms(q, gelu_inputs(q), calib[:GELU_FIT_IMAGES], batch) if integer else {}
        finetuned, ft_x = None, calib if finetune_x is None else finetune_x
        if finetune_steps:  # on the graph quantize_static read (pre.onnx: the same tensor names), before it goes
            from .qdq_finetune import finetune_qdq

            finetuned = finetune_qdq(m, q, ft_x, finetune_steps, lr=finetune_lr, gates=fitted_gelu_gates(q, hist),
                                     targets=finetune_targets, ctc_weight=finetune_ctc, seed=finetune_seed,
                                     scale_lr=finetune_scale_lr, views=finetune_views,
                                     rounding_only=finetune_rounding)
            if integer:  # the weights moved: the gates are fitted to the codes the fine-tuned file gives
                hist = _code_histograms(q, list(hist), calib[:GELU_FIT_IMAGES], batch)
    n_int = qdq_integer_activations(q, hist) if integer else {}
    meta = read_metadata(fp32_path)  # the float model's keys (runtime.modelfile), any other ONNX's as they are
    meta[PREFIX + "precision"] = "int8"
    meta[PREFIX + "int8_calibrator"] = method
    if calib_conditions:
        meta[PREFIX + "int8_calib_conditions"] = ",".join(calib_conditions)
    meta[PREFIX + "int8_target"] = target
    meta[PREFIX + "int8_head_float"] = str(keep_head_float).lower()
    if float_convs:
        meta[PREFIX + "int8_float_convs"] = str(float_convs)
    if float_nodes:
        meta[PREFIX + "int8_float_nodes"] = ",".join(float_nodes)
    if finetuned:
        ctc = f" with CTC on their labels at weight {finetune_ctc:g}" if finetune_ctc else ""
        seed = f", seed {finetune_seed}" if finetune_seed else ""
        scales = f", activation scales learned at lr {finetune_scale_lr:g}" if finetune_scale_lr else ""
        scales += ", int8 weights within their rounding cells, float tensors fixed" if finetune_rounding else ""
        on = str(finetune_views) if finetune_views is not None else f"{len(ft_x)} inputs"
        meta[PREFIX + "int8_finetune"] = (f"{finetune_steps} steps at lr {finetune_lr:g} on {on}"
                                          f"{ctc}{seed}{scales}, simulated frame KL to FP32 "
                                          f"{finetuned[0]:.4f} -> {finetuned[1]:.4f}")
    if n_gelu:
        meta[PREFIX + "int8_fused_gelu"] = str(n_gelu)
    if any(n_int.values()):
        meta[PREFIX + "int8_integer_activations"] = ", ".join(f"{k} {v}" for k, v in n_int.items())
    del q.metadata_props[:]
    for k, v in meta.items():
        e = q.metadata_props.add()
        e.key, e.value = k, v
    onnx.save(q, str(tmp))
    os.replace(tmp, out)
    return out


def quantize_from_data(fp32_path: str, out_path: str, calib: str, n: int = 512, method: str = "minmax",
                       keep_head_float: bool = True, cache_dir: str | os.PathLike | None = None,
                       target: str = "cpu", integer_activations: bool = True,
                       float_convs: int = 0, conditions: Sequence[str] | None = None, finetune_steps: int = 0,
                       finetune_n: int = 2048, float_nodes: Sequence[str] = (), finetune_data: str | None = None,
                       finetune_ctc: float = 0.0, finetune_lr: float = 1e-5,
                       finetune_seed: int = 0, finetune_scale_lr: float = 0.0, finetune_views: str = "fixed",
                       finetune_weights: Sequence[float] | None = None,
                       finetune_rounding: bool = False) -> tuple[Path, int]:
    """Calibrate on ``calib`` with the model's own input size (from its metadata), then quantize.
    ``conditions``: the LR conditions HR crops go through (default ``calibration.CALIB_CONDITIONS``).
    ``finetune_steps``: fine-tune through the quantization points on up to ``finetune_n`` inputs made from
    ``finetune_data`` (default ``calib``), every crop under every condition; ``finetune_ctc`` > 0 adds CTC on their
    labels. ``finetune_views`` ``fresh``: new augmented views of those crops at every step instead, drawn by
    ``finetune_weights`` (``finetune_views.FreshViews``). ``finetune_rounding``: only the int8 weights learn, within
    their rounding cells. Returns (Q/DQ path, number of calibration images)."""
    from .calibration import CALIB_CONDITIONS, calibration_tensors, finetune_tensors

    info = model_info(fp32_path)
    conds = tuple(conditions or CALIB_CONDITIONS)
    cache = cache_dir if cache_dir is not None else Path(fp32_path).parent
    if finetune_views not in FINETUNE_VIEWS:
        raise CalibrationError(f"--int8-finetune-views: expected one of {', '.join(FINETUNE_VIEWS)}, "
                               f"got {finetune_views!r}")
    if finetune_weights is not None and not (finetune_steps and finetune_views == "fresh"):
        raise CalibrationError("--int8-finetune-weights: weighs the sources of --int8-finetune-views fresh only")
    fresh = bool(finetune_steps) and finetune_views == "fresh"
    if fresh and not info.lr:
        raise CalibrationError(f"--int8-finetune-views fresh: makes LR views, and {fp32_path} reads HR crops")
    x = calibration_tensors(calib, (info.height, info.width), info.lr, n, 16, cache, conds)
    ft, targets, views = None, None, None
    if fresh:
        from .finetune_views import FreshViews

        encode = ctc_tokenizer(fp32_path) if finetune_ctc else None
        views = LabelledViews(FreshViews(finetune_data or calib, (info.height, info.width), finetune_weights,
                                         finetune_seed), encode)
    elif finetune_steps:
        ft, labels = finetune_tensors(finetune_data or calib, (info.height, info.width), finetune_n, cache, conds,
                                      info.lr)
        if finetune_ctc:  # refused here, before minutes of calibration, when the model cannot take them
            targets = ctc_targets(fp32_path, labels, len(ft))
    return quantize_int8(fp32_path, out_path, x, method, keep_head_float, target=target,
                         integer_activations=integer_activations, float_convs=float_convs,
                         calib_conditions=conds if info.lr else (), finetune_steps=finetune_steps,
                         finetune_x=ft, float_nodes=float_nodes, finetune_targets=targets,
                         finetune_ctc=finetune_ctc, finetune_lr=finetune_lr, finetune_seed=finetune_seed,
                         finetune_scale_lr=finetune_scale_lr, finetune_views=views,
                         finetune_rounding=finetune_rounding), len(x)


def ctc_targets(fp32_path: str, labels: Sequence[str] | None, n: int) -> list[list[int]]:
    """``labels`` as CTC class indices by the model's own tokenizer (case adapted to its charset, other characters
    dropped). Refused by option name for a model that does not decode CTC or labels that do not match the inputs
    one to one."""
    encode = ctc_tokenizer(fp32_path)
    if labels is None or len(labels) != n:
        got = 0 if labels is None else len(labels)
        raise CalibrationError(f"--int8-finetune-ctc: {n} fine-tuning inputs but {got} labels")
    return [encode(label) for label in labels]


def ctc_tokenizer(fp32_path: str) -> Callable[[str], list[int]]:
    """A label -> the model's CTC class indices; refused by option name for a model that does not decode CTC."""
    info = model_info(fp32_path)
    if info.decoder != "ctc":
        raise CalibrationError(f"--int8-finetune-ctc: {fp32_path} decodes {info.decoder!r}, not CTC")
    return make_tokenizer("ctc", info.charset).char_ids


class LabelledViews:
    """``FreshViews`` with its labels as CTC targets (empty ones without ``encode``: KL alone uses none)."""

    def __init__(self, views, encode: Callable[[str], list[int]] | None) -> None:
        self.views, self.encode = views, encode

    def __call__(self, step: int, batch: int) -> tuple[np.ndarray, list[list[int]]]:
        x, labels = self.views(step, batch)
        return x, [self.encode(lb) if self.encode else [] for lb in labels]

    def __str__(self) -> str:
        return str(self.views)


def convert_fp16(fp32_path: str, out_path: str) -> Path:
    """FP16 weights and compute with float32 inputs and outputs (keep_io_types), for GPU targets."""
    import onnx
    from onnxruntime.transformers.float16 import convert_float_to_float16

    m = onnx.load(fp32_path)
    h = convert_float_to_float16(m, keep_io_types=True, op_block_list=["Softmax", "LayerNormalization"])
    for p in h.metadata_props:
        if p.key == "tinytext.precision":
            p.value = "fp16"
    out = Path(out_path)
    tmp = out.with_name(f".{out.name}.tmp-{os.getpid()}")
    onnx.save(h, str(tmp))
    os.replace(tmp, out)
    return out
