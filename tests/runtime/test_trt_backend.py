"""runtime.trt_backend's code around the hardware: fake tensorrt / pycuda modules stand in for the GPU."""
import json
import types

import numpy as np
import pytest


def test_tensorrt_recognizer_with_fake_tensorrt_and_pycuda(tmp_path, monkeypatch):
    """No TensorRT or GPU here: fake modules stand in so the backend's own code (sidecar, shapes, buffers, copies,
    batching) runs. The fake engine returns a fixed distribution that decodes to 'ab'."""
    from runtime import trt_backend

    (tmp_path / "m.engine").write_bytes(b"engine")
    meta = {"tinytext.decoder": "ctc", "tinytext.charset": "ab", "tinytext.input_height": "16",
            "tinytext.input_width": "64", "tinytext.batch_max": "4"}
    (tmp_path / "m.engine.json").write_text(json.dumps(meta))
    mem = {}

    class Drv:
        class Stream:
            handle = 7

            def synchronize(self):
                pass

        @staticmethod
        def mem_alloc(n):
            mem[len(mem) + 1] = bytearray(n)
            return len(mem)

        @staticmethod
        def memcpy_htod_async(ptr, host, stream):
            mem[ptr][: host.nbytes] = host.tobytes()

        @staticmethod
        def memcpy_dtoh_async(host, ptr, stream):
            host.view(np.uint8).reshape(-1)[:] = np.frombuffer(bytes(mem[ptr][: host.nbytes]), np.uint8)

    class Ctx:
        def set_input_shape(self, name, shape):
            self.shape = shape

        def get_tensor_shape(self, name):
            return (self.shape[0], 4, 3)

        def set_tensor_address(self, name, ptr):
            setattr(self, name, ptr)

        def execute_async_v3(self, stream):
            out = np.zeros((self.shape[0], 4, 3), np.float32)
            out[:, 0, 1] = out[:, 1, 0] = out[:, 2, 2] = out[:, 3, 0] = 1  # frames: a, blank, b, blank
            mem[self.probs][: out.nbytes] = out.tobytes()
            return True

    class Engine:
        num_io_tensors = 2

        def get_tensor_name(self, i):
            return ["images", "probs"][i]

        def get_tensor_mode(self, n):
            return "in" if n == "images" else "out"

        def get_tensor_dtype(self, n):
            return "f32"

        def create_execution_context(self):
            return Ctx()

    trt = types.SimpleNamespace(
        Logger=type("L", (), {"WARNING": 1, "__init__": lambda self, lvl: None}),
        Runtime=lambda log: types.SimpleNamespace(deserialize_cuda_engine=lambda b: Engine()),
        TensorIOMode=types.SimpleNamespace(INPUT="in"), float32="f32", float16="f16", int32="i32", int8="i8")
    rec = trt_backend.TensorRTRecognizer(str(tmp_path / "m.engine"), trt=trt, api=("pycuda", Drv))
    out = rec([np.zeros((10, 30, 3), np.uint8)] * 6)  # 6 > max batch 4: split
    assert [o.text for o in out] == ["ab"] * 6
    frame = np.zeros((40, 80, 3), np.uint8)
    assert [o.text for o in rec.read_boxes(frame, [[0, 0, 40, 20], [10, 10, 70, 30]])] == ["ab", "ab"]
    (tmp_path / "m.engine.json").unlink()
    with pytest.raises(ValueError, match="sidecar"):
        trt_backend.TensorRTRecognizer(str(tmp_path / "m.engine"), trt=trt, api=("pycuda", Drv))
