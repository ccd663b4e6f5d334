"""Where TLS trunks find the CA certificates they verify a carrier against.

The pjsua2 wheel's OpenSSL (1.0.2k, built for CentOS 7) looks for its default CA store
under ``/etc/pki/tls`` and PJSIP never asks it to (no ``SSL_CTX_set_default_verify_paths``):
with no CA list given, every certificate fails verification. So a verifying TLS trunk
always hands pjsip a CA file: its ``tls.ca_file``, or the operating system's bundle found
here. No pjsua2 import: the supervisor validates configs with it, the workers use it.
"""

from __future__ import annotations

import functools
import os
import ssl

# The OS bundle, by distribution family (first existing file wins, after SSL_CERT_FILE
# and the path Python's own OpenSSL was built with).
_OS_BUNDLES = (
    "/etc/ssl/certs/ca-certificates.crt",  # Debian, Ubuntu, Alpine (ca-certificates)
    "/etc/pki/tls/certs/ca-bundle.crt",  # RHEL, CentOS, Fedora
    "/etc/ssl/ca-bundle.pem",  # openSUSE, SLES
    "/etc/ssl/cert.pem",  # Alpine, macOS, BSDs
)


@functools.cache
def os_ca_bundle() -> str | None:
    """Path of the operating system's CA bundle (PEM), or None if none is found."""
    candidates = [
        os.environ.get("SSL_CERT_FILE") or "",
        ssl.get_default_verify_paths().cafile or "",
        *_OS_BUNDLES,
    ]
    for path in candidates:
        if path and os.path.isfile(path):
            return path
    return None


def check_ca_file(path: str) -> str:
    """Raise ``ValueError`` (a reason) unless ``path`` is a readable PEM file holding at
    least one certificate (CA certificates, or a carrier's self-signed one, pinned);
    return the path."""
    if not os.path.isfile(path):
        raise ValueError(f"{path!r} is not a file")
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    try:
        ctx.load_verify_locations(cafile=path)
    except (OSError, ssl.SSLError) as e:
        raise ValueError(f"{path!r} is not a PEM list of CA certificates: {e}") from None
    if not ctx.cert_store_stats().get("x509"):
        raise ValueError(f"{path!r} holds no PEM certificate")
    return path


# pj_ssl_cert_verify_flag_t bits (pjlib ssl_sock.h) -> short reasons.
_VERIFY_FLAGS = (
    (1 << 0, "issuer certificate not found (untrusted CA)"),
    (1 << 1, "untrusted"),
    (1 << 2, "expired or not yet valid"),
    (1 << 3, "malformed certificate"),
    (1 << 4, "not usable for this purpose"),
    (1 << 5, "issuer mismatch"),
    (1 << 6, "CRL failure"),
    (1 << 7, "revoked"),
    (1 << 8, "chain too long"),
    (1 << 9, "weak signature algorithm"),
    (1 << 31, "unknown verification error"),
)
_IDENTITY_NOT_MATCH = 1 << 30


def tls_reject_text(
    verify_status: int, peer: str, host: str, subject_cn: str, alt_names: list[str]
) -> str:
    """Why a TLS peer was refused, for a leg's ``detail``: pjsip's verification bits
    (``pj_ssl_cert_verify_flag_t``) with the names the certificate carries."""
    why = [text for bit, text in _VERIFY_FLAGS if verify_status & bit]
    if verify_status & _IDENTITY_NOT_MATCH:
        names = ", ".join([f"CN={subject_cn}", *alt_names][:6])
        why.append(f"host name {host!r} is not in the certificate ({names})")
    return f"TLS certificate of {peer} rejected: " + "; ".join(why or ["verification failed"])


__all__ = ["check_ca_file", "os_ca_bundle", "tls_reject_text"]
