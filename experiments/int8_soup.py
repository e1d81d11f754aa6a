"""``python -m experiments.int8_soup A.int8.onnx B.int8.onnx [...] --out SOUP.int8.onnx``

The mean of INT8 files fine-tuned from one calibration (``compress.export --int8-finetune-steps`` with different
``--int8-finetune-seed``): every int8 weight dequantized (code x its per-channel scale), averaged over the files and
rounded again at the scale the quantizer would give the mean (max |w| / 127 per channel); every other float tensor
that differs (biases, the float prefix, norms) averaged. The activation scales must be the same in every file (one
calibration): those are the file's structure. Two fine-tunings of one start differ by the seed's noise, up to 1.5
points a cell on the PP-OCRv6 student (docs/compression.md); the mean of their weights asks whether that noise
averages out. Read the files and the mean with ``apps.benchmark run --against`` the FP32 file.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Sequence

import numpy as np

from runtime import cli
from runtime.cli import InputError, check_writable

__all__ = ["int8_soup"]


def _activation_scales(model) -> set[str]:
    init = {t.name for t in model.graph.initializer}
    return {n.input[1] for n in model.graph.node if n.op_type == "QuantizeLinear" and n.input[0] not in init}


def int8_soup(paths: Sequence[str]):
    """(mean ``onnx.ModelProto`` on the first file's graph and metadata, int8 weights averaged, float tensors
    averaged). Files of another graph or another calibration are refused by name."""
    import onnx
    import torch
    from onnx import numpy_helper

    from distill.models.fake_quant import dequantize_weight, int8_codes, int8_initializers

    if len(paths) < 2:
        raise InputError(f"int8_soup: give at least two INT8 files, got {len(paths)}")
    models = [onnx.load(p) for p in paths]
    first = models[0]
    ops = [n.op_type for n in first.graph.node]
    weights = int8_initializers(first)
    if not weights:
        raise InputError(f"{paths[0]}: no int8 weights (not an INT8 Q/DQ file)")
    inits = [{t.name: numpy_helper.to_array(t) for t in m.graph.initializer} for m in models]
    act = _activation_scales(first)
    for path, m, i in zip(paths[1:], models[1:], inits[1:]):
        if [n.op_type for n in m.graph.node] != ops or set(i) != set(inits[0]):
            raise InputError(f"{path}: not the graph of {paths[0]}")
        moved = sorted(k for k in act if not np.array_equal(i[k], inits[0][k]))
        if moved:
            raise InputError(f"{path}: other activation scales than {paths[0]} ({moved[0]}, ...): not one calibration")
    out = {t.name: t for t in first.graph.initializer}
    n_int8 = 0
    for q_name, (s_name, axis) in weights.items():
        codes = [i[q_name] for i in inits]
        if all(np.array_equal(c, codes[0]) for c in codes[1:]):
            continue
        w = np.mean([dequantize_weight(c, i[s_name], axis) for c, i in zip(codes, inits)], axis=0)
        q, scale = (t.numpy() for t in int8_codes(torch.from_numpy(w), axis))
        out[q_name].CopyFrom(numpy_helper.from_array(q, q_name))
        out[s_name].CopyFrom(numpy_helper.from_array(scale.reshape(inits[0][s_name].shape), s_name))
        n_int8 += 1
    weight_scales = {s for s, _ in weights.values()}
    n_float = 0
    for name, v in inits[0].items():
        if v.dtype != np.float32 or name in weight_scales or name in act:
            continue
        if all(np.array_equal(i[name], v) for i in inits[1:]):
            continue
        out[name].CopyFrom(numpy_helper.from_array(np.mean([i[name] for i in inits], axis=0).astype(np.float32), name))
        n_float += 1
    return first, n_int8, n_float


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m experiments.int8_soup", description=__doc__.split("\n\n")[1],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("int8", nargs="+", help="INT8 Q/DQ files from one calibration (at least two)")
    ap.add_argument("--out", required=True, help="the mean file's path (required)")
    args = ap.parse_args(argv)
    for path in args.int8:
        if not Path(path).is_file():
            raise InputError(f"{path}: no such model file")
    check_writable(args.out, "--out", (".onnx",))
    soup, n_int8, n_float = int8_soup(args.int8)
    e = soup.metadata_props.add()
    e.key, e.value = "tinytext.int8_soup", f"mean of {len(args.int8)} files: " + ", ".join(args.int8)
    from runtime.files import write_bytes_atomic

    write_bytes_atomic(soup.SerializeToString(), args.out)
    print(f"int8_soup: {n_int8} int8 weights and {n_float} float tensors averaged over {len(args.int8)} files "
          f"-> {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(cli.run(main))
