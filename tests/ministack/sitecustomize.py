"""Loaded at start-up by the ministack process the test harness starts (it puts this directory on
PYTHONPATH). Each adapter closes one documented gap between ministack and AWS; each checks the ministack
version it patches and fails loudly on another. Test harness only, never the product.

- Stage tags: ministack keeps the tags TagResource and UntagResource set on a stage apart from the stage
  itself, so GetStage answers only the tags the stage was created with. AWS has one tag set per stage and
  GetStage returns it. Here TagResource and UntagResource of a stage's ARN change the stage's own tags too.
"""

import importlib.metadata
import re

SUPPORTED = ("1.5.",)
_STAGE_ARN = re.compile(r"^arn:[^:]+:apigateway:[^:]*::/restapis/([^/]+)/stages/([^/]+)$")


def _require():
    version = importlib.metadata.version("ministack")
    if not version.startswith(SUPPORTED):
        raise RuntimeError(
            f"tests/ministack/sitecustomize.py patches ministack {' or '.join(v + 'x' for v in SUPPORTED)}, "
            f"not ministack {version}: check the adapter against this version and update SUPPORTED"
        )


def _install_stage_tags():
    from ministack.services import apigateway_v1 as gateway

    tag, untag = gateway._tag_v1_resource, gateway._untag_v1_resource

    def stage_of(arn):
        match = _STAGE_ARN.match(arn)
        if not match:
            return None
        return gateway._stages_v1.get(match.group(1), {}).get(match.group(2))

    def tag_resource(resource_arn, data):
        answer = tag(resource_arn, data)
        stage = stage_of(resource_arn)
        if stage is not None and answer[0] < 300:
            stage["tags"] = {**(stage.get("tags") or {}), **(data.get("tags") or {})}
        return answer

    def untag_resource(resource_arn, tag_keys):
        answer = untag(resource_arn, tag_keys)
        stage = stage_of(resource_arn)
        if stage is not None and answer[0] < 300:
            stage["tags"] = {k: v for k, v in (stage.get("tags") or {}).items() if k not in tag_keys}
        return answer

    gateway._tag_v1_resource = tag_resource
    gateway._untag_v1_resource = untag_resource


_require()
_install_stage_tags()
