"""DescribeUserScramCredentials (key 50): users' SCRAM mechanisms and iterations.

Needs DESCRIBE on the CLUSTER (``..authz``). No users named: every user.
Salts and keys are never sent."""

from __future__ import annotations

from kio.schema.errors import ErrorCode

from ...security.users import MECHANISMS
from ._util import ZERO_MS, make, response_module

API_KEY = 50
API_VERSIONS = (0, 0)


async def handle_describe_user_scram_credentials(ctx, req):
    mod = response_module(ctx)
    security = ctx.door.security
    if security is None:
        return make(mod.DescribeUserScramCredentialsResponse, throttle_time=ZERO_MS,
                    error_code=ErrorCode.security_disabled, error_message="security is off", results=())
    users = security.users.users()
    names = [u.name for u in req.users] if req.users else sorted(users)
    results = []
    for name in names:
        creds = users.get(name)
        if not creds:
            results.append(make(mod.DescribeUserScramCredentialsResult, user=name,
                                error_code=ErrorCode.resource_not_found, error_message=f"no user {name!r}",
                                credential_infos=()))
            continue
        infos = tuple(make(mod.CredentialInfo, mechanism=MECHANISMS[m][1], iterations=int(c["iterations"]))
                      for m, c in sorted(creds.items()) if m in MECHANISMS)
        results.append(make(mod.DescribeUserScramCredentialsResult, user=name, error_code=ErrorCode.none,
                            error_message=None, credential_infos=infos))
    return make(mod.DescribeUserScramCredentialsResponse, throttle_time=ZERO_MS, error_code=ErrorCode.none,
                error_message=None, results=tuple(results))
