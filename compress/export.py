"""``python -m compress.export --ckpt CKPT --out DIR [--opset N] [--no-simplify] [--parity-data PATH]``

Exports the inference graph of a distill checkpoint to ONNX: images (N, 3, H, W) float32 in [-1, 1] in, per-step
probabilities (N, T, C) out; decoding stays outside, in ``runtime``. The graph is loop-free (PARSeq's
autoregressive decoder is unrolled to its maximum length without early exit), uses float attention masks, and
has a dynamic batch (traced with batch 2, checked at batch 1 and > 1). It is simplified with onnxslim, checked
by the ONNX checker, and gated on parity with PyTorch on real images before it is renamed into place.
Everything ``runtime`` needs to run it is in ``metadata_props``.
"""
from __future__ import annotations

import argparse
import hashlib
import os
import sys
import warnings
from pathlib import Path

import torch

from distill.checkpoint import load_checkpoint, load_model
from distill.models import OnnxNet
from runtime.cli import InputError, positive
from runtime.modelfile import PREFIX, ModelInfo, path_for
from runtime.preprocess import MEAN, STD

from .calibration import add_calibration_args, add_finetune_args, data_paths, finetune_options, resolve_calib_path
from .fusion import fuse_for_inference
from .graph_rewrites import scalar_affine_to_conv
from .parity import ParityError, parity_check, parity_images

__all__ = ["export_onnx", "model_metadata", "main"]


def sha256_file(path: str | os.PathLike) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def model_metadata(spec: dict, ckpt_path: str, size: tuple[int, int], precision: str = "fp32") -> dict[str, str]:
    """The model file's ``tinytext.*`` keys (``runtime.modelfile``): what the runtime needs, then provenance.
    ``size``: the network's input (H, W), from the model itself."""
    info = ModelInfo(spec["name"], spec["tokenizer"], spec["charset"], size[0], size[1], MEAN, STD, precision,
                     bool(spec["lr"]), int(spec["max_len"]),
                     {PREFIX + "source_checkpoint": Path(ckpt_path).name,
                      PREFIX + "source_sha256": sha256_file(ckpt_path)})
    return info.to_metadata()


def set_metadata(model, meta: dict[str, str]) -> None:

    keep = [p for p in model.metadata_props if p.key not in meta]
    del model.metadata_props[:]
    model.metadata_props.extend(keep)
    for k, v in meta.items():
        entry = model.metadata_props.add()
        entry.key, entry.value = k, v


def export_onnx(ckpt: str, out_dir: str, opset: int = 17, simplify: bool = True, parity_data: str | None = None,
                parity_n: int = 64, atol: float = 1e-3, min_agree: float = 0.99) -> Path:
    import onnx

    model, tok, ck = load_model(ckpt)
    if isinstance(model, OnnxNet):  # graphs imported from ONNX: fold affine/hardswish chains first
        print(f"export: fused for inference {fuse_for_inference(model)}")
    spec = ck["model_spec"]
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    final = out / (Path(ckpt).stem + ".onnx")
    tmp = out / f".{final.name}.tmp-{os.getpid()}"
    h, w = tuple(model.img_size)
    example = torch.randn(2, 3, h, w)  # batch 2: a batch-1 example can freeze the batch dimension
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # tracer warnings about Python ints in shapes are expected here
        torch.onnx.export(model, (example,), str(tmp), input_names=["images"], output_names=["probs"],
                          dynamic_axes={"images": {0: "batch"}, "probs": {0: "batch"}}, opset_version=opset,
                          do_constant_folding=True, dynamo=False)
    m = onnx.load(str(tmp))
    if simplify:
        m = _simplify(m)
    n_affine = scalar_affine_to_conv(m)  # exact; keeps ONNX Runtime's NCHWc convolutions chained (graph_rewrites)
    if n_affine:
        print(f"export: {n_affine} scalar affine (Mul -> Add) pairs written as depthwise 1x1 convolutions")
    set_metadata(m, model_metadata(spec, ckpt, (h, w)))
    onnx.checker.check_model(m)
    onnx.save(m, str(tmp))
    try:
        imgs = parity_images(parity_data, spec["lr"], parity_n, (h, w))
        rep = parity_check(model, tok, str(tmp), imgs, atol=atol, min_agree=min_agree)
        what = f"images of {parity_data}" if parity_data else "noise images"
        print(f"export: parity with PyTorch on {rep['n']} {what}: max |diff| {rep['max_abs_diff']:.2e}, "
              f"strings agree {100 * rep['agreement']:.1f}% (batch 1 and {rep['batch']})")
    except ParityError:
        tmp.unlink(missing_ok=True)
        raise
    os.replace(tmp, final)
    return final


def _simplify(m):
    try:
        import onnxslim

        return onnxslim.slim(m)
    except ImportError:
        pass
    try:
        import onnxsim

        s, ok = onnxsim.simplify(m)
        return s if ok else m
    except ImportError:
        print("export: neither onnxslim nor onnxsim installed; graph left unsimplified", file=sys.stderr)
        return m


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m compress.export", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--ckpt", required=True, help="distill checkpoint (.pt)")
    p.add_argument("--out", required=True, help="output directory")
    p.add_argument("--opset", type=int, default=17, help="ONNX opset")
    p.add_argument("--no-simplify", action="store_true", help="skip onnxslim/onnxsim")
    p.add_argument("--parity-data", default=None,
                   help="lmdb/folder of real crops for the parity gate; unset: the --calib data when given, else "
                        "uniform noise")
    p.add_argument("--parity-n", type=int, default=64, help="images in the parity gate")
    p.add_argument("--atol", type=float, default=1e-3, help="max |prob difference| allowed by the parity gate")
    p.add_argument("--fp16", action="store_true", help="also write an FP16 ONNX (float32 I/O) for GPU targets")
    p.add_argument("--int8", action="store_true", help="also write an INT8 Q/DQ ONNX (needs --calib)")
    add_calibration_args(p, "calibration data: TextZoom/STR lmdb, folder or synthetic root")
    p.add_argument("--int8-target", default="cpu", choices=["cpu", "tensorrt"],
                   help="INT8 flavour: cpu = uint8 activations for ONNX Runtime's fast CPU kernels (<stem>.int8.onnx); "
                        "tensorrt = symmetric int8 Q/DQ that TensorRT builds (<stem>.int8-trt.onnx)")
    p.add_argument("--quantize-head", action="store_true", help="quantize the output head too (default: float)")
    p.add_argument("--int8-float-convs", type=int, default=0, metavar="N",
                   help="keep the first N convolutions (and all before the next one) in float: the layers that "
                        "quantize worst and cost least in mobile networks")
    p.add_argument("--int8-float-activations", action="store_true",
                   help="cpu flavour: leave HardSwish, GELU, gates and means between INT8 layers as float islands "
                        "(default: off, they run in ONNX Runtime's integer kernels)")
    add_finetune_args(p)
    p.add_argument("--gate-data", default=None,
                   help="validation data for the accuracy gate (default: the first --calib dataset's val split)")
    p.add_argument("--gate-n", type=int, default=1000, help="validation samples in the accuracy gate")
    p.add_argument("--budget", type=float, default=1.0, help="max accuracy points INT8/FP16 may lose vs FP32")
    return p


def main(argv: list[str] | None = None) -> int:
    from .gate import evaluate_onnx, gate_table
    from .quantize import convert_fp16, int8_path, quantize_from_data
    from .trt_check import check_trt_buildable

    args = build_parser().parse_args(argv)
    if args.int8 and not args.calib:
        raise InputError("--int8 needs --calib DATA (TextZoom/STR lmdb, folder or synthetic root)")
    positive("--calib-n", args.calib_n)
    finetune = finetune_options(args)
    if args.int8:  # the calibration data is checked (and cached) before anything is written
        from runtime.preprocess import HR_SIZE, LR_SIZE

        from .calibration import calibration_tensors, finetune_tensors

        lr = load_checkpoint(args.ckpt)["model_spec"]["lr"]
        size = LR_SIZE if lr else HR_SIZE
        calibration_tensors(args.calib, size, lr, args.calib_n, 16, args.out, args.calib_conditions)
        if args.int8_finetune_steps:
            finetune_tensors(args.int8_finetune_data or args.calib, size, args.int8_finetune_n, args.out,
                             args.calib_conditions, lr)
    first_calib = data_paths(args.calib)[0] if args.calib else None  # parity and the gate read one dataset
    try:
        parity = args.parity_data or (str(resolve_calib_path(first_calib)) if first_calib else None)
        path = export_onnx(args.ckpt, args.out, args.opset, not args.no_simplify, parity, args.parity_n, args.atol)
    except ParityError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    print(f"export: wrote {path} ({path.stat().st_size / 1e6:.2f} MB)")
    made = [path]
    if args.fp16:
        made.append(convert_fp16(str(path), str(path_for(path, "onnx-fp16"))))
        print(f"export: wrote {made[-1]} ({made[-1].stat().st_size / 1e6:.2f} MB)")
    if args.int8:
        q, n = quantize_from_data(str(path), str(int8_path(path, args.int8_target)), args.calib, args.calib_n,
                                  args.calibrator, not args.quantize_head, target=args.int8_target,
                                  integer_activations=not args.int8_float_activations,
                                  float_convs=args.int8_float_convs, conditions=args.calib_conditions,
                                  **finetune)
        made.append(q)
        print(f"export: wrote {q} ({q.stat().st_size / 1e6:.2f} MB, {args.int8_target} flavour, {args.calibrator}, "
              f"{n} calibration images)")
        if args.int8_target == "tensorrt":
            print(check_trt_buildable(str(q), require_qdq=True))
    gate_data = args.gate_data or first_calib
    if gate_data and len(made) > 1:
        rows = [evaluate_onnx(str(m), gate_data, args.gate_n) for m in made]
        print(gate_table(rows))
        base = rows[0].result.accuracy
        over = [r for r in rows[1:] if base - r.result.accuracy > args.budget]
        if over:
            print(f"error: accuracy gate: {', '.join(r.artifact for r in over)} lose more than {args.budget} points "
                  f"against FP32", file=sys.stderr)
            return 3
    return 0


if __name__ == "__main__":
    from runtime.cli import run

    sys.exit(run(main))
