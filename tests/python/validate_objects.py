"""Validates Kubernetes objects against the real schemas, as an API server would before storing
them: built-in kinds (Deployment, Service, ...) with kubernetes-validate in strict mode (unknown
fields are errors, not silently pruned), HTTPRoute and Rollout with the OpenAPI v3 schema of their
CRDs (tests/schemas/, extracted from the upstream CRDs), closed the way a structural schema
prunes: an object with `properties` admits no other field unless the schema says
`x-kubernetes-preserve-unknown-fields`. CEL rules (`x-kubernetes-validations`) are not evaluated.

usage: validate_objects.py OBJECTS.json KUBERNETES_VERSION
Prints one line per object; exits 1 if any is invalid.
"""

import json
import os
import sys

import jsonschema
import kubernetes_validate

SCHEMAS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "schemas")
CRDS = {
    ("gateway.networking.k8s.io/v1", "HTTPRoute"): "httproute-v1.schema.json",
    ("argoproj.io/v1alpha1", "Rollout"): "rollout-v1alpha1.schema.json",
}


def closed(schema):
    """The schema with every object that lists its properties closed to others."""
    if isinstance(schema, list):
        return [closed(s) for s in schema]
    if not isinstance(schema, dict):
        return schema
    out = {k: closed(v) for k, v in schema.items()}
    if (
        "properties" in out
        and "additionalProperties" not in out
        and not out.get("x-kubernetes-preserve-unknown-fields")
    ):
        out["additionalProperties"] = False
    return out


def crd_validator(file):
    with open(os.path.join(SCHEMAS, file)) as f:
        schema = closed(json.load(f))
    # metadata is validated by the API server itself; the CRD schema only says "object".
    return jsonschema.Draft7Validator(schema)


def main():
    path, version = sys.argv[1], sys.argv[2]
    with open(path) as f:
        objects = json.load(f)
    validators = {}
    invalid = 0
    for obj in objects:
        kind = (obj.get("apiVersion"), obj.get("kind"))
        name = "{}/{} {}".format(kind[0], kind[1], obj.get("metadata", {}).get("name"))
        errors = []
        if kind in CRDS:
            if kind not in validators:
                validators[kind] = crd_validator(CRDS[kind])
            for e in validators[kind].iter_errors(obj):
                errors.append("{}: {}".format("/".join(str(p) for p in e.absolute_path), e.message))
        else:
            try:
                kubernetes_validate.validate(obj, version, strict=True)
            except kubernetes_validate.ValidationError as e:
                errors.append("{}: {}".format("/".join(str(p) for p in e.path), e.message))
            except Exception as e:  # an unknown kind or version is a failure too
                errors.append(str(e))
        if errors:
            invalid += 1
            for e in errors:
                print("INVALID {}: {}".format(name, e))
        else:
            print("valid {}".format(name))
    print("{} objects, {} invalid".format(len(objects), invalid))
    sys.exit(1 if invalid else 0)


if __name__ == "__main__":
    main()
