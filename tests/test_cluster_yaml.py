"""Offline checks of the Ray cluster launcher configs in ``cluster/``.

Every ``cluster/*.yaml`` goes through the same two steps ``ray up`` runs
before touching any machine: ``prepare_config`` (merge the provider's
``defaults.yaml``, fill node-type min/max workers; for the ``local`` provider
build its single node type from ``head_ip``/``worker_ips``) and
``validate_config`` (``ray-schema.json`` plus Ray's own consistency checks),
as Ray's ``python/ray/tests/test_autoscaler_yaml.py`` does. Neither step
contacts a cloud API (bootstrapping, which does, is not called); the
``_no_network`` fixture makes any non-loopback connection or DNS lookup fail
to prove it.

On top of schema validity we check what the configs promise: heterogeneous
fast/slow worker resources, token authentication for every ``ray start``, a
dashboard bound to loopback only, the metrics port, and the project mount.
The ``ray start`` commands are executed by ``bash`` with stub ``ray`` and
``hostname`` programs, so the checks see the real argv and environment.
"""

from __future__ import annotations

import copy
import json
import os
import shutil
import socket
import subprocess
import textwrap
from pathlib import Path

import jsonschema
import pytest
import yaml
from ray._private.authentication.authentication_token_setup import _get_default_token_path
from ray.autoscaler._private.util import prepare_config, validate_config

CLUSTER_DIR = Path(__file__).resolve().parent.parent / "cluster"
YAML_FILES = sorted(CLUSTER_DIR.glob("*.yaml"))
AGENT_RESOURCES = ("fast_node", "slow_node")
FAKE_HEAD_IP = "192.0.2.10"

needs_bash = pytest.mark.skipif(shutil.which("bash") is None, reason="bash not available")


def _param_files():
    return pytest.mark.parametrize("path", YAML_FILES, ids=[p.name for p in YAML_FILES])


_LOOPBACK_HOSTS = {"localhost", "127.0.0.1", "::1", "", None}


def _is_loopback(address) -> bool:
    if isinstance(address, (str, bytes)):  # AF_UNIX path
        return True
    host = address[0] if isinstance(address, tuple) and address else None
    return host in _LOOPBACK_HOSTS or (isinstance(host, str) and host.startswith("127."))


@pytest.fixture(autouse=True)
def _no_network(monkeypatch):
    """Fail loudly if anything (e.g. a cloud SDK) tries to reach a non-loopback host.

    Loopback stays allowed so a Ray session started by other tests in the same
    process keeps working while these tests run.
    """
    real_connect, real_connect_ex = socket.socket.connect, socket.socket.connect_ex
    real_getaddrinfo = socket.getaddrinfo

    def _refuse(what):
        raise RuntimeError(f"network access attempted during an offline config test: {what!r}")

    def connect(self, address):
        return real_connect(self, address) if _is_loopback(address) else _refuse(address)

    def connect_ex(self, address):
        return real_connect_ex(self, address) if _is_loopback(address) else _refuse(address)

    def getaddrinfo(host, *args, **kwargs):
        return real_getaddrinfo(host, *args, **kwargs) if _is_loopback((host,)) else _refuse(host)

    monkeypatch.setattr(socket.socket, "connect", connect)
    monkeypatch.setattr(socket.socket, "connect_ex", connect_ex)
    monkeypatch.setattr(socket, "getaddrinfo", getaddrinfo)


def test_network_guard_blocks_remote_hosts():
    with pytest.raises(RuntimeError, match="network access attempted"):
        socket.create_connection(("192.0.2.1", 443), timeout=1)
    with pytest.raises(RuntimeError, match="network access attempted"):
        socket.getaddrinfo("ec2.us-west-2.amazonaws.com", 443)


def _load(path: Path) -> dict:
    with open(path) as f:
        config = yaml.safe_load(f)
    assert isinstance(config, dict), f"{path.name} is not a YAML mapping"
    return config


def _prepared(path: Path) -> dict:
    return prepare_config(copy.deepcopy(_load(path)))


def _is_local(config: dict) -> bool:
    return config["provider"]["type"] == "local"


def _rename_key(config: dict, keypath: tuple[str, ...], new_name: str) -> dict:
    """Return a copy of ``config`` with the key at ``keypath`` renamed, order kept."""
    config = copy.deepcopy(config)
    parent = config
    for key in keypath[:-1]:
        parent = parent[key]
    old = keypath[-1]
    assert old in parent, f"cannot plant a typo: {'.'.join(keypath)} missing"
    items = list(parent.items())
    parent.clear()
    parent.update((new_name if k == old else k, v) for k, v in items)
    return config


def _start_command(commands: list[str]) -> str:
    starts = [c for c in commands if "ray start" in c]
    assert len(starts) == 1, f"expected exactly one `ray start` command, got {starts}"
    return starts[0]


@pytest.fixture(scope="module")
def stub_bin(tmp_path_factory) -> Path:
    """Directory with stub ``ray`` (prints env + argv) and ``hostname`` programs."""
    bin_dir = tmp_path_factory.mktemp("stub_bin")
    ray = bin_dir / "ray"
    ray.write_text(
        textwrap.dedent(
            """\
            #!/bin/sh
            printf 'RAY_AUTH_MODE=%s\\n' "${RAY_AUTH_MODE-}"
            for arg in "$@"; do printf 'ARG %s\\n' "$arg"; done
            """
        )
    )
    hostname = bin_dir / "hostname"
    hostname.write_text("#!/bin/sh\nprintf '%s\\n' \"$FAKE_HOST_IPS\"\n")
    for stub in (ray, hostname):
        stub.chmod(0o755)
    return bin_dir


def _run_start(command: str, stub_bin: Path, host_ips: str = "") -> tuple[str, list[str]]:
    """Run a start command with stubs; return (RAY_AUTH_MODE seen by ray, ray argv)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_AUTH")}
    env.update(
        PATH=f"{stub_bin}{os.pathsep}{env.get('PATH', '/usr/bin:/bin')}",
        RAY_HEAD_IP=FAKE_HEAD_IP,  # set by the Ray autoscaler for worker commands
        FAKE_HOST_IPS=host_ips,
    )
    proc = subprocess.run(["bash", "-c", command], env=env, capture_output=True, text=True, timeout=30)
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert lines and lines[0].startswith("RAY_AUTH_MODE="), proc.stdout
    auth_mode = lines[0].split("=", 1)[1]
    argv = [line[len("ARG ") :] for line in lines[1:] if line.startswith("ARG ")]
    assert argv[:1] == ["start"], argv
    return auth_mode, argv


def _resources_arg(argv: list[str]) -> dict:
    values = [a.split("=", 1)[1] for a in argv if a.startswith("--resources=")]
    return json.loads(values[0]) if values else {}


def test_cluster_configs_present():
    names = {p.name for p in YAML_FILES}
    assert {"aws.yaml", "gcp.yaml", "local.yaml"} <= names


@_param_files()
def test_ray_prepare_and_validate_pass(path):
    config = _prepared(path)
    validate_config(config)
    assert config["head_node_type"] in config["available_node_types"]


def _typos(path: Path) -> list[tuple[tuple[str, ...], str]]:
    config = _load(path)
    typos = [(("idle_timeout_minutes",), "idle_timout_minutes")]
    if "max_workers" in config:
        typos.append((("max_workers",), "max_wrokers"))
    if _is_local(config):
        # The local provider builds its node type itself; misspell a nested key instead.
        typos.append((("auth", "ssh_user"), "ssh_usr"))
    else:
        worker_type = next(t for t in config["available_node_types"] if t != config["head_node_type"])
        typos.append((("available_node_types", worker_type, "min_workers"), "min_wrokers"))
        typos.append((("available_node_types", worker_type, "resources"), "resource"))
    return typos


TYPO_CASES = [(path, keypath, new) for path in YAML_FILES for keypath, new in _typos(path)]


@pytest.mark.parametrize(
    ("path", "keypath", "new_name"),
    TYPO_CASES,
    ids=[f"{p.name}:{'.'.join(k)}->{n}" for p, k, n in TYPO_CASES],
)
def test_planted_typo_is_rejected(path, keypath, new_name):
    broken = _rename_key(_load(path), keypath, new_name)
    with pytest.raises(jsonschema.ValidationError):
        validate_config(prepare_config(broken))


@needs_bash
@_param_files()
def test_heterogeneous_worker_node_types(path, stub_bin):
    raw = _load(path)
    config = prepare_config(copy.deepcopy(raw))
    if _is_local(config):
        # No available_node_types for the local provider (prepare_local rejects it);
        # each worker machine picks its resource in the start command, so run it per IP.
        assert "available_node_types" not in raw
        command = _start_command(config["worker_start_ray_commands"])
        per_worker = {}
        for ip in config["provider"]["worker_ips"]:
            _, argv = _run_start(command, stub_bin, host_ips=f"10.9.8.7 {ip} fe80::1")
            per_worker[ip] = {k: v for k, v in _resources_arg(argv).items() if k in AGENT_RESOURCES}
        for ip, res in per_worker.items():
            assert len(res) == 1 and next(iter(res.values())) >= 1, f"worker {ip} gets {res}"
        kinds = [next(iter(res)) for res in per_worker.values()]
        assert set(kinds) == set(AGENT_RESOURCES), per_worker
        # An unlisted machine gets no agent resource.
        _, argv = _run_start(command, stub_bin, host_ips="198.51.100.99")
        assert not set(_resources_arg(argv)) & set(AGENT_RESOURCES)
        _, head_argv = _run_start(_start_command(config["head_start_ray_commands"]), stub_bin)
        assert not set(_resources_arg(head_argv)) & set(AGENT_RESOURCES)
        return

    node_types = config["available_node_types"]
    head = config["head_node_type"]
    assert not set(node_types[head]["resources"]) & set(AGENT_RESOURCES), "head must not host agents"
    workers = {name: nt for name, nt in node_types.items() if name != head}
    assert len(workers) >= 2
    by_resource = {}
    for name, nt in workers.items():
        agent_res = set(nt["resources"]) & set(AGENT_RESOURCES)
        assert len(agent_res) <= 1, f"{name} advertises both {agent_res}"
        for res in agent_res:
            assert nt["resources"][res] >= 1
            assert nt["max_workers"] >= 1, f"{name} can never be launched"
            by_resource.setdefault(res, []).append(name)
    assert set(by_resource) == set(AGENT_RESOURCES), by_resource
    # Cloud providers export node-type resources via RAY_OVERRIDE_RESOURCES; a
    # --resources flag in the shared worker command would apply to every type.
    assert "--resources" not in " ".join(config["worker_start_ray_commands"])


@needs_bash
@_param_files()
def test_token_auth_dashboard_and_metrics(path, stub_bin):
    config = _prepared(path)
    head_cmd = _start_command(config["head_start_ray_commands"])
    worker_cmd = _start_command(config["worker_start_ray_commands"])
    worker_ip = config["provider"].get("worker_ips", [""])[0]

    for cmd in (head_cmd, worker_cmd):
        assert "RAY_AUTH_MODE=token" in cmd
        assert "0.0.0.0" not in cmd

    head_auth, head_argv = _run_start(head_cmd, stub_bin)
    worker_auth, worker_argv = _run_start(worker_cmd, stub_bin, host_ips=worker_ip)

    # Token authentication is on for every `ray start`.
    assert head_auth == "token"
    assert worker_auth == "token"
    # Dashboard bound to loopback only, reachable via `ray dashboard` port forwarding.
    assert "--head" in head_argv
    dashboard_hosts = [a for a in head_argv if a.startswith("--dashboard-host")]
    assert dashboard_hosts == ["--dashboard-host=127.0.0.1"]
    assert not any(a.startswith("--dashboard-host") for a in worker_argv)
    assert f"--address={FAKE_HEAD_IP}:6379" in worker_argv
    # Prometheus endpoint on every node.
    assert "--metrics-export-port=8080" in head_argv
    assert "--metrics-export-port=8080" in worker_argv

    # The token reaches every node at Ray's default token path.
    default_token = "~/" + _get_default_token_path().relative_to(Path.home()).as_posix()
    assert default_token in config["file_mounts"]


@_param_files()
def test_project_mounted_and_installed(path):
    config = _load(path)
    assert config["file_mounts"].get("~/afedpg-ray") == "."
    commands = config["setup_commands"]
    installs = [i for i, c in enumerate(commands) if "pip install -e ~/afedpg-ray" in c]
    assert installs
    # CPU nodes: torch's CPU build goes in before the project, whose plain torch requirement it then meets
    cpu_torch = [i for i, c in enumerate(commands) if "download.pytorch.org/whl/cpu" in c and "torch" in c]
    assert cpu_torch and cpu_torch[0] < installs[0]


def test_aws_security_group_opens_nothing_but_ssh():
    provider = _load(CLUSTER_DIR / "aws.yaml")["provider"]
    # Ray adds intra-cluster traffic and SSH (22) itself; extra rules may only be SSH.
    rules = provider["security_group"]["IpPermissions"]
    assert all(r.get("FromPort") == r.get("ToPort") == 22 for r in rules), rules


def test_gcp_nodes_carry_firewall_tag():
    config = _load(CLUSTER_DIR / "gcp.yaml")
    for name, node_type in config["available_node_types"].items():
        assert "afedpg-ray" in node_type["node_config"]["tags"]["items"], name
