"""Serving: load a model onto a target, decode with continuous batching on the latent cache, speak OpenAI's API,
and certify numerical parity between targets.

Files: loader (checkpoint or HF dir + tokenizer onto a target, weight hashes), sampling (per-request params and
generators), stops (incremental detokenisation, stop strings), request (events, results, handles), engine (the
continuous-batching scheduler and its model thread), chat (the chat template), api_schema (request/response
bodies), limits (body and prompt sizes, refused before any work), openapi (the served schema), server (FastAPI app +
uvicorn), parity (the measurements), endpoint (an OpenAI-compatible server as a parity side), endpoint_parity
(the measurements through its top-k view), certificate (pass rule, certificate files, --require-certificate).
"""

from turnout.serve.certificate import CertificateError, make_certificate, require_certificate
from turnout.serve.engine import Engine, EngineStats
from turnout.serve.loader import LoadedModel, ModelIdentity, load_for_serving, model_identity
from turnout.serve.request import Completion, Event, RequestError, RequestHandle
from turnout.serve.sampling import SamplingParams

__all__ = ["CertificateError", "Completion", "Engine", "EngineStats", "Event", "LoadedModel", "ModelIdentity",
           "RequestError", "RequestHandle", "SamplingParams", "load_for_serving", "make_certificate",
           "model_identity", "require_certificate"]
