"""Schemathesis hooks for revoker (issue 31).

- Alert deliveries: a generated body is signed with the test key
  (fixtures/keys/test-key.pem, key id revoker-test-key-1) and sent as the exact bytes
  signed, so generated alert arrays pass the signature check and reach the revoking
  path. A case that leaves a signature header out (a negative case) keeps it out.
- GitLab's Token Revocation API: a string `type` is the one type the server offers
  (any other is the documented 400, which the unit tests cover).
"""

import base64
import json
import os

import schemathesis
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from schemathesis.core import NotSet

_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
with open(os.path.join(_ROOT, "fixtures/keys/test-key.pem"), "rb") as f:
    _KEY = serialization.load_pem_private_key(f.read(), password=None)
KEY_ID = "revoker-test-key-1"
OFFERED_TYPE = "gitleaks_rule_id_cio_tp"
ID_HEADER = "Github-Public-Key-Identifier"
SIGNATURE_HEADER = "Github-Public-Key-Signature"


def _bytes(body):
    if isinstance(body, NotSet):
        return b""
    if isinstance(body, bytes):
        return body
    if isinstance(body, str):
        return body.encode()
    return json.dumps(body, separators=(",", ":"), ensure_ascii=False).encode()


def _has(headers, name):
    return any(k.lower() == name.lower() for k in headers)


@schemathesis.hook
def before_call(context, case, kwargs):
    if case.path == "/v1/revoke_tokens" and isinstance(case.body, list):
        for item in case.body:
            if isinstance(item, dict) and isinstance(item.get("type"), str):
                item["type"] = OFFERED_TYPE
        return
    if not case.path.startswith("/secret-scanning/"):
        return
    # The scanner the server was started with; a generated name would only be a 404.
    case.path_parameters = {"scanner": "github"}
    headers = dict(case.headers or {})
    body = _bytes(case.body)
    if _has(headers, ID_HEADER):
        headers = {k: v for k, v in headers.items() if k.lower() != ID_HEADER.lower()}
        headers[ID_HEADER] = KEY_ID
    if _has(headers, SIGNATURE_HEADER):
        headers = {k: v for k, v in headers.items() if k.lower() != SIGNATURE_HEADER.lower()}
        signature = _KEY.sign(body, ec.ECDSA(hashes.SHA256()))
        headers[SIGNATURE_HEADER] = base64.b64encode(signature).decode()
    case.headers = headers
    kwargs["data"] = body
