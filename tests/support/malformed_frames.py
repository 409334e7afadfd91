"""Malformed CS->CP frames, each with the CALLERROR a strict OCPP 1.6 charge point answers.

Replayed raw through the bench Central System (`CentralSystem.send_raw`) by the protocol
error tests; kept with the tests because nothing in the product uses it.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class MalformedFrame:
    name: str
    unique_id: str | None  # the id a reply must carry; None when the id is unreadable
    text: str
    expected: str | None  # the 1.6 CALLERROR code, or None: ignored, no reply


_PROFILE = (
    '{"chargingProfileId":1,"stackLevel":0,"chargingProfilePurpose":"TxProfile",'
    '"chargingProfileKind":"Absolute","chargingSchedule":{"chargingRateUnit":"A",'
    '"chargingSchedulePeriod":[{"startPeriod":0,"limit":%s}]}%s}'
)


def _bad(name: str, uid: str | None, text: str, expected: str | None) -> MalformedFrame:
    return MalformedFrame(name, uid, text, expected)


#: Malformed CS->CP frames and the 1.6 CALLERROR code a strict charge point answers with
#: (None: the frame is ignored, no reply). They only use Core CS->CP actions (mandatory for
#: every CP) or CP->CS actions, and none of them can pass validation, so none reaches a
#: handler: the table is safe to replay against a charge point in the middle of a session.
MALFORMED_FRAMES: tuple[MalformedFrame, ...] = (
    # -- no readable id: ignored
    _bad("truncated-json", None, '[2,"m01","Reset",{"type":"Hard"}', None),
    _bad("not-json", None, "hello, charge point", None),
    _bad("json-object", None, '{"type":"Hard"}', None),
    _bad("json-string", None, '"[2,\\"m04\\",\\"Reset\\",{}]"', None),
    _bad("empty-array", None, "[]", None),
    _bad("unknown-message-type", None, '[5,"m06","Reset",{"type":"Hard"}]', None),
    _bad("message-type-as-string", None, '["2","m07","Reset",{"type":"Hard"}]', None),
    _bad("message-type-as-bool", None, '[true,"m08","Reset",{"type":"Hard"}]', None),
    _bad("numeric-unique-id", None, '[2,9,"Reset",{"type":"Hard"}]', None),
    _bad("type-only", None, "[2]", None),
    _bad("nan-value", None, '[2,"m11","ChangeConfiguration",{"key":"A","value":NaN}]', None),
    _bad(
        "nesting-bomb", None, '[2,"m12","Reset",{"type":' + "[" * 20000 + "]" * 20000 + "}]", None
    ),
    _bad("stray-callresult", None, '[3,"m13",{"status":"Accepted"}]', None),
    _bad("stray-callerror", None, '[4,"m14","GenericError","",{}]', None),
    # -- frame structure
    _bad("call-without-payload", "m15", '[2,"m15","Reset"]', "ProtocolError"),
    _bad("call-without-action", "m16", '[2,"m16"]', "ProtocolError"),
    _bad("call-extra-element", "m17", '[2,"m17","Reset",{"type":"Hard"},{}]', "FormationViolation"),
    _bad("action-not-string", "m18", '[2,"m18",7,{}]', "FormationViolation"),
    _bad("payload-null", "m19", '[2,"m19","ClearCache",null]', "FormationViolation"),
    _bad("payload-array", "m20", '[2,"m20","ClearCache",[]]', "FormationViolation"),
    _bad("payload-string", "m21", '[2,"m21","Reset","Hard"]', "FormationViolation"),
    _bad(
        "unique-id-37-chars",
        "x" * 37,
        '[2,"' + "x" * 37 + '","Reset",{"type":"Hard"}]',
        "FormationViolation",
    ),
    _bad("unique-id-empty", "", '[2,"","Reset",{"type":"Hard"}]', "FormationViolation"),
    # -- actions
    _bad("unknown-action", "m24", '[2,"m24","FooBar",{}]', "NotImplemented"),
    _bad("action-wrong-case", "m25", '[2,"m25","reset",{"type":"Hard"}]', "NotImplemented"),
    _bad("ocpp201-action", "m26", '[2,"m26","RequestStartTransaction",{}]', "NotImplemented"),
    _bad(
        "cp-action-boot",
        "m27",
        '[2,"m27","BootNotification",{"chargePointVendor":"V","chargePointModel":"M"}]',
        "NotSupported",
    ),
    _bad("cp-action-start-tx", "m28", '[2,"m28","StartTransaction",{}]', "NotSupported"),
    _bad("cp-action-heartbeat", "m29", '[2,"m29","Heartbeat",{}]', "NotSupported"),
    # -- schema
    _bad(
        "extra-property",
        "m30",
        '[2,"m30","Reset",{"type":"Hard","force":true}]',
        "FormationViolation",
    ),
    _bad(
        "extra-nested-property",
        "m31",
        '[2,"m31","RemoteStartTransaction",{"idTag":"A","chargingProfile":'
        + _PROFILE % ("16", ',"colour":"red"')
        + "}]",
        "FormationViolation",
    ),
    _bad("extra-and-missing", "m32", '[2,"m32","Reset",{"foo":1}]', "FormationViolation"),
    _bad("missing-reset-type", "m33", '[2,"m33","Reset",{}]', "OccurenceConstraintViolation"),
    _bad(
        "missing-config-value",
        "m34",
        '[2,"m34","ChangeConfiguration",{"key":"HeartbeatInterval"}]',
        "OccurenceConstraintViolation",
    ),
    _bad(
        "missing-transaction-id",
        "m35",
        '[2,"m35","RemoteStopTransaction",{}]',
        "OccurenceConstraintViolation",
    ),
    _bad(
        "missing-vendor-id",
        "m36",
        '[2,"m36","DataTransfer",{"messageId":"x"}]',
        "OccurenceConstraintViolation",
    ),
    _bad(
        "missing-and-bad-enum",
        "m37",
        '[2,"m37","ChangeAvailability",{"type":"Nope"}]',
        "OccurenceConstraintViolation",
    ),
    _bad(
        "connector-as-string",
        "m38",
        '[2,"m38","ChangeAvailability",{"connectorId":"1","type":"Operative"}]',
        "TypeConstraintViolation",
    ),
    _bad(
        "transaction-id-float",
        "m39",
        '[2,"m39","RemoteStopTransaction",{"transactionId":1.5}]',
        "TypeConstraintViolation",
    ),
    _bad(
        "connector-as-bool",
        "m40",
        '[2,"m40","UnlockConnector",{"connectorId":true}]',
        "TypeConstraintViolation",
    ),
    _bad("enum-null", "m41", '[2,"m41","Reset",{"type":null}]', "TypeConstraintViolation"),
    _bad(
        "keys-not-array",
        "m42",
        '[2,"m42","GetConfiguration",{"key":"HeartbeatInterval"}]',
        "TypeConstraintViolation",
    ),
    _bad(
        "keys-of-numbers",
        "m43",
        '[2,"m43","GetConfiguration",{"key":[1]}]',
        "TypeConstraintViolation",
    ),
    _bad(
        "id-tag-21-chars",
        "m44",
        '[2,"m44","RemoteStartTransaction",{"idTag":"' + "A" * 21 + '"}]',
        "TypeConstraintViolation",
    ),
    _bad(
        "config-key-51-chars",
        "m45",
        '[2,"m45","ChangeConfiguration",{"key":"' + "K" * 51 + '","value":"1"}]',
        "TypeConstraintViolation",
    ),
    _bad(
        "vendor-id-256-chars",
        "m46",
        '[2,"m46","DataTransfer",{"vendorId":"' + "v" * 256 + '"}]',
        "TypeConstraintViolation",
    ),
    _bad(
        "date-not-a-date",
        "m47",
        '[2,"m47","RemoteStartTransaction",{"idTag":"A","chargingProfile":'
        + _PROFILE % ("16", ',"validFrom":"yesterday"')
        + "}]",
        "TypeConstraintViolation",
    ),
    _bad(
        "date-month-13",
        "m48",
        '[2,"m48","RemoteStartTransaction",{"idTag":"A","chargingProfile":'
        + _PROFILE % ("16", ',"validFrom":"2026-13-01T00:00:00Z"')
        + "}]",
        "TypeConstraintViolation",
    ),
    _bad(
        "reset-type-typo",
        "m49",
        '[2,"m49","Reset",{"type":"Hardd"}]',
        "PropertyConstraintViolation",
    ),
    _bad(
        "reset-type-lowercase",
        "m50",
        '[2,"m50","Reset",{"type":"hard"}]',
        "PropertyConstraintViolation",
    ),
    _bad(
        "availability-offline",
        "m51",
        '[2,"m51","ChangeAvailability",{"connectorId":0,"type":"Offline"}]',
        "PropertyConstraintViolation",
    ),
    _bad(
        "limit-not-tenths",
        "m52",
        '[2,"m52","RemoteStartTransaction",{"idTag":"A","chargingProfile":'
        + _PROFILE % ("16.05", "")
        + "}]",
        "PropertyConstraintViolation",
    ),
    _bad(
        "unit-kw",
        "m53",
        '[2,"m53","RemoteStartTransaction",{"idTag":"A","chargingProfile":'
        + (_PROFILE % ("16", "")).replace('"A"', '"kW"')
        + "}]",
        "PropertyConstraintViolation",
    ),
)
