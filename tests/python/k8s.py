"""Kubernetes checks for the Rust tests, with real tools: Helm's own engine
(helm-python-sdk) renders and lints the chart, kubernetes-validate checks objects against
the Kubernetes OpenAPI schemas, and cloudcoil's models (generated from the upstream CRDs)
check prometheus-operator and cert-manager objects.

    k8s.py render   < {"chart", "kube_versions", "cases": [{"name", "values", "namespace"}]}
    k8s.py validate < {"kube_versions", "objects": [...]}

Prints one JSON document. Errors in the input or a missing tool exit non-zero.
"""

import json
import sys

import kubernetes_validate
import yaml

RELEASE = "wif"


def crd_model(obj):
    """The cloudcoil model for a custom resource, or None."""
    api, kind = obj.get("apiVersion", ""), obj.get("kind", "")
    if api == "monitoring.coreos.com/v1":
        from cloudcoil.models.prometheus_operator import v1 as models
    elif api == "cert-manager.io/v1":
        from cloudcoil.models.cert_manager import v1 as models
    else:
        return None
    return getattr(models, kind, None)


def unknown_fields(given, dumped, path=""):
    """Fields in `given` that the model dropped (cloudcoil ignores unknown fields)."""
    out = []
    if isinstance(given, dict) and isinstance(dumped, dict):
        for k, v in given.items():
            if k not in dumped:
                out.append(f"{path}.{k}")
            else:
                out.extend(unknown_fields(v, dumped[k], f"{path}.{k}"))
    elif isinstance(given, list) and isinstance(dumped, list):
        for i, (a, b) in enumerate(zip(given, dumped)):
            out.extend(unknown_fields(a, b, f"{path}[{i}]"))
    return out


def validate(obj, versions):
    """Problems with one object, as strings (empty: valid)."""
    name = f"{obj.get('kind')}/{obj.get('metadata', {}).get('name')}"
    model = crd_model(obj)
    if model is not None:
        try:
            parsed = model.model_validate(obj)
        except Exception as e:  # pydantic.ValidationError
            return [f"{name}: {e}"]
        dumped = parsed.model_dump(mode="json", by_alias=True, exclude_unset=True)
        return [f"{name}: unknown field {f}" for f in unknown_fields(obj, dumped)]
    problems = []
    for version in versions:
        try:
            kubernetes_validate.validate(obj, version, strict=True)
        except kubernetes_validate.ValidationError as e:
            where = "/".join(str(p) for p in e.path)
            problems.append(f"{name} (Kubernetes {version}) at {where}: {e.message}")
        except kubernetes_validate.SchemaNotFoundError as e:
            problems.append(f"{name}: {e.message}")
    return problems


def render(request):
    import helm_python as helm

    chart_dir = request["chart"]
    versions = request["kube_versions"]
    out = {"helm": helm.helm_sdk_version(), "cases": {}}
    with helm.Chart.load(chart_dir) as chart:
        out["values"] = chart.values
        out["metadata"] = chart.metadata
        for case in request["cases"]:
            values = case.get("values", {})
            result = {"objects": [], "problems": [], "error": None}
            try:
                chart.validate_schema(values)
                manifests = chart.render(
                    values, name=RELEASE, namespace=case.get("namespace", "wif-system"),
                    is_install=True,
                )
            except helm.HelmError as e:
                result["error"] = str(e)
                out["cases"][case["name"]] = result
                continue
            for path, text in sorted(manifests.items()):
                if path.endswith("NOTES.txt"):
                    result["notes"] = text
                    continue
                for obj in yaml.safe_load_all(text):
                    if obj:
                        obj["__template"] = path
                        result["objects"].append(obj)
            for obj in result["objects"]:
                clean = {k: v for k, v in obj.items() if k != "__template"}
                result["problems"].extend(validate(clean, versions))
            lint = helm.lint(
                chart_dir, values, strict=True, namespace=case.get("namespace", "wif-system"),
                kube_version="v" + versions[-1],
            )
            result["lint"] = [
                m for m in lint.get("messages", []) if m.get("severity", 0) >= 2
            ] + [{"severity": 3, "error": e} for e in lint.get("errors", []) or []]
            out["cases"][case["name"]] = result
    return out


def main():
    mode = sys.argv[1]
    request = json.load(sys.stdin)
    if mode == "render":
        out = render(request)
    elif mode == "validate":
        out = {
            "problems": [
                p for obj in request["objects"] for p in validate(obj, request["kube_versions"])
            ]
        }
    else:
        raise SystemExit(f"unknown mode {mode}")
    json.dump(out, sys.stdout)


if __name__ == "__main__":
    main()
