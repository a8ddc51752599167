"""Schemathesis against a real server with production settings, from the OpenAPI document.

Every operation gets generated requests, valid and invalid (bounded: ``FUZZ_EXAMPLES`` each), with a real bearer
token; every response must be no 5xx, have a documented status, content type and headers, match its schema, refuse
invalid input with a 4xx, and refuse a request without the token where the document asks for one. The NDJSON
streams are parsed into the documented array of frames, so their frames are validated too.
"""

from __future__ import annotations

import json
import os
from typing import Any

import hypothesis
import pytest
import schemathesis
from hypothesis import strategies
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    ignored_auth,
    negative_data_rejection,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
    unsupported_method,
)
from schemathesis.transport.serialization import Binary

from myocr.openapi import NDJSON, document
from testing.documents import SAMPLES, make_numbered_pdf

pytestmark = [pytest.mark.slow]

#: Examples per operation and generation mode (positive, negative); FUZZ_EXAMPLES=200 for a longer run.
FUZZ_EXAMPLES = int(os.environ.get("FUZZ_EXAMPLES", "20"))
CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
    negative_data_rejection,
    unsupported_method,
    ignored_auth,
]

schema = schemathesis.openapi.from_dict(document())


@schemathesis.deserializer(NDJSON)
def ndjson_lines(ctx: Any, response: Any) -> list[Any]:
    """An NDJSON body as the documented array of its lines."""
    return [json.loads(line) for line in response.content.splitlines() if line.strip()]


@schema.hook
def flatmap_body(context: Any, body: Any) -> Any:
    """Random bytes are never a readable image: two thirds of the generated uploads carry a real one, so that
    streams run and their frames are checked against the document too."""
    operation = getattr(context, "operation", None)
    path = getattr(operation, "path", "")
    if path.startswith("/api/ocr/") and isinstance(body, dict) and isinstance(body.get("file"), bytes | Binary):
        real = Binary(SAMPLES["short"].render() if path.endswith("image") else make_numbered_pdf(2))
        return strategies.sampled_from([body, {**body, "file": real}, {**body, "file": real}])
    return strategies.just(body)


@pytest.fixture(scope="module")
def server(fake_vllm_server, module_app_server):
    fake_vllm_server.reset()
    fake_vllm_server.set_default(tokens=20)
    app = module_app_server(
        {
            "OCR_ENGINE": "openai",
            "LLM_BASE_URL": fake_vllm_server.base_url,
            "OCR_MAX_UPLOAD_BYTES": "1M",
            "LOG_LEVEL": "WARNING",
        },
        name="fuzz-server",
        production=True,
    )
    token = app.register_and_login("fuzzer")
    yield app, token
    app.stop()
    assert "Traceback" not in app.log(), app.log()[-3000:]


@schema.parametrize()
@hypothesis.settings(
    max_examples=FUZZ_EXAMPLES,
    deadline=None,
    derandomize=True,  # the same examples on every run: a failure in CI can be reproduced
    suppress_health_check=list(hypothesis.HealthCheck),
    phases=[hypothesis.Phase.explicit, hypothesis.Phase.generate],
)
def test_the_api_answers_every_generated_request_as_documented(case, server):
    app, token = server
    case.call_and_validate(base_url=app.url, headers={"Authorization": f"Bearer {token}"}, checks=CHECKS, timeout=30)
