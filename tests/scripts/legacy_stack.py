"""Deploys a transaction-processing stack the way the CDKTF/Terraform stack that tap-controller replaces
did: the same resource names (`tap-<suffix>-…`), no tap.dev tags, its own `managed-by` tag, and settings
that differ from a TransactionPipeline's defaults (memory, retention, policies). The adoption test runs it
against the emulator, then lets a pipeline with `adoptionPolicy: Adopt` take the stack over.

    python3 legacy_stack.py --endpoint http://127.0.0.1:PORT --suffix legacy1 [--region us-east-1]

Prints one line per resource created: `<Kind> <name>`.
"""

import argparse
import json

import boto3

FUNCTIONS = ["csv-validator", "data-transformer", "notification-sender"]
TAGS = {"managed-by": "cdktf"}
MANIFEST = json.dumps(
    {
        "schemaVersion": 2,
        "mediaType": "application/vnd.docker.distribution.manifest.v2+json",
        "config": {
            "mediaType": "application/vnd.docker.container.image.v1+json",
            "size": 4,
            "digest": "sha256:44136fa355b3678a1146ad16f7e8649e94fb4fc21fe77e8310c060f61caaff8a",
        },
        "layers": [],
    },
    separators=(",", ":"),
)
ASSUME = {
    "lambda": "lambda.amazonaws.com",
    "states": "states.amazonaws.com",
}


def main():
    args = argparse.ArgumentParser()
    args.add_argument("--endpoint", required=True)
    args.add_argument("--suffix", required=True)
    args.add_argument("--region", default="us-east-1")
    a = args.parse_args()
    session = boto3.Session(
        aws_access_key_id="test", aws_secret_access_key="test", region_name=a.region
    )

    def client(service):
        return session.client(service, endpoint_url=a.endpoint)

    p = f"tap-{a.suffix}"
    account = client("sts").get_caller_identity()["Account"]

    def made(kind, name):
        print(f"{kind} {name}", flush=True)

    s3 = client("s3")
    bucket = f"{p}-uploads-{account}"
    if a.region == "us-east-1":
        s3.create_bucket(Bucket=bucket)
    else:
        s3.create_bucket(
            Bucket=bucket, CreateBucketConfiguration={"LocationConstraint": a.region}
        )
    s3.put_bucket_tagging(
        Bucket=bucket, Tagging={"TagSet": [{"Key": k, "Value": v} for k, v in TAGS.items()]}
    )
    s3.put_object(Bucket=bucket, Key="validated/2026-11-30.csv", Body=b"id,amount\n1,2\n")
    made("Bucket", bucket)

    ddb = client("dynamodb")
    for table, key in [("transactions", "transaction_id"), ("processing-status", "upload_id")]:
        name = f"{p}-{table}"
        ddb.create_table(
            TableName=name,
            BillingMode="PAY_PER_REQUEST",
            AttributeDefinitions=[
                {"AttributeName": key, "AttributeType": "S"},
                {"AttributeName": "timestamp", "AttributeType": "S"},
            ],
            KeySchema=[{"AttributeName": key, "KeyType": "HASH"}],
            GlobalSecondaryIndexes=[
                {
                    "IndexName": "timestamp-index",
                    "KeySchema": [{"AttributeName": "timestamp", "KeyType": "HASH"}],
                    "Projection": {"ProjectionType": "ALL"},
                }
            ],
            Tags=[{"Key": k, "Value": v} for k, v in TAGS.items()],
        )
        made("Table", name)

    ecr = client("ecr")
    iam = client("iam")
    lam = client("lambda")
    logs = client("logs")
    roles = {}
    for role, service in [(f"{p}-{f}-role", "lambda") for f in FUNCTIONS] + [
        (f"{p}-pipeline-role", "states")
    ]:
        trust = {
            "Version": "2012-10-17",
            "Statement": [
                {
                    "Effect": "Allow",
                    "Principal": {"Service": ASSUME[service]},
                    "Action": "sts:AssumeRole",
                }
            ],
        }
        roles[role] = iam.create_role(
            RoleName=role,
            AssumeRolePolicyDocument=json.dumps(trust),
            Tags=[{"Key": k, "Value": v} for k, v in TAGS.items()],
        )["Role"]["Arn"]
        # The broad policy a quick deployment grants: the adoption narrows it.
        iam.put_role_policy(
            RoleName=role,
            PolicyName="legacy-everything",
            PolicyDocument=json.dumps(
                {
                    "Version": "2012-10-17",
                    "Statement": [{"Effect": "Allow", "Action": "s3:GetObject", "Resource": "*"}],
                }
            ),
        )
        made("Role", role)

    for f in FUNCTIONS:
        repo = f"{p}-{f}"
        uri = ecr.create_repository(
            repositoryName=repo, tags=[{"Key": k, "Value": v} for k, v in TAGS.items()]
        )["repository"]["repositoryUri"]
        ecr.put_image(repositoryName=repo, imageTag="v1", imageManifest=MANIFEST)
        made("Repository", repo)
        group = f"/aws/lambda/{p}-{f}"
        logs.create_log_group(logGroupName=group, tags=TAGS)
        logs.put_retention_policy(logGroupName=group, retentionInDays=7)
        made("LogGroup", group)
        name = f"{p}-{f}"
        lam.create_function(
            FunctionName=name,
            PackageType="Image",
            Code={"ImageUri": f"{uri}:v1"},
            Role=roles[f"{p}-{f}-role"],
            Architectures=["arm64"],
            MemorySize=256,
            Timeout=10,
            Tags=TAGS,
        )
        made("Function", name)
        if f == "csv-validator":
            # The bucket's permission to invoke it, as other tooling grants it: without the source
            # account condition, which the adoption adds.
            lam.add_permission(
                FunctionName=name,
                StatementId="tap-s3-invoke",
                Action="lambda:InvokeFunction",
                Principal="s3.amazonaws.com",
                SourceArn=f"arn:aws:s3:::{bucket}",
            )
            made("Permission", f"{name}/tap-s3-invoke")

    group = f"/aws/vendedlogs/states/{p}-pipeline"
    logs.create_log_group(logGroupName=group, tags=TAGS)
    made("LogGroup", group)

    queue = f"{p}-dlq"
    client("sqs").create_queue(QueueName=queue, tags=TAGS)
    made("Queue", queue)
    topic = f"{p}-notifications"
    client("sns").create_topic(Name=topic, Tags=[{"Key": k, "Value": v} for k, v in TAGS.items()])
    made("Topic", topic)

    sfn = client("stepfunctions")
    machine = f"{p}-pipeline"
    sfn.create_state_machine(
        name=machine,
        type="EXPRESS",
        roleArn=roles[f"{p}-pipeline-role"],
        definition=json.dumps(
            {"StartAt": "Done", "States": {"Done": {"Type": "Succeed"}}}
        ),
        tags=[{"key": k, "value": v} for k, v in TAGS.items()],
    )
    made("StateMachine", machine)

    apigw = client("apigateway")
    api = f"{p}-api"
    apigw.create_rest_api(name=api, tags=TAGS)
    made("RestApi", api)
    key = f"{p}-api-key"
    apigw.create_api_key(name=key, enabled=True, tags=TAGS)
    made("ApiKey", key)
    plan = f"{p}-usage-plan"
    apigw.create_usage_plan(name=plan, tags=TAGS)
    made("UsagePlan", plan)


if __name__ == "__main__":
    main()
