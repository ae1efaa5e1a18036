"""The CA certificate for TLS, loaded by link.py only when the broker link uses TLS (and unloaded
with it at a soft reboot): plain-MQTT devices never hold this code."""


def der(path):
    """The CA certificate as DER: this Mbed TLS build takes only DER (`cadata`), while bundles may
    carry PEM (docs/SECURITY.md). Verification failures surface as ValueError at the first write;
    the connectivity loop treats them like any link failure."""
    with open(path, "rb") as f:
        data = f.read()
    if data.startswith(b"-----"):
        import binascii

        body = b"".join(
            ln.strip() for ln in data.split(b"\n") if ln and not ln.startswith(b"-----")
        )
        data = binascii.a2b_base64(body)
    return data
