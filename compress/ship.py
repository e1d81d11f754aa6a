"""``python -m compress.ship [--teacher T.pt] --student S.pt --out weights --calib DATA``

Prepares the shipped default weights: checkpoints stripped of optimizer/RNG state (a few MB), the student exported
to FP32 and INT8 ONNX (parity- and accuracy-gated by the same code as ``compress.export``). Without ``--teacher``
(a student of an ONNX teacher such as PP-OCRv4, which its own project ships) only the student is written."""
from __future__ import annotations

import argparse
import shutil
import sys
from pathlib import Path

from distill.checkpoint import strip_checkpoint
from runtime.cli import non_negative, positive

from .calibration import (add_calib_n_arg, add_conditions_arg, add_finetune_args, data_paths, finetune_options,
                          resolve_calib_path)
from .export import export_onnx
from .gate import evaluate_onnx, gate_table
from .quantize import CALIBRATORS, int8_path, quantize_from_data
from .trt_check import check_trt_buildable

DEFAULT_DIR = Path(__file__).resolve().parents[1] / "weights"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m compress.ship", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--teacher", default=None, help="HR teacher checkpoint (default: none, only the student is shipped)")
    p.add_argument("--student", required=True, help="LR student checkpoint")
    p.add_argument("--out", default=str(DEFAULT_DIR), help="weights directory")
    p.add_argument("--name", default="ctc", help="file name stem: <name>-teacher-hr.pt, <name>-student-lr.*")
    p.add_argument("--calib", required=True, help="INT8 calibration data (synthetic root or lmdb; comma-separated: "
                   "an equal share of each)")
    p.add_argument("--calibrator", default="minmax", choices=CALIBRATORS, help="INT8 calibration method")
    add_conditions_arg(p)
    add_calib_n_arg(p)
    p.add_argument("--int8-float-convs", type=int, default=0, metavar="N",
                   help="INT8: keep the first N convolutions in float (compress.export's option)")
    p.add_argument("--trt-float-convs", type=int, default=None, metavar="N",
                   help="the tensorrt flavour's float convolutions, when they should differ from --int8-float-convs "
                        "(default: --int8-float-convs's N). On a GPU a float convolution runs in FP16 at little cost; "
                        "on a CPU it runs at half the integer rate")
    p.add_argument("--int8-float-nodes", default="", metavar="NAMES",
                   help="the cpu flavour: keep these nodes float too, comma-separated (the islands "
                        "compress.sensitivity chose and prints; default: none)")
    add_finetune_args(p)
    p.add_argument("--gate-data", default=None, help="validation data for the accuracy gate (default: --calib's val)")
    args = p.parse_args(argv)
    positive("--calib-n", args.calib_n)
    non_negative("--int8-float-convs", args.int8_float_convs)
    trt_float_convs = args.int8_float_convs if args.trt_float_convs is None else args.trt_float_convs
    non_negative("--trt-float-convs", trt_float_convs)
    finetune = finetune_options(args)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    t = strip_checkpoint(args.teacher, out / f"{args.name}-teacher-hr.pt") if args.teacher else None
    s = strip_checkpoint(args.student, out / f"{args.name}-student-lr.pt")
    float_nodes = [n.strip() for n in args.int8_float_nodes.split(",") if n.strip()]
    first_calib = data_paths(args.calib)[0]
    onnx_path = export_onnx(str(s), str(out), parity_data=str(resolve_calib_path(first_calib)))
    # Both INT8 flavours: uint8 activations for ONNX Runtime on CPUs, symmetric int8 for TensorRT (Jetson).
    q, _ = quantize_from_data(str(onnx_path), str(int8_path(onnx_path, "cpu")), args.calib, args.calib_n,
                              method=args.calibrator,
                              cache_dir=out / ".calib-cache", target="cpu", float_convs=args.int8_float_convs,
                              conditions=args.calib_conditions, float_nodes=float_nodes, **finetune)
    qt, _ = quantize_from_data(str(onnx_path), str(int8_path(onnx_path, "tensorrt")), args.calib, args.calib_n,
                               method=args.calibrator, cache_dir=out / ".calib-cache", target="tensorrt",
                               float_convs=trt_float_convs, conditions=args.calib_conditions, **finetune)
    shutil.rmtree(out / ".calib-cache", ignore_errors=True)  # a cache, not an artifact to commit
    print(check_trt_buildable(str(qt), require_qdq=True))
    rows = [evaluate_onnx(str(m), args.gate_data or first_calib) for m in (onnx_path, q, qt)]
    print(gate_table(rows))
    for f in [f for f in (t, s, onnx_path, q, qt) if f is not None]:
        print(f"ship: {f} ({f.stat().st_size / 1e6:.2f} MB)")
    return 0


if __name__ == "__main__":
    from runtime.cli import run

    sys.exit(run(main))
