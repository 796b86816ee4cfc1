"""Loaded at start-up by the moto process the test harness starts (it puts this directory on PYTHONPATH).

moto 5.2 answers GetBucketVersioning and GetBucketNotificationConfiguration with the XML root element
`<GetBucketVersioningResponse>` / `<GetBucketNotificationResponse>` instead of AWS's `<VersioningConfiguration>`
/ `<NotificationConfiguration>`. boto3 does not check the root element; the Rust SDK does and fails with
"encountered invalid XML root". This renames the root element, and changes nothing else.
"""

import re

_ROOTS = {
    "GetBucketVersioningResponse": "VersioningConfiguration",
    "GetBucketNotificationResponse": "NotificationConfiguration",
    "GetBucketNotificationConfigurationResponse": "NotificationConfiguration",
}
_PATTERN = re.compile(r"<(/?)(" + "|".join(_ROOTS) + r")([\s/>])")


def _fix_body(body):
    if isinstance(body, bytes):
        return _fix_body(body.decode("utf-8")).encode("utf-8")
    if not isinstance(body, str):
        return body
    return _PATTERN.sub(lambda m: "<" + m.group(1) + _ROOTS[m.group(2)] + m.group(3), body)


def _patch():
    try:
        from moto.s3.responses import S3Response
    except Exception:  # not moto, or another layout: leave it alone
        return
    for name in ("get_bucket_versioning", "get_bucket_notification"):
        original = getattr(S3Response, name, None)
        if original is None:
            continue

        def wrapped(self, *args, _original=original, **kwargs):
            response = _original(self, *args, **kwargs)
            if isinstance(response, tuple) and len(response) == 3:
                status, headers, body = response
                fixed = _fix_body(body)
                if fixed is not body and isinstance(headers, dict):
                    headers.pop("content-length", None)
                    headers.pop("Content-Length", None)
                return status, headers, fixed
            return response

        setattr(S3Response, name, wrapped)


_patch()

# Lambda: keep DeadLetterConfig and TracingConfig like AWS does (see lambda_config.py).
try:
    import lambda_config

    lambda_config.patch()
except Exception:  # never keep moto from starting
    pass

# CloudWatch over Smithy RPC v2 CBOR (the Rust SDK's protocol; moto 5.2 speaks only Query): see cloudwatch_cbor.py.
__import__("cloudwatch_cbor").install()

# IAM enforcement (when a test turns it on) with resource-level policies: see iam_resources.py.
try:
    import iam_resources

    iam_resources.patch()
except Exception:  # never keep moto from starting
    pass
