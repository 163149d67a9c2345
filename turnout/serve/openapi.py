"""The served OpenAPI document: FastAPI's, with validation errors answered as 400 (not 422), the events of the
`stream: true` responses described, and the served model's id as the example of every `model` field (so the
browser at /docs and schema-driven clients start from a request this server can run).

The vocabulary bounds token ids in the schema too; what else the model sets (its context, what its tokenizer can
take) is not: a request that JSON Schema finds valid may still get a 400 context_length_exceeded.

An event stream is declared the way OpenAPI 3.1 tools read `text/event-stream` (and OpenAPI 3.2 spells
`itemSchema`): the schema describes one event, whose `data` is either `[DONE]` or JSON text holding a chunk (or,
when generation fails mid-stream, an error body).
"""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi
from pydantic import BaseModel
from pydantic.json_schema import models_json_schema

from turnout.serve.api_schema import ErrorResponse

REF = "#/components/schemas/{model}"


def event_stream(chunk: type[BaseModel], what: str) -> dict[str, Any]:
    """The `text/event-stream` entry of a 200 response whose events carry `chunk` models."""
    data = {"type": "string", "contentMediaType": "application/json", "contentSchema": {"anyOf": [
        {"$ref": REF.format(model=chunk.__name__)}, {"$ref": REF.format(model=ErrorResponse.__name__)}]}}
    event = {"type": "object", "required": ["data"], "description": (
        f"with stream: true, one event per {what} (`data: {{chunk}}`), then `data: [DONE]`"), "properties": {
        "data": {"if": {"const": "[DONE]"}, "then": {"const": "[DONE]"}, "else": data},
        "event": {"type": "string"}, "id": {"type": "string"}, "retry": {"type": "integer"}}}
    return {"description": "the result, or with stream: true its server-sent events",
            "content": {"text/event-stream": {"schema": event}}}


def install(app: FastAPI, model_name: str, vocab_size: int, requests: tuple[type[BaseModel], ...],
            chunks: tuple[type[BaseModel], ...]) -> None:
    """Serve FastAPI's schema rewritten as the module docstring says: `requests` get `model_name` as the example
    of their `model` and [0, vocab_size) as the range of their token ids; `chunks` (stream events, which no
    route returns as JSON) join the components."""

    def openapi() -> dict:
        if app.openapi_schema is not None:
            return app.openapi_schema
        spec = get_openapi(title=app.title, version=app.version, description=app.description, routes=app.routes)
        schemas = spec.setdefault("components", {}).setdefault("schemas", {})
        for path in spec.get("paths", {}).values():
            for op in path.values():
                if op.get("responses", {}).pop("422", None) is not None:
                    op["responses"].setdefault("400", {"description": "Invalid request", "content": {
                        "application/json": {"schema": {"$ref": REF.format(model="ErrorResponse")}}}})
        for name in ("HTTPValidationError", "ValidationError"):
            schemas.pop(name, None)
        _, defs = models_json_schema([(m, "serialization") for m in chunks], ref_template=REF)
        for name, schema in defs.get("$defs", {}).items():
            schemas.setdefault(name, schema)
        for m in requests:
            props = schemas[m.__name__]["properties"]
            props["model"]["examples"] = [model_name]
            for ids in _integer_items(props.get("prompt", {})):
                ids.update(minimum=0, maximum=vocab_size - 1)
        app.openapi_schema = spec
        return spec

    app.openapi = openapi


def _integer_items(schema: dict) -> list[dict]:
    """The item schemas of the integer arrays (token ids) among a union's branches, lists of lists included."""
    found = []
    for branch in schema.get("anyOf", ()):
        items = branch.get("items", {})
        while items.get("type") == "array":
            items = items.get("items", {})
        if items.get("type") == "integer":
            found.append(items)
    return found
