"""moto 5.2 tags API Gateway stages only: TagResource, UntagResource and GetTags on a REST API, an API key or a
usage plan answer 404 (no route) or tag a stage. AWS takes every taggable resource's ARN. This routes the
ARNs of REST APIs, API keys and usage plans and keeps their tags where moto's Get* already reads them; stages
go on to moto's own code."""

import json
import re
from urllib.parse import unquote

from supported import require

_ARN = re.compile(r"arn:[^:]+:apigateway:[^:]+::/(restapis|apikeys|usageplans)/([^/]+)$")


def install():
    require("apigateway_tags")
    from moto.apigateway import urls
    from moto.apigateway.exceptions import NotFoundException
    from moto.apigateway.responses import APIGatewayResponse

    urls.url_paths[
        "{0}/tags/arn:(?P<partition>[^/]+):apigateway:(?P<region_name>[^/]+)::/(?P<collection>restapis|apikeys|usageplans)/(?P<resource_id>[^/]+)$"
    ] = APIGatewayResponse.dispatch

    def owner(self):
        """The REST API, key or plan the request's ARN names; None for anything else (a stage)."""
        match = _ARN.search(unquote(self.path.split("/tags/", 1)[1].split("?", 1)[0]))
        if not match:
            return None
        collection, resource_id = match.groups()
        table = {
            "restapis": self.backend.apis,
            "apikeys": self.backend.keys,
            "usageplans": self.backend.usage_plans,
        }[collection]
        if resource_id not in table:
            raise NotFoundException(f"Invalid resource identifier specified: {resource_id}")
        return table[resource_id]

    original_get, original_tag, original_untag = (
        APIGatewayResponse.get_tags,
        APIGatewayResponse.tag_resource,
        APIGatewayResponse.untag_resource,
    )

    def get_tags(self):
        resource = owner(self)
        if resource is None:
            return original_get(self)
        return json.dumps({"tags": dict(resource.tags or {})})

    def tag_resource(self):
        resource = owner(self)
        if resource is None:
            return original_tag(self)
        resource.tags = {**dict(resource.tags or {}), **(self._get_param("tags") or {})}
        return json.dumps({})

    def untag_resource(self):
        resource = owner(self)
        if resource is None:
            return original_untag(self)
        removed = set(self.querystring.get("tagKeys") or [])
        resource.tags = {k: v for k, v in dict(resource.tags or {}).items() if k not in removed}
        return json.dumps({})

    APIGatewayResponse.get_tags = get_tags
    APIGatewayResponse.tag_resource = tag_resource
    APIGatewayResponse.untag_resource = untag_resource
