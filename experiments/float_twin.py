"""``python -m experiments.float_twin FP32.onnx INT8.onnx --out TWIN.onnx``

The float model with the INT8 file's weights: every weight the Q/DQ file stores as int8, dequantized (int8 code x
its per-channel scale), and every float tensor the INT8 fine-tuning changed (``compress.qdq_finetune``: biases, the
float prefix, norms), on the FP32 file's own graph. The twin reads with exact float activations what the INT8 file
reads with rounded ones, so the two differ by activation rounding alone; against the FP32 file, the twin shows
what the fine-tuning's weights do without quantization. Read the three files with ``apps.benchmark run --against``.
"""
from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import numpy as np

from runtime import cli
from runtime.cli import InputError, check_writable

__all__ = ["float_twin"]


def float_twin(fp32_path: str, int8_path: str):
    """(twin ``onnx.ModelProto``, int8 weights taken, float tensors taken). The twin is the graph the quantizer read
    (``compress.quantize.prepare_for_quantization``: same node and tensor names as the Q/DQ file) with the FP32
    file's metadata."""
    import onnx
    from onnx import numpy_helper

    from compress.quantize import prepare_for_quantization
    from distill.models.fake_quant import dequantize_weight, int8_weights

    with tempfile.TemporaryDirectory() as td:
        _, twin = prepare_for_quantization(fp32_path, td, "cpu")
    q = onnx.load(int8_path)
    qi = {t.name: t for t in q.graph.initializer}
    ti = {t.name: t for t in twin.graph.initializer}
    n_int8 = 0
    for name, (q_name, s_name, axis) in int8_weights(q, twin).items():
        if name not in ti:
            continue
        w = dequantize_weight(numpy_helper.to_array(qi[q_name]), numpy_helper.to_array(qi[s_name]), axis)
        ti[name].CopyFrom(numpy_helper.from_array(w, name))
        n_int8 += 1
    if not n_int8:
        raise InputError(f"{int8_path}: no int8 weight of {fp32_path}'s nodes (not an INT8 file made from it)")
    n_float = 0
    for name, t in qi.items():
        if (name in ti and t.data_type == onnx.TensorProto.FLOAT and tuple(t.dims) == tuple(ti[name].dims)
                and not np.array_equal(numpy_helper.to_array(t), numpy_helper.to_array(ti[name]))):
            ti[name].CopyFrom(t)
            n_float += 1
    del twin.metadata_props[:]
    for p in onnx.load(fp32_path, load_external_data=False).metadata_props:
        e = twin.metadata_props.add()
        e.key, e.value = p.key, p.value
    return twin, n_int8, n_float


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m experiments.float_twin", description=__doc__.split("\n\n")[1],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("fp32", help="the FP32 ONNX file the INT8 file was quantized from")
    ap.add_argument("int8", help="the Q/DQ INT8 file (compress.export --int8)")
    ap.add_argument("--out", required=True, help="the twin's path (required)")
    args = ap.parse_args(argv)
    for path in (args.fp32, args.int8):
        if not Path(path).is_file():
            raise InputError(f"{path}: no such model file")
    check_writable(args.out, "--out", (".onnx",))
    twin, n_int8, n_float = float_twin(args.fp32, args.int8)
    from runtime.files import write_bytes_atomic

    write_bytes_atomic(twin.SerializeToString(), args.out)
    print(f"float_twin: {n_int8} int8 weights and {n_float} changed float tensors of {args.int8} -> {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(cli.run(main))
