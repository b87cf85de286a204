"""Pytest fixtures for the Infobip simulator, and a validator for Infobip's OpenAPI document."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Awaitable, Callable
from functools import cache
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio
from jsonschema import Draft202012Validator
from referencing import Registry, Resource
from referencing.jsonschema import DRAFT202012

from poller.devtools.simulator import Simulator

SEED = 20261126
OPENAPI_PATH = Path(__file__).parent / "fixtures" / "mobile-app-messaging.openapi.json"
_DOC_URI = "urn:infobip:mobile-app-messaging"


class OpenApi:
    """Validates bodies against the schema of one operation and status of the document.

    Formats are not asserted: receivedAt is documented as date-time yet written as
    yyyy-MM-dd'T'HH:mm:ss.SSSZ (offset without a colon), which RFC 3339 rejects.
    """

    def __init__(self, path: Path = OPENAPI_PATH) -> None:
        self.document: dict[str, Any] = json.loads(path.read_text(encoding="utf-8"))
        resource = Resource.from_contents(self.document, default_specification=DRAFT202012)
        self.registry: Registry[Any] = Registry().with_resource(_DOC_URI, resource)

    def operation(self, operation_id: str) -> dict[str, Any]:
        """The operation object with that operationId."""
        for item in self.document["paths"].values():
            for operation in item.values():
                if isinstance(operation, dict) and operation.get("operationId") == operation_id:
                    return operation
        raise KeyError(operation_id)

    def response(self, operation_id: str, status: int) -> dict[str, Any]:
        """The documented response object (with $ref followed)."""
        responses = self.operation(operation_id)["responses"]
        if str(status) not in responses:
            raise AssertionError(f"{operation_id} documents no {status} response")
        return self.deref(responses[str(status)])

    def deref(self, node: dict[str, Any]) -> dict[str, Any]:
        """Follow a local $ref (#/components/...) until a concrete object."""
        while "$ref" in node:
            target: Any = self.document
            for part in node["$ref"].removeprefix("#/").split("/"):
                target = target[part]
            node = target
        return node

    def schema_for(self, operation_id: str, status: int) -> dict[str, Any] | None:
        """The JSON schema of that response, or None when it has no body."""
        content = self.response(operation_id, status).get("content") or {}
        media = content.get("application/json")
        return None if media is None else dict(media["schema"])

    def validator(self, schema: dict[str, Any]) -> Draft202012Validator:
        """A 2020-12 validator whose #/components/... refs resolve in the document."""
        rooted = {"$ref": _DOC_URI + schema["$ref"]} if "$ref" in schema else schema
        return Draft202012Validator(rooted, registry=self.registry)

    def validate(self, operation_id: str, status: int, body: Any) -> None:
        """Assert body is what the document promises for that operation and status."""
        schema = self.schema_for(operation_id, status)
        if schema is None:
            assert body in (None, b"", ""), f"{operation_id} {status} has no documented body"
            return
        self.validator(schema).validate(body)

    def validate_component(self, name: str, body: Any) -> None:
        """Validate against a components/schemas entry named name or ending in .name."""
        schemas = self.document["components"]["schemas"]
        matches = [key for key in schemas if key == name or key.endswith("." + name)]
        assert matches, f"no schema {name}"
        self.validator({"$ref": f"#/components/schemas/{matches[0]}"}).validate(body)


@cache
def openapi_document() -> OpenApi:
    """The parsed document, loaded once per test session."""
    return OpenApi()


@pytest.fixture
def openapi() -> OpenApi:
    """Infobip's OpenAPI document, ready to validate response bodies."""
    return openapi_document()


@pytest_asyncio.fixture
async def simulator() -> AsyncIterator[Simulator]:
    """A started simulator with the default applications and no configuration."""
    sim = Simulator(seed=SEED)
    await sim.start()
    try:
        yield sim
    finally:
        await sim.stop()


@pytest_asyncio.fixture
async def configured_simulator() -> AsyncIterator[Simulator]:
    """A started simulator whose applications all have a PULL action."""
    sim = Simulator(seed=SEED, auto_configure=True)
    await sim.start()
    try:
        yield sim
    finally:
        await sim.stop()


SimulatorFactory = Callable[..., Awaitable[Simulator]]


@pytest_asyncio.fixture
async def simulator_factory() -> AsyncIterator[SimulatorFactory]:
    """Start simulators with any constructor arguments; all are stopped after the test."""
    started: list[Simulator] = []

    async def make(**kwargs: Any) -> Simulator:
        kwargs.setdefault("seed", SEED)
        sim = Simulator(**kwargs)
        await sim.start()
        started.append(sim)
        return sim

    try:
        yield make
    finally:
        for sim in started:
            await sim.stop()
