"""CURVE keys for the result stream: make them, load them, and let only listed displays in.

A keys folder (``sonograde keys --out DIR``) holds pyzmq's certificate files (``zmq.auth`` format):

- ``server.key`` / ``server.key_secret``: the publisher's (``sonograde run``) public and secret key.
- ``client.key`` / ``client.key_secret``: a display's (``sonograde overlay``) public and secret key.
- ``authorized/``: the public keys (``*.key``) of every display the publisher lets in; ``sonograde keys``
  puts ``client.key`` there. Without that folder, ``client.key`` is the one key let in.

Secret files are created with mode 0600 (never readable by others, not even for a moment: they are
written in a private temporary folder first). The publisher needs ``server.key_secret`` and the
authorized keys; a display needs ``client.key_secret`` and ``server.key``. See docs/security.md for
distribution and rotation.

The publisher authenticates with ZAP (``zmq.auth.thread.ThreadAuthenticator``): a client whose public
key is not listed completes no handshake and receives nothing; one without keys cannot even talk CURVE.
"""

from __future__ import annotations

import os
import shutil
import stat
import tempfile
from dataclasses import dataclass
from pathlib import Path

import zmq

SERVER = "server"
CLIENT = "client"
AUTHORIZED = "authorized"
ZAP_DOMAIN = "sonograde"
KEY_FILES = (f"{SERVER}.key", f"{SERVER}.key_secret", f"{CLIENT}.key", f"{CLIENT}.key_secret")
HOW_TO_MAKE = "make keys with `sonograde keys --out DIR` (see docs/security.md)"


class CurveKeyError(ValueError):
    """A keys folder or key file that is missing, unreadable or not a CURVE certificate."""


@dataclass(frozen=True)
class KeyPair:
    """A CURVE key pair as Z85 bytes (40 characters each); ``secret`` is None for a public key file."""

    public: bytes
    secret: bytes | None


def make_keys(directory: str | os.PathLike, *, force: bool = False) -> list[Path]:
    """Write a server and a client key pair and ``authorized/client.key`` into ``directory``.

    Refuses (CurveKeyError) to overwrite any existing key file unless ``force``. Returns the written paths.
    """
    if not zmq.has("curve"):
        raise CurveKeyError("this libzmq was built without CURVE support; install pyzmq's wheels")
    out = Path(directory)
    out.mkdir(parents=True, exist_ok=True)
    targets = [out / name for name in KEY_FILES] + [out / AUTHORIZED / f"{CLIENT}.key"]
    existing = [str(p.relative_to(out)) for p in targets if p.exists()]
    if existing and not force:
        raise CurveKeyError(f"{out} already holds keys ({', '.join(existing)}); "
                            "pass --force to replace them (every display then needs the new keys)")
    from zmq.auth import create_certificates

    # mkdtemp makes a 0700 folder: secret files never exist readable by others, not even briefly.
    staging = Path(tempfile.mkdtemp(prefix=".sonograde-keys-", dir=out))
    try:
        for name in (SERVER, CLIENT):
            public, secret = create_certificates(staging, name)
            os.chmod(secret, stat.S_IRUSR | stat.S_IWUSR)
            os.chmod(public, 0o644)
        (out / AUTHORIZED).mkdir(exist_ok=True)
        shutil.copyfile(staging / f"{CLIENT}.key", staging / "authorized.key")
        os.replace(staging / "authorized.key", out / AUTHORIZED / f"{CLIENT}.key")
        for name in KEY_FILES:
            os.replace(staging / name, out / name)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return targets


def load_key_file(path: Path, *, secret: bool) -> KeyPair:
    """Read one certificate file; ``secret=True`` requires the secret key and private permissions."""
    from zmq.auth import load_certificate

    if not path.is_file():
        raise CurveKeyError(f"key file {path} not found; {HOW_TO_MAKE}")
    if secret and os.name == "posix" and path.stat().st_mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise CurveKeyError(f"secret key file {path} is readable by others; run `chmod 600 {path}`")
    try:
        public, secret_key = load_certificate(path)
    except (OSError, ValueError) as error:
        raise CurveKeyError(f"{path} is not a CURVE certificate ({error}); {HOW_TO_MAKE}") from None
    if not public or (secret and not secret_key):
        raise CurveKeyError(f"{path} holds no {'secret' if secret else 'public'} key; {HOW_TO_MAKE}")
    return KeyPair(public, secret_key if secret else None)


def authorized_keys_location(directory: str | os.PathLike) -> Path:
    """The folder or file whose public keys the publisher lets in: ``DIR/authorized/`` when it exists
    and holds keys, else ``DIR/client.key``."""
    base = Path(directory)
    folder = base / AUTHORIZED
    if folder.is_dir() and any(folder.glob("*.key")):
        return folder
    single = base / f"{CLIENT}.key"
    if single.is_file():
        return single
    raise CurveKeyError(f"no authorized display keys in {base} (neither {AUTHORIZED}/*.key nor "
                        f"{CLIENT}.key); {HOW_TO_MAKE}")


def authorized_keys(directory: str | os.PathLike) -> list[bytes]:
    """The public keys (Z85) the publisher in ``directory`` lets in."""
    location = authorized_keys_location(directory)
    files = sorted(location.glob("*.key")) if location.is_dir() else [location]
    return [load_key_file(path, secret=False).public for path in files]


def load_server_keys(directory: str | os.PathLike) -> tuple[KeyPair, list[bytes]]:
    """The publisher's key pair and the authorized display keys in ``directory`` (CurveKeyError if any
    is missing or malformed, or the secret file is readable by others)."""
    return load_key_file(Path(directory) / f"{SERVER}.key_secret", secret=True), authorized_keys(directory)


def load_client_keys(directory: str | os.PathLike) -> tuple[KeyPair, bytes]:
    """A display's key pair and the publisher's public key in ``directory`` (CurveKeyError as above)."""
    base = Path(directory)
    return (load_key_file(base / f"{CLIENT}.key_secret", secret=True),
            load_key_file(base / f"{SERVER}.key", secret=False).public)


class ServerCurve:
    """Publisher side: CURVE server keys on a socket and a ZAP authenticator that admits only the
    authorized client keys. ``stop()`` before the context is terminated."""

    def __init__(self, directory: str | os.PathLike, context: zmq.Context) -> None:
        self.keys, self.authorized = load_server_keys(directory)
        self._allowed = frozenset(self.authorized)
        from zmq.auth.thread import ThreadAuthenticator

        self._authenticator = ThreadAuthenticator(context, log=_quiet_logger())
        self._authenticator.start()
        # A callback over the keys checked above (not a folder the authenticator reads again): what was
        # loaded and validated here is exactly what is let in.
        self._authenticator.configure_curve_callback(domain=ZAP_DOMAIN, credentials_provider=self)

    def callback(self, domain: str, client_key: bytes) -> bool:
        """ZAP: let in a client whose public key (Z85) is authorized (runs in the authenticator thread)."""
        return client_key in self._allowed

    def apply(self, socket: zmq.Socket) -> None:
        socket.setsockopt(zmq.CURVE_SERVER, 1)
        socket.setsockopt(zmq.CURVE_PUBLICKEY, self.keys.public)
        assert self.keys.secret is not None
        socket.setsockopt(zmq.CURVE_SECRETKEY, self.keys.secret)
        socket.setsockopt(zmq.ZAP_DOMAIN, ZAP_DOMAIN.encode())

    def stop(self) -> None:
        self._authenticator.stop()


def apply_client_curve(socket: zmq.Socket, directory: str | os.PathLike) -> None:
    """Display side: this client's key pair (``client.key_secret``) and the server's public key."""
    mine, server_public = load_client_keys(directory)
    socket.setsockopt(zmq.CURVE_PUBLICKEY, mine.public)
    assert mine.secret is not None
    socket.setsockopt(zmq.CURVE_SECRETKEY, mine.secret)
    socket.setsockopt(zmq.CURVE_SERVERKEY, server_public)


def _quiet_logger():
    import logging

    # The authenticator logs every denied handshake at debug level; keep it out of the live status line.
    return logging.getLogger("sonograde.curve")
