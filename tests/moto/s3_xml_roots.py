"""moto 5.2 answers GetBucketVersioning and GetBucketNotificationConfiguration with the XML root element
`<GetBucketVersioningResponse>` / `<GetBucketNotificationResponse>` instead of AWS's `<VersioningConfiguration>`
/ `<NotificationConfiguration>`. boto3 does not check the root element; the Rust SDK does and fails with
"encountered invalid XML root". This renames the root element, and changes nothing else."""

import re

from supported import require

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


def install():
    require("s3_xml_roots")
    from moto.s3.responses import S3Response

    for name in ("get_bucket_versioning", "get_bucket_notification"):
        original = getattr(S3Response, name)

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
