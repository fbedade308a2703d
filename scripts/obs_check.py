#!/usr/bin/env python3
"""Readers for the observability tests (run by common/tests/obs.rs with $SPLADE_TOOLS_PY).

Each sub-command reads what the Rust code wrote with the real third-party reader and prints JSON
(or fails with a message); the Rust test asserts on it.

  tb DIR                      TensorBoard EventAccumulator over the event files in DIR
  mlflow URI EXPERIMENT       the single run of EXPERIMENT via mlflow.MlflowClient(URI)
  promql-exprs                every PromQL expression in deploy/grafana/*.json and deploy/prometheus/*rules*.yml
  k8s                         offline validation of deploy/k8s (and the monitoring overlay in deploy/)
"""
import hashlib
import json
import math
import os
import re
import subprocess
import sys
import tempfile

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEPLOY = os.path.join(REPO, "deploy")
K8S_VERSION = "1.37.0"


def tb(logdir):
    from tensorboard.backend.event_processing import event_accumulator

    acc = event_accumulator.EventAccumulator(logdir, size_guidance={"scalars": 0, "tensors": 0})
    acc.Reload()
    tags = acc.Tags()
    out = {
        "scalars": {t: [[e.step, e.value] for e in acc.Scalars(t)] for t in tags.get("scalars", [])},
        "tensors": {},
    }
    for t in tags.get("tensors", []):
        vals = []
        for e in acc.Tensors(t):
            vals.append([e.step, [s.decode("utf-8") for s in e.tensor_proto.string_val]])
        out["tensors"][t] = vals
    print(json.dumps(out))


def mlflow_run(uri, experiment):
    import mlflow

    client = mlflow.MlflowClient(tracking_uri=uri)
    exp = client.get_experiment_by_name(experiment)
    if exp is None:
        sys.exit(f"experiment {experiment!r} not found at {uri}")
    runs = client.search_runs([exp.experiment_id])
    if len(runs) != 1:
        sys.exit(f"expected exactly one run in {experiment!r}, found {len(runs)}")
    run = runs[0]
    rid = run.info.run_id
    metrics = {}
    for key in run.data.metrics:
        hist = client.get_metric_history(rid, key)
        # Non-finite values as strings ("nan"), which JSON can carry.
        metrics[key] = sorted([[m.step, m.value if math.isfinite(m.value) else str(m.value)] for m in hist], key=lambda p: p[0])

    def walk(path):
        files = []
        for f in client.list_artifacts(rid, path):
            if f.is_dir:
                files.extend(walk(f.path))
            else:
                files.append(f.path)
        return files

    artifacts = sorted(walk(None))
    hashes = {}
    with tempfile.TemporaryDirectory() as tmp:
        for a in artifacts:
            local = client.download_artifacts(rid, a, tmp)
            with open(local, "rb") as fh:
                hashes[a] = hashlib.sha256(fh.read()).hexdigest()
    print(
        json.dumps(
            {
                "run_id": rid,
                "run_name": run.info.run_name,
                "status": run.info.status,
                "params": run.data.params,
                "tags": {k: v for k, v in run.data.tags.items()},
                "metrics": metrics,
                "artifacts": hashes,
            }
        )
    )


def promql_exprs():
    import yaml

    exprs = []
    gdir = os.path.join(DEPLOY, "grafana")
    for name in sorted(os.listdir(gdir)):
        if not name.endswith(".json"):
            continue
        dash = json.load(open(os.path.join(gdir, name)))

        def panels(ps):
            for p in ps:
                yield p
                yield from panels(p.get("panels", []))

        for p in panels(dash.get("panels", [])):
            for t in p.get("targets", []):
                if "expr" in t:
                    exprs.append({"source": f"grafana/{name}: panel {p.get('title')!r}", "expr": t["expr"]})
    pdir = os.path.join(DEPLOY, "prometheus")
    for name in sorted(os.listdir(pdir)):
        if "rules" not in name or not name.endswith((".yml", ".yaml")):
            continue
        doc = yaml.safe_load(open(os.path.join(pdir, name)))
        for g in doc.get("groups", []):
            for r in g.get("rules", []):
                exprs.append(
                    {"source": f"prometheus/{name}: {r.get('alert') or r.get('record')}", "expr": str(r["expr"])}
                )
    print(json.dumps(exprs))


def k8s():
    """Validates the manifests; prints problems and exits 1 if there are any."""
    import yaml
    import kubernetes_validate

    problems = []

    def manifests_of(kdir):
        kust = yaml.safe_load(open(os.path.join(kdir, "kustomization.yaml")))
        return kust

    def docs(path):
        with open(path) as fh:
            return [d for d in yaml.safe_load_all(fh) if d]

    # 1. The kustomization of deploy/k8s lists exactly the manifest files present.
    kdir = os.path.join(DEPLOY, "k8s")
    kust = manifests_of(kdir)
    listed = set(kust.get("resources", []))
    present = {
        f for f in os.listdir(kdir) if f.endswith((".yaml", ".yml")) and f != "kustomization.yaml"
    }
    if listed != present:
        problems.append(
            f"deploy/k8s/kustomization.yaml resources {sorted(listed)} differ from the manifest files present {sorted(present)}"
        )
    # The monitoring overlay in deploy/ likewise lists exactly deploy/monitoring/*.yaml (+ the k8s base).
    mon = manifests_of(DEPLOY)
    mlisted = set(mon.get("resources", []))
    mdir = os.path.join(DEPLOY, "monitoring")
    mpresent = {"k8s"} | {f"monitoring/{f}" for f in os.listdir(mdir) if f.endswith((".yaml", ".yml"))}
    if mlisted != mpresent:
        problems.append(f"deploy/kustomization.yaml resources {sorted(mlisted)} differ from {sorted(mpresent)}")
    for gen in mon.get("configMapGenerator", []) + kust.get("configMapGenerator", []):
        base = DEPLOY if gen in mon.get("configMapGenerator", []) else kdir
        for f in gen.get("files", []):
            src = f.split("=", 1)[-1]
            if not os.path.isfile(os.path.join(base, src)):
                problems.append(f"configMapGenerator {gen['name']!r} names missing file {src}")

    # 2. Every manifest validates for a current Kubernetes version, strictly.
    files = [os.path.join(kdir, f) for f in sorted(present)] + [
        os.path.join(mdir, f) for f in sorted(os.listdir(mdir)) if f.endswith((".yaml", ".yml"))
    ]
    all_docs = []
    for path in files:
        for d in docs(path):
            all_docs.append((path, d))
            try:
                kubernetes_validate.validate(d, K8S_VERSION, strict=True)
            except kubernetes_validate.ValidationError as e:
                problems.append(f"{os.path.relpath(path, REPO)}: {d.get('kind')}/{d['metadata'].get('name')}: {e.message} at {list(e.path)}")
            except Exception as e:  # noqa: BLE001 - report every validator failure as a problem
                problems.append(f"{os.path.relpath(path, REPO)}: {d.get('kind')}: {e}")

    # 3. Every Service / Secret / ConfigMap a manifest references is defined (by a manifest or a generator).
    defined = {"Service": set(), "Secret": set(), "ConfigMap": set(), "ServiceAccount": set()}
    for _, d in all_docs:
        if d.get("kind") in defined:
            defined[d["kind"]].add(d["metadata"]["name"])
    for gen in mon.get("configMapGenerator", []) + kust.get("configMapGenerator", []):
        defined["ConfigMap"].add(gen["name"])
    for gen in mon.get("secretGenerator", []) + kust.get("secretGenerator", []):
        defined["Secret"].add(gen["name"])

    refs = []  # (kind, name, where)

    def walk(node, where):
        if isinstance(node, dict):
            for k, v in node.items():
                if k == "secretKeyRef" or k == "secretRef":
                    refs.append(("Secret", v.get("name"), where))
                elif k == "configMapKeyRef" or k == "configMapRef":
                    refs.append(("ConfigMap", v.get("name"), where))
                elif k == "secret" and isinstance(v, dict) and "secretName" in v:
                    refs.append(("Secret", v["secretName"], where))
                elif k == "configMap" and isinstance(v, dict) and "name" in v:
                    refs.append(("ConfigMap", v["name"], where))
                elif k == "serviceName" and isinstance(v, str):
                    refs.append(("Service", v, where))
                elif k in ("args", "command") and isinstance(v, list):
                    # `--join HOST:PORT` names the coordinator Service by its in-cluster DNS name.
                    for flag, value in zip(v, v[1:]):
                        if flag == "--join":
                            refs.append(("Service", re.split(r"[.:]", value)[0], where))
                elif k == "serviceAccountName" and isinstance(v, str):
                    refs.append(("ServiceAccount", v, where))
                walk(v, where)
        elif isinstance(node, list):
            for x in node:
                walk(x, where)
        elif isinstance(node, str):
            # In-cluster DNS names of Services: NAME.NAMESPACE.svc... or NAME:PORT in --join.
            for m in re.finditer(r"\b([a-z0-9-]+)\.[a-z0-9-]+\.svc(?:\.cluster\.local)?\b", node):
                refs.append(("Service", m.group(1), where))

    for path, d in all_docs:
        where = f"{os.path.relpath(path, REPO)}: {d.get('kind')}/{d['metadata'].get('name')}"
        walk(d.get("spec", {}), where)
        if d.get("kind") in ("RoleBinding", "ClusterRoleBinding"):
            for s in d.get("subjects", []):
                if s.get("kind") == "ServiceAccount":
                    refs.append(("ServiceAccount", s["name"], where))
    for kind, name, where in refs:
        if name not in defined[kind]:
            problems.append(f"{where} references {kind} {name!r}, which no manifest defines")

    # 4. The whole thing renders with kustomize, when kubectl is available.
    if subprocess.run(["which", "kubectl"], capture_output=True).returncode == 0:
        for target in (kdir, DEPLOY):
            r = subprocess.run(["kubectl", "kustomize", target], capture_output=True, text=True)
            if r.returncode != 0:
                problems.append(f"kubectl kustomize {os.path.relpath(target, REPO)} failed: {r.stderr.strip()}")
            else:
                for d in yaml.safe_load_all(r.stdout):
                    if not d:
                        continue
                    try:
                        kubernetes_validate.validate(d, K8S_VERSION, strict=True)
                    except Exception as e:  # noqa: BLE001
                        problems.append(f"rendered {os.path.relpath(target, REPO)}: {d.get('kind')}/{d['metadata'].get('name')}: {e}")

    summary = {"files": [os.path.relpath(f, REPO) for f in files], "objects": len(all_docs), "references": len(refs)}
    print(json.dumps({"summary": summary, "problems": problems}))
    sys.exit(1 if problems else 0)


def main():
    if len(sys.argv) < 2:
        sys.exit(__doc__)
    cmd, args = sys.argv[1], sys.argv[2:]
    if cmd == "tb":
        tb(*args)
    elif cmd == "mlflow":
        mlflow_run(*args)
    elif cmd == "promql-exprs":
        promql_exprs()
    elif cmd == "k8s":
        k8s()
    else:
        sys.exit(f"unknown command {cmd!r}\n{__doc__}")


if __name__ == "__main__":
    main()
