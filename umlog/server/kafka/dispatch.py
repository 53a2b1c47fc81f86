"""Route one request frame to its handler and frame the answer.

The table of APIs is built from the handler modules (``handlers/*.py``): each
declares ``API_KEY``, ``API_VERSIONS = (min, max)`` it can decode and answer,
optionally ``ADVERTISED_VERSIONS`` (wider, for client feature detection),
``decode_request`` (a hand-written fast decoder; otherwise kio's generated
reader for that version is used) and ``decode_legacy_request`` (a decoder
for the versions kio no longer has a schema for: ``legacy.py``).

A handler is ``async def handle_<api>(ctx, req)`` returning a kio response
entity (encoded here with kio's writer), a list of buffers (already-encoded
body, the hot paths), or ``None`` (no response: Produce with acks=0).

What goes wrong where:
  * header unreadable, unknown API key, body that does not decode, or a version
    outside ``API_VERSIONS`` for which kio has no schema: ``RemoteProtocolError``
    -> the connection is closed with one log line (as Kafka does);
  * ApiVersions with a version we do not know: a v0 body with UNSUPPORTED_VERSION
    and our ranges (KIP-511), so the client can retry with one we know;
  * another known API at an unsupported version, or a handler that raises:
    a response of that version with the error code in every ``error_code``
    field (``error_response``), and one log line.

Security (only when the server has a ``[security]`` table: ``door.security``
set; otherwise one attribute test per request): a connection of a SASL
listener that has not authenticated may send ApiVersions, SaslHandshake and
SaslAuthenticate only (anything else closes it, as Kafka does), and so may
one whose SASL session expired (KIP-368); every request is then checked by
``authz.check`` (a whole-request denial is answered like an unsupported
version, with the authorization error code), and admin changes that went
through are audited (``authz.audited``).
"""

from __future__ import annotations

import dataclasses
import datetime
import io
import logging
import struct
import types
import typing
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from kio.index import load_request_schema, load_response_schema
from kio.schema.errors import ErrorCode
from kio.serial import entity_reader, entity_writer

from umlog.errors import RemoteProtocolError

from . import handlers
from .wire import RequestHeader, read_request_header, read_request_prefix

if TYPE_CHECKING:
    from .protocol import KafkaProtocol

__all__ = ["Api", "APIS", "dispatch", "RequestContext", "error_response", "encode_entity"]

log = logging.getLogger("umlog.server.kafka")

API_VERSIONS_KEY = 18
# what a connection may send before (or between) SASL authentication: ApiVersions, SaslHandshake, SaslAuthenticate
_BEFORE_AUTH = frozenset({17, 18, 36})
_i32 = struct.Struct(">i")


@dataclasses.dataclass(frozen=True)
class Api:
    key: int
    name: str
    versions: tuple[int, int]
    advertised: tuple[int, int]
    handle: Callable[..., Any]
    decode: Callable[[memoryview, int, int], Any] | None
    decode_legacy: Callable[[memoryview, int, int], Any] | None = None


def _collect(module: types.ModuleType) -> Api:
    name = module.__name__.rsplit(".", 1)[-1]
    return Api(
        key=module.API_KEY,
        name=name,
        versions=module.API_VERSIONS,
        advertised=getattr(module, "ADVERTISED_VERSIONS", module.API_VERSIONS),
        handle=getattr(module, f"handle_{name}"),
        decode=getattr(module, "decode_request", None),
        decode_legacy=getattr(module, "decode_legacy_request", None),
    )


APIS: dict[int, Api] = {api.key: api for api in map(_collect, handlers.MODULES)}


def api_table() -> str:
    """The Markdown table of every API and the versions served, from the handlers'
    ``API_VERSIONS`` (the README holds it between ``kafka-apis`` markers, and a
    test keeps the two equal)."""
    rows = ["| key | API | versions |", "| --- | --- | --- |"]
    for api in sorted(APIS.values(), key=lambda a: a.key):
        lo, hi = api.versions
        name = "".join(part.capitalize() for part in api.name.split("_"))
        wider = f" (advertised {api.advertised[0]}-{api.advertised[1]})" if api.advertised != api.versions else ""
        rows.append(f"| {api.key} | {name} | {lo}-{hi}{wider} |")
    return "\n".join(rows)


class RequestContext:
    """What a handler knows about the request it answers."""

    __slots__ = ("door", "conn", "api_key", "version", "correlation_id", "client_id")

    def __init__(self, door, conn, header: RequestHeader) -> None:
        self.door = door  # type of `door` is `KafkaDoor`
        self.conn = conn  # type of `conn` is `KafkaProtocol` (None in unit tests)
        self.api_key = header.api_key
        self.version = header.api_version
        self.correlation_id = header.correlation_id
        self.client_id = header.client_id


# --- kio schema lookups (cached: importing a schema module is slow) -----------------

_request_cache: dict[tuple[int, int], Any] = {}
_response_cache: dict[tuple[int, int], Any] = {}


def request_class(key: int, version: int) -> Any | None:
    k = (key, version)
    try:
        return _request_cache[k]
    except KeyError:
        pass
    try:
        cls = load_request_schema(key, version)
    except Exception:
        cls = None
    _request_cache[k] = cls
    return cls


def response_class(key: int, version: int) -> Any | None:
    k = (key, version)
    try:
        return _response_cache[k]
    except KeyError:
        pass
    try:
        cls = load_response_schema(key, version)
    except Exception:
        cls = None
    _response_cache[k] = cls
    return cls


def encode_entity(entity: Any) -> bytes:
    out = io.BytesIO()
    entity_writer(type(entity))(out, entity)
    return out.getvalue()


# --- error responses ------------------------------------------------------------------------

_ZERO_MS = datetime.timedelta(0)


def _default_for(f: dataclasses.Field, code: ErrorCode) -> Any:
    if f.default is not dataclasses.MISSING:
        if f.metadata.get("kafka_type") == "error_code":
            return code
        return f.default
    kt = f.metadata.get("kafka_type")
    t = f.type
    if kt == "error_code":
        return code
    if kt is None:  # nested entity or array of entities
        origin = getattr(t, "__origin__", None)
        if origin is tuple or str(t).startswith("tuple"):
            return ()
        if dataclasses.is_dataclass(t):
            return _fill(t, code)
        return None
    if str(t).startswith("tuple"):
        return ()
    if kt in ("timedelta_i32", "timedelta_i64"):
        return _ZERO_MS
    if kt == "string":
        return None if "None" in str(t) else ""
    if kt in ("bytes", "records"):
        return None if "None" in str(t) else b""
    if kt == "bool":
        return False
    if kt == "uuid":
        return None
    if kt.startswith(("int", "uint")):
        return -1 if f.name.endswith("_id") or f.name.endswith("epoch") else 0
    if kt == "float64":
        return 0.0
    return None


def _fill(cls: Any, code: ErrorCode) -> Any:
    return cls(**{f.name: _default_for(f, code) for f in dataclasses.fields(cls)})


def error_response(key: int, version: int, code: ErrorCode) -> Any | None:
    """A response of (key, version) with ``code`` in every error_code field and empty
    arrays elsewhere; None when kio has no schema for that version."""
    cls = response_class(key, version)
    if cls is None:
        return None
    return _fill(cls, code)


# --- null arrays -------------------------------------------------------------------------

# Per entity class: (array fields that may not be null, nested entity fields to walk).
_null_plans: dict[type, tuple[tuple[str, ...], tuple[tuple[str, bool], ...]]] = {}


def _null_plan(cls: type):
    plan = _null_plans.get(cls)
    if plan is not None:
        return plan
    _null_plans[cls] = ((), ())  # (recursive schemas)
    hints = typing.get_type_hints(cls)
    arrays, nested = [], []
    for f in dataclasses.fields(cls):
        args = typing.get_args(hints[f.name])
        nullable = type(None) in args
        tp = next((a for a in args if a is not type(None)), hints[f.name]) if nullable else hints[f.name]
        if typing.get_origin(tp) is tuple:
            if not nullable:
                arrays.append(f.name)
            elem = typing.get_args(tp)[0]
            if dataclasses.is_dataclass(elem) and any(_null_plan(elem)):
                nested.append((f.name, True))
        elif dataclasses.is_dataclass(tp) and any(_null_plan(tp)):
            nested.append((f.name, False))
    plan = (tuple(arrays), tuple(nested))
    _null_plans[cls] = plan
    return plan


def reject_null_arrays(entity: Any) -> None:
    """kio decodes a null (length -1) array as None even where the schema says
    the field cannot be null; Kafka refuses such a request ("non-nullable
    field ... was serialized as null") and so do we, instead of letting a
    handler fail on None. Cheap: only fields that can hold arrays are visited."""
    arrays, nested = _null_plan(type(entity))
    for name in arrays:
        if getattr(entity, name) is None:
            raise RemoteProtocolError(f"non-nullable field {name} was serialized as null")
    for name, is_array in nested:
        value = getattr(entity, name)
        if value is None:
            continue
        if is_array:
            for item in value:
                reject_null_arrays(item)
        else:
            reject_null_arrays(value)


# --- dispatch -------------------------------------------------------------------------------


def _frame(correlation_id: int, flexible_header: bool, body: list) -> list:
    size = 4 + (1 if flexible_header else 0)
    for b in body:
        size += len(b)
    head = _i32.pack(size) + _i32.pack(correlation_id)
    if flexible_header:
        head += b"\x00"
    return [head, *body]


def api_versions_unsupported(correlation_id: int) -> list:
    """ApiVersions v0 body with UNSUPPORTED_VERSION and our ranges (header v0)."""
    from .handlers.api_versions import api_versions_body_v0

    return _frame(correlation_id, False, [api_versions_body_v0(ErrorCode.unsupported_version)])


async def dispatch(conn: KafkaProtocol | None, frame: bytearray, door=None) -> list | None:
    """Answer one request frame: the response frame as a list of buffers, or None."""
    door = door if door is not None else conn.door  # type: ignore[union-attr]
    view = memoryview(frame)
    key, version, correlation_id = read_request_prefix(view)
    api = APIS.get(key)
    if api is None:
        raise RemoteProtocolError(f"unknown or unsupported API key {key} (version {version})")
    lo, hi = api.versions
    supported = lo <= version <= hi
    req_cls = request_class(key, version)
    if not supported:
        if key == API_VERSIONS_KEY:
            return api_versions_unsupported(correlation_id)
        if req_cls is None:
            raise RemoteProtocolError(f"{api.name} v{version} is not supported (we do {lo}-{hi})")
    flexible = bool(req_cls is not None and req_cls.__flexible__)
    header = read_request_header(view, flexible)
    resp_cls = response_class(key, version)
    # ApiVersions answers with header v0 even when flexible (clients parse it
    # before they know our versions).
    flexible_resp_header = bool(resp_cls is not None and resp_cls.__flexible__
                                and key != API_VERSIONS_KEY)
    if not supported:
        log.warning("kafka %s: %s v%d is not supported (we do %d-%d); answering UNSUPPORTED_VERSION",
                    conn.peer if conn else "-", api.name, version, lo, hi)
        entity = error_response(key, version, ErrorCode.unsupported_version)
        return _frame(correlation_id, flexible_resp_header, [encode_entity(entity)])

    try:
        if api.decode is not None:
            req = api.decode(view, header.body_pos, version)
        elif req_cls is None and api.decode_legacy is not None:
            req = api.decode_legacy(view, header.body_pos, version)
        else:
            req, used = entity_reader(req_cls)(view.toreadonly(), header.body_pos)
            reject_null_arrays(req)
            # Trailing bytes are ignored, as Kafka's own parser does: librdkafka
            # 2.16 sends 3 extra bytes after a Metadata v12 body.
            if header.body_pos + used != len(view) and log.isEnabledFor(logging.DEBUG):
                log.debug("%d trailing bytes after %s v%d", len(view) - header.body_pos - used,
                          api.name, version)
    except Exception as e:
        if log.isEnabledFor(logging.DEBUG):
            log.debug("undecodable frame (%d bytes): %s", len(view), bytes(view[:256]).hex())
        if isinstance(e, RemoteProtocolError):
            raise
        raise RemoteProtocolError(f"cannot decode {api.name} v{version}: {e}") from None

    ctx = RequestContext(door, conn, header)
    security = door.security
    if security is not None and conn is not None:
        if key not in _BEFORE_AUTH:
            conn.check_authenticated(api.name)  # raises RemoteProtocolError
        from .authz import check, refusal

        refused = check(ctx, req)
        if refused is not None:
            entity = refusal(ctx, req, refused) or error_response(key, version, refused)
            return _frame(correlation_id, flexible_resp_header, [encode_entity(entity)])
    try:
        result = await api.handle(ctx, req)
    except RemoteProtocolError:
        raise
    except Exception as e:
        log.error("kafka %s: %s v%d failed: %r", conn.peer if conn else "-", api.name, version, e,
                  exc_info=log.isEnabledFor(logging.DEBUG))
        entity = error_response(key, version, ErrorCode.unknown_server_error)
        if entity is None:
            raise RemoteProtocolError(f"{api.name} v{version} failed: {e!r}") from None
        return _frame(correlation_id, flexible_resp_header, [encode_entity(entity)])
    if security is not None and conn is not None:
        from .authz import audited, filter_response

        audited(ctx, req)
        result = filter_response(ctx, result)
    if result is None:
        return None
    if isinstance(result, list):
        return _frame(correlation_id, flexible_resp_header, result)
    return _frame(correlation_id, flexible_resp_header, [encode_entity(result)])
