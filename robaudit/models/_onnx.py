"""ONNX models (optional extra ``robaudit[onnx]``): an ONNX graph converted to a PyTorch module with
onnx2torch, so gradients flow and every attack and geometry check works.

ONNX is **data** under robaudit's trust model (docs/security.md): a graph of standard operators,
each run by onnx2torch's own PyTorch implementation. What a file could use to run code or read
other files is closed here, before the converter sees it:

- **names**: onnx2torch names each module after its ONNX node and torch.fx writes that name into
  the Python source it generates and execs (``getattr(self, "NAME")``), unescaped — a node name
  with a quote in it is Python that runs when the model is called. Every node is renamed
  ``node_<i>`` first, and the converted graph is checked to call only those modules;
- **operators**: only the standard ONNX domain, only operators onnx2torch implements; model-local
  functions and custom domains are refused, naming them;
- **external data**: a tensor stored in another file (``location`` inside the .onnx file) is read
  by robaudit, only from a regular file inside the model's own folder (no absolute path, no
  ``..``, no symlink out of it), with offset/length checked against the file; nothing is read
  through onnx's own loader;
- the file is parsed from its bytes as protobuf (``onnx.load_model_from_string``), never
  dispatched by its extension to the text/JSON readers, and never written next to (onnx2torch's
  ``convert(path)`` writes a temporary file into the model's folder; robaudit passes the parsed model).
"""

from __future__ import annotations

import operator
import re
import stat
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from torch import nn

from ..errors import CheckpointError, UsageError

__all__ = ["INSTALL", "read_onnx", "looks_like_onnx"]

INSTALL = "pip install 'robaudit[onnx]'"
_NODE_NAME = re.compile(r"node_\d+")
_INITIALIZER = re.compile(r"initializers\.onnx_initializer_\d+")
# ModelProto fields in the order onnx serializes them: ir_version (1, varint) then producer_name (2),
# producer_version (3), domain (4), model_version (5, varint), doc_string (6), graph (7), opset_import (8)
_SECOND_TAGS = {0x12, 0x1A, 0x22, 0x28, 0x32, 0x3A, 0x42}


def looks_like_onnx(head: bytes) -> bool:
    """A serialized ModelProto: field 1 (ir_version, a small varint), then one of fields 2-8."""
    return len(head) >= 3 and head[0] == 0x08 and 1 <= head[1] < 0x80 and head[2] in _SECOND_TAGS


def _modules():
    try:
        import onnx
        import onnx2torch
        from onnx2torch.node_converters import get_converter
    except ImportError:
        raise UsageError(f"reading ONNX models needs the onnx and onnx2torch packages: {INSTALL}") from None
    return onnx, onnx2torch, get_converter


def read_onnx(path: Path) -> tuple[nn.Module, tuple[int, int, int] | None, list[str], dict[str, str]]:
    """Parse, check and convert ``path``; return (module, input shape C,H,W or None, warnings,
    ``metadata_props`` as strings: robaudit.mean/std/class_names there are read like safetensors metadata)."""
    onnx, onnx2torch, _ = _modules()
    try:
        model = onnx.load_model_from_string(path.read_bytes())
    except Exception as exc:  # noqa: BLE001 - protobuf DecodeError and friends
        raise CheckpointError(f"{path} is not a valid ONNX model (truncated or corrupt): {_first_line(exc)}") from None
    _check_operators(path, model)
    _rename_nodes(model)
    _load_external_data(path, model)
    try:
        net = onnx2torch.convert(model)
    except Exception as exc:  # noqa: BLE001 - NotImplementedError for an attribute onnx2torch does not handle, ...
        raise CheckpointError(f"onnx2torch could not convert {path}: {_first_line(exc)}") from None
    _check_converted(path, net)
    shape, warnings = _input_shape(model)
    metadata = {str(p.key): str(p.value) for p in model.metadata_props}
    return net.eval(), shape, warnings, metadata


def _check_operators(path: Path, model: Any) -> None:
    """Refuse model-local functions, custom domains and operators onnx2torch has no converter for (one line, all of them)."""
    onnx, onnx2torch, get_converter = _modules()
    if len(model.functions):
        names = sorted({f"{f.domain}:{f.name}" for f in model.functions})
        raise CheckpointError(
            f"{path} defines its own ONNX functions ({', '.join(names[:5])}), which robaudit does not convert; "
            f"export the model with standard operators only"
        )
    opsets = {o.domain: o.version for o in model.opset_import}
    missing: list[str] = []
    for node in model.graph.node:
        if node.domain:  # the standard domain is ""
            missing.append(f"{node.domain}:{node.op_type} (custom domain)")
            continue
        version = opsets.get("", 0)
        try:
            get_converter(domain="", operation_type=node.op_type, version=version)
        except NotImplementedError:
            missing.append(f"{node.op_type} (opset {version})")
    if missing:
        unique = list(dict.fromkeys(missing))
        listed = ", ".join(unique[:8]) + (f", ... {len(unique) - 8} more" if len(unique) > 8 else "")
        version = getattr(onnx2torch, "__version__", "")
        raise CheckpointError(
            f"{path} uses ONNX operators that onnx2torch {version} cannot convert to PyTorch: {listed}; robaudit needs "
            f"a PyTorch module to take gradients: export the model without them, or scan its PyTorch weights"
        )


def _rename_nodes(model: Any) -> None:
    """Give every node a name robaudit chose: the file's names never reach torch.fx's generated code."""
    for i, node in enumerate(model.graph.node):
        node.name = f"node_{i}"


def _tensors(model: Any) -> Iterator[Any]:
    """Every TensorProto that can hold data: initializers (dense and sparse) and node attributes."""
    graph = model.graph
    yield from graph.initializer
    for sparse in graph.sparse_initializer:
        yield sparse.values
        yield sparse.indices
    for node in graph.node:
        for attr in node.attribute:
            if attr.HasField("t"):
                yield attr.t
            yield from attr.tensors
            if attr.HasField("sparse_tensor"):
                yield attr.sparse_tensor.values
                yield attr.sparse_tensor.indices
            for sparse in attr.sparse_tensors:
                yield sparse.values
                yield sparse.indices
            if attr.HasField("g") or len(attr.graphs):  # subgraphs: no supported operator has them
                raise CheckpointError(f"ONNX node {node.op_type} has a subgraph, which robaudit does not convert")


def _load_external_data(path: Path, model: Any) -> None:
    """Read external tensor data confined to the model's folder; refuse any location outside it."""
    onnx = _modules()[0]
    folder = path.resolve().parent
    for tensor in _tensors(model):
        if tensor.data_location != onnx.TensorProto.EXTERNAL:
            continue
        info = {entry.key: entry.value for entry in tensor.external_data}
        location = info.get("location", "")
        target = _confined(path, folder, location, tensor.name)
        try:
            offset, length = int(info.get("offset", 0)), info.get("length")
            length = None if length is None else int(length)
        except ValueError:
            raise CheckpointError(f"{path}: tensor {tensor.name!r} has a non-numeric external data offset/length") from None
        size = target.stat().st_size
        if offset < 0 or offset > size or (length is not None and (length < 0 or offset + length > size)):
            raise CheckpointError(
                f"{path}: tensor {tensor.name!r} asks for bytes {offset}..{'' if length is None else offset + length} "
                f"of {location!r}, which has {size}"
            )
        with open(target, "rb") as fh:
            fh.seek(offset)
            tensor.raw_data = fh.read(size - offset if length is None else length)
        tensor.data_location = onnx.TensorProto.DEFAULT
        del tensor.external_data[:]


def _confined(path: Path, folder: Path, location: str, tensor: str) -> Path:
    refuse = None
    if not location:
        refuse = "names no file"
    elif Path(location).is_absolute() or location.startswith(("/", "\\")) or re.match(r"^[A-Za-z]:", location):
        refuse = "is an absolute path"
    elif any(part == ".." for part in re.split(r"[\\/]", location)):
        refuse = "leaves the model's folder (..)"
    if refuse is None:
        target = (folder / location).resolve()
        if folder not in target.parents:
            refuse = "leaves the model's folder (through a symlink)"
        elif not target.exists():
            refuse = "does not exist next to the model"
        elif not stat.S_ISREG(target.stat().st_mode):
            refuse = "is not a regular file"
    if refuse is not None:
        raise CheckpointError(
            f"{path}: tensor {tensor!r} keeps its data in the external file {location!r}, which {refuse}; robaudit "
            f"reads external data only from files inside {folder}"
        )
    return target


def _check_converted(path: Path, net: nn.Module) -> None:
    """The converted graph calls only robaudit-named modules, reads only onnx2torch's initializer buffers."""
    graph = getattr(net, "graph", None)
    ok = graph is not None
    for node in graph.nodes if graph is not None else ():
        if node.op == "call_module":
            ok = isinstance(node.target, str) and bool(_NODE_NAME.fullmatch(node.target))
        elif node.op == "get_attr":
            ok = isinstance(node.target, str) and bool(_INITIALIZER.fullmatch(node.target))
        elif node.op == "call_function":
            ok = node.target is operator.getitem
        else:
            ok = node.op in ("placeholder", "output")
        ok = ok and node.name.isidentifier()
        if not ok:
            break
    if not ok:
        raise CheckpointError(f"{path}: the converted graph is not what robaudit expects from onnx2torch; not loading it")


def _input_shape(model: Any) -> tuple[tuple[int, int, int] | None, list[str]]:
    """C,H,W of the graph's first real input when static, and a warning when its batch size is fixed."""
    initializers = {t.name for t in model.graph.initializer}
    inputs = [v for v in model.graph.input if v.name not in initializers]
    if not inputs:
        return None, []
    dims = inputs[0].type.tensor_type.shape.dim
    values = [d.dim_value if d.HasField("dim_value") else None for d in dims]
    warnings = []
    if values and values[0] is not None:
        warnings.append(
            f"exported with a static batch size of {values[0]}; other batch sizes may fail. Re-export with a dynamic "
            f"batch axis (torch.onnx.export(..., dynamic_axes={{'input': {{0: 'batch'}}}}))"
        )
    chw = [v for v in values[1:] if isinstance(v, int) and v > 0]
    if len(values) == 4 and len(chw) == 3:
        return (chw[0], chw[1], chw[2]), warnings
    return None, warnings


def _first_line(exc: BaseException) -> str:
    lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip()]
    return (lines[0] if lines else type(exc).__name__)[:300]
