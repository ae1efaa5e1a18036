"""Drive protocol/claim.py from the command line, one JSON line out, so tests can check the
MicroPython side against CPython's and `cryptography`'s results (tests/test_claim_protocol.py).

    echo '["x25519", SCALAR_HEX, U_HEX]' | micropython claim_check.py
    echo '["request", TOKEN_ID, SECRET_HEX, PRIVATE_HEX, NONCE_HEX]' | micropython claim_check.py
    echo '["response", TOKEN_ID, SECRET_HEX, PRIVATE_HEX, NONCE_HEX, TOPIC, PAYLOAD_HEX]' | ...

Arguments come on stdin as one JSON array: the 1.29 unix port dies with "FATAL: uncaught NLR"
when one command-line argument is about 300 characters long.
"""

import binascii
import json
import sys

from protocol import claim
from protocol.errors import ProtocolError


def h(b):
    return binascii.hexlify(b).decode()


def u(s):
    return binascii.unhexlify(s)


def main(argv):
    op = argv[0]
    if op == "x25519":
        print(json.dumps({"out": h(claim.x25519(u(argv[1]), u(argv[2])))}))
    elif op == "request":
        priv, pub = claim.keypair(u(argv[3]))
        t, p = claim.encode_request(argv[1], u(argv[2]), u(argv[4]), pub, "sim")
        print(json.dumps({"topic": t, "payload": h(p), "public": h(pub)}))
    elif op == "response":
        priv, pub = claim.keypair(u(argv[3]))
        try:
            status, ident = claim.decode_response(
                argv[5], u(argv[6]), argv[1], u(argv[2]), priv, pub, u(argv[4])
            )
        except ProtocolError as e:
            print(json.dumps({"error": e.code}))
            return
        out = {"status": status}
        if ident is not None:
            out["identity"] = {
                str(k): (h(v) if isinstance(v, bytes) else v) for k, v in ident.items()
            }
        print(json.dumps(out))


main(json.loads(sys.stdin.read()))
