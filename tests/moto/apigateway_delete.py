"""moto 5.2 answers DeleteRestApi of an API that does not exist with a 500 (a KeyError in its backend);
AWS answers 404 NotFoundException. This raises moto's own RestAPINotFound instead, nothing else changes."""

from supported import require


def install():
    require("apigateway_delete")
    from moto.apigateway.exceptions import RestAPINotFound
    from moto.apigateway.models import APIGatewayBackend

    original = APIGatewayBackend.delete_rest_api

    def delete_rest_api(self, function_id):
        if function_id not in self.apis:
            raise RestAPINotFound()
        return original(self, function_id)

    APIGatewayBackend.delete_rest_api = delete_rest_api
