"""DescribeAcls (key 29): the stored ACL bindings a filter matches, by resource.

Needs DESCRIBE on the CLUSTER (``..authz``)."""

from __future__ import annotations

from kio.schema.errors import ErrorCode

from ...security.acls import AclFilter
from ._util import ZERO_MS, make, response_module

API_KEY = 29
API_VERSIONS = (1, 3)


def acl_filter(f) -> AclFilter:
    """A request's filter fields (DescribeAcls, DeleteAcls) as an ``AclFilter``."""
    return AclFilter(int(f.resource_type_filter), f.resource_name_filter, int(f.pattern_type_filter),
                     f.principal_filter, f.host_filter, int(f.operation), int(f.permission_type))


async def handle_describe_acls(ctx, req):
    mod = response_module(ctx)
    security = ctx.door.security
    if security is None:
        return make(mod.DescribeAclsResponse, throttle_time=ZERO_MS, error_code=ErrorCode.security_disabled,
                    error_message="security is off (no [security] table)", resources=())
    try:
        found = security.acls.describe(acl_filter(req))
    except ValueError as e:
        return make(mod.DescribeAclsResponse, throttle_time=ZERO_MS, error_code=ErrorCode.invalid_request,
                    error_message=str(e), resources=())
    by_resource: dict = {}
    for b in found:
        by_resource.setdefault((b.resource_type, b.name, b.pattern_type), []).append(b)
    resources = tuple(
        make(mod.DescribeAclsResource, resource_type=int(rt), resource_name=name, pattern_type=int(pt),
             acls=tuple(make(mod.AclDescription, principal=b.principal, host=b.host, operation=int(b.operation),
                             permission_type=int(b.permission)) for b in bs))
        for (rt, name, pt), bs in by_resource.items())
    return make(mod.DescribeAclsResponse, throttle_time=ZERO_MS, error_code=ErrorCode.none, error_message=None,
                resources=resources)
