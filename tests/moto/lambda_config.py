"""moto 5.2 drops a function's DeadLetterConfig (never returned by GetFunction/GetFunctionConfiguration)
and ignores DeadLetterConfig and TracingConfig in UpdateFunctionConfiguration. AWS keeps and returns
both. This keeps them, so a converged stack reads back as converged; nothing else changes."""


from supported import require


def install():
    require("lambda_config")
    from moto.awslambda.models import LambdaFunction

    original_init = LambdaFunction.__init__
    original_update = LambdaFunction.update_configuration
    original_get = LambdaFunction.get_configuration

    def __init__(self, account_id, spec, *args, **kwargs):
        original_init(self, account_id, spec, *args, **kwargs)
        self.tap_dead_letter_config = spec.get("DeadLetterConfig") or {}

    def update_configuration(self, config_updates):
        if "DeadLetterConfig" in config_updates:
            self.tap_dead_letter_config = config_updates["DeadLetterConfig"] or {}
        if config_updates.get("TracingConfig"):
            self.tracing_config = config_updates["TracingConfig"]
        return original_update(self, config_updates)

    def get_configuration(self, *args, **kwargs):
        config = original_get(self, *args, **kwargs)
        target = getattr(self, "tap_dead_letter_config", {}).get("TargetArn")
        if target:
            config["DeadLetterConfig"] = {"TargetArn": target}
        return config

    LambdaFunction.__init__ = __init__
    LambdaFunction.update_configuration = update_configuration
    LambdaFunction.get_configuration = get_configuration
