"""Offline evaluation of a bag: the node's engine, message by message, on the bag's clock.

Offline is the *infinitely fast machine*: every message reaches the node at its log time (the
time the recorder received it), is converted, preprocessed and encoded with zero latency, and
its embedding is available at that same instant. What remains is exactly what the node decides,
so the numbers measure the model and the availability logic, not this machine's speed (live
mode, :mod:`omnibind_ros.bag.live`, measures the real-time behaviour). Nothing here depends on
wall-clock time or thread scheduling: the same bag gives the same numbers on every run.

The path is the node's, with the threads taken out:

* each message of a mapped topic goes through its sensor's stage
  (:class:`~omnibind_ros.bag.stage.BagSensor`: deserialization into the installed message
  class, the node's stamp rule, then the node's
  :class:`~omnibind_ros.core.pipeline.SensorStage`: stamp order, conversion, the audio stream,
  the ``encode_rate_hz`` throttle, preprocessing and encoder). An infinitely fast worker is never
  busy, so no message is ever replaced while it waits;
* the outcome goes to the node's engine (:class:`~omnibind_ros.core.recognizer.Recognizer`,
  through the node's :class:`~omnibind_ros.core.sensor_worker.SampleReporter`) at the message's
  log time, with the node's timers on the bag clock (:class:`~omnibind_ros.bag.replay.
  BagReplay`). A bag has no ROS graph, so publisher counts are never reported: an unplugged
  sensor is found by its silence (STALE, LOST), as it would be by a node whose graph poll lags.

``processes=0`` runs exactly that, in this process: the reference. With ``processes > 0`` the
sensor stages run in worker processes (:mod:`omnibind_ros.bag.parallel`), ahead of the engine;
their outcomes are delivered to the same replay in the same order, so the results are the same
(a test holds it).
"""
from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from omnibind_ros.bag.errors import BagEvalError
from omnibind_ros.bag.parallel import ParallelStages, backend_for, read_guarded
from omnibind_ros.bag.replay import BagReplay
from omnibind_ros.bag.scoring import EvalResult, phases_from_events, phases_from_states
from omnibind_ros.bag.stage import BagSensor
from omnibind_ros.core.names import GROUND_TRUTH_TOPIC, SCENARIO_EVENT_TOPIC

__all__ = ["BagEvalError", "default_processes", "evaluate_offline", "run_reference"]

NS = 1_000_000_000


def default_processes(backend: str = "onnxruntime") -> int:
    """Worker processes :func:`evaluate_offline` uses by default: one per core (at most 8);
    none (the reference path in this process) on one core or with a backend other than ONNX
    Runtime (the workers build single-threaded ONNX Runtime sessions)."""
    from omnibind_ros.core.backends import BACKENDS

    cpus = os.cpu_count() or 1
    return min(8, cpus) if cpus > 1 and backend.lower() in BACKENDS["onnxruntime"] else 0


def single_threaded_blas() -> Any:
    """Limit BLAS to one thread while an evaluation runs; the limiter (restore it), or None.

    OpenBLAS workers busy-wait between numpy's small matrix products (audio mel projection,
    point-cloud plane fits) and compete with the evaluation's own work for the cores.
    """
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:  # optional: only speed depends on it
        return None
    return threadpool_limits(limits=1, user_api="blas")


def run_reference(messages: Iterable[Any], sensors: dict[str, BagSensor],
                  topics: dict[str, str], replay: BagReplay, *,
                  info_topics: dict[str, str] | None = None,
                  on_other: Callable[[Any], None] | None = None,
                  progress: Callable[[int], None] | None = None
                  ) -> tuple[int, BaseException | None]:
    """The reference path: every message in bag order through its stage and the replay.

    ``topics`` maps topic -> sensor name, ``info_topics`` a sensor's paired info topic (e.g.
    AudioInfo) -> its name; messages of other topics go to ``on_other``. Returns
    (the last log time read, the exception that ended reading a damaged bag or None); the
    replay is finished at that last log time either way.
    """
    last_ns, errors = replay.start_ns, []
    for m in read_guarded(messages, errors):  # a damaged bag: keep what was read
        last_ns = max(last_ns, m.log_time_ns)
        name = topics.get(m.topic)
        if name is None:
            owner = (info_topics or {}).get(m.topic)
            if owner is not None:
                sensors[owner].process(m.index, m.log_time_ns, m.rawdata, info=True)
            elif on_other is not None:
                on_other(m)
            continue
        staged = sensors[name].process(m.index, m.log_time_ns, m.rawdata)
        if staged is not None:
            replay.deliver(name, staged)
        if progress is not None:
            progress(m.log_time_ns)
    replay.finish(last_ns)
    return last_ns, errors[0] if errors else None


def _progress_bar(enabled: bool, start_ns: int, end_ns: int
                  ) -> tuple[Callable[[int], None], Callable[[], None]]:
    if not enabled:
        return (lambda _t: None), (lambda: None)
    from tqdm import tqdm

    total = max(0.0, (end_ns - start_ns) / NS)
    bar = tqdm(total=round(total, 1), unit="bag s", desc="offline eval", leave=False)
    done = [0.0]

    def update(t_ns: int) -> None:
        now = round(min(total, max(0.0, (t_ns - start_ns) / NS)), 1)
        if now > done[0]:
            bar.update(now - done[0])
            done[0] = now

    return update, bar.close


def _mapped_topics(info: Any, config: Any, truth_topic: str, bag: Path, check: Any | None
                   ) -> tuple[dict[str, str], dict[str, str]]:
    """(topic -> sensor name, skipped topic -> why); BagEvalError when nothing maps, naming
    every sensor with what would work (``check``: :class:`~omnibind_ros.bag.sensor_check.
    SensorCheck`; None when the bundle could not be read, then without that listing)."""
    from omnibind_ros.bag.config import map_topics

    mapped, skipped = map_topics(info.topics, config.sensors, (truth_topic, SCENARIO_EVENT_TOPIC))
    if not mapped:
        raise BagEvalError(
            f"no topic of bag {bag} belongs to a configured sensor. Bag topics: "
            + (", ".join(f"{t} ({v[0]})" for t, v in sorted(info.topics.items())) or "none")
            + ". Configured sensors ("
            + (str(config.path) if config.path else "defaults") + "): "
            + ", ".join(f"{s.name} on {s.topic} ({s.message_type})" for s in config.sensors)
            + ". Pass the node configuration the bag was recorded for (--config)."
            + (" Per sensor:\n" + check.listing() if check is not None else ""))
    return {topic: cfg.name for topic, cfg in mapped.items()}, skipped


class _Others:
    """Collects what the evaluation reads besides the sensors: ground truth, scenario events."""

    def __init__(self, truth_topic: str, use_truth_topic: bool) -> None:
        self.truth_topic = truth_topic if use_truth_topic else None
        self.truth: list[tuple[int, Any]] = []
        self.events: list[tuple[int, str]] = []

    def __call__(self, m: Any) -> None:
        from rclpy.serialization import deserialize_message

        if m.topic == self.truth_topic:
            from omnibind_ros.msg import GroundTruth

            self.truth.append((m.log_time_ns, deserialize_message(m.rawdata, GroundTruth)))
        elif m.topic == SCENARIO_EVENT_TOPIC:
            from std_msgs.msg import String

            self.events.append((m.log_time_ns, deserialize_message(m.rawdata, String).data))


def evaluate_offline(bag: str | Path, *, bundle: str | Path | None = None,
                     config: str | Path | None = None, truth_csv: str | Path | None = None,
                     truth_topic: str = GROUND_TRUTH_TOPIC, backend: str = "onnxruntime",
                     progress: bool = True, processes: int | None = None,
                     backend_wrapper: Callable[[Any], Any] | None = None) -> EvalResult:
    """Evaluate a bag offline (see the module docstring).

    Parameters
    ----------
    bag : rosbag2 directory (or a bare .mcap/.db3).
    bundle : model bundle; None = the config's ``bundle_path``, else the default bundle.
    config : the node's parameter YAML (topic -> sensor mapping, fusion, labels); None = the
        package's ``config/perception.yaml``.
    truth_csv : ground truth as labelled intervals (replaces the truth topic).
    truth_topic : ground-truth topic (omnibind_ros/msg/GroundTruth).
    backend : inference backend (sessions single-threaded: deterministic outputs).
    progress : a progress bar (tqdm) on stderr.
    processes : worker processes for the sensor stages; 0 = the reference path in this
        process; None = :func:`default_processes`. The results are the same either way.
    backend_wrapper : ``backend -> backend`` applied to the encoders' backend (picklable with
        worker processes; tests use it to inject encoder failures).

    Raises
    ------
    FileNotFoundError : bag, bundle or config missing.
    BagEvalError : no topic of the bag maps to a configured sensor (the message lists both),
        or nothing of the bag is readable.
    ConfigError, TruthError : an unusable config or ground-truth CSV; a config with sensors
        the node would refuse (a bad value, a modality the bundle lacks) names every unusable
        sensor at once (:mod:`omnibind_ros.bag.sensor_check`). Sensors the bag merely does not
        feed are named together in one warning (``EvalResult.warnings``).

    A bag damaged part-way is not an error: the result holds everything up to the damage and
    ``error`` names the position.
    """
    from omnibind_ros.ros.env import ensure_safe_ros_env

    ensure_safe_ros_env()  # rclpy (serialization) is imported below
    from omnibind_ros.bag.config import info_topics as config_info_topics
    from omnibind_ros.bag.config import load_node_config
    from omnibind_ros.bag.reader import BagReadError, iter_messages, open_info
    from omnibind_ros.bag.sensor_check import preflight
    from omnibind_ros.core.backends import create_backend
    from omnibind_ros.core.bundle import BundleNotFoundError, default_bundle_dir, load_bundle
    from omnibind_ros.core.labels import resolve_labels
    from omnibind_ros.core.recognizer import build_fusion_tick

    wall0 = time.perf_counter()
    bag = Path(bag)
    cfg = load_node_config(config, strict=False)  # every unusable sensor is named below
    try:
        info = open_info(bag)
    except BagReadError as exc:
        raise BagEvalError(f"nothing of bag {bag} is readable: {exc}") from exc
    bundle_path = bundle or cfg.params.get("bundle_path") or default_bundle_dir()
    try:
        check = preflight(cfg, info.topics, bundle_path,
                          used=(truth_topic, SCENARIO_EVENT_TOPIC), bag=bag)
    except BundleNotFoundError:
        # mapping topics needs no model: a bag recorded for another config says so first
        _mapped_topics(info, cfg, truth_topic, bag, None)
        raise
    topics, skipped = _mapped_topics(info, cfg, truth_topic, bag, check)
    info_topics = config_info_topics(info.topics, cfg.sensors)
    for topic in info_topics:
        skipped.pop(topic, None)
    n_procs = default_processes(backend) if processes is None else max(0, int(processes))
    parallel = None
    if n_procs:  # first: the workers import while this process loads the bundle
        parallel = ParallelStages.start(cfg, n_procs, info, topics)
    blas = single_threaded_blas()
    try:
        model = load_bundle(bundle_path)
        sensors: dict[str, BagSensor] = {}
        if parallel is None:
            engine_backend = create_backend(backend, model, threads=1)
            encoders = engine_backend if backend_wrapper is None else backend_wrapper(
                engine_backend)
            sensors = {s.name: BagSensor(s, model, encoders, info.definitions)
                       for s in cfg.sensors}
        else:  # the workers hold the encoders: here only fusion, and text for new labels
            parallel.configure(model, backend, backend_wrapper, info.definitions)
            engine_backend = backend_for(backend, model, (), fusion=True,
                                         text=bool(cfg.label_names or cfg.label_file))
        labels = resolve_labels(model, engine_backend, cfg.label_names, cfg.label_file)
        replay = BagReplay(cfg, build_fusion_tick(model, engine_backend, cfg.fusion, *labels),
                           info.start_ns)
        others = _Others(truth_topic, truth_csv is None)
        update, close_bar = _progress_bar(progress, info.start_ns, info.end_ns)
        setup_s = time.perf_counter() - wall0
        try:
            # Every topic is read (unknown ones are dropped by `others`): the evaluation spans
            # the bag from its first to its last message, whatever their topic.
            if parallel is None:
                last_ns, read_error = run_reference(iter_messages(bag), sensors, topics, replay,
                                                    info_topics=info_topics, on_other=others,
                                                    progress=update)
            else:
                last_ns, read_error = parallel.run(iter_messages(bag), topics, replay,
                                                   info_topics=info_topics, on_other=others,
                                                   progress=update)
        finally:
            close_bar()
    except BaseException:
        if parallel is not None:
            parallel.abort()  # kill the workers: nothing of them is needed any more
        raise
    finally:
        if parallel is not None:
            parallel.close()
        if blas is not None:
            blas.restore_original_limits()
    if read_error is not None and not isinstance(read_error, BagReadError):
        raise read_error
    if parallel is None:
        counters = {name: sensor.counters() for name, sensor in sensors.items()}
        timing: dict[str, Any] = {}
    else:
        counters, timing = parallel.counters, parallel.timing
    timing = {"setup_s": round(setup_s, 3), "processes": n_procs, **timing}
    result = _result(bag, cfg, info, topics, skipped, replay, counters, others, truth_csv,
                     truth_topic, last_ns, read_error, bundle_path, engine_backend, backend,
                     time.perf_counter() - wall0, timing,
                     f"{model.name} (family: {model.family or 'unspecified'})")
    warning = check.warning()
    result.extra["sensor_warnings"] = [warning] if warning else []
    return result


def _result(bag: Path, cfg: Any, info: Any, topics: dict[str, str], skipped: dict[str, str],
            replay: BagReplay, counters: dict[str, dict[str, Any]], others: _Others,
            truth_csv: Any, truth_topic: str, end_ns: int, read_error: BaseException | None,
            bundle_path: Any, engine: Any, backend: str, wall_s: float,
            timing: dict[str, Any], model: str = "") -> EvalResult:
    from omnibind_ros.bag.truth import GroundTruth

    if truth_csv is not None:
        truth = GroundTruth.from_csv(truth_csv, info.start_ns)
    elif others.truth:
        truth = GroundTruth.from_messages(others.truth, end_ns)
    else:
        truth = None
    names = [s.name for s in cfg.sensors]
    if others.events:
        phases = phases_from_events(others.events, names, info.start_ns, end_ns)
    else:
        phases = phases_from_states(replay.states, names, info.start_ns, end_ns)
    mapped = set(topics)
    sensors_extra = {}
    for s in cfg.sensors:
        count = counters.get(s.name) or BagSensor.no_counters()
        # as live mode's table (bag.live_sensors): every decodable message reaches the engine
        sensors_extra[s.name] = {"topic": s.topic, "modality": s.modality,
                                 "mapped": s.topic in mapped, "messages": count["received"],
                                 "received": count["received"] - count["undecodable"],
                                 "undecodable": count["undecodable"],
                                 "encoded": count["encoded"],
                                 "bad": replay.reporters[s.name].bad}
        if count["first_error"]:
            sensors_extra[s.name]["first_undecodable"] = count["first_error"]
        if count.get("info_messages"):
            sensors_extra[s.name]["info_messages"] = count["info_messages"]
            sensors_extra[s.name]["bad_info"] = count.get("bad_info", 0)
    ticks = replay.ticks
    extra = {
        "config": str(cfg.path) if cfg.path else None,
        "bundle": str(Path(bundle_path)),
        "model": model,
        "backend": getattr(engine, "name", backend),
        "fusion": {"rate_hz": cfg.fusion.rate_hz, "max_age_s": cfg.fusion.max_age_s,
                   "min_modalities": cfg.fusion.min_modalities, "top_k": cfg.fusion.top_k,
                   "tick_on_embedding": bool(cfg.fusion.tick_on_embedding)},
        "labels": list(replay.engine.fusion.label_names),
        "sensors": sensors_extra,
        "truth_source": ("csv" if truth_csv is not None else
                         truth_topic if others.truth else None),
        "scenario_events": len(others.events),
        "unknown_params": list(cfg.unknown),
        "fusion_errors": replay.tick_errors[:20],
        "timing": timing,
    }
    return EvalResult(
        bag=str(bag), mode="offline", ticks=ticks, states=replay.states, truth=truth,
        phases=phases, sensors=names, skipped_topics=skipped,
        error=None if read_error is None else str(read_error), wall_s=wall_s, extra=extra,
        start_ns=info.start_ns, end_ns=end_ns,
        modalities={s.name: s.modality for s in cfg.sensors})
