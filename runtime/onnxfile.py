"""Opening ONNX files, with one clear error naming the file when it is missing, truncated, random bytes or a graph
ONNX Runtime refuses (instead of protobuf's DecodeError, which names nothing); the producer/reader links of a loaded
graph, which the graph rewrites of ``compress`` and the pruning of ``distill`` both walk."""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

from .cli import InputError

__all__ = ["ort_session", "load_proto", "read_metadata", "graph_links"]


def _first_line(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    return (text[0] if text else type(e).__name__)[:300]


def ort_session(path: str | Path, threads: int = 0, providers: Sequence[str] | None = None, what: str = "model",
                options=None):
    """An ONNX Runtime session of ``path`` (``model`` bytes also accepted as ``path``)."""
    import onnxruntime as ort

    if isinstance(path, (str, Path)) and not Path(path).is_file():
        raise InputError(f"{path}: no such {what} file")
    so = options or ort.SessionOptions()
    if threads:
        so.intra_op_num_threads = threads
    avail = ort.get_available_providers()
    providers = [p for p in (providers or ["CPUExecutionProvider"]) if p in avail] or ["CPUExecutionProvider"]
    try:
        return ort.InferenceSession(str(path) if isinstance(path, Path) else path, so, providers=providers)
    except Exception as e:  # noqa: BLE001 - ONNX Runtime's pybind errors share no useful base class
        name = path if isinstance(path, (str, Path)) else "<model bytes>"
        raise InputError(f"{name}: not a usable ONNX {what} ({type(e).__name__}: {_first_line(e)})") from None


def load_proto(path: str | Path, load_external_data: bool = True):
    """``onnx.load`` with the file named in the error."""
    import onnx

    if not Path(path).is_file():
        raise InputError(f"{path}: no such ONNX file")
    try:
        return onnx.load(str(path), load_external_data=load_external_data)
    except Exception as e:  # noqa: BLE001 - DecodeError, RuntimeError, ValueError by onnx version
        raise InputError(f"{path}: not an ONNX model ({type(e).__name__}: {_first_line(e)})") from None


def read_metadata(path: str | Path) -> dict[str, str]:
    """The model's ``metadata_props`` as a dict: with the onnx package when installed, else through ONNX Runtime
    (the torch-free runtime install has no onnx package)."""
    try:
        import onnx  # noqa: F401
    except ImportError:
        return dict(ort_session(path).get_modelmeta().custom_metadata_map)
    return {p.key: p.value for p in load_proto(path, load_external_data=False).metadata_props}


def graph_links(graph) -> tuple[dict, dict[str, list]]:
    """An ``onnx.GraphProto``'s links: tensor -> the node that makes it; tensor -> the nodes that read it, with None
    for a graph output (a tensor the graph returns is read from outside)."""
    prod = {o: n for n in graph.node for o in n.output}
    readers: dict[str, list] = {}
    for n in graph.node:
        for i in n.input:
            readers.setdefault(i, []).append(n)
    for o in graph.output:
        readers.setdefault(o.name, []).append(None)
    return prod, readers
