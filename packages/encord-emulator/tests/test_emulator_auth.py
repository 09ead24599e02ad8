"""The emulator's signature checks against headers made by the SDK's own signing code (no sockets)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import requests
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from encord.configs import SshConfig

from encord_emulator.auth import Authenticator, AuthError
from encord_emulator.keys import KeyFormatError, generate_keypair, key_id


def sdk_config(tmp_path: Path) -> tuple[SshConfig, str]:
    key_path, public_line = generate_keypair(tmp_path)
    private = serialization.load_ssh_private_key(key_path.read_bytes(), password=None)
    assert isinstance(private, Ed25519PrivateKey)
    return SshConfig(private, domain="http://127.0.0.1:1"), public_line


def signed_v2(config: SshConfig, method: str, url: str, body: Any = None) -> requests.PreparedRequest:
    prepared = requests.Request(method=method, url=url, json=body).prepare()
    signed: requests.PreparedRequest = config.define_headers_v2(prepared)
    return signed


def body_bytes(prepared: requests.PreparedRequest) -> bytes:
    body = prepared.body
    return body.encode() if isinstance(body, str) else (body or b"")


def test_key_id_is_the_raw_public_key_hex_the_sdk_sends(tmp_path: Path) -> None:
    # Given a generated key pair and the SDK's config for it
    config, public_line = sdk_config(tmp_path)

    # When the key id is derived from the OpenSSH line
    # Then it is the SDK's public_key_hex, and garbage is refused
    assert key_id(public_line) == config.public_key_hex
    assert key_id(config.public_key_hex) == config.public_key_hex
    with pytest.raises(KeyFormatError):
        key_id("ssh-rsa AAAAB3NzaC1yc2E")


def test_v2_signature_made_by_the_sdk_verifies_with_the_raw_query(tmp_path: Path) -> None:
    # Given an SDK-signed GET with a percent-encoded, repeated query
    config, public_line = sdk_config(tmp_path)
    prepared = signed_v2(config, "GET", "http://h/v2/public/projects/p/branches?pageToken=a%2Bb&x=1&x=2")
    auth = Authenticator([public_line])

    # When the emulator verifies it against the raw request target
    keyid = auth.verify_v2("GET", prepared.path_url, prepared.headers, body_bytes(prepared))

    # Then it is accepted as that key
    assert keyid == config.public_key_hex


@pytest.mark.parametrize(
    "tamper",
    ["target", "method", "body", "unknown_key"],
)
def test_v2_signature_rejects_any_tampering(tmp_path: Path, tamper: str) -> None:
    # Given an SDK-signed POST with a body
    config, public_line = sdk_config(tmp_path)
    prepared = signed_v2(config, "POST", "http://h/v2/public/projects/p", {"a": 1})
    target, method, body = prepared.path_url, "POST", body_bytes(prepared)
    keys = [public_line]

    # When one part differs from what was signed
    if tamper == "target":
        target = "/v2/public/projects/q"
    elif tamper == "method":
        method = "PUT"
    elif tamper == "body":
        body = b'{"a": 2}'
    else:
        keys = [generate_keypair(tmp_path / "other")[1]]

    # Then verification fails with a reason
    with pytest.raises(AuthError):
        Authenticator(keys).verify_v2(method, target, prepared.headers, body)


def test_legacy_authorization_made_by_the_sdk_verifies_and_rejects_another_body(tmp_path: Path) -> None:
    # Given the SDK's legacy headers for a body
    config, public_line = sdk_config(tmp_path)
    data = '{"query_type": "labelrowmetadata", "query_method": "GET", "values": {"uid": null, "payload": {}}}'
    headers = config.define_headers(resource_id="p", resource_type="project", data=data)
    auth = Authenticator([public_line])

    # When verified against the same and a different body
    # Then the same body passes and the other fails
    assert auth.verify_legacy(headers, data.encode()) == config.public_key_hex
    with pytest.raises(AuthError):
        auth.verify_legacy(headers, data.replace("GET", "PUT").encode())


def test_bearer_tokens_pass_only_when_configured() -> None:
    # Given an authenticator with one bearer token
    auth = Authenticator((), bearer_tokens=["t1"])

    # When bearer headers arrive on both transports
    # Then the configured token passes and another is refused
    assert auth.verify_legacy({"Authorization": "Bearer t1"}, b"{}") == "bearer"
    assert auth.verify_v2("GET", "/v2/public/x", {"Authorization": "Bearer t1"}, b"") == "bearer"
    with pytest.raises(AuthError):
        auth.verify_legacy({"Authorization": "Bearer t2"}, b"{}")
    with pytest.raises(AuthError):
        Authenticator(()).verify_v2("GET", "/v2/public/x", {"Authorization": "Bearer t1"}, b"")
