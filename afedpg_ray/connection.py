"""Joining Ray for a run: connect to a cluster or start a local instance, and say where to watch it."""

from __future__ import annotations

import ray

from afedpg_ray.address import NAMESPACE, adopt_local_token, init_with_retry, probe_address, quiet_token_auth_notice
from afedpg_ray.config import first_line
from afedpg_ray.errors import RunError
from afedpg_ray.signals import ctrl_c_deferred


def connect(address: str | None) -> str | None:
    """Join the Ray cluster at ``address`` or start a local instance (no-op if already connected).

    Returns the Ray dashboard's address when this call connected and the cluster runs a dashboard, else None.
    """
    if ray.is_initialized():
        return None
    if address:
        probe_address(address)  # raises AddressError within seconds instead of ray.init's long retries
        adopt_local_token()
    quiet_token_auth_notice()
    try:  # address None: start a local instance
        with ctrl_c_deferred():
            context = init_with_retry(
                lambda: ray.init(address=address, namespace=NAMESPACE, logging_level="WARNING"), address
            )
    except Exception as err:  # a local start that times out raises a bare Exception from deep in Ray
        why = first_line(err)
        if address:
            raise RunError(f"--address: cannot connect to Ray at {address!r}: {why}") from None
        raise RunError(
            f"could not start a local Ray instance: {why} (a loaded machine slows Ray's start-up: retry, or "
            "start one with `ray start --head` and pass --address)"
        ) from None
    return getattr(context, "dashboard_url", None) or None


def own_instance_resources() -> dict[str, float] | None:
    """The total resources of the Ray instance this process started itself (``ray.init`` without an address
    found no cluster to join, so it runs the head node: one machine, which no autoscaler grows), or None when
    it joined a cluster, whose nodes may change."""
    node = getattr(ray._private.worker, "_global_node", None)  # Ray's own record of the node it runs
    try:
        started = node is not None and node.is_head()
    except Exception:  # noqa: BLE001 - a Ray without this internal: treat the instance as a cluster (wait)
        started = False
    return {name: float(amount) for name, amount in ray.cluster_resources().items()} if started else None


def status_address(address: str | None) -> str:
    """The address ``afedpg status`` joins to watch this driver's cluster (connected already)."""
    if address and address.startswith("ray://"):
        return address  # a Ray-client driver does not see the cluster's GCS address; status accepts ray:// too
    return ray.get_runtime_context().gcs_address


def watch_hint(status_at: str, dashboard: str | None, prefix: str, token_auth: bool) -> str:
    """One line telling where to watch a run: the Ray dashboard and the ``afedpg status`` command.

    With token authentication (Ray's default for local instances since 2.59) the dashboard asks a browser for
    the token; ``afedpg status`` sends this machine's token by itself (see ``address.adopt_local_token``).
    """
    status = f"afedpg status --address {status_at}" + ("" if prefix == "afedpg" else f" --prefix {prefix}")
    asks = " (it asks for the token that `ray get-auth-token` prints)" if token_auth else ""
    board = f"Ray dashboard http://{dashboard.removeprefix('http://')}{asks}; " if dashboard else ""
    return f"watch: {board}straggler table: {status}"
