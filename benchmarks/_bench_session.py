"""The running set-up the ``bench_runtime.py`` subcommands measure, and helpers they share.

:class:`Session` starts the receiver, the nodes under test (in this process or as
``bench_runtime.py _child`` processes) and the simulator. Nothing here imports rclpy at import
time: ``_runtime_common`` and the nodes are imported inside the functions, which run only after
``bench_runtime.py`` has called ``omnibind_ros.ros.env.ensure_safe_ros_env()``.
"""
from __future__ import annotations

import argparse
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

#: The entry script; children run ``SCRIPT _child --kind ...``.
SCRIPT = Path(__file__).resolve().with_name("bench_runtime.py")


# -- a running set-up ---------------------------------------------------------------------------

class Session:
    """Receiver + simulator in this process; the perception node here or in a child; optionally
    the baseline node in a child. The simulator starts last, so its stream time 0 (and the
    scenario's t = 0) is when everything under test is ready."""

    def __init__(self, args: argparse.Namespace, env: dict[str, str], workdir: Path,
                 bundle: Path, *, ours_in_process: bool, ours: bool = True,
                 baseline: bool = False, scenario: str = "", instrument: bool = True,
                 naive: bool = False) -> None:
        import _runtime_common as rc

        self.rc = rc
        self.stats: dict[str, dict[str, Any]] = {}
        self.children: dict[str, Any] = {}
        self.recorder = rc.StageRecorder()  # stages of an in-process perception node
        self.log = rc.SimLog()
        # the in-process nodes' INFO lines (every STALE/LIVE flip under load) would bury the
        # tables; children log to files in the work dir (--keep-logs keeps them)
        level = args.node_log_level
        self.rig = rc.Rig([rc.PERCEPTION_YAML, rc.SIM_YAML], log_levels={
            "omnibind_perception": level, "omnibind_sim_sensors": level})
        labels = tuple(label for label, on in ((rc.OURS, ours), (rc.BASELINE, baseline),
                                               (rc.NAIVE, naive)) if on)
        # the receiver spins alone, so a long simulator tick never delays a receive stamp
        self.receiver = self.rig.add(rc.Receiver(self.rig.context, labels), "single")
        self.instrument = instrument
        # a traced heap takes minutes to snapshot and compare at the end
        self.stop_timeout_s = 600.0 if getattr(args, "tracemalloc", False) else 30.0
        try:
            self._start(args, env, workdir, bundle, ours_in_process if ours else None, baseline,
                        scenario, naive)
        except BaseException:
            self.close()
            raise

    def _start(self, args: argparse.Namespace, env: dict[str, str], workdir: Path,
               bundle: Path, ours_in_process: bool | None, baseline: bool,
               scenario: str, naive: bool = False) -> None:
        """``ours_in_process``: True here, False in a child, None not at all; ``naive``: the
        hand-written torch-eager node (benchmarks/_naive_node.py) in a child."""
        rc = self.rc
        overrides = [a for item in args.set for a in ("--set", item)]
        overrides += ["--executor", args.executor]
        if not self.instrument:
            overrides.append("--no-instrument")
        if getattr(args, "tracemalloc", False):
            overrides += ["--tracemalloc-after", str(args.rss_warmup)]
        if ours_in_process:
            from omnibind_ros.ros.perception_lifecycle import PerceptionNode

            hook = self.recorder.hook if self.instrument else None
            self.ours = PerceptionNode(context=self.rig.context, hook=hook, parameter_overrides=[
                rc.Parameter("bundle_path", value=str(bundle)), *rc.parse_overrides(args.set)])
            self.rig.add(self.ours, args.executor, before_spin=lambda: rc._autostart(self.ours))
        elif ours_in_process is False:
            node_env = dict(env, **dict(item.split("=", 1) for item in args.node_env))
            self.children[rc.OURS] = rc.Child(SCRIPT, rc.OURS, bundle, node_env, workdir,
                                              overrides)
        if baseline:
            self.children[rc.BASELINE] = rc.Child(
                SCRIPT, rc.BASELINE, bundle, env, workdir,
                ["--slop", str(args.slop), "--queue-size", str(args.queue_size)])
        if naive:
            self.children[rc.NAIVE] = rc.Child(
                SCRIPT, rc.NAIVE, bundle, env, workdir,
                ["--slop", str(args.slop), "--queue-size", str(args.queue_size),
                 "--torch-threads", str(args.torch_threads),
                 "--audio-encode-hz", str(args.audio_encode_hz)])
        for child in self.children.values():
            child.wait_ready(timeout_s=600.0)
        rc.instrument_sim(self.log)
        from omnibind_ros.ros.sim_sensors_node import SimSensorsNode

        self.sim = SimSensorsNode(context=self.rig.context, parameter_overrides=[
            rc.Parameter("scenario_file", value=scenario)])
        self.control = rc.SimControl(self.sim)
        self.t0_ns = time.time_ns()
        self.rig.add(self.sim, "single")  # as its main(): rclpy.spin
        print("processes: " + ", ".join(f"{k} pid {v}" for k, v in self.pids.items()),
              flush=True)

    @property
    def pids(self) -> dict[str, int]:
        here = "+ours" if getattr(self, "ours", None) is not None else ""
        pids = {f"driver(sim+receiver{here})": os.getpid()}
        pids.update({f"{k} node": c.pid for k, c in self.children.items()})
        return pids

    def set_ours_params(self, params: list[Any], timeout_s: float = 5.0) -> bool:
        """Set perception parameters through its parameter service (any layout)."""
        from rclpy.parameter_client import AsyncParameterClient

        if getattr(self, "_param_client", None) is None:
            self._param_client = AsyncParameterClient(self.receiver, "omnibind_perception")
        if not self._param_client.wait_for_services(timeout_sec=timeout_s):
            return False
        future = self._param_client.set_parameters(params)
        return sleep_until(future.done, timeout_s) and all(
            r.successful for r in future.result().results)

    def records(self, label: str = "ours") -> list[Any]:
        return self.receiver.records[label]

    def stages(self) -> dict[str, list[tuple[int, float]]]:
        if "ours" in self.stats:
            return self.stats["ours"].get("stages", {})
        return self.recorder.snapshot()

    def close(self) -> None:
        for kind, child in self.children.items():
            self.stats[kind] = child.stop(timeout_s=self.stop_timeout_s)
        self.children_logs = {k: str(c.log_path) for k, c in self.children.items()}
        self.rig.close()


def sleep_until(predicate: Callable[[], bool], timeout_s: float, poll_s: float = 0.01) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(poll_s)
    return False


def header(args: argparse.Namespace, bundle_desc: str, layout: str) -> dict[str, Any]:
    layout += f"; perception executor: {args.executor}"
    if args.node_env:
        layout += f"; perception env: {' '.join(args.node_env)}"
    info = {"command": args.command, "bundle": bundle_desc, "layout": layout,
            "overrides": args.set, "loadavg_start": [round(x, 2) for x in os.getloadavg()],
            "cpus": os.cpu_count(), "domain_id": os.environ.get("ROS_DOMAIN_ID")}
    print(f"\n== {args.command}: bundle {bundle_desc}; {layout}; "
          f"{os.cpu_count()} CPUs, load average {info['loadavg_start']} "
          f"(the machine is shared: other load inflates every number)", flush=True)
    return info


def stage_summary(stages: dict[str, list], key: str, start: int, end: int) -> dict[str, float]:
    from _runtime_common import summary, window_values

    return summary(window_values(stages.get(key, []), start, end))



def fusion_param(args: argparse.Namespace, name: str) -> Any:
    """The perception parameter ``name``: config/perception.yaml's value, or its ``--set``
    override."""
    import _runtime_common as rc

    value = rc.yaml_params(rc.PERCEPTION_YAML)[name]
    for param in rc.parse_overrides(args.set):
        if param.name == name:
            value = param.value
    return value
