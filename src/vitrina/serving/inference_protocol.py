"""The Open Inference Protocol (KServe v2) beside vitrina's own routes.

KServe, Triton clients and platform tooling call the served model unchanged: ``/v2/health/live``,
``/v2/health/ready``, ``/v2/models/{name}``, ``/v2/models/{name}/ready`` and ``POST
/v2/models/{name}/infer``. The request's one input is a BYTES tensor of encoded photos (JPEG,
PNG, ...): base64 strings in the JSON form, or raw bytes with the binary-data extension
(``Inference-Header-Content-Length``). The answer holds ``probabilities`` (FP32, photos x
classes, in the order of the model's classes, which the model's metadata lists) and ``label``
(BYTES, the most likely class of each photo), as JSON or, when asked for, as binary data. The
photos go through the same decoding, decode budget, micro-batching and model as ``/v1``.
"""
from __future__ import annotations

import base64
import binascii
import json
import struct
from dataclasses import dataclass
from typing import Any

import numpy as np
from fastapi import APIRouter, Request, Response
from fastapi.responses import JSONResponse

from vitrina.serving.errors import ServingError
from vitrina.serving.service import Service
from vitrina.serving.uploads import Upload
from vitrina.version import __version__

HEADER_LENGTH = "inference-header-content-length"
OUTPUTS = {"probabilities": "FP32", "label": "BYTES"}


class BadInferRequest(ServingError):
    status, code = 400, "bad_infer_request"


class ModelNotFound(ServingError):
    status, code = 404, "model_not_found"


@dataclass
class InferRequest:
    id: str | None
    photos: list[bytes]
    outputs: dict[str, bool]  # requested output -> as binary data


def parse_infer_request(body: bytes, header_length: str | None) -> InferRequest:
    """The photos and wanted outputs of an infer request (JSON, or JSON + binary tensors); 400 when malformed."""
    try:
        json_length = int(header_length) if header_length is not None else len(body)
        if not 0 <= json_length <= len(body):
            raise ValueError
        request = json.loads(body[:json_length])
    except ValueError:
        raise BadInferRequest("the request is not valid JSON (or Inference-Header-Content-Length is wrong)") from None
    if not isinstance(request, dict) or not isinstance(request.get("inputs"), list) or len(request["inputs"]) != 1:
        raise BadInferRequest("an infer request needs \"inputs\" with exactly one BYTES tensor of encoded photos")
    tensor = request["inputs"][0]
    if not isinstance(tensor, dict) or tensor.get("datatype") != "BYTES":
        raise BadInferRequest("the input must have \"datatype\": \"BYTES\" (encoded photos)")
    shape = tensor.get("shape")
    if not isinstance(shape, list) or not shape or not all(isinstance(n, int) and n >= 0 for n in shape):
        raise BadInferRequest("the input needs a \"shape\": [number of photos]")
    count = int(np.prod(shape))
    binary_size = (tensor.get("parameters") or {}).get("binary_data_size")
    photos = _binary_elements(body[json_length:], binary_size) if binary_size is not None else _json_elements(tensor.get("data"))
    if len(photos) != count or count == 0:
        raise BadInferRequest(f"the input's shape {shape} says {count} photos, its data holds {len(photos)}")
    return InferRequest(request.get("id"), photos, _wanted_outputs(request))


def _json_elements(data: Any) -> list[bytes]:
    """Base64 strings (flattened from any nesting) -> bytes."""
    flat: list[Any] = []
    stack = [data]
    while stack:
        item = stack.pop()
        if isinstance(item, list):
            stack.extend(reversed(item))
        else:
            flat.append(item)
    if not all(isinstance(item, str) for item in flat):
        raise BadInferRequest("in the JSON form each photo is a base64 string")
    try:
        return [base64.b64decode(item, validate=True) for item in flat]
    except binascii.Error:
        raise BadInferRequest("in the JSON form each photo is a base64 string (this one is not valid base64)") from None


def _binary_elements(data: bytes, size: Any) -> list[bytes]:
    """The binary-data extension's BYTES tensor: each element a 4-byte little-endian length, then the bytes."""
    if not isinstance(size, int) or size != len(data):
        raise BadInferRequest(f"binary_data_size {size} does not match the {len(data)} bytes after the JSON header")
    elements, offset = [], 0
    while offset < len(data):
        if offset + 4 > len(data):
            raise BadInferRequest("the binary tensor data is truncated")
        (length,) = struct.unpack_from("<I", data, offset)
        offset += 4
        if offset + length > len(data):
            raise BadInferRequest("the binary tensor data is truncated")
        elements.append(data[offset : offset + length])
        offset += length
    return elements


def _wanted_outputs(request: dict[str, Any]) -> dict[str, bool]:
    everything_binary = bool((request.get("parameters") or {}).get("binary_data_output", False))
    asked = request.get("outputs")
    if not asked:
        return {name: everything_binary for name in OUTPUTS}
    wanted = {}
    for output in asked:
        name = output.get("name") if isinstance(output, dict) else None
        if name not in OUTPUTS:
            raise BadInferRequest(f"unknown output {name!r}; this model has {', '.join(OUTPUTS)}")
        wanted[name] = bool((output.get("parameters") or {}).get("binary_data", everything_binary))
    return wanted


def infer_response(request: InferRequest, model_name: str, model_version: str, classes: list[str], probs: np.ndarray) -> Response:
    """The answer, with the outputs asked for as binary data after the JSON header."""
    labels = [classes[i] for i in probs.argmax(axis=1)]
    tensors = {  # name -> (shape, its binary form, its JSON form), each form made only when asked for
        "probabilities": (list(probs.shape), lambda: probs.astype("<f4").tobytes(), lambda: probs.astype(float).ravel().tolist()),
        "label": ([len(labels)], lambda: b"".join(struct.pack("<I", len(s.encode())) + s.encode() for s in labels), lambda: labels),
    }
    outputs, binary = [], []
    for name, as_binary in request.outputs.items():
        shape, raw, values = tensors[name]
        output: dict[str, Any] = {"name": name, "datatype": OUTPUTS[name], "shape": shape}
        if as_binary:
            binary.append(raw())
            output["parameters"] = {"binary_data_size": len(binary[-1])}
        else:
            output["data"] = values()
        outputs.append(output)
    answer = {"model_name": model_name, "model_version": model_version, "outputs": outputs}
    if request.id is not None:
        answer["id"] = request.id
    if not binary:
        return JSONResponse(answer)
    header = json.dumps(answer).encode()
    return Response(header + b"".join(binary), media_type="application/octet-stream",
                    headers={"Inference-Header-Content-Length": str(len(header))})


def inference_protocol_router(service: Service) -> APIRouter:
    """The ``/v2`` routes (the keys, rate limit and decode budget of ``/v1`` apply to ``/v2/models``)."""
    v2 = APIRouter(prefix="/v2", tags=["Open Inference Protocol (KServe v2)"])
    name = service.settings.model_name

    def served(model: str) -> None:
        if model != name:
            raise ModelNotFound(f"no model named {model!r}; this server serves {name!r}")

    @v2.get("", summary="Server metadata")
    async def server_metadata() -> dict[str, Any]:
        return {"name": "vitrina", "version": __version__, "extensions": ["binary_tensor_data"]}

    @v2.get("/health/live", summary="Liveness")
    async def live() -> dict[str, bool]:
        return {"live": True}

    @v2.get("/health/ready", summary="Readiness")
    async def ready() -> JSONResponse:
        return JSONResponse({"ready": service.ready}, 200 if service.ready else 503)

    @v2.get("/models/{model}/ready", summary="Model readiness")
    async def model_ready(model: str) -> JSONResponse:
        served(model)
        return JSONResponse({"name": name, "ready": service.ready}, 200 if service.ready else 503)

    @v2.get("/models/{model}", summary="Model metadata")
    async def model_metadata(model: str) -> dict[str, Any]:
        served(model)
        loaded = service.model
        return {
            "name": name, "versions": [loaded.version], "platform": f"vitrina_{loaded.predictor.backend_name}",
            "inputs": [{"name": "image", "datatype": "BYTES", "shape": [-1]}],
            "outputs": [{"name": "probabilities", "datatype": "FP32", "shape": [-1, len(loaded.classes)]},
                        {"name": "label", "datatype": "BYTES", "shape": [-1]}],
            "parameters": {"classes": loaded.classes, "architecture": loaded.name},
        }

    @v2.post("/models/{model}/infer", summary="Classify encoded photos")
    async def infer(model: str, request: Request) -> Response:
        served(model)
        parsed = parse_infer_request(await request.body(), request.headers.get(HEADER_LENGTH))
        uploads = [Upload(f"photo {i}", None, data) for i, data in enumerate(parsed.photos)]
        loaded, probs, _ = await service.probabilities(uploads)  # the limits and checks of /v1 apply
        request.state.model_version = loaded.version
        return infer_response(parsed, name, loaded.version, loaded.classes, probs)

    return v2
