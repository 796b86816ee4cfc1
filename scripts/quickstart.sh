#!/usr/bin/env bash
# The main job on a fresh machine, against the embedded local AWS (moto): apply the example pipeline,
# print its outputs, show that a second plan has nothing to do, then destroy it.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
cargo build --quiet -p tap-controller
bin=target/debug/tap-controller

port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
PYTHONPATH="$PWD/tests/moto${PYTHONPATH:+:$PYTHONPATH}" python3 -m moto.server -H 127.0.0.1 -p "$port" >/tmp/tap-quickstart-moto.log 2>&1 &
moto=$!
trap 'kill $moto 2>/dev/null || true' EXIT
export AWS_ENDPOINT_URL="http://127.0.0.1:$port" AWS_REGION=us-east-1 AWS_DEFAULT_REGION=us-east-1 AWS_ACCESS_KEY_ID=testing AWS_SECRET_ACCESS_KEY=testing
for _ in $(seq 100); do python3 -c "import socket; socket.create_connection(('127.0.0.1', $port))" 2>/dev/null && break; sleep 0.1; done

echo "== apply (no images pushed yet: the stack converges around the functions, which wait)"
set +e
"$bin" apply -f examples/pipeline.yaml
code=$?
set -e
[ "$code" -eq 3 ] || { echo "expected apply to wait for images (exit 3), got $code"; exit 1; }

echo "== push the three images (what 'docker push' does in a real deployment)"
python3 - <<'PY'
import boto3, json
ecr = boto3.client("ecr")
manifest = json.dumps({"schemaVersion": 2, "mediaType": "application/vnd.docker.distribution.manifest.v2+json",
    "config": {"mediaType": "application/vnd.docker.container.image.v1+json", "size": 2,
               "digest": "sha256:44136fa355b3678a1146ad16f7e8649e94fb4fc21fe77e8310c060f61caaff8a"}, "layers": []})
for f in ("csv-validator", "data-transformer", "notification-sender"):
    ecr.put_image(repositoryName=f"tap-dev1-{f}", imageTag="v1", imageManifest=manifest)
    print(f"pushed tap-dev1-{f}:v1")
PY

echo "== apply again: converges and prints the outputs"
"$bin" apply -f examples/pipeline.yaml

echo "== plan: a converged stack has nothing to do (exit 0)"
"$bin" plan -f examples/pipeline.yaml

echo "== destroy"
"$bin" destroy -f examples/pipeline.yaml --auto-approve
