"""The engine on a bag's clock: messages and timers in log-time order, ticks and states recorded.

:class:`BagReplay` drives the node's engine (:class:`~omnibind_ros.core.recognizer.Recognizer`,
built from the node's configuration) with a clock that is the bag's: each staged message is
delivered at its log time, and the node's two timers run on a grid of the bag clock from the
first message: the fusion timer every ``Recognizer.timer_period_ns``, the monitor evaluation
every ``1 / MONITOR_RATE_HZ``. At equal times a timer runs after the messages logged at that
time, and the fusion timer before the monitor. The replay ends with one more monitor
evaluation at the last message's time, so a state change at the very end is recorded.

Every tick becomes a :class:`~omnibind_ros.bag.scoring.TickRecord` (its time, the stamp of the
newest sample fused, the answer), every state change a
:class:`~omnibind_ros.bag.scoring.StateChange`. Nothing here depends on wall-clock time, so
the same messages give the same records, whoever computed their outcomes.
"""
from __future__ import annotations

import math
from typing import Any

from omnibind_ros.bag.scoring import StateChange, TickRecord
from omnibind_ros.bag.stage import StagedMessage
from omnibind_ros.core.fusion import FusionResult, FusionTick
from omnibind_ros.core.recognizer import MONITOR_RATE_HZ, Recognizer
from omnibind_ros.core.sensor_worker import SampleReporter

__all__ = ["BagReplay"]

NS = 1_000_000_000


class BagReplay:
    """Feeds staged messages and timers to a fresh engine (see the module docstring).

    Parameters
    ----------
    config : the node's configuration (``bag.config.NodeConfig``).
    fusion : the fusion tick (``core.recognizer.build_fusion_tick``).
    start_ns : the bag clock's start (the first message's log time): the sensors' startup
        grace and the timer grids begin here.
    """

    def __init__(self, config: Any, fusion: FusionTick, start_ns: int) -> None:
        self.start_ns = self.now_ns = int(start_ns)
        settings = config.fusion
        self.engine = Recognizer(fusion, clock=self._clock, rate_hz=settings.rate_hz,
                                 tick_on_embedding=settings.tick_on_embedding,
                                 on_result=self._on_result, on_tick_error=self._on_error,
                                 hook=self._hook)
        for cfg in config.sensors:
            self.engine.add_sensor(cfg.monitor_config(config.bad_samples_to_degrade))
        self.reporters = {cfg.name: SampleReporter(cfg.name, self.engine)
                          for cfg in config.sensors}
        self.timer_period_ns = self.engine.timer_period_ns
        self.monitor_period_ns = round(NS / MONITOR_RATE_HZ)
        self._next_timer = self._next_update = 1
        self.ticks: list[TickRecord] = []
        self.states: list[StateChange] = []
        self.tick_errors: list[str] = []
        # cost of the embeddings that may be in the engine's store: sensor -> stamp -> s
        self._costs: dict[str, dict[int, float]] = {}
        self._tick_s = 0.0

    # -- the clock -------------------------------------------------------------------------------

    def _clock(self) -> int:
        return self.now_ns

    # -- driving ---------------------------------------------------------------------------------

    def deliver(self, sensor: str, message: StagedMessage) -> None:
        """One staged message of ``sensor``, at its log time (after the timers before it)."""
        self.advance(message.log_ns)
        self.now_ns = message.log_ns
        outcome = message.outcome
        if outcome.kind == "embedding":
            costs = self._costs.setdefault(sensor, {})
            costs[outcome.stamp_ns] = message.cost_s
        self.reporters[sensor].report(outcome)
        if outcome.kind == "embedding":  # only the stored slot can be fused from now on
            slot = self.engine.store.get(sensor)
            for stamp in [s for s in costs if slot is None or s < slot.stamp_ns]:
                del costs[stamp]

    def advance(self, t_ns: int, inclusive: bool = False) -> None:
        """Run the timers due before ``t_ns`` (and at it, with ``inclusive``)."""
        while True:
            timer = (self.start_ns + self._next_timer * self.timer_period_ns
                     if self.timer_period_ns else math.inf)
            update = self.start_ns + self._next_update * self.monitor_period_ns
            due = min(timer, update)
            if due > t_ns or (due == t_ns and not inclusive):
                return
            self.now_ns = int(due)
            if timer <= update:
                self._next_timer += 1
                self.engine.on_fusion_timer()
            else:
                self._next_update += 1
                self._monitor()

    def finish(self, end_ns: int) -> None:
        """Run the timers up to and at ``end_ns``, then a last monitor evaluation there."""
        self.advance(end_ns, inclusive=True)
        self.now_ns = end_ns
        self._monitor()

    def _monitor(self) -> None:
        for t in self.engine.on_monitor_timer().transitions:
            self.states.append(StateChange(t.time_ns, t.name, t.new.name, t.reason))

    # -- engine callbacks ------------------------------------------------------------------------

    def _hook(self, key: str, seconds: float) -> None:
        if key == "fusion/tick":
            self._tick_s = seconds

    def _on_result(self, result: FusionResult) -> None:
        if not result.answered:
            self.ticks.append(TickRecord(self.now_ns, None, (), (), "", (),
                                         result.no_answer_reason, self._tick_s))
            return
        # the newest fused sample (the first in token order among equal stamps)
        newest = max(result.per_modality, key=lambda p: p.stamp_ns)
        cost_s = self._costs[newest.sensor][newest.stamp_ns]
        self.ticks.append(TickRecord(
            self.now_ns, result.stamp_ns, result.sensors, result.modalities, result.best_label,
            result.top_labels, "", self._tick_s + cost_s, round(result.best_score, 6),
            round(result.confidence, 6), result.unsure))

    def _on_error(self, exc: Exception) -> None:
        self.tick_errors.append(f"t={self.now_ns / NS:.3f}: {exc}")
