"""``python -m compress.build_engine (--onnx MODEL.onnx | --ckpt CKPT) [--fp16] [--int8 --calib DATA]``

Builds a TensorRT engine with the TensorRT 10/11 API: a strongly typed network (precision comes from the ONNX:
Q/DQ nodes for INT8, FP16 weights for FP16; TensorRT 11 removed the implicit calibrator and the FP16/INT8 builder
flags, TensorRT 10 deprecated them), one optimization profile over the batch range, a workspace limit, and a
timing cache kept as a file beside the engine. Every parser error is printed. Metadata goes to a JSON sidecar.

``--int8`` from a checkpoint or a float ONNX calibrates first and builds from the Q/DQ model; from a Q/DQ ONNX it
builds directly. Where TensorRT is absent (any CPU-only machine) the Q/DQ ONNX is still written, then the command
exits non-zero saying what was written and that the engine must be built on the target.
"""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from .calibration import add_calibration_args

__all__ = ["build_engine", "import_tensorrt", "TensorRTMissing", "main", "is_qdq"]


class TensorRTMissing(RuntimeError):
    pass


def import_tensorrt():
    """TensorRT is imported lazily: it exists only on GPU hosts and Jetsons."""
    try:
        import tensorrt as trt  # noqa: PLC0415
    except ImportError as e:
        raise TensorRTMissing(f"TensorRT is not installed here ({e})") from None
    return trt


def is_qdq(path: str) -> bool:
    from runtime.onnxfile import load_proto

    m = load_proto(path, load_external_data=False)
    return any(n.op_type in ("QuantizeLinear", "DequantizeLinear") for n in m.graph.node)


def build_engine(onnx_path: str, engine_path: str, min_batch: int = 1, opt_batch: int = 16, max_batch: int = 64,
                 workspace_mb: int = 1024, trt=None) -> Path:
    """Short and linear, like NVIDIA's samples. ``trt`` may be injected (tests use a fake module)."""
    trt = trt or import_tensorrt()
    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    # Strongly typed: the network keeps the ONNX's types (Q/DQ -> INT8, FP16 tensors -> FP16); no precision flags.
    flags = 1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED)
    network = builder.create_network(flags)
    parser = trt.OnnxParser(network, logger)
    data = Path(onnx_path).read_bytes()
    if not parser.parse(data):
        errors = [str(parser.get_error(i)) for i in range(parser.num_errors)]
        for e in errors:
            print(f"build_engine: parser error: {e}", file=sys.stderr)
        raise RuntimeError(f"{onnx_path}: TensorRT's ONNX parser failed with {len(errors)} error(s)")
    inp = network.get_input(0)
    _, c, h, w = inp.shape
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, workspace_mb << 20)
    profile = builder.create_optimization_profile()
    profile.set_shape(inp.name, (min_batch, c, h, w), (opt_batch, c, h, w), (max_batch, c, h, w))
    config.add_optimization_profile(profile)
    cache_path = Path(engine_path).with_suffix(".timing.cache")  # beside the engine: rebuilds reuse the tactics
    cache = config.create_timing_cache(cache_path.read_bytes() if cache_path.exists() else b"")
    config.set_timing_cache(cache, ignore_mismatch=False)
    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise RuntimeError(f"{onnx_path}: TensorRT could not build an engine (see the log above)")
    out = Path(engine_path)
    tmp = out.with_name(f".{out.name}.tmp-{os.getpid()}")
    tmp.write_bytes(bytes(serialized))
    os.replace(tmp, out)
    cache_tmp = cache_path.with_name(cache_path.name + ".tmp")
    cache_tmp.write_bytes(bytes(config.get_timing_cache().serialize()))
    os.replace(cache_tmp, cache_path)
    return out


def write_sidecar(onnx_path: str, engine_path: Path, batch: tuple[int, int, int], trt_version: str) -> Path:
    """The ONNX model's metadata (``runtime.modelfile``) plus the engine's own keys, as JSON beside the engine."""
    from runtime.modelfile import PREFIX, model_info, write_sidecar as write_json

    info = model_info(onnx_path)
    info.extra.update({PREFIX + "engine_source_onnx": Path(onnx_path).name, PREFIX + "batch_min": str(batch[0]),
                       PREFIX + "batch_opt": str(batch[1]), PREFIX + "batch_max": str(batch[2]),
                       PREFIX + "tensorrt_version": trt_version})
    return write_json(engine_path, info.to_metadata())


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m compress.build_engine", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--onnx", help="float or Q/DQ ONNX exported by compress.export")
    src.add_argument("--ckpt", help="distill checkpoint: exported first")
    p.add_argument("--out", default=None, help="output directory for everything written (default: the input's folder)")
    p.add_argument("--fp16", action="store_true", help="build from the FP16 ONNX (made when missing)")
    p.add_argument("--int8", action="store_true", help="build from a Q/DQ INT8 ONNX (calibrated when missing)")
    add_calibration_args(p, "calibration data for --int8 from a float model")
    p.add_argument("--batch", default="1,16,64", help="optimization profile: min,opt,max batch")
    p.add_argument("--workspace-mb", type=int, default=1024, help="builder workspace limit")
    return p


def main(argv: list[str] | None = None) -> int:
    from runtime.cli import InputError, positive
    from runtime.modelfile import path_for

    from .quantize import convert_fp16, quantize_from_data
    from .trt_check import check_trt_buildable

    args = build_parser().parse_args(argv)
    try:
        b = tuple(int(v) for v in args.batch.split(","))
        assert len(b) == 3 and 1 <= b[0] <= b[1] <= b[2]
    except (ValueError, AssertionError):
        raise InputError(f"--batch {args.batch!r}: expected min,opt,max with 1 <= min <= opt <= max") from None
    positive("--workspace-mb", args.workspace_mb)
    if args.onnx and not Path(args.onnx).is_file():
        raise InputError(f"--onnx {args.onnx}: no such file")
    # everything this command writes (the exported, FP16 and Q/DQ ONNX, the calibration cache, the engine) goes to
    # --out: a file beside the input is never replaced
    out_dir = Path(args.out) if args.out else Path(args.onnx or args.ckpt).parent
    out_dir.mkdir(parents=True, exist_ok=True)
    src = onnx_path = Path(args.onnx) if args.onnx else None
    try:
        if args.ckpt:
            from .export import export_onnx

            src = onnx_path = export_onnx(args.ckpt, str(out_dir))
        if args.int8 and not is_qdq(str(onnx_path)):
            if not args.calib:
                raise InputError("--int8 from a float model needs --calib DATA")
            src, _ = quantize_from_data(str(onnx_path), str(path_for(onnx_path, "onnx-int8-trt", out_dir)),
                                        args.calib, args.calib_n, args.calibrator, target="tensorrt",
                                        cache_dir=out_dir, conditions=args.calib_conditions)
            print(f"build_engine: wrote calibrated Q/DQ ONNX {src}")
        elif args.fp16 and not str(onnx_path).endswith(".fp16.onnx"):
            src = convert_fp16(str(onnx_path), str(path_for(onnx_path, "onnx-fp16", out_dir)))
            print(f"build_engine: wrote FP16 ONNX {src}")
        chk = check_trt_buildable(str(src), require_qdq=args.int8)
        print(chk)
        if not chk.ok:
            if any("zero point" in p for p in chk.problems):
                print(f"build_engine: {src} looks like the CPU INT8 flavour (uint8, asymmetric); give the float ONNX "
                      f"with --int8 --calib DATA, or export with --int8-target tensorrt", file=sys.stderr)
            return 1
        trt = import_tensorrt()
    except TensorRTMissing as e:
        print(f"build_engine: {e}. Wrote {src}; build the engine on the target (a Jetson or GPU host with TensorRT) "
              f"with: python -m compress.build_engine --onnx {src}", file=sys.stderr)
        return 4
    prec = "int8" if args.int8 else "fp16" if args.fp16 else "fp32"
    engine = path_for(src, f"engine-{prec}", out_dir)
    engine.parent.mkdir(parents=True, exist_ok=True)
    build_engine(str(src), str(engine), *b, workspace_mb=args.workspace_mb, trt=trt)
    side = write_sidecar(str(src), engine, b, getattr(trt, "__version__", "?"))
    print(f"build_engine: wrote {engine} and {side}")
    return 0


if __name__ == "__main__":
    from runtime.cli import run

    sys.exit(run(main))
