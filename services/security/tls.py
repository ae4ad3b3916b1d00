"""TLS for the gateway's gRPC and HTTP listeners, from PEM files: a certificate chain and its key,
and optionally a CA whose certificates clients must present (mutual TLS).

    --tls-cert server.pem --tls-key server.key [--tls-client-ca clients-ca.pem]

Both listeners use the same files. Workers' RPCs are protected by the cluster token instead
(cluster_token.py); put them on a private network, or behind a TLS-terminating proxy, when the
links between nodes must be encrypted too."""

from __future__ import annotations

import argparse
import os
import ssl
from dataclasses import dataclass

import grpc

from services.engine.errors import ConfigError


@dataclass(frozen=True)
class TlsConfig:
    cert_file: str
    key_file: str
    client_ca_file: str = ""        # set: clients must present a certificate this CA signed

    def __post_init__(self) -> None:
        for flag, path in (("--tls-cert", self.cert_file), ("--tls-key", self.key_file),
                           ("--tls-client-ca", self.client_ca_file)):
            if flag == "--tls-client-ca" and not path:
                continue
            if not path or not os.access(path, os.R_OK):
                raise ConfigError(f"{flag} {path!r}: not a readable file")
        self.ssl_context()          # a bad certificate or key refuses the config, not a client

    def _read(self, path: str) -> bytes:
        with open(path, "rb") as f:
            return f.read()

    def grpc_credentials(self) -> grpc.ServerCredentials:
        ca = self._read(self.client_ca_file) if self.client_ca_file else None
        return grpc.ssl_server_credentials([(self._read(self.key_file), self._read(self.cert_file))],
                                           root_certificates=ca, require_client_auth=ca is not None)

    def ssl_context(self) -> ssl.SSLContext:
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        try:
            context.load_cert_chain(self.cert_file, self.key_file)
            if self.client_ca_file:
                context.load_verify_locations(self.client_ca_file)
                context.verify_mode = ssl.CERT_REQUIRED
        except (ssl.SSLError, ValueError) as exc:
            raise ConfigError(f"--tls-cert {self.cert_file} / --tls-key {self.key_file}"
                              f"{' / --tls-client-ca ' + self.client_ca_file if self.client_ca_file else ''}: "
                              f"cannot load them ({exc})") from None
        return context


def add_tls_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--tls-cert", default=None, metavar="PEM",
                   help="serve gRPC and HTTP over TLS with this certificate chain (with --tls-key)")
    p.add_argument("--tls-key", default=None, metavar="PEM", help="the private key of --tls-cert")
    p.add_argument("--tls-client-ca", default=None, metavar="PEM",
                   help="require client certificates signed by this CA (mutual TLS)")


def tls_from_args(args: argparse.Namespace) -> TlsConfig | None:
    if not (args.tls_cert or args.tls_key or args.tls_client_ca):
        return None
    if not (args.tls_cert and args.tls_key):
        raise ConfigError("--tls-cert and --tls-key go together (--tls-client-ca needs both)")
    return TlsConfig(args.tls_cert, args.tls_key, args.tls_client_ca or "")
