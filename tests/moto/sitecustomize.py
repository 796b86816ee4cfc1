"""Loaded at start-up by the moto process the test harness starts (it puts this directory on PYTHONPATH).
Each adapter closes one documented gap between moto and AWS that the Rust SDK trips over; each checks the
moto version it patches and fails loudly on another (see supported.py). Test harness only, never the
product."""

import apigateway_delete
import apigateway_tags
import apigateway_usage_plan
import cloudwatch_cbor
import ecr_tagging
import iam_resources
import lambda_config
import lambda_permission
import s3_xml_roots

for adapter in (s3_xml_roots, lambda_config, lambda_permission, cloudwatch_cbor, apigateway_delete, apigateway_tags, apigateway_usage_plan, iam_resources, ecr_tagging):
    adapter.install()

# The emulator's request log goes to /dev/null in every harness, yet formatting and writing it (werkzeug's
# per-request INFO line through colorama, under the logging lock) took about a fifth of moto's samples in
# a py-spy profile of the 100-pipeline scale benchmark: keep warnings and errors only.
import logging

logging.getLogger("werkzeug").setLevel(logging.WARNING)
