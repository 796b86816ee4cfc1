"""moto 5.2's UpdateUsagePlan stores `/quota/limit` and `/quota/offset` as the patch's string, so
GetUsagePlan then answers `"limit": "1000"` where AWS answers the integer 1000, and the Rust SDK fails to
read the plan. This stores them as integers, as AWS does; nothing else changes."""

from supported import require


def install():
    require("apigateway_usage_plan")
    from moto.apigateway.models import UsagePlan

    original = UsagePlan.apply_patch_operations

    def apply_patch_operations(self, patch_operations):
        original(self, patch_operations)
        for field in ("limit", "offset"):
            if isinstance(self.quota.get(field), str):
                self.quota[field] = int(self.quota[field])

    UsagePlan.apply_patch_operations = apply_patch_operations
