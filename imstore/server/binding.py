"""Where serve may listen: a LAN address needs a token (and should have TLS); the TLS context."""

from __future__ import annotations

import ipaddress
import ssl

from ..errors import InvalidInput, UsageError

__all__ = ["is_loopback", "check_binding", "server_ssl_context"]


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def check_binding(config, authenticator, warn) -> None:
    """Refuse a LAN address with no token; warn about plain HTTP on one."""
    if is_loopback(config.host):
        return
    if not authenticator.has_tokens:
        raise UsageError(
            f"refusing to listen on {config.host} with no API token: anyone on the network could write."
            " Create one first: imstore token create --scope write --name NAME"
        )
    if not config.tls_cert:
        warn(f"serving plain HTTP on {config.host}: tokens and data cross the network in clear (use --tls-cert and --tls-key)")


def server_ssl_context(config) -> ssl.SSLContext | None:
    if not config.tls_cert:
        return None
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    try:
        context.load_cert_chain(config.tls_cert, config.tls_key)
    except (OSError, ssl.SSLError) as exc:
        raise InvalidInput(f"cannot load the TLS certificate and key: {exc}") from None
    return context
