"""moto 5.2 appends a second statement when AddPermission names a statement id the function's policy
already has. AWS refuses it (409 ResourceConflictException, "The statement id (...) provided already
exists"), and the controller relies on that refusal to add a permission to a fresh stack without reading
the policy first. This refuses it the same way; nothing else changes."""

from supported import require


def install():
    require("lambda_permission")
    from moto.awslambda.exceptions import LambdaClientError
    from moto.awslambda.policy import Policy

    class ResourceConflict(LambdaClientError):
        code = 409

        def __init__(self, sid):
            super().__init__(
                "ResourceConflictException",
                f"The statement id ({sid}) provided already exists. Please provide a new statement id, or remove the existing statement.",
            )

    original_add = Policy.add_statement

    def add_statement(self, raw, qualifier=None):
        import json

        sid = json.loads(raw).get("StatementId")
        if sid and any(s.get("Sid") == sid for s in self.statements):
            raise ResourceConflict(sid)
        return original_add(self, raw, qualifier)

    Policy.add_statement = add_statement
