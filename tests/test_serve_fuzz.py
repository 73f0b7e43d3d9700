"""resnets serve under schemathesis: requests generated from the OpenAPI document the live server publishes
(every operation, a bounded number of examples each) never get a 5xx, and the server stays healthy."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings

from resnets import create_model
from resnets.weights import save_weights
from test_serve import LiveServer, settings_for

MAX_EXAMPLES = 30  # per operation


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    import torch

    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("fuzz") / "r20.safetensors"
    save_weights(create_model("resnet20", num_classes=10), path, classes=[f"c{i}" for i in range(10)])
    server = LiveServer(settings_for(Path(path), max_body_mb=1, max_wait_ms=0, timeout_s=20))
    yield server
    server.stop()


def test_no_server_errors(live: LiveServer) -> None:
    """Each operation of /openapi.json, fuzzed with schemathesis' generated cases, answers below 500."""
    schema = schemathesis.openapi.from_url(f"{live.url}/openapi.json")
    labels = []
    for result in schema.get_all_operations():
        operation = result.ok()
        labels.append(operation.label)

        @given(case=operation.as_strategy())
        @settings(max_examples=MAX_EXAMPLES, deadline=None, database=None, derandomize=True,
                  suppress_health_check=list(HealthCheck))
        def fuzz(case: schemathesis.Case) -> None:
            if case.path_parameters:  # the model's own name and version, so that the bodies are looked at
                case.path_parameters.update({k: v for k, v in (("name", "resnet20"), ("version", "1"))
                                             if k in case.path_parameters})
            response = case.call(base_url=live.url, timeout=30)
            assert response.status_code < 500, (
                f"{case.method} {case.formatted_path}: {response.status_code} {response.text[:300]}")

        fuzz()
    assert any("/v1/predict" in label for label in labels) and any("/infer" in label for label in labels)


def test_healthy_afterwards(live: LiveServer) -> None:
    with live.client() as c:
        assert c.get("/healthz").json() == {"status": "ok"}
        assert c.get("/readyz").status_code == 200
        text = c.get("/metrics").text
    assert 'status="500"' not in text
    assert 'route="/v2/models/{name}/infer",status="400"' in text  # bodies reached the parser
