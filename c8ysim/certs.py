"""Read the subject Common Name of a PEM client certificate, with the standard library only.

Cumulocity links a certificate login to the device whose external ID equals the CN of the
first certificate the device sends (reference §1.3), so the config loader compares the two
before any connection is tried.

How: `ssl._ssl._test_decode_cert(path)` is CPython's own PEM-to-dict decoder (the one behind
`ssl.SSLSocket.getpeercert()`, exposed for the ssl test suite). It is private but present
and unchanged in every CPython 3 release; it reads the first certificate in the file, which
is exactly the one a client presents first. Using it avoids a dependency (`cryptography`) for
one field. Should a future Python drop it, `common_name` raises CertificateError saying so
rather than guessing.

`ssl` is imported in `common_name`, when a certificate is to be read: the config loader
imports this module in every agent, and importing `ssl` loads OpenSSL (issue 18).
"""

from __future__ import annotations

import os


class CertificateError(ValueError):
    """The file is not a readable PEM certificate with exactly one subject CN."""


def common_name(path: str | os.PathLike) -> str:
    """The subject CN of the first certificate in the PEM file `path`."""
    name = os.fspath(path)
    try:
        with open(name, "rb") as handle:
            head = handle.read(1 << 20)
    except OSError as exc:
        raise CertificateError(f"cannot read certificate file '{name}': "
                               f"{exc.strerror or exc}") from None
    if b"-----BEGIN CERTIFICATE-----" not in head:
        raise CertificateError(f"'{name}' is not a PEM certificate (no '-----BEGIN "
                               "CERTIFICATE-----' line; is it the key or a DER file?)")
    import ssl

    decode = getattr(getattr(ssl, "_ssl", None), "_test_decode_cert", None)
    if decode is None:
        raise CertificateError(f"cannot read '{name}': this Python's ssl module has no "
                               "certificate decoder (ssl._ssl._test_decode_cert)")
    try:
        decoded = decode(name)
    except (ssl.SSLError, OSError, ValueError) as exc:
        raise CertificateError(f"'{name}' is not a valid PEM certificate: {exc}") from None
    names = [value for rdn in decoded.get("subject", ()) for key, value in rdn
             if key == "commonName"]
    if not names:
        raise CertificateError(f"certificate '{name}' has no Common Name (CN) in its subject")
    if len(names) > 1:
        raise CertificateError(f"certificate '{name}' has {len(names)} Common Names "
                               f"({', '.join(names)}); Cumulocity needs exactly one")
    return names[0]
