"""Ed25519 key pairs in the OpenSSH formats the `encord` SDK and the emulator expect."""

from __future__ import annotations

import base64
import binascii
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

PRIVATE_KEY_FILENAME = "encord_ed25519"


class KeyFormatError(ValueError):
    """A public key line is neither an OpenSSH `ssh-ed25519` line nor 64 hex digits."""

    def __init__(self, line: str, reason: str) -> None:
        super().__init__(f"not an ed25519 public key ({reason}): {line[:60]!r}")
        self.line = line


def generate_keypair(directory: Path, name: str = PRIVATE_KEY_FILENAME) -> tuple[Path, str]:
    """Write a new OpenSSH ed25519 private key to `directory/name` (and `name.pub`).

    Returns the private key path (read its text and pass it to
    `EncordUserClient.create_with_ssh_private_key`) and the public key line (give it to the
    emulator as an authorized key).
    """
    directory.mkdir(parents=True, exist_ok=True)
    private_key = Ed25519PrivateKey.generate()
    private_pem = private_key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.OpenSSH, serialization.NoEncryption()
    )
    public_line = (
        private_key.public_key()
        .public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH)
        .decode("ascii")
    )
    private_path = directory / name
    private_path.write_bytes(private_pem)
    private_path.chmod(0o600)
    (directory / f"{name}.pub").write_text(public_line + "\n", encoding="ascii")
    return private_path, public_line


def key_id(public_key_line: str) -> str:
    """The SDK's key id: lower-case hex of the raw 32-byte public key (not an SSH fingerprint).

    Accepts an OpenSSH line (`ssh-ed25519 AAAA... comment`) or the 64 hex digits themselves.
    """
    line = public_key_line.strip()
    if len(line) == 64:
        try:
            return bytes.fromhex(line).hex()
        except ValueError:
            pass
    parts = line.split()
    if len(parts) < 2 or parts[0] != "ssh-ed25519":
        raise KeyFormatError(line, "expected 'ssh-ed25519 <base64>'")
    try:
        blob = base64.b64decode(parts[1], validate=True)
        loaded = serialization.load_ssh_public_key(f"{parts[0]} {parts[1]}".encode("ascii"))
    except (binascii.Error, ValueError) as exc:
        raise KeyFormatError(line, str(exc)) from exc
    if not isinstance(loaded, Ed25519PublicKey) or not blob:
        raise KeyFormatError(line, "not an ed25519 key")
    return loaded.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw).hex()


def read_public_key_file(path: Path) -> list[str]:
    """The key lines of an OpenSSH public key / authorized_keys file (blank and # lines skipped)."""
    lines = path.read_text(encoding="utf-8").splitlines()
    return [line.strip() for line in lines if line.strip() and not line.strip().startswith("#")]
