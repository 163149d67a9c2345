"""Schemathesis hooks for test_schemathesis (loaded through SCHEMATHESIS_HOOKS): the one kind of failure it may
not count against the server.

"Schema-valid request rejected" is schemathesis reading the request schema as the whole truth. The model sets
limits no JSON Schema of a request can state: prompt + max_tokens within the context, text its tokenizer can take
(no lone surrogates); and one rule between two fields, best_of >= n and best_of > n only without stream (JSON
Schema cannot compare two values). A 400 naming one of those is the right answer, not a mismatch; any other
refusal of schema-valid data still fails the run.
"""

from __future__ import annotations

import json

import schemathesis


def _is_model_limit(response) -> bool:
    if response.status_code != 400:
        return False
    try:
        err = json.loads(response.content)["error"]
    except (ValueError, KeyError, TypeError):
        return False
    return err.get("code") in ("context_length_exceeded", "invalid_best_of") or (
        err.get("param") == "prompt" and str(err.get("message", "")).startswith("prompt cannot be tokenized"))


@schemathesis.hook
def filter_failure(context, failure, case, response) -> bool:
    return not (failure.code == "ST202" and _is_model_limit(response))
