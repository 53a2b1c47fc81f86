"""DeleteAcls (key 31): delete the stored ACL bindings each filter matches.

Needs ALTER on the CLUSTER (``..authz``); each filter's result lists what it deleted."""

from __future__ import annotations

from kio.schema.errors import ErrorCode

from ._util import ZERO_MS, make, response_module
from .describe_acls import acl_filter

API_KEY = 31
API_VERSIONS = (1, 3)


async def handle_delete_acls(ctx, req):
    mod = response_module(ctx)
    security = ctx.door.security
    if security is None:
        results = tuple(make(mod.DeleteAclsFilterResult, error_code=ErrorCode.security_disabled,
                             error_message="security is off (no [security] table)", matching_acls=())
                        for _ in req.filters)
        return make(mod.DeleteAclsResponse, throttle_time=ZERO_MS, filter_results=results)
    filters, bad = [], {}
    for i, f in enumerate(req.filters):
        try:
            filters.append(acl_filter(f))
        except ValueError as e:
            bad[i] = str(e)
    deleted = iter(security.acls.remove(filters))
    results = []
    for i in range(len(req.filters)):
        if i in bad:
            results.append(make(mod.DeleteAclsFilterResult, error_code=ErrorCode.invalid_request,
                                error_message=bad[i], matching_acls=()))
            continue
        gone = next(deleted)
        results.append(make(mod.DeleteAclsFilterResult, error_code=ErrorCode.none, error_message=None,
                            matching_acls=tuple(
                                make(mod.DeleteAclsMatchingAcl, error_code=ErrorCode.none, error_message=None,
                                     resource_type=int(b.resource_type), resource_name=b.name,
                                     pattern_type=int(b.pattern_type), principal=b.principal, host=b.host,
                                     operation=int(b.operation), permission_type=int(b.permission))
                                for b in gone)))
    return make(mod.DeleteAclsResponse, throttle_time=ZERO_MS, filter_results=tuple(results))
