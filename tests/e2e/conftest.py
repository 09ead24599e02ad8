"""Fixtures for the e2e tests: an AWS emulator (moto's server mode) on loopback and real boto3 clients.

One server per session (starting moto costs a second); every test gets its own bucket, table,
queues and bus, named uniquely, so tests never see each other's state.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import boto3
import pytest
from awsenv import REGION, AwsResources, LinearizedMotoServer, boto_environment, create_resources
from botocore.config import Config


@pytest.fixture(scope="session")
def aws_endpoint() -> Iterator[str]:
    server = LinearizedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    yield f"http://{host}:{port}"
    server.stop()


@pytest.fixture()
def aws_env(aws_endpoint: str, monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    """boto3's usual environment (the emulator's endpoint, dummy credentials), set for this test."""
    env = boto_environment(aws_endpoint)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    return env


@pytest.fixture(scope="session")
def aws_client(aws_endpoint: str) -> Callable[[str], Any]:
    """A real boto3 client for a service, pointed at the emulator with dummy credentials."""
    session = boto3.session.Session(
        aws_access_key_id="testing", aws_secret_access_key="testing", region_name=REGION
    )
    config = Config(retries={"max_attempts": 2, "mode": "standard"}, max_pool_connections=32)
    clients: dict[str, Any] = {}

    def make(service: str) -> Any:
        if service not in clients:
            clients[service] = session.client(service, endpoint_url=aws_endpoint, config=config)
        return clients[service]

    return make


@pytest.fixture()
def aws(aws_endpoint: str, aws_client: Callable[[str], Any]) -> AwsResources:
    return create_resources(aws_endpoint, aws_client)
