"""AlterUserScramCredentials (key 51): add, replace or delete users' SCRAM credentials.

Needs ALTER on the CLUSTER (``..authz``). An upsertion carries the salt, the
iterations and the *salted* password (the client derives it), from which the
stored and server keys are made (``users.credential_from_salted``); the
password itself never reaches the server. Iterations outside Kafka's
4096-16384 are UNACCEPTABLE_CREDENTIAL. Effective at once for every door.
"""

from __future__ import annotations

from kio.schema.errors import ErrorCode

from ...security.users import (
    MAX_ITERATIONS,
    MECHANISM_BY_CODE,
    MIN_ITERATIONS,
    credential_from_salted,
    valid_user_name,
)
from ._util import ZERO_MS, make, response_module

API_KEY = 51
API_VERSIONS = (0, 0)


async def handle_alter_user_scram_credentials(ctx, req):
    mod = response_module(ctx)
    security = ctx.door.security
    results: dict[str, tuple] = {}
    for d in req.deletions:
        if security is None:
            results[d.name] = (ErrorCode.security_disabled, "security is off")
            continue
        mech = MECHANISM_BY_CODE.get(int(d.mechanism))
        if mech is None:
            results[d.name] = (ErrorCode.unsupported_sasl_mechanism, f"mechanism {d.mechanism}")
        elif not security.users.delete_credential(d.name, mech):
            results[d.name] = (ErrorCode.resource_not_found, f"user {d.name!r} has no {mech} credential")
        else:
            results.setdefault(d.name, (ErrorCode.none, None))
    for u in req.upsertions:
        if security is None:
            results[u.name] = (ErrorCode.security_disabled, "security is off")
            continue
        mech = MECHANISM_BY_CODE.get(int(u.mechanism))
        if mech is None:
            results[u.name] = (ErrorCode.unsupported_sasl_mechanism, f"mechanism {u.mechanism}")
        elif not valid_user_name(u.name):
            results[u.name] = (ErrorCode.unacceptable_credential, f"bad user name {u.name!r}")
        elif not MIN_ITERATIONS <= u.iterations <= MAX_ITERATIONS:
            results[u.name] = (ErrorCode.unacceptable_credential,
                               f"iterations {u.iterations} outside {MIN_ITERATIONS}-{MAX_ITERATIONS}")
        else:
            security.users.set_credential(u.name, mech, credential_from_salted(
                mech, bytes(u.salt), u.iterations, bytes(u.salted_password)))
            results.setdefault(u.name, (ErrorCode.none, None))
    return make(mod.AlterUserScramCredentialsResponse, throttle_time=ZERO_MS, results=tuple(
        make(mod.AlterUserScramCredentialsResult, user=name, error_code=code, error_message=msg)
        for name, (code, msg) in results.items()))
