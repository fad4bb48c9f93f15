"""A local node agent: test and demo code, not product code.

It plays the kubelet for one Node of the local cluster, so that the operator's pods really run:

- registers the Node (no kwok annotation, so kwok leaves it alone) and keeps it Ready with a Lease;
- runs every container of every pod bound to it as a local process, with the container's own
  command, args and env (``$(VAR)`` expanded, downward-API fields resolved, ``envFrom``
  Secrets and ConfigMaps read); init containers first, one after the other, each to success
  (one that fails in a ``restartPolicy: Never`` pod fails the pod, as the kubelet does);
- gives each pod its own loopback address (127.N.x.y) as its pod IP, and tells the process to bind
  there through ``TRTOPS_BIND_HOST``, so several pods can use the same container ports;
- stands a host folder in for each volume (a PersistentVolumeClaim is ``<root>/pvc/<ns>/<claim>``,
  shared by every pod that mounts it), and rewrites paths under a mount point in args and env
  to the host folder (there is no mount namespace);
- plays cluster DNS and kube-proxy for Service names in args and env (``service_proxy``), so a
  pod reaches ``<svc>.<ns>.svc:<port>`` as on a real node;
- reports readiness from the pod's HTTP readiness probe, the termination message from the
  container's ``terminationMessagePath`` (or the log tail with ``FallbackToLogsOnError``), exit
  codes,
  and restarts containers of ``restartPolicy: Always`` pods;
- on deletion sends SIGTERM, waits the grace period, then SIGKILL, and removes the pod.

Run it as ``python -m tests.support.node_agent --root DIR`` with KUBECONFIG set.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import logging
import os
import random
import re
import signal
import subprocess
import threading
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from kubernetes import client, config
from kubernetes.client.rest import ApiException

from tests.support.service_proxy import ServiceProxies

log = logging.getLogger("node-agent")

NODE_LABEL = "trtops.dev/node-agent"


def now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


@dataclass
class Container:
    name: str
    process: subprocess.Popen[bytes] | None = None
    log_path: Path | None = None
    message_path: Path | None = None
    restarts: int = 0
    ready: bool = False
    exit_code: int | None = None
    message: str = ""
    started_at: dt.datetime | None = None
    finished_at: dt.datetime | None = None
    next_probe: float = 0.0
    next_start: float = 0.0


@dataclass
class Pod:
    uid: str
    namespace: str
    name: str
    ip: str
    workdir: Path
    containers: dict[str, Container] = field(default_factory=dict)
    inits: dict[str, Container] = field(default_factory=dict)
    terminating_since: float | None = None
    last_status: dict[str, Any] = field(default_factory=dict)


class NodeAgent:
    def __init__(
        self,
        api: client.ApiClient,
        node: str,
        root: Path,
        *,
        cpu: str = "64",
        memory: str = "256Gi",
        labels: dict[str, str] | None = None,
    ) -> None:
        self.core = client.CoreV1Api(api)
        self.coordination = client.CoordinationV1Api(api)
        self.node = node
        self.root = root
        self.cpu, self.memory = cpu, memory
        self.labels = {
            NODE_LABEL: node,
            "kubernetes.io/hostname": node,
            "kubernetes.io/os": "linux",
            **(labels or {}),
        }
        self.pods: dict[str, Pod] = {}
        self.stop = threading.Event()
        self._next_ip = 0
        # Every agent (and every restart) takes its own 127.N.0.0/16, so pod IPs never collide
        # with another agent's, or with processes an earlier run left behind.
        self._octet = random.SystemRandom().randint(16, 250)
        self._last_heartbeat = 0.0
        self.services = ServiceProxies(api, self._octet)

    # ---- node ----------------------------------------------------------------------------------

    def register(self) -> None:
        body = {
            "apiVersion": "v1",
            "kind": "Node",
            "metadata": {"name": self.node, "labels": self.labels},
            "spec": {},
        }
        try:
            self.core.create_node(body)
        except ApiException as exc:
            if exc.status != 409:
                raise
            self.core.patch_node(
                self.node, {"metadata": {"labels": self.labels}, "spec": {"taints": None}}
            )
        self.heartbeat(force=True)

    def heartbeat(self, force: bool = False) -> None:
        if not force and time.monotonic() - self._last_heartbeat < 5:
            return
        self._last_heartbeat = time.monotonic()
        stamp = now().isoformat()
        resources = {"cpu": self.cpu, "memory": self.memory, "pods": "250"}
        self.core.patch_node_status(
            self.node,
            {
                "status": {
                    "capacity": resources,
                    "allocatable": resources,
                    "addresses": [
                        {"type": "InternalIP", "address": "127.0.0.1"},
                        {"type": "Hostname", "address": self.node},
                    ],
                    "conditions": [
                        {
                            "type": "Ready",
                            "status": "True",
                            "reason": "KubeletReady",
                            "message": "local node agent is running",
                            "lastHeartbeatTime": stamp,
                            "lastTransitionTime": stamp,
                        }
                    ],
                    "nodeInfo": {
                        "architecture": "amd64",
                        "operatingSystem": "linux",
                        "kubeletVersion": "local-agent",
                        "containerRuntimeVersion": "local-process://1",
                        "kernelVersion": "",
                        "osImage": "",
                        "kubeProxyVersion": "",
                        "machineID": "",
                        "systemUUID": "",
                        "bootID": "",
                    },
                }
            },
        )
        lease = {
            "metadata": {"name": self.node, "namespace": "kube-node-lease"},
            "spec": {
                "holderIdentity": self.node,
                "leaseDurationSeconds": 40,
                "renewTime": now().strftime("%Y-%m-%dT%H:%M:%S.%fZ"),
            },
        }
        try:
            self.coordination.replace_namespaced_lease(
                self.node,
                "kube-node-lease",
                {
                    **lease,
                    "metadata": {
                        **lease["metadata"],
                        "resourceVersion": self.coordination.read_namespaced_lease(
                            self.node, "kube-node-lease"
                        ).metadata.resource_version,
                    },
                },
            )
        except ApiException as exc:
            if exc.status != 404:
                raise
            self.coordination.create_namespaced_lease("kube-node-lease", lease)

    # ---- pods ----------------------------------------------------------------------------------

    def run(self) -> None:
        self.register()
        while not self.stop.is_set():
            try:
                self.heartbeat()
                self.sync()
            except ApiException as exc:
                log.warning("API error: %s %s", exc.status, exc.reason)
            except Exception:
                log.exception("sync failed")
            self.stop.wait(0.3)
        self.shutdown()

    def sync(self) -> None:
        listed = self.core.list_pod_for_all_namespaces(
            field_selector=f"spec.nodeName={self.node}"
        ).items
        seen = set()
        for pod in listed:
            uid = pod.metadata.uid
            seen.add(uid)
            state = self.pods.get(uid)
            if state is None:
                if pod.status.phase in ("Succeeded", "Failed") or pod.metadata.deletion_timestamp:
                    if pod.metadata.deletion_timestamp:
                        self._finalize(pod)
                    continue
                state = self._admit(pod)
            if pod.metadata.deletion_timestamp:
                self._terminate(pod, state)
                continue
            self._tend(pod, state)
        for uid in set(self.pods) - seen:  # deleted behind our back: stop what still runs
            self._kill_all(self.pods.pop(uid), grace=2)

    def _admit(self, pod: Any) -> Pod:
        ip = f"127.{self._octet}.{self._next_ip // 250 + 1}.{self._next_ip % 250 + 2}"
        self._next_ip += 1
        workdir = (
            self.root / "pods" / pod.metadata.namespace / pod.metadata.name / pod.metadata.uid[:8]
        )
        workdir.mkdir(parents=True, exist_ok=True)
        state = Pod(pod.metadata.uid, pod.metadata.namespace, pod.metadata.name, ip, workdir)
        for c in pod.spec.containers:
            state.containers[c.name] = Container(c.name)
        for c in pod.spec.init_containers or []:
            state.inits[c.name] = Container(c.name)
        self.pods[state.uid] = state
        log.info("admitted pod %s/%s as %s", state.namespace, state.name, ip)
        return state

    def _volume_dirs(self, pod: Any, state: Pod) -> dict[str, Path]:
        dirs: dict[str, Path] = {}
        for vol in pod.spec.volumes or []:
            if vol.persistent_volume_claim:
                path = self.root / "pvc" / state.namespace / vol.persistent_volume_claim.claim_name
            elif vol.config_map:
                path = state.workdir / "volumes" / vol.name
                path.mkdir(parents=True, exist_ok=True)
                with contextlib.suppress(ApiException):
                    cm = self.core.read_namespaced_config_map(vol.config_map.name, state.namespace)
                    for key, value in (cm.data or {}).items():
                        (path / key).write_text(value)
            else:  # emptyDir, projected service account tokens and the rest: an empty folder
                path = state.workdir / "volumes" / vol.name
            path.mkdir(parents=True, exist_ok=True)
            dirs[vol.name] = path
        return dirs

    def _start(self, pod: Any, state: Pod, spec: Any, cont: Container) -> None:
        volumes = self._volume_dirs(pod, state)
        mounts = sorted(
            (
                (m.mount_path.rstrip("/"), volumes[m.name] / (m.sub_path or ""))
                for m in spec.volume_mounts or []
                if m.name in volumes
            ),
            key=lambda x: -len(x[0]),
        )
        cont.message_path = state.workdir / f"{spec.name}.termination-log"
        cont.message_path.unlink(missing_ok=True)
        message_in_pod = spec.termination_message_path or "/dev/termination-log"
        mounts.insert(0, (message_in_pod, cont.message_path))

        def host_path(value: str) -> str:
            if value.startswith(str(self.root) + "/"):
                return value  # already a host path (a build reports where it wrote, on the host)
            for in_pod, on_host in mounts:
                if value == in_pod or value.startswith(in_pod + "/"):
                    return str(on_host) + value[len(in_pod) :]
            return value

        env = {
            k: v
            for k, v in os.environ.items()
            if k in ("PATH", "HOME", "LANG", "PYTHONPATH", "VIRTUAL_ENV")
        }
        env.update(
            {
                "HOSTNAME": state.name,
                "TRTOPS_BIND_HOST": state.ip,
                "POD_IP": state.ip,
                "TRTOPS_TERMINATION_LOG": str(cont.message_path),
            }
        )
        for source in spec.env_from or []:
            env.update(self._env_from(state.namespace, source))
        for e in spec.env or []:
            value = e.value
            if e.value_from and e.value_from.field_ref:
                value = {
                    "metadata.name": state.name,
                    "metadata.namespace": state.namespace,
                    "status.podIP": state.ip,
                    "spec.nodeName": self.node,
                    "metadata.uid": state.uid,
                }.get(e.value_from.field_ref.field_path, "")
            elif e.value_from:
                value = self._ref_value(state.namespace, e.value_from)
            env[e.name] = _expand(value or "", env)
        if not spec.command:
            raise ValueError(
                f"container {spec.name} has no command: the local agent cannot run images"
            )
        argv = [
            self.services.rewrite(host_path(_expand(a, env)))
            for a in [*spec.command, *(spec.args or [])]
        ]
        env = {k: self.services.rewrite(host_path(v)) for k, v in env.items()}
        cont.log_path = state.workdir / f"{spec.name}.log"
        with cont.log_path.open("ab") as logf:
            cont.process = subprocess.Popen(
                argv,
                env=env,
                cwd=state.workdir,
                stdout=logf,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        cont.started_at, cont.exit_code, cont.ready, cont.finished_at = now(), None, False, None
        probe = spec.readiness_probe
        cont.next_probe = time.monotonic() + (probe.initial_delay_seconds or 0 if probe else 0)
        log.info(
            "started %s/%s[%s] pid %d: %s",
            state.namespace,
            state.name,
            spec.name,
            cont.process.pid,
            " ".join(argv),
        )

    def _env_from(self, namespace: str, source: Any) -> dict[str, str]:
        """An ``envFrom`` entry: every key of the Secret or ConfigMap that is a variable name."""
        import base64

        data: dict[str, str] = {}
        with contextlib.suppress(ApiException):
            if source.secret_ref is not None:
                raw = self.core.read_namespaced_secret(source.secret_ref.name, namespace).data
                data = {k: base64.b64decode(v).decode() for k, v in (raw or {}).items()}
            elif source.config_map_ref is not None:
                cm = self.core.read_namespaced_config_map(source.config_map_ref.name, namespace)
                data = dict(cm.data or {})
        prefix = source.prefix or ""
        return {
            prefix + k: v for k, v in data.items() if re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", k)
        }

    def _init_done(self, pod: Any, state: Pod) -> bool | None:
        """Run the init containers in order: True when all succeeded, None while one runs or
        waits to restart, False when one failed for good (restartPolicy Never)."""
        for spec in pod.spec.init_containers or []:
            cont = state.inits[spec.name]
            if cont.exit_code == 0:
                continue
            if cont.process is None and cont.exit_code is None:
                if time.monotonic() >= cont.next_start:
                    try:
                        self._start(pod, state, spec, cont)
                    except Exception as exc:
                        cont.exit_code, cont.message, cont.finished_at = 128, str(exc), now()
                return None
            if cont.process is not None and cont.process.poll() is not None:
                self._collect_exit(spec, cont)
            if cont.exit_code is None:
                return None  # still running
            if cont.exit_code == 0:
                continue
            if (pod.spec.restart_policy or "Always") == "Never":
                return False
            cont.restarts += 1
            cont.next_start = time.monotonic() + min(2**cont.restarts, 30)
            cont.exit_code = None
            return None
        return True

    def _ref_value(self, namespace: str, value_from: Any) -> str:
        with contextlib.suppress(ApiException, KeyError, TypeError):
            if value_from.config_map_key_ref:
                ref = value_from.config_map_key_ref
                return str(self.core.read_namespaced_config_map(ref.name, namespace).data[ref.key])
            if value_from.secret_key_ref:
                import base64

                ref = value_from.secret_key_ref
                data = self.core.read_namespaced_secret(ref.name, namespace).data
                return base64.b64decode(data[ref.key]).decode()
        return ""

    def _tend(self, pod: Any, state: Pod) -> None:
        policy = pod.spec.restart_policy or "Always"
        if not self._init_done(pod, state):
            self._report(pod, state)
            return
        for spec in pod.spec.containers:
            cont = state.containers[spec.name]
            if (
                cont.process is None
                and cont.exit_code is None
                and time.monotonic() >= cont.next_start
            ):
                try:
                    self._start(pod, state, spec, cont)
                except Exception as exc:  # a pod the agent cannot run fails like a bad image would
                    cont.exit_code, cont.message, cont.finished_at = 128, str(exc), now()
                    log.warning("cannot start %s/%s: %s", state.namespace, state.name, exc)
            if cont.process is not None and cont.process.poll() is not None:
                self._collect_exit(spec, cont)
                if policy == "Always" or (policy == "OnFailure" and cont.exit_code != 0):
                    cont.restarts += 1
                    cont.next_start = time.monotonic() + min(2**cont.restarts, 30)
                    cont.exit_code = None
            if cont.process is not None and cont.exit_code is None:
                self._probe(spec, state, cont)
        self._report(pod, state)

    def _collect_exit(self, spec: Any, cont: Container) -> None:
        assert cont.process is not None
        cont.exit_code = cont.process.returncode
        if cont.exit_code < 0:  # killed by a signal: report it as a shell would
            cont.exit_code = 128 - cont.exit_code
        cont.finished_at, cont.ready, cont.process = now(), False, None
        message = ""
        if cont.message_path and cont.message_path.exists():
            message = cont.message_path.read_text(errors="replace")[:4096]
        if (
            not message
            and cont.exit_code != 0
            and spec.termination_message_policy == "FallbackToLogsOnError"
            and cont.log_path
            and cont.log_path.exists()
        ):
            message = "\n".join(cont.log_path.read_text(errors="replace").splitlines()[-80:])[
                -2048:
            ]
        cont.message = message

    def _probe(self, spec: Any, state: Pod, cont: Container) -> None:
        probe = spec.readiness_probe
        if probe is None:
            cont.ready = True
            return
        if time.monotonic() < cont.next_probe:
            return
        cont.next_probe = time.monotonic() + min(probe.period_seconds or 10, 2)
        if probe.http_get is None:
            cont.ready = True
            return
        port = probe.http_get.port
        if isinstance(port, str) and not port.isdigit():
            port = next((p.container_port for p in spec.ports or [] if p.name == port), port)
        url = f"http://{state.ip}:{port}{probe.http_get.path or '/'}"
        try:
            with urllib.request.urlopen(url, timeout=max(probe.timeout_seconds or 1, 1)) as resp:
                cont.ready = 200 <= resp.status < 400
        except Exception:
            cont.ready = False

    def _terminate(self, pod: Any, state: Pod) -> None:
        grace = pod.spec.termination_grace_period_seconds
        grace = 30 if grace is None else grace
        if state.terminating_since is None:
            state.terminating_since = time.monotonic()
            for cont in state.containers.values():
                if cont.process and cont.process.poll() is None:
                    with contextlib.suppress(ProcessLookupError):
                        os.killpg(cont.process.pid, signal.SIGTERM)
        running = [c for c in state.containers.values() if c.process and c.process.poll() is None]
        if running and time.monotonic() - state.terminating_since < grace:
            for spec in pod.spec.containers:  # not ready any more, as the kubelet reports it
                state.containers[spec.name].ready = False
            self._report(pod, state)
            return
        self._kill_all(state, grace=0)
        self.pods.pop(state.uid, None)
        self._finalize(pod)

    def _finalize(self, pod: Any) -> None:
        with contextlib.suppress(ApiException):
            self.core.delete_namespaced_pod(
                pod.metadata.name,
                pod.metadata.namespace,
                grace_period_seconds=0,
                body=client.V1DeleteOptions(
                    grace_period_seconds=0, preconditions={"uid": pod.metadata.uid}
                ),
            )
            log.info("removed pod %s/%s", pod.metadata.namespace, pod.metadata.name)

    def _kill_all(self, state: Pod, grace: float) -> None:
        for cont in [*state.inits.values(), *state.containers.values()]:
            proc = cont.process
            if proc is None or proc.poll() is not None:
                continue
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGTERM if grace else signal.SIGKILL)
            try:
                proc.wait(timeout=grace or 5)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()

    def _report(self, pod: Any, state: Pod) -> None:
        policy = pod.spec.restart_policy or "Always"
        inits = [
            self._status(spec, state.inits[spec.name], "Never", state)
            for spec in pod.spec.init_containers or []
        ]
        init_failed = (
            any(c.exit_code not in (None, 0) and c.process is None for c in state.inits.values())
            and policy == "Never"
        )
        initialized = all(c.exit_code == 0 for c in state.inits.values())
        statuses = [
            self._status(spec, state.containers[spec.name], policy, state, initialized)
            for spec in pod.spec.containers
        ]
        conts = state.containers.values()
        done = all(c.process is None and c.exit_code is not None for c in conts)
        if init_failed:
            phase = "Failed"
        elif done and policy != "Always":
            phase = "Succeeded" if all(c.exit_code == 0 for c in conts) else "Failed"
        else:
            phase = "Running" if any(c.process is not None for c in conts) else "Pending"
        ready = (
            phase == "Running" and all(c.ready for c in conts) and state.terminating_since is None
        )
        status = {
            "phase": phase,
            "podIP": state.ip,
            "podIPs": [{"ip": state.ip}],
            "hostIP": "127.0.0.1",
            "containerStatuses": statuses,
            "conditions": [
                {"type": "PodScheduled", "status": "True"},
                {"type": "Initialized", "status": str(initialized)},
                {"type": "ContainersReady", "status": str(ready)},
                {"type": "Ready", "status": str(ready)},
            ],
        }
        if inits:
            status["initContainerStatuses"] = inits
        self._send(pod, state, status)

    def _status(
        self, spec: Any, cont: Container, policy: str, state: Pod, initialized: bool = True
    ) -> dict[str, Any]:
        stamp = (cont.started_at or now()).isoformat()
        if cont.process is not None:
            st: dict[str, Any] = {"running": {"startedAt": stamp}}
        elif cont.exit_code is not None or cont.finished_at is not None:
            st = {
                "terminated": {
                    "exitCode": cont.exit_code if cont.exit_code is not None else 1,
                    "reason": "Completed" if cont.exit_code == 0 else "Error",
                    "message": cont.message,
                    "startedAt": stamp,
                    "finishedAt": (cont.finished_at or now()).isoformat(),
                }
            }
            if policy == "Always":
                st = {"waiting": {"reason": "CrashLoopBackOff", "message": cont.message[-512:]}}
        else:
            st = {"waiting": {"reason": "ContainerCreating" if initialized else "PodInitializing"}}
        return {
            "name": spec.name,
            "image": spec.image or "",
            "imageID": "",
            "ready": cont.ready,
            "restartCount": cont.restarts,
            "started": cont.process is not None,
            "state": st,
            "containerID": f"local://{state.uid[:8]}-{spec.name}",
        }

    def _send(self, pod: Any, state: Pod, status: dict[str, Any]) -> None:
        if status == state.last_status:
            return
        stamp = now().isoformat()
        # Stamped in the body only: ``last_status`` stays comparable with the next report (with
        # the stamps in it, every pass patched every pod again, and woke the operator).
        body = {
            **status,
            "conditions": [{**c, "lastTransitionTime": stamp} for c in status["conditions"]],
            "startTime": pod.status.start_time.isoformat() if pod.status.start_time else stamp,
        }
        try:
            self.core.patch_namespaced_pod_status(
                pod.metadata.name, pod.metadata.namespace, {"status": body}
            )
            state.last_status = status
        except ApiException as exc:
            if exc.status != 404:
                raise

    def shutdown(self) -> None:
        for state in list(self.pods.values()):
            self._kill_all(state, grace=5)
        self.pods.clear()
        self.services.close()


def _expand(value: str, env: dict[str, str]) -> str:
    """Kubernetes' ``$(VAR)`` expansion; ``$$`` escapes, unknown names stay as written."""

    def sub(match: re.Match[str]) -> str:
        if match.group(0) == "$$":
            return "$"
        return env.get(match.group(1), match.group(0))

    return re.sub(r"\$\$|\$\(([A-Za-z_][A-Za-z0-9_]*)\)", sub, value)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--node", default="local-0")
    parser.add_argument(
        "--root", type=Path, required=True, help="folder for volumes, logs and termination messages"
    )
    parser.add_argument("--label", action="append", default=[], help="extra node label KEY=VALUE")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    labels = dict(item.split("=", 1) for item in args.label)
    agent = NodeAgent(config.new_client_from_config(), args.node, args.root, labels=labels)
    signal.signal(signal.SIGTERM, lambda *_: agent.stop.set())
    signal.signal(signal.SIGINT, lambda *_: agent.stop.set())
    agent.run()


if __name__ == "__main__":
    main()
