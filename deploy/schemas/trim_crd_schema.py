"""Trim a CustomResourceDefinition to the JSON schema tests/test_deploy.py validates against.

    python deploy/schemas/trim_crd_schema.py ray.io_rayservices.yaml v1 \
        --source "ray-project/kuberay v1.7.0 (commit 59d663ae...), ray-operator/config/crd/bases/ray.io_rayservices.yaml" \
        > deploy/schemas/rayservice-v1.schema.json

Keeps one version's `openAPIV3Schema` and drops, as validation needs neither:
* every `description` (the documentation text: most of the file);
* the schemas of the embedded Kubernetes core types, replaced by {"type": "object"}: pod
  templates (`template`) and the Serve Service (`serveService`). The tests validate those parts
  against Kubernetes' own schemas instead (kubernetes-validate), which the CRD copies.
"""
from __future__ import annotations

import argparse
import json
import sys

import yaml

SCHEMA_MAPS = ("properties", "patternProperties")      # name -> schema: the names are not keywords
CORE_TYPES = {"template", "serveService"}               # PodTemplateSpec, Service


def trim(node, name: str | None = None):
    if name in CORE_TYPES:
        return {"type": "object"}
    if isinstance(node, list):
        return [trim(item) for item in node]
    if not isinstance(node, dict):
        return node
    return {key: ({sub: trim(schema, sub) for sub, schema in value.items()} if key in SCHEMA_MAPS else trim(value))
            for key, value in node.items() if key != "description"}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("crd", help="the CRD's YAML file")
    parser.add_argument("version", help="the CRD version to keep, e.g. v1")
    parser.add_argument("--source", required=True, help="where the CRD came from (written into $comment)")
    args = parser.parse_args()
    with open(args.crd) as f:
        crd = yaml.safe_load(f)
    versions = {version["name"]: version for version in crd["spec"]["versions"]}
    if args.version not in versions:
        sys.exit(f"{args.crd} has versions {sorted(versions)}, not {args.version!r}")
    schema = trim(versions[args.version]["schema"]["openAPIV3Schema"])
    header = {"$comment": f"openAPIV3Schema of {crd['spec']['names']['kind']} {crd['spec']['group']}/{args.version} "
                          f"from {args.source}. Copyright The KubeRay Authors, Apache License 2.0. Trimmed by "
                          "deploy/schemas/trim_crd_schema.py: descriptions dropped; pod templates and serveService "
                          "reduced to objects (validated against Kubernetes' schemas instead)."}
    json.dump(header | schema, sys.stdout, indent=1, sort_keys=False)
    sys.stdout.write("\n")


if __name__ == "__main__":
    main()
