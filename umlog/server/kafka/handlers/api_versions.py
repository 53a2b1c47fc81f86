"""ApiVersions (key 18): the versions we answer, negotiated before anything else.

v3+ requests are flexible but the response header stays v0 (clients read it
before they know our versions). A version we do not know gets a v0 body with
UNSUPPORTED_VERSION and our ranges (``..dispatch``), so the client retries.
"""

from __future__ import annotations

import struct

from kio.schema.errors import ErrorCode

from ._util import ZERO_MS, make, response_module

API_KEY = 18
API_VERSIONS = (0, 4)


def advertised() -> list[tuple[int, int, int]]:
    from ..dispatch import APIS

    return sorted((a.key, a.advertised[0], a.advertised[1]) for a in APIS.values())


def api_versions_body_v0(error_code: ErrorCode) -> bytes:
    rows = advertised()
    out = bytearray(struct.pack(">hi", error_code.value, len(rows)))
    for key, lo, hi in rows:
        out += struct.pack(">hhh", key, lo, hi)
    return bytes(out)


async def handle_api_versions(ctx, req):
    mod = response_module(ctx)
    keys = tuple(make(mod.ApiVersion, api_key=k, min_version=lo, max_version=hi)
                 for k, lo, hi in advertised())
    return make(mod.ApiVersionsResponse, error_code=ErrorCode.none, api_keys=keys,
                throttle_time=ZERO_MS)
