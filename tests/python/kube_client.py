"""The official Kubernetes Python client against the test suite's in-memory API server.

Usage: kube_client.py KUBECONFIG NAMESPACE

Drives what HopNGo's deployer relies on -- create, get, list by label, update with a stale
resourceVersion, JSON merge patch, server-side apply with a conflict and with force, the status
subresource, watch with bookmarks, and 410 Gone for an expired resourceVersion -- and prints one
line per check; exits non-zero on the first that fails.
"""

import sys
import threading
import time

from kubernetes import client, config, watch
from kubernetes.client.rest import ApiException

MERGE = "application/merge-patch+json"
APPLY = "application/apply-patch+yaml"


def expect_error(code, reason, call):
    try:
        call()
    except ApiException as e:
        assert e.status == code, (e.status, e.body)
        assert f'"reason":"{reason}"' in e.body.replace(" ", ""), e.body
        return e
    raise AssertionError(f"expected {code} {reason}")


def deployment(name, image, replicas=None, labels=None):
    spec = {
        "selector": {"matchLabels": {"app": name}},
        "template": {
            "metadata": {"labels": {"app": name}},
            "spec": {"containers": [{"name": "app", "image": image}]},
        },
    }
    if replicas is not None:
        spec["replicas"] = replicas
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": name, "labels": labels or {}},
        "spec": spec,
    }


def main():
    kubeconfig, ns = sys.argv[1], sys.argv[2]
    config.load_kube_config(config_file=kubeconfig)
    apps = client.AppsV1Api()

    created = apps.create_namespaced_deployment(ns, deployment("booking-stable", "booking:1", 2, {"hopngo.io/track": "stable"}))
    assert created.metadata.resource_version and created.metadata.generation == 1 and created.metadata.uid
    print("create: resourceVersion", created.metadata.resource_version)
    expect_error(409, "AlreadyExists", lambda: apps.create_namespaced_deployment(ns, deployment("booking-stable", "booking:1")))
    print("create again: 409 AlreadyExists")
    expect_error(404, "NotFound", lambda: apps.read_namespaced_deployment("nope", ns))
    expect_error(404, "NotFound", lambda: apps.read_namespaced_deployment("booking-stable", "no-such-namespace"))
    print("get missing: 404 NotFound")
    expect_error(422, "Invalid", lambda: apps.create_namespaced_deployment(ns, deployment("Bad_Name", "x")))
    print("bad name: 422 Invalid")

    apps.create_namespaced_deployment(ns, deployment("booking-canary", "booking:2", 1, {"hopngo.io/track": "canary"}))
    listed = apps.list_namespaced_deployment(ns, label_selector="hopngo.io/track=canary")
    assert [d.metadata.name for d in listed.items] == ["booking-canary"], listed.items
    print("list by label: booking-canary")

    stale = apps.read_namespaced_deployment("booking-stable", ns)
    apps.patch_namespaced_deployment("booking-stable", ns, {"metadata": {"annotations": {"owner": "team-a"}}},
                                     field_manager="kubectl-annotate", _content_type=MERGE)
    stale.spec.replicas = 5
    expect_error(409, "Conflict", lambda: apps.replace_namespaced_deployment("booking-stable", ns, stale))
    print("update with a stale resourceVersion: 409 Conflict")

    # Server-side apply over fields another manager set (the creator) conflicts, as on a real
    # cluster; with force the applier takes them, and a person's annotation survives.
    body = deployment("booking-stable", "booking:3")
    err = expect_error(409, "Conflict", lambda: apps.patch_namespaced_deployment(
        "booking-stable", ns, body, field_manager="hopngo-deployer", _content_type=APPLY))
    assert "image" in err.body, err.body
    print("apply over the creator's image: 409 Conflict")
    applied = apps.patch_namespaced_deployment("booking-stable", ns, body, field_manager="hopngo-deployer",
                                               _content_type=APPLY, force=True)
    assert applied.spec.template.spec.containers[0].image == "booking:3"
    assert applied.metadata.annotations == {"owner": "team-a"}, applied.metadata.annotations
    managers = {m.manager: m.operation for m in applied.metadata.managed_fields}
    assert managers.get("hopngo-deployer") == "Apply" and managers.get("kubectl-annotate") == "Update", managers
    assert applied.metadata.generation == 2, applied.metadata.generation
    print("apply: image set, annotation kept, managers", sorted(managers))

    # An autoscaler owns the replicas; applying them without force conflicts, with force wins.
    apps.patch_namespaced_deployment("booking-stable", ns, {"spec": {"replicas": 7}}, field_manager="hpa", _content_type=MERGE)
    err = expect_error(409, "Conflict", lambda: apps.patch_namespaced_deployment(
        "booking-stable", ns, deployment("booking-stable", "booking:3", 3), field_manager="hopngo-deployer", _content_type=APPLY))
    assert 'conflict with \\"hpa\\"' in err.body and ".spec.replicas" in err.body, err.body
    print("apply over another manager's field: 409 Conflict naming it")
    forced = apps.patch_namespaced_deployment("booking-stable", ns, deployment("booking-stable", "booking:3", 3),
                                              field_manager="hopngo-deployer", _content_type=APPLY, force=True)
    assert forced.spec.replicas == 3
    print("apply with force: replicas 3")
    # Fields the manager stops applying go (the replicas), others' stay.
    dropped = apps.patch_namespaced_deployment("booking-stable", ns, deployment("booking-stable", "booking:3"),
                                               field_manager="hopngo-deployer", _content_type=APPLY)
    assert dropped.spec.replicas is None and dropped.metadata.annotations == {"owner": "team-a"}, dropped.spec
    print("apply without a field it owned: the field is removed")

    # The status subresource changes status only, and the main resource leaves status alone.
    core = client.CoreV1Api()
    core.create_namespaced_service(ns, {"apiVersion": "v1", "kind": "Service", "metadata": {"name": "web"},
                                        "spec": {"selector": {"app": "web"}, "ports": [{"port": 80}]}})
    ingress = {"status": {"loadBalancer": {"ingress": [{"ip": "10.0.0.1"}]}}}
    status = core.patch_namespaced_service_status("web", ns, ingress, field_manager="cloud-controller",
                                                  _content_type=MERGE)
    assert status.status.load_balancer.ingress[0].ip == "10.0.0.1"
    after = core.patch_namespaced_service("web", ns, {"status": {"loadBalancer": {}}, "metadata": {"labels": {"a": "b"}}},
                                          field_manager="x", _content_type=MERGE)
    assert after.status.load_balancer.ingress[0].ip == "10.0.0.1" and after.metadata.labels == {"a": "b"}, after
    print("status subresource: load balancer address kept by main-resource writes")

    # Watch from a resourceVersion with bookmarks: a change arrives as MODIFIED.
    rv = apps.read_namespaced_deployment("booking-canary", ns).metadata.resource_version
    seen = []

    def follow():
        w = watch.Watch()
        for event in w.stream(apps.list_namespaced_deployment, ns, resource_version=rv, allow_watch_bookmarks=True,
                              timeout_seconds=3):
            seen.append((event["type"], event["raw_object"]["metadata"].get("name")))
            if any(t == "MODIFIED" for t, _ in seen) and any(t == "BOOKMARK" for t, _ in seen):
                w.stop()

    follower = threading.Thread(target=follow)
    follower.start()
    apps.patch_namespaced_deployment("booking-canary", ns, {"spec": {"replicas": 2}}, field_manager="x", _content_type=MERGE)
    follower.join(10)
    assert ("MODIFIED", "booking-canary") in seen, seen
    assert any(t == "BOOKMARK" for t, _ in seen), seen
    print("watch: MODIFIED and BOOKMARK")

    # A resourceVersion older than the history kept: 410 Gone.
    try:
        for _ in watch.Watch().stream(apps.list_namespaced_deployment, ns, resource_version="1", timeout_seconds=2):
            pass
        raise AssertionError("an expired resourceVersion was accepted")
    except ApiException as e:
        assert e.status == 410, e
    print("watch from an expired resourceVersion: 410 Gone")

    apps.delete_namespaced_deployment("booking-canary", ns)
    expect_error(404, "NotFound", lambda: apps.read_namespaced_deployment("booking-canary", ns))
    print("delete: gone")

    # The simulated controllers: pods come up and the Deployment reports them; an image that
    # cannot be pulled leaves its pods waiting with the reason.
    apps.patch_namespaced_deployment("web", ns, deployment("web", "web:1", 2), field_manager="hopngo-deployer",
                                     _content_type=APPLY)
    web = wait_for(lambda: apps.read_namespaced_deployment("web", ns),
                   lambda d: d.status and d.status.observed_generation == d.metadata.generation
                   and d.status.ready_replicas == 2)
    pods = core.list_namespaced_pod(ns, label_selector="app=web").items
    assert len(pods) == 2 and all(p.status.phase == "Running" for p in pods), pods
    assert all(p.metadata.labels.get("pod-template-hash") for p in pods)
    print("deployment ready: 2 of 2, observedGeneration", web.status.observed_generation)
    apps.patch_namespaced_deployment("broken", ns, deployment("broken", "web:broken", 1), field_manager="hopngo-deployer",
                                     _content_type=APPLY)
    pod = wait_for(lambda: core.list_namespaced_pod(ns, label_selector="app=broken").items,
                   lambda pods: pods and pods[0].status.container_statuses)[0]
    waiting = pod.status.container_statuses[0].state.waiting
    assert waiting and waiting.reason == "ImagePullBackOff", pod.status
    broken = apps.read_namespaced_deployment("broken", ns)
    assert not broken.status.ready_replicas and broken.status.unavailable_replicas == 1, broken.status
    print("image that cannot be pulled: ImagePullBackOff, 0 ready")
    apps.delete_namespaced_deployment("broken", ns)
    wait_for(lambda: core.list_namespaced_pod(ns, label_selector="app=broken").items, lambda pods: not pods)
    print("deleted deployment: its pods are gone")

    expect_error(403, "Forbidden", lambda: core.delete_namespaced_service("web", ns))
    print("RBAC: 403 Forbidden")

    # A list body goes out as a JSON patch (RFC 6902); a failing `test` changes nothing.
    patched = apps.patch_namespaced_deployment("web", ns, [
        {"op": "test", "path": "/spec/template/spec/containers/0/image", "value": "web:1"},
        {"op": "replace", "path": "/spec/template/spec/containers/0/image", "value": "web:2"},
    ], field_manager="kubectl-set-image")
    assert patched.spec.template.spec.containers[0].image == "web:2"
    expect_error(422, "Invalid", lambda: apps.patch_namespaced_deployment("web", ns, [
        {"op": "test", "path": "/spec/template/spec/containers/0/image", "value": "web:1"}]))
    print("JSON patch: image web:2; a failing test is 422")

    argo(ns)


GROUP, VERSION, ROLLOUTS = "argoproj.io", "v1alpha1", "rollouts"


def argo(ns):
    """A Rollout driven with the patches Argo's kubectl plugin sends."""
    custom = client.CustomObjectsApi()
    apps = client.AppsV1Api()

    def rollout():
        return custom.get_namespaced_custom_object(GROUP, VERSION, ns, ROLLOUTS, "booking")

    def status_patch(body):
        custom.patch_namespaced_custom_object_status(GROUP, VERSION, ns, ROLLOUTS, "booking", body,
                                                     _content_type=MERGE)

    def set_image(image):
        custom.patch_namespaced_custom_object(
            GROUP, VERSION, ns, ROLLOUTS, "booking",
            {"spec": {"template": {"spec": {"containers": [{"name": "app", "image": image}]}}}},
            _content_type=MERGE)

    def settled(phase, step=None, weight=None):
        def done(r):
            st = r.get("status", {})
            return (st.get("phase") == phase and st.get("observedGeneration") == str(r["metadata"]["generation"])
                    and (step is None or st.get("currentStepIndex") == step)
                    and (weight is None or st["canary"]["weights"]["canary"]["weight"] == weight))
        return wait_for(rollout, done)

    body = {
        "apiVersion": "argoproj.io/v1alpha1", "kind": "Rollout", "metadata": {"name": "booking"},
        "spec": {
            "replicas": 2, "selector": {"matchLabels": {"app": "booking"}},
            "template": {"metadata": {"labels": {"app": "booking"}},
                         "spec": {"containers": [{"name": "app", "image": "booking:1"}]}},
            "strategy": {"canary": {"canaryService": "booking-canary", "stableService": "booking-stable",
                                    "steps": [{"setWeight": 25}, {"pause": {}}, {"setWeight": 50},
                                              # Long enough to be seen at 50 % on a busy machine
                                              # (1 s was missed once under CI load).
                                              {"pause": {"duration": "4s"}}]}},
        },
    }
    custom.create_namespaced_custom_object(GROUP, VERSION, ns, ROLLOUTS, body)
    first = settled("Healthy")
    assert first["status"]["stableRS"] == first["status"]["currentPodHash"], first["status"]
    print("rollout: first revision healthy without steps")

    set_image("booking:2")
    r = settled("Paused", step=1, weight=25)
    assert r["status"]["pauseConditions"][0]["reason"] == "CanaryPauseStep"
    print("set image: paused at step 1 with 25%")
    status_patch({"status": {"pauseConditions": None}})
    settled("Paused", step=3, weight=50)
    r = settled("Healthy", step=4)
    assert r["status"]["stableRS"] == r["status"]["currentPodHash"] != first["status"]["stableRS"], r["status"]
    assert r["status"]["canary"]["weights"]["canary"]["weight"] == 0
    print("promote: 50% then a timed pause, then the new revision is stable")

    set_image("booking:3")
    settled("Paused", step=1, weight=25)
    status_patch({"status": {"abort": True}})
    r = settled("Degraded", weight=0)
    assert "RolloutAborted" in r["status"]["message"], r["status"]
    print("abort: Degraded, weight back to 0")
    status_patch({"status": {"abort": False}})
    settled("Paused", step=1, weight=25)
    print("retry: the steps start again")
    status_patch({"status": {"promoteFull": True}})
    r = settled("Healthy", step=4)
    assert r["metadata"]["annotations"]["rollout.argoproj.io/revision"] == "3", r["metadata"]
    print("promote --full: stable at revision 3")

    # undo --to-revision 1: the template of the ReplicaSet of revision 1, without Argo's hash label.
    sets = apps.list_namespaced_replica_set(ns).items
    old = next(rs for rs in sets if rs.metadata.annotations.get("rollout.argoproj.io/revision") == "1")
    template = client.ApiClient().sanitize_for_serialization(old.spec.template)
    template["metadata"]["labels"].pop("rollouts-pod-template-hash", None)
    custom.patch_namespaced_custom_object(GROUP, VERSION, ns, ROLLOUTS, "booking", {"spec": {"template": template}},
                                          _content_type=MERGE)
    r = settled("Paused", step=1, weight=25)
    assert r["metadata"]["annotations"]["rollout.argoproj.io/revision"] == "4", r["metadata"]
    assert r["spec"]["template"]["spec"]["containers"][0]["image"] == "booking:1"
    assert r["status"]["currentPodHash"] == first["status"]["currentPodHash"], r["status"]
    print("undo --to-revision 1: revision 4 runs booking:1 through the steps")


def wait_for(read, done, seconds=10):
    deadline = time.monotonic() + seconds
    while True:
        value = read()
        if done(value):
            return value
        assert time.monotonic() < deadline, f"not reached in {seconds}s: {value}"
        time.sleep(0.05)


if __name__ == "__main__":
    main()
