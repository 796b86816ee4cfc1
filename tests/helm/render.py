#!/usr/bin/env python3
"""Thin CLI over the Helm v4 Go SDK (pip package helm-python-sdk) for the chart tests.

Every command prints one JSON document on stdout and exits 0, or prints the Helm error on stderr and
exits 1 (2 when helm_python cannot be imported, so callers can tell "tool missing" from "chart broken").

  render.py version
  render.py render   CHART [--values JSON] [--name NAME] [--namespace NS]   -> {"template path": "manifest", ...}
  render.py lint     CHART [--values JSON] [--strict]                       -> lint report
  render.py validate CHART  --values JSON                                   -> {"valid": true}
  render.py crds     CHART                                                  -> [{"name", "filename", "data"}]
  render.py yaml     CHART [--values JSON] ...                              -> the rendered manifests as one YAML stream
"""

import argparse
import json
import sys

try:
    import helm_python
except ImportError as exc:  # pragma: no cover - exercised by the Rust test's skip path
    print(f"helm_python is not importable ({exc}); install it with: pip install helm-python-sdk", file=sys.stderr)
    sys.exit(2)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("command", choices=["version", "render", "yaml", "lint", "validate", "crds"])
    parser.add_argument("chart", nargs="?")
    parser.add_argument("--values", default=None, help="values as a JSON object")
    parser.add_argument("--name", default="tap-controller")
    parser.add_argument("--namespace", default="tap-system")
    parser.add_argument("--strict", action="store_true")
    args = parser.parse_args()

    if args.command == "version":
        print(json.dumps({"helm_sdk": helm_python.helm_sdk_version(), "helm_python": helm_python.__version__}))
        return 0
    if not args.chart:
        parser.error("CHART is required")
    values = json.loads(args.values) if args.values else None

    try:
        if args.command == "lint":
            report = helm_python.lint(args.chart, values, strict=args.strict, namespace=args.namespace)
            print(json.dumps(report))
            return 1 if report.get("errors") else 0
        with helm_python.Chart.load(args.chart) as chart:
            if args.command == "validate":
                chart.validate_schema(values)
                print(json.dumps({"valid": True}))
            elif args.command == "crds":
                print(json.dumps(chart.crds))
            else:
                rendered = chart.render(values=values, name=args.name, namespace=args.namespace, is_install=True)
                if args.command == "render":
                    print(json.dumps(rendered, sort_keys=True))
                else:
                    for path in sorted(rendered):
                        body = rendered[path]
                        if path.endswith("NOTES.txt") or not body.strip():
                            continue
                        print(f"---\n# Source: {path}\n{body.strip()}")
    except helm_python.HelmError as exc:
        print(f"{type(exc).__name__}: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
