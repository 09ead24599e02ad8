"""Verify the two request signatures the `encord` SDK sends (the SDK's request_signer.py and configs.py)."""

from __future__ import annotations

import base64
import binascii
import hashlib
import re
import time
from collections.abc import Iterable, Mapping

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from encord_emulator.keys import key_id

# The SDK stamps `created` with int(time.time()); the real server's window is unverified.
CREATED_WINDOW_S = 300
_SIG_INPUT = re.compile(r'^encord-sig=(\((?:"[^"]+" ?)*\)(?:;[a-z]+=(?:"[^"]*"|\d+))*)$')
_SIGNATURE = re.compile(r"^encord-sig=:([A-Za-z0-9+/=]+):$")
_KEYID = re.compile(r';keyid="([0-9a-fA-F]{64})"')
_CREATED = re.compile(r";created=(\d+)")
_COVERED = re.compile(r'"([^"]+)"')


class AuthError(Exception):
    """The request is not authenticated; the message says why (shown to the SDK user)."""


class Authenticator:
    """Accepts requests signed by an authorized ed25519 key, or carrying a configured bearer token."""

    def __init__(self, authorized_keys: Iterable[str] = (), bearer_tokens: Iterable[str] = ()) -> None:
        self.key_ids = frozenset(key_id(line) for line in authorized_keys)
        self.bearer_tokens = frozenset(bearer_tokens)

    def _check_bearer(self, authorization: str) -> bool:
        if not authorization.startswith("Bearer "):
            return False
        if authorization[len("Bearer ") :] not in self.bearer_tokens:
            raise AuthError("bearer token not accepted by this emulator")
        return True

    def verify_v2(self, method: str, request_target: str, headers: Mapping[str, str], body: bytes) -> str:
        """RFC 9421-style headers over method, raw request target and content digest. Returns the key id."""
        if self._check_bearer(headers.get("Authorization", "")):
            return "bearer"
        digest_header = headers.get("Content-Digest", "")
        sig_input = _SIG_INPUT.match(headers.get("Signature-Input", "").strip())
        signature = _SIGNATURE.match(headers.get("Signature", "").strip())
        if not digest_header or sig_input is None or signature is None:
            raise AuthError("missing or malformed Content-Digest / Signature-Input / Signature headers")
        expected_digest = "sha-256=:" + base64.b64encode(hashlib.sha256(body).digest()).decode("ascii") + ":"
        if digest_header != expected_digest:
            raise AuthError("Content-Digest does not match the request body")
        params = sig_input.group(1)
        keyid_match = _KEYID.search(params)
        created_match = _CREATED.search(params)
        if keyid_match is None or created_match is None or ';alg="ed25519"' not in params:
            raise AuthError("Signature-Input lacks keyid, created or alg=ed25519")
        covered = _COVERED.findall(params.split(")")[0])
        if covered != ["@method", "@request-target", "content-digest"]:
            raise AuthError(f"unexpected covered components {covered}")
        if abs(time.time() - int(created_match.group(1))) > CREATED_WINDOW_S:
            raise AuthError("signature 'created' is outside the allowed clock window")
        keyid = keyid_match.group(1).lower()
        base = "\n".join(
            (
                f'"@method": {method.upper()}',
                f'"@request-target": {request_target}',
                f'"content-digest": {digest_header}',
                f'"@signature-params": {params}',
            )
        )
        try:
            raw_signature = base64.b64decode(signature.group(1), validate=True)
        except binascii.Error as exc:
            raise AuthError("signature is not base64") from exc
        self._verify(keyid, raw_signature, base.encode("utf-8"))
        return keyid

    def verify_legacy(self, headers: Mapping[str, str], body: bytes) -> str:
        """`Authorization: <pubkey hex>:<signature hex>`, signed over sha256(body). Returns the key id."""
        authorization = headers.get("Authorization", "")
        if self._check_bearer(authorization):
            return "bearer"
        pub_hex, _, sig_hex = authorization.partition(":")
        try:
            public = bytes.fromhex(pub_hex)
            raw_signature = bytes.fromhex(sig_hex)
        except ValueError as exc:
            raise AuthError("Authorization is not '<public key hex>:<signature hex>'") from exc
        if len(public) != 32:
            raise AuthError("Authorization is not '<public key hex>:<signature hex>'")
        self._verify(public.hex(), raw_signature, hashlib.sha256(body).digest())
        return public.hex()

    def _verify(self, keyid: str, signature: bytes, message: bytes) -> None:
        if keyid not in self.key_ids:
            raise AuthError("this public key is not registered with the emulator")
        try:
            Ed25519PublicKey.from_public_bytes(bytes.fromhex(keyid)).verify(signature, message)
        except (InvalidSignature, ValueError) as exc:
            raise AuthError("signature does not verify") from exc
