"""Carry out an Outcome against the Kubernetes API: server-side apply, deletes, Events.

Server-side apply under the field manager ``goodput-operator`` with force: the operator owns
the fields it sets (replicas among them) and nothing else, so a GitOps tool that owns other
fields (annotations, extra labels) does not fight it.
"""

from __future__ import annotations

import datetime as dt
import logging
from typing import Any

from kubernetes import client, config
from kubernetes.client.exceptions import ApiException

from goodput.api.v1alpha1 import GROUP, KIND, PLURAL, VERSION
from goodput.render.reconcile import Event, PoolObservation
from goodput.render.vllm import FIELD_MANAGER, OWNER_LABEL, ROLE_LABEL, pool_name

log = logging.getLogger(__name__)
APPLY = "application/apply-patch+yaml"


def load_config() -> None:
    """In a pod: the service account; elsewhere: $KUBECONFIG or ~/.kube/config."""
    try:
        config.load_incluster_config()  # type: ignore[no-untyped-call]
    except config.ConfigException:
        config.load_kube_config()  # type: ignore[no-untyped-call]


class Kube:
    def __init__(self, api_client: client.ApiClient | None = None) -> None:
        self.api = api_client or client.ApiClient()
        self.apps = client.AppsV1Api(self.api)
        self.core = client.CoreV1Api(self.api)

    # --- reads -------------------------------------------------------------------------------
    def observe_pools(self, namespace: str, name: str) -> dict[str, PoolObservation]:
        """The owned Deployments' replicas and ready replicas, by pool role."""
        deployments = self.apps.list_namespaced_deployment(namespace, label_selector=f"{OWNER_LABEL}={name}")
        out = {}
        for d in deployments.items:
            role = ((d.metadata.labels if d.metadata else None) or {}).get(ROLE_LABEL)
            if role:
                out[role] = PoolObservation(replicas=d.spec.replicas or 0,
                                            ready_replicas=(d.status.ready_replicas or 0) if d.status else 0)
        return out

    # --- writes ------------------------------------------------------------------------------
    def apply(self, obj: dict[str, Any]) -> None:
        kind, meta = obj["kind"], obj["metadata"]
        if kind == "Deployment":
            self.apps.patch_namespaced_deployment(meta["name"], meta["namespace"], obj, field_manager=FIELD_MANAGER,
                                                  force=True, _content_type=APPLY)
        elif kind == "Service":
            self.core.patch_namespaced_service(meta["name"], meta["namespace"], obj, field_manager=FIELD_MANAGER,
                                               force=True, _content_type=APPLY)
        else:
            raise ValueError(f"the operator does not apply {kind}")

    def delete_pool(self, namespace: str, name: str, role: str) -> None:
        for delete in (self.apps.delete_namespaced_deployment, self.core.delete_namespaced_service):
            try:
                delete(pool_name(name, role), namespace, propagation_policy="Background")
            except ApiException as exc:
                if exc.status != 404:
                    raise

    def post_event(self, body: dict[str, Any], event: Event, now: dt.datetime) -> None:
        meta = body["metadata"]
        ev = client.CoreV1Event(
            metadata=client.V1ObjectMeta(generate_name=f"{meta['name']}.", namespace=meta["namespace"]),
            involved_object=client.V1ObjectReference(api_version=f"{GROUP}/{VERSION}", kind=KIND,
                                                     name=meta["name"], namespace=meta["namespace"],
                                                     uid=meta.get("uid")),
            reason=event.reason,
            message=event.message[:1024],
            type=event.type,
            source=client.V1EventSource(component=FIELD_MANAGER),
            reporting_component=FIELD_MANAGER,
            reporting_instance=FIELD_MANAGER,
            first_timestamp=now,
            last_timestamp=now,
            count=1,
            action="Reconcile",
        )
        self.core.create_namespaced_event(meta["namespace"], ev)

    def patch_status(self, namespace: str, name: str, status: dict[str, Any]) -> None:
        custom = client.CustomObjectsApi(self.api)
        custom.patch_namespaced_custom_object_status(GROUP, VERSION, namespace, PLURAL, name, {"status": status})
