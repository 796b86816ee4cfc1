// Runs a deployed Amazon States Language definition with a real ASL interpreter (aws-local-stepfunctions),
// for tests/tests/datapath.rs and tests/benches/datapath.rs.
//
// stdin: {"definition": "<the ASL as deployed>", "input": {...}}
// stdout: one JSON object {"valid", "validationErrors", "status", "output", "error", "cause", "events"}.
//
// The Task states do what Step Functions does for them, against the endpoints in the environment:
// * a Lambda function ARN: Invoke (AWS_ENDPOINT_URL_LAMBDA: the test's local Lambda, which runs the real
//   binaries); a function error becomes the state's error named by its errorType, with the error payload as
//   Cause; a Lambda service error becomes `Lambda.<Exception>` (what the spec's Retry matches);
// * arn:aws:states:::sqs:sendMessage and arn:aws:states:::sns:publish: the SQS / SNS call on the emulator
//   (AWS_ENDPOINT_URL), errors `SQS.<Exception>` / `SNS.<Exception>`.
// Every call is signed with the credentials in the environment: the state machine's role.
// Retry, Catch, ResultPath, Parameters and the rest are the interpreter's, unchanged.

import { createRequire } from "node:module";
import { LambdaClient, InvokeCommand } from "@aws-sdk/client-lambda";
import { SQSClient, SendMessageCommand } from "@aws-sdk/client-sqs";
import { SNSClient, PublishCommand } from "@aws-sdk/client-sns";

// aws-local-stepfunctions 3.0.0 uses Promise.withResolvers (Node 22); Node 20 lacks it.
if (typeof Promise.withResolvers !== "function") {
  Promise.withResolvers = function withResolvers() {
    let resolve;
    let reject;
    const promise = new Promise((res, rej) => {
      resolve = res;
      reject = rej;
    });
    return { promise, resolve, reject };
  };
}
const { StateMachine } = await import("aws-local-stepfunctions");
const aslValidator = createRequire(import.meta.url)("asl-validator");

// One attempt per call: the state machine's Retry is what retries, as in Step Functions.
const lambda = new LambdaClient({ maxAttempts: 1 });
// The deployed QueueUrl is AWS's (https://sqs.REGION.amazonaws.com/...): send it to the configured endpoint.
const sqs = new SQSClient({ maxAttempts: 1, useQueueUrlAsEndpoint: false });
const sns = new SNSClient({ maxAttempts: 1 });

function stateError(name, cause) {
  const error = new Error(cause);
  error.name = name;
  return error;
}

async function invokeFunction(functionArn, input) {
  let out;
  try {
    out = await lambda.send(
      new InvokeCommand({ FunctionName: functionArn, Payload: Buffer.from(JSON.stringify(input)) }),
    );
  } catch (e) {
    throw stateError(`Lambda.${e.name}`, e.message);
  }
  const text = out.Payload ? Buffer.from(out.Payload).toString("utf8") : "null";
  if (out.FunctionError) {
    let type = "Lambda.Unknown";
    try {
      type = JSON.parse(text).errorType ?? type;
    } catch {
      // not JSON: keep Lambda.Unknown
    }
    throw stateError(type, text);
  }
  return JSON.parse(text);
}

const asString = (value) => (typeof value === "string" ? value : JSON.stringify(value));

const integrations = {
  "sqs:sendMessage": async (p) => {
    try {
      const out = await sqs.send(new SendMessageCommand({ ...p, MessageBody: asString(p.MessageBody) }));
      return { MessageId: out.MessageId, MD5OfMessageBody: out.MD5OfMessageBody };
    } catch (e) {
      throw stateError(`SQS.${e.name}`, e.message);
    }
  },
  "sns:publish": async (p) => {
    try {
      const out = await sns.send(new PublishCommand({ ...p, Message: asString(p.Message) }));
      return { MessageId: out.MessageId };
    } catch (e) {
      throw stateError(`SNS.${e.name}`, e.message);
    }
  },
};

function handlerFor(name, resource) {
  if (/^arn:[^:]+:lambda:[^:]+:[^:]+:function:/.test(resource)) {
    return (input) => invokeFunction(resource, input);
  }
  const integration = /^arn:[^:]+:states:::(.+)$/.exec(resource)?.[1];
  if (integration && integrations[integration]) {
    return integrations[integration];
  }
  throw new Error(`state ${name}: Resource ${resource} is not supported by run-state-machine.mjs`);
}

async function main() {
  const chunks = [];
  for await (const chunk of process.stdin) chunks.push(chunk);
  const request = JSON.parse(Buffer.concat(chunks).toString("utf8"));
  const definition = JSON.parse(request.definition);

  const { isValid, errors } = aslValidator(definition);
  const result = {
    valid: isValid,
    validationErrors: (errors ?? []).map((e) => `${e.path ?? ""} ${e.message}`.trim()),
    status: null,
    events: [],
  };
  if (!isValid) {
    process.stdout.write(JSON.stringify(result));
    return;
  }

  const handlers = {};
  for (const [name, state] of Object.entries(definition.States)) {
    if (state.Type === "Task") handlers[name] = handlerFor(name, state.Resource);
  }
  const machine = new StateMachine(definition);
  const execution = machine.run(request.input, { overrides: { taskResourceLocalHandlers: handlers } });
  const logged = (async () => {
    for await (const event of execution.eventLogs) {
      result.events.push({
        type: event.type,
        timestamp: event.timestamp,
        state: event.state?.name ?? null,
        error: event.Error ?? null,
        cause: event.Cause ?? null,
      });
    }
  })();
  try {
    result.output = await execution.result;
    result.status = "SUCCEEDED";
  } catch {
    result.status = "FAILED";
  }
  await logged;
  const failed = result.events.find((e) => e.type === "ExecutionFailed");
  if (failed) {
    result.error = failed.error;
    result.cause = failed.cause;
  }
  process.stdout.write(JSON.stringify(result));
}

main().catch((e) => {
  process.stderr.write(`run-state-machine: ${e.stack ?? e}\n`);
  process.exit(2);
});
