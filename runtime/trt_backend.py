"""TensorRT backend: a ``.engine`` built by ``python -m compress.build_engine`` (TensorRT 10.x / 11.x API: named I/O
tensors, ``set_input_shape``, ``set_tensor_address``, ``execute_async_v3``).

TensorRT, and a CUDA binding for the I/O buffers, exist only on GPU hosts and Jetsons: everything is imported
lazily. Buffers go through pycuda (our design's choice; JetPack ships it) or, where pycuda is absent, NVIDIA's
cuda-python: ``DeviceBuffer`` hides which. The engine's metadata (charset, input size, normalisation, decoder)
is read from the JSON sidecar beside it, never from the engine bytes.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from .charset import make_tokenizer
from .modelfile import ModelInfo, read_metadata, sidecar_path
from .recognizer import Recognizer

__all__ = ["TensorRTRecognizer", "DeviceBuffer", "CudaMissing", "cuda_api"]


class CudaMissing(RuntimeError):
    pass


def cuda_api():
    """('pycuda', module) or ('cuda-python', cudart module); raises CudaMissing naming both options."""
    try:
        import pycuda.autoinit  # noqa: F401  (creates the context)
        import pycuda.driver as drv

        return "pycuda", drv
    except ImportError:
        pass
    try:
        try:
            from cuda.bindings import runtime as cudart  # cuda-python >= 12.6
        except ImportError:
            from cuda import cudart  # older cuda-python
        return "cuda-python", cudart
    except ImportError:
        raise CudaMissing("neither pycuda nor cuda-python is installed: pip install pycuda (Jetson: "
                          "apt install python3-pycuda) or pip install cuda-python") from None


def _check(ret):
    """cuda-python returns (err, value...) tuples; raise on a non-zero error."""
    err, *rest = ret if isinstance(ret, tuple) else (ret,)
    if int(err) != 0:
        raise RuntimeError(f"CUDA error {err}")
    return rest[0] if len(rest) == 1 else rest


class DeviceBuffer:
    """One device allocation with host<->device copies on a stream, through pycuda or cuda-python."""

    def __init__(self, nbytes: int, api=None) -> None:
        self.kind, self.api = api or cuda_api()
        self.nbytes = int(nbytes)
        if self.kind == "pycuda":
            self._mem = self.api.mem_alloc(max(self.nbytes, 1))
            self.ptr = int(self._mem)
        else:
            self.ptr = int(_check(self.api.cudaMalloc(max(self.nbytes, 1))))

    def upload(self, host: np.ndarray, stream) -> None:
        host = np.ascontiguousarray(host)
        if host.nbytes > self.nbytes:
            raise ValueError(f"upload: {host.nbytes} bytes into a {self.nbytes}-byte buffer")
        if self.kind == "pycuda":
            self.api.memcpy_htod_async(self.ptr, host, stream)
        else:
            _check(self.api.cudaMemcpyAsync(self.ptr, host.ctypes.data, host.nbytes,
                                            self.api.cudaMemcpyKind.cudaMemcpyHostToDevice, stream))

    def download(self, host: np.ndarray, stream) -> None:
        if host.nbytes > self.nbytes:
            raise ValueError(f"download: {host.nbytes} bytes from a {self.nbytes}-byte buffer")
        if self.kind == "pycuda":
            self.api.memcpy_dtoh_async(host, self.ptr, stream)
        else:
            _check(self.api.cudaMemcpyAsync(host.ctypes.data, self.ptr, host.nbytes,
                                            self.api.cudaMemcpyKind.cudaMemcpyDeviceToHost, stream))

    def free(self) -> None:
        if self.kind == "pycuda":
            self._mem.free()
        elif self.ptr:
            _check(self.api.cudaFree(self.ptr))
        self.ptr = 0


def _np_dtype(trt, dt) -> np.dtype:
    table = {trt.float32: np.float32, trt.float16: np.float16, trt.int32: np.int32, trt.int8: np.int8}
    if dt not in table:
        raise ValueError(f"unsupported TensorRT I/O dtype {dt}")
    return np.dtype(table[dt])


class TensorRTRecognizer(Recognizer):
    """A TensorRT engine; buffers sized for the profile's largest batch, larger batches are split."""

    def __init__(self, path: str, trt=None, api=None) -> None:
        self.path = str(path)
        if not Path(self.path).is_file():
            raise FileNotFoundError(f"{self.path}: no such engine file")
        meta = read_metadata(self.path)
        self.info = ModelInfo.from_metadata(meta, str(sidecar_path(self.path)))
        self.tokenizer = make_tokenizer(self.info.decoder, self.info.charset)
        self.max_batch = int(meta.get("tinytext.batch_max", 64))
        if trt is None:
            try:
                import tensorrt as trt
            except ImportError as e:
                raise RuntimeError(f"{self.path}: TensorRT is not installed here ({e}); use the .onnx model") from None
        self.trt = trt
        self.api = api or cuda_api()
        self.logger = trt.Logger(trt.Logger.WARNING)
        self.engine = trt.Runtime(self.logger).deserialize_cuda_engine(Path(self.path).read_bytes())
        if self.engine is None:
            raise RuntimeError(f"{self.path}: TensorRT could not deserialize the engine (built by another TensorRT "
                               f"version or for another GPU? rebuild it on this device)")
        self.context = self.engine.create_execution_context()
        names = [self.engine.get_tensor_name(i) for i in range(self.engine.num_io_tensors)]
        inputs = [n for n in names if self.engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT]
        outputs = [n for n in names if n not in inputs]
        if len(inputs) != 1 or len(outputs) < 1:
            raise RuntimeError(f"{self.path}: expected 1 input and >= 1 output, got {inputs} / {outputs}")
        self.input_name, self.output_name = inputs[0], outputs[0]
        self.input_dtype = _np_dtype(trt, self.engine.get_tensor_dtype(self.input_name))
        self.output_dtype = _np_dtype(trt, self.engine.get_tensor_dtype(self.output_name))
        # size the buffers once, for the largest batch of the optimisation profile
        self.context.set_input_shape(self.input_name, (self.max_batch, 3, *self.size))
        out_shape = tuple(self.context.get_tensor_shape(self.output_name))
        self._in = DeviceBuffer(self.max_batch * 3 * self.size[0] * self.size[1] * self.input_dtype.itemsize, self.api)
        self._out = DeviceBuffer(int(np.prod(out_shape)) * self.output_dtype.itemsize, self.api)
        self.stream = self._new_stream()

    def _new_stream(self):
        kind, api = self.api
        return api.Stream() if kind == "pycuda" else _check(api.cudaStreamCreate())

    def _sync(self) -> None:
        kind, api = self.api
        if kind == "pycuda":
            self.stream.synchronize()
        else:
            _check(api.cudaStreamSynchronize(self.stream))

    def _handle(self) -> int:
        return self.stream.handle if self.api[0] == "pycuda" else int(self.stream)

    def run(self, x: np.ndarray) -> np.ndarray:
        if len(x) > self.max_batch:
            return np.concatenate([self.run(x[i : i + self.max_batch]) for i in range(0, len(x), self.max_batch)])
        x = np.ascontiguousarray(x, dtype=self.input_dtype)
        self.context.set_input_shape(self.input_name, x.shape)
        shape = tuple(self.context.get_tensor_shape(self.output_name))
        out = np.empty(shape, self.output_dtype)
        self._in.upload(x, self.stream)
        self.context.set_tensor_address(self.input_name, self._in.ptr)
        self.context.set_tensor_address(self.output_name, self._out.ptr)
        if not self.context.execute_async_v3(self._handle()):
            raise RuntimeError(f"{self.path}: execute_async_v3 failed")
        self._out.download(out, self.stream)
        self._sync()
        return out.astype(np.float32, copy=False)

    def close(self) -> None:
        self._in.free()
        self._out.free()
