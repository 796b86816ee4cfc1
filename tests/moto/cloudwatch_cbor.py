"""CloudWatch over Smithy RPC v2 CBOR for moto's server (test harness only).

The Rust `aws-sdk-cloudwatch` speaks RPC v2 CBOR: `POST /service/GraniteServiceVersion20100801/operation/<Op>`
with `smithy-protocol: rpc-v2-cbor` and a CBOR body. moto 5.2 only answers CloudWatch's Query protocol and
404s these. `install()` wraps moto's top-level WSGI app (`DomainDispatcherApplication.__call__`) so that
exactly these paths are answered here, by calling moto's own CloudWatch backend (state is shared with the
Query API); every other request goes to moto unchanged.

Covered: PutMetricAlarm, DescribeAlarms, DeleteAlarms, ListTagsForResource, TagResource, UntagResource.
Any other operation answers a CBOR `UnknownOperationException` (404). Errors follow the rpcv2Cbor spec
(CBOR map with `__type` and `message`, the `smithy-protocol` header), plus CloudWatch's awsQueryCompatible
`x-amzn-query-error: <Code>;Sender` header, from which the SDK takes the error code.
"""

import datetime
import os

PATH_PREFIX = "/service/GraniteServiceVersion20100801/operation/"
SHAPE_NAMESPACE = "com.amazonaws.cloudwatch#"


class CborError(Exception):
    def __init__(self, code, message, status=400, shape=None, sender=True):
        super().__init__(message)
        self.code = code
        self.message = message
        self.status = status
        self.shape = shape or code
        self.sender = sender


_ERROR_SHAPES = None


def _error_shapes():
    """Query error code -> (shape name, HTTP status, sender fault), from botocore's CloudWatch model."""
    global _ERROR_SHAPES
    if _ERROR_SHAPES is None:
        import botocore.session

        shapes = {}
        model = botocore.session.get_session().get_service_model("cloudwatch")
        for shape in model.error_shapes:
            meta = shape.metadata.get("error", {})
            code = meta.get("code", shape.name)
            entry = (shape.name, meta.get("httpStatusCode", 400), meta.get("senderFault", False))
            # Several shapes can share a code (ResourceNotFound): the one named like the code wins.
            if code not in shapes or shape.name == code:
                shapes[code] = entry
        _ERROR_SHAPES = shapes
    return _ERROR_SHAPES


def _from_moto_exception(exc):
    code = getattr(exc, "code", None) or type(exc).__name__
    message = getattr(exc, "message", None) or str(exc)
    shape, status, sender = _error_shapes().get(code, (code, 400, True))
    return CborError(code, message, status=status, shape=shape, sender=sender)


def _not_found_exception(arn):
    return CborError(
        "ResourceNotFoundException",
        f"Resource {arn} not found",
        status=404,
        shape="ResourceNotFoundException",
    )


# --- request context -------------------------------------------------------------------------------


def _region(environ):
    # SigV4: "AWS4-HMAC-SHA256 Credential=AKID/20260101/us-east-1/monitoring/aws4_request, ..."
    auth = environ.get("HTTP_AUTHORIZATION", "")
    try:
        scope = auth.split(",")[0].split("Credential=")[1]
        return scope.split("/")[2]
    except Exception:
        return "us-east-1"


def _account(environ):
    # The same order moto's BaseResponse.get_current_account uses, so both protocols see the same state.
    if "MOTO_ACCOUNT_ID" in os.environ:
        return os.environ["MOTO_ACCOUNT_ID"]
    if environ.get("HTTP_X_MOTO_ACCOUNT_ID"):
        return environ["HTTP_X_MOTO_ACCOUNT_ID"]
    auth = environ.get("HTTP_AUTHORIZATION", "")
    try:
        access_key = auth.split("Credential=")[1].split("/")[0]
        from moto.iam.models import get_account_id_from

        return get_account_id_from(access_key)
    except Exception:
        from moto.core import DEFAULT_ACCOUNT_ID

        return DEFAULT_ACCOUNT_ID


def _backend(environ):
    from moto.cloudwatch.models import cloudwatch_backends

    return cloudwatch_backends[_account(environ)][_region(environ)]


# --- shapes ----------------------------------------------------------------------------------------


def _timestamp(value):
    import cbor2

    if value is None:
        return None
    if isinstance(value, datetime.datetime):
        if value.tzinfo is None:
            value = value.replace(tzinfo=datetime.timezone.utc)
        return cbor2.CBORTag(1, value.timestamp())
    return cbor2.CBORTag(1, float(value))


def _int(value):
    return None if value is None else int(value)


def _float(value):
    return None if value is None else float(value)


def _compact(d):
    return {k: v for k, v in d.items() if v is not None}


def _dimensions(dims):
    return [_compact({"Name": d.name, "Value": d.value}) for d in dims or []]


def _metric_data_query(q):
    stat = None
    if q.metric_stat is not None:
        ms = q.metric_stat
        stat = _compact(
            {
                "Metric": _compact(
                    {
                        "Namespace": ms.metric.namespace,
                        "MetricName": ms.metric.metric_name,
                        "Dimensions": _dimensions(ms.metric.dimensions),
                    }
                ),
                "Period": _int(ms.period),
                "Stat": ms.stat,
                "Unit": ms.unit,
            }
        )
    return_data = q.return_data
    if isinstance(return_data, str):
        return_data = return_data.lower() == "true"
    return _compact(
        {
            "Id": q.id,
            "Label": q.label,
            "Period": _int(q.period),
            "ReturnData": return_data,
            "Expression": q.expression,
            "MetricStat": stat,
        }
    )


def _metric_alarm(a):
    return _compact(
        {
            "AlarmName": a.name,
            "AlarmArn": a.alarm_arn,
            "AlarmDescription": a.description,
            "AlarmConfigurationUpdatedTimestamp": _timestamp(a.configuration_updated_timestamp),
            "ActionsEnabled": bool(a.actions_enabled),
            "OKActions": list(a.ok_actions or []),
            "AlarmActions": list(a.alarm_actions or []),
            "InsufficientDataActions": list(a.insufficient_data_actions or []),
            "StateValue": a.state_value,
            "StateReason": a.state_reason,
            "StateReasonData": a.state_reason_data,
            "StateUpdatedTimestamp": _timestamp(a.state_updated_timestamp),
            "MetricName": a.metric_name,
            "Namespace": a.namespace,
            "Statistic": a.statistic,
            "ExtendedStatistic": a.extended_statistic,
            "Dimensions": _dimensions(a.dimensions),
            "Period": _int(a.period),
            "Unit": a.unit,
            "EvaluationPeriods": _int(a.evaluation_periods),
            "DatapointsToAlarm": _int(a.datapoints_to_alarm),
            "Threshold": _float(a.threshold),
            "ComparisonOperator": a.comparison_operator,
            "TreatMissingData": a.treat_missing_data,
            "EvaluateLowSampleCountPercentile": a.evaluate_low_sample_count_percentile,
            "Metrics": [_metric_data_query(q) for q in a.metric_data_queries] or None,
            "ThresholdMetricId": a.threshold_metric_id,
        }
    )


def _parse_metric_data_queries(metrics):
    from moto.cloudwatch.models import Dimension, Metric, MetricDataQuery, MetricStat

    queries = []
    for m in metrics:
        stat = None
        ms = m.get("MetricStat")
        if ms and ms.get("Metric", {}).get("MetricName"):
            metric = ms["Metric"]
            stat = MetricStat(
                metric=Metric(
                    metric_name=metric.get("MetricName"),
                    namespace=metric.get("Namespace"),
                    dimensions=[Dimension(d.get("Name"), d.get("Value")) for d in metric.get("Dimensions", [])],
                ),
                period=ms.get("Period"),
                stat=ms.get("Stat"),
                unit=ms.get("Unit"),
            )
        queries.append(
            MetricDataQuery(
                query_id=m.get("Id"),
                label=m.get("Label"),
                period=m.get("Period"),
                return_data=m.get("ReturnData"),
                expression=m.get("Expression"),
                metric_stat=stat,
            )
        )
    return queries


def _require(params, *names):
    for name in names:
        if params.get(name) is None:
            raise CborError("MissingParameter", f"The parameter {name} is required.", shape="MissingRequiredParameterException")


def _alarm_exists(backend, arn):
    return any(a.alarm_arn == arn for a in backend.alarms.values())


def _insight_rule_exists(backend, arn):
    return any(getattr(r, "rule_arn", None) == arn for r in backend.insight_rules.values())


# --- operations ------------------------------------------------------------------------------------


def put_metric_alarm(backend, p):
    _require(p, "AlarmName", "EvaluationPeriods", "ComparisonOperator")
    name = p["AlarmName"]
    metrics = p.get("Metrics")
    # AWS: "If you are using this operation to update an existing alarm, any tags you specify are ignored."
    tags = None if name in backend.alarms else p.get("Tags")
    backend.put_metric_alarm(
        name=name,
        namespace=p.get("Namespace"),
        metric_name=p.get("MetricName"),
        metric_data_queries=_parse_metric_data_queries(metrics) if metrics else None,
        comparison_operator=p.get("ComparisonOperator"),
        evaluation_periods=_int(p.get("EvaluationPeriods")),
        datapoints_to_alarm=_int(p.get("DatapointsToAlarm")),
        period=_int(p.get("Period")),
        threshold=_float(p.get("Threshold")),
        statistic=p.get("Statistic"),
        extended_statistic=p.get("ExtendedStatistic"),
        description=p.get("AlarmDescription"),
        dimensions=[{"Name": d.get("Name"), "Value": d.get("Value")} for d in p.get("Dimensions") or []],
        alarm_actions=list(p.get("AlarmActions") or []),
        ok_actions=list(p.get("OKActions") or []),
        insufficient_data_actions=list(p.get("InsufficientDataActions") or []),
        unit=p.get("Unit"),
        actions_enabled=True if p.get("ActionsEnabled") is None else bool(p["ActionsEnabled"]),
        treat_missing_data=p.get("TreatMissingData"),
        evaluate_low_sample_count_percentile=p.get("EvaluateLowSampleCountPercentile"),
        threshold_metric_id=p.get("ThresholdMetricId"),
        tags=tags,
    )
    return {}


def describe_alarms(backend, p):
    alarms = [a for a in backend.alarms.values() if a.rule is None]
    # AWS combines the filters that are given.
    if p.get("AlarmNames"):
        names = set(p["AlarmNames"])
        alarms = [a for a in alarms if a.name in names]
    if p.get("AlarmNamePrefix"):
        alarms = [a for a in alarms if a.name.startswith(p["AlarmNamePrefix"])]
    if p.get("ActionPrefix"):
        alarms = [a for a in alarms if any(x.startswith(p["ActionPrefix"]) for x in a.alarm_actions or [])]
    if p.get("StateValue"):
        alarms = [a for a in alarms if a.state_value == p["StateValue"]]
    types = p.get("AlarmTypes")
    if types and "MetricAlarm" not in types:
        alarms = []
    alarms.sort(key=lambda a: a.name)
    return {"MetricAlarms": [_metric_alarm(a) for a in alarms], "CompositeAlarms": []}


def delete_alarms(backend, p):
    names = list(p.get("AlarmNames") or [])
    arns = [backend.alarms[n].alarm_arn for n in names if n in backend.alarms]
    backend.delete_alarms(names)  # unknown names are ignored, as AWS does
    for arn in arns:  # AWS drops a deleted alarm's tags (moto keeps them, and a re-created alarm would get them)
        backend.tagger.delete_all_tags_for_resource(arn)
    return {}


def list_tags_for_resource(backend, p):
    _require(p, "ResourceARN")
    arn = p["ResourceARN"]
    if not (_alarm_exists(backend, arn) or _insight_rule_exists(backend, arn)):
        raise _not_found_exception(arn)
    tags = backend.list_tags_for_resource(arn)
    return {"Tags": [{"Key": k, "Value": v} for k, v in tags.items()]}


def tag_resource(backend, p):
    _require(p, "ResourceARN", "Tags")
    arn = p["ResourceARN"]
    if not (_alarm_exists(backend, arn) or _insight_rule_exists(backend, arn)):
        raise _not_found_exception(arn)
    backend.tagger.tag_resource(arn, [{"Key": t["Key"], "Value": t.get("Value", "")} for t in p["Tags"]])
    return {}


def untag_resource(backend, p):
    _require(p, "ResourceARN", "TagKeys")
    arn = p["ResourceARN"]
    # moto's untag_resource 404s an alarm that never had tags; AWS does not.
    if not (_alarm_exists(backend, arn) or _insight_rule_exists(backend, arn)):
        raise _not_found_exception(arn)
    backend.tagger.untag_resource_using_names(arn, list(p["TagKeys"]))
    return {}


OPERATIONS = {
    "PutMetricAlarm": put_metric_alarm,
    "DescribeAlarms": describe_alarms,
    "DeleteAlarms": delete_alarms,
    "ListTagsForResource": list_tags_for_resource,
    "TagResource": tag_resource,
    "UntagResource": untag_resource,
}


# --- WSGI ------------------------------------------------------------------------------------------

_REASONS = {200: "OK", 400: "Bad Request", 404: "Not Found", 409: "Conflict", 429: "Too Many Requests", 500: "Internal Server Error"}


def _respond(start_response, status, body, extra_headers=()):
    import cbor2

    payload = cbor2.dumps(body)
    headers = [
        ("smithy-protocol", "rpc-v2-cbor"),
        ("Content-Type", "application/cbor"),
        ("Content-Length", str(len(payload))),
        ("x-amzn-RequestId", os.urandom(16).hex()),
    ]
    headers.extend(extra_headers)
    start_response(f"{status} {_REASONS.get(status, 'Error')}", headers)
    return [payload]


def _error(start_response, err):
    body = {"__type": SHAPE_NAMESPACE + err.shape, "message": err.message}
    query_error = ("x-amzn-query-error", f"{err.code};{'Sender' if err.sender else 'Receiver'}")
    return _respond(start_response, err.status, body, [query_error])


def handle(environ, start_response):
    """Answers one RPC v2 CBOR CloudWatch request."""
    import cbor2

    operation = environ.get("PATH_INFO", "")[len(PATH_PREFIX):].strip("/")
    try:
        if environ.get("REQUEST_METHOD") != "POST":
            raise CborError("UnknownOperationException", "RPC v2 CBOR operations are POST only", status=404)
        handler = OPERATIONS.get(operation)
        if handler is None:
            raise CborError(
                "UnknownOperationException",
                f"CloudWatch operation {operation} is not implemented by the test adapter (tests/moto/cloudwatch_cbor.py)",
                status=404,
            )
        try:
            length = int(environ.get("CONTENT_LENGTH") or 0)
        except ValueError:
            length = 0
        raw = environ["wsgi.input"].read(length) if length else b""
        try:
            params = cbor2.loads(raw) if raw else {}
        except Exception as exc:
            raise CborError("SerializationException", f"the body is not CBOR: {exc}", shape="SerializationException")
        if not isinstance(params, dict):
            raise CborError("SerializationException", "the body is not a CBOR map", shape="SerializationException")
        try:
            result = handler(_backend(environ), params)
        except CborError:
            raise
        except Exception as exc:
            from moto.core.exceptions import ServiceException

            if isinstance(exc, ServiceException):
                raise _from_moto_exception(exc)
            raise CborError("InternalServiceError", f"{type(exc).__name__}: {exc}", status=500, shape="InternalServiceFault", sender=False)
        return _respond(start_response, 200, result)
    except CborError as err:
        return _error(start_response, err)


def is_cbor_request(environ):
    return environ.get("PATH_INFO", "").startswith(PATH_PREFIX)


def install():
    """Routes CloudWatch RPC v2 CBOR requests of moto's server to `handle`; everything else is unchanged."""
    from supported import require

    require("cloudwatch_cbor")
    from moto.moto_server.werkzeug_app import DomainDispatcherApplication

    if getattr(DomainDispatcherApplication, "_cloudwatch_cbor", False):
        return
    original = DomainDispatcherApplication.__call__

    def __call__(self, environ, start_response):
        if is_cbor_request(environ):
            return handle(environ, start_response)
        return original(self, environ, start_response)

    DomainDispatcherApplication.__call__ = __call__
    DomainDispatcherApplication._cloudwatch_cbor = True
