"""CreateAcls (key 30): store ACL bindings (``umlog.server.security.acls``).

Needs ALTER on the CLUSTER (``..authz``). Each creation gets its own result:
a binding that cannot be stored (unknown type, pattern MATCH or ANY, a bad
principal) is INVALID_REQUEST; without security SECURITY_DISABLED.
"""

from __future__ import annotations

from kio.schema.errors import ErrorCode

from ...security.acls import AclBinding
from ._util import ZERO_MS, make, response_module

API_KEY = 30
API_VERSIONS = (1, 3)


async def handle_create_acls(ctx, req):
    mod = response_module(ctx)
    security = ctx.door.security
    results = []
    good = []
    for c in req.creations:
        if security is None:
            results.append((ErrorCode.security_disabled, "security is off (no [security] table)"))
            continue
        try:
            b = AclBinding(int(c.resource_type), c.resource_name, int(c.resource_pattern_type), c.principal,
                           c.host, int(c.operation), int(c.permission_type))
            why = b.check()
        except ValueError as e:
            why = str(e)
        if why is not None:
            results.append((ErrorCode.invalid_request, why))
            continue
        results.append((ErrorCode.none, None))
        good.append(b)
    if good:
        security.acls.add(good)
    return make(mod.CreateAclsResponse, throttle_time=ZERO_MS,
                results=tuple(make(mod.AclCreationResult, error_code=code, error_message=msg)
                              for code, msg in results))
