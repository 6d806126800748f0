"""Validates Prometheus-operator resources (PodMonitor, ServiceMonitor, PrometheusRule, ...)
against models generated from the operator's CRD schemas (PyPI cloudcoil-models-prometheus-operator),
which kubernetes-validate has no schema for.

Types, enums and patterns come from the CRD schema; on top of that every key of the manifest
must be a field the schema knows (the models themselves ignore unknown keys, so a misspelt
field would otherwise pass). Usage: validate_crds.py FILE...; exit 0 when every document of
every file is valid, 1 otherwise; one line per document.
"""

import sys

import pydantic
import yaml
from cloudcoil.models.prometheus_operator import v1, v1alpha1
from cloudcoil.resources import Resource

MODULES = {"monitoring.coreos.com/v1": v1, "monitoring.coreos.com/v1alpha1": v1alpha1}


def unknown_keys(given, known, path=""):
    """Keys in `given` that did not survive validation into `known` (the model's dump)."""
    out = []
    if isinstance(given, dict) and isinstance(known, dict):
        for k, v in given.items():
            p = f"{path}.{k}" if path else str(k)
            if k not in known:
                out.append(p)
            else:
                out += unknown_keys(v, known[k], p)
    elif isinstance(given, list) and isinstance(known, list):
        for i, (g, k) in enumerate(zip(given, known)):
            out += unknown_keys(g, k, f"{path}[{i}]")
    return out


def check(doc):
    api, kind = doc.get("apiVersion"), doc.get("kind")
    module = MODULES.get(api)
    model = getattr(module, kind, None) if module and isinstance(kind, str) else None
    if not (isinstance(model, type) and issubclass(model, Resource)):
        return f"no schema for kind {kind} with api version {api}"
    try:
        parsed = model.model_validate(doc)
    except pydantic.ValidationError as e:
        return str(e).replace("\n", "; ")
    extra = unknown_keys(doc, parsed.model_dump(by_alias=True, exclude_unset=True, mode="json"))
    if extra:
        return "unknown field(s): " + ", ".join(extra)
    return None


def main(paths):
    failed = 0
    for path in paths:
        with open(path, encoding="utf-8") as f:
            docs = [d for d in yaml.safe_load_all(f) if d is not None]
        for doc in docs:
            name = f"{str(doc.get('kind', '?')).lower()}/{(doc.get('metadata') or {}).get('name', '?')}"
            error = check(doc)
            if error:
                failed += 1
                print(f"ERROR {path} did not validate for resource {name}: {error}")
            else:
                print(f"INFO {path} passed for resource {name} against the prometheus-operator CRD schema")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
