"""The per-sensor message table of a live evaluation, with the same columns and the same damage
positions as offline mode's.

Offline mode counts per sensor what its stage saw: messages, undecodable ones (with the first
one's index among the bag's messages), embeddings, bad samples. Live mode had no such table:
the node's subscriptions never see a message the middleware cannot deserialize (rmw drops it
silently; measured: a garbage CDR buffer published to an rclpy subscription runs no callback
and raises nothing), and the player only publishes bytes. So the table is assembled from the
three places that know a part of it:

* the player: messages published per topic (every message of the topic in the bag, up to a
  read error);
* the bag itself, after playback: which of those messages do not deserialize
  (:func:`undecodable_messages`, the same deserializer and the same message naming as offline
  mode's :class:`~omnibind_ros.bag.stage.BagSensor`, over the same message indices), read after
  the real-time part so that it costs the measured node nothing;
* the node's sensor workers: messages that reached its callbacks, embeddings accepted, bad
  samples (conversion, preprocessing or encoding failed).

``received`` is the column that differs by design: offline every decodable message reaches the
engine; live, a message a best-effort queue replaced while the node was busy never does.
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

__all__ = ["live_sensor_table", "node_counts", "undecodable_messages"]


def undecodable_messages(bag: str | Path, topics: Mapping[str, str],
                         definitions: Mapping[str, str] | None = None,
                         until_ns: int | None = None) -> dict[str, tuple[int, str]]:
    """Topic -> (messages that do not deserialize, the first one named as offline mode names
    it), for the sensor ``topics`` (topic -> configured message type), read in bag order (all
    topics, so indices are the bag's) up to ``until_ns`` (the last log time played) or a read
    error."""
    from omnibind_ros.bag.reader import BagReadError, iter_messages
    from omnibind_ros.bag.stage import bag_deserializer, undecodable_text

    decoders = {}
    for topic, msgtype in topics.items():
        try:
            decoders[topic] = bag_deserializer(msgtype, definitions)
        except ValueError:
            continue
    out: dict[str, tuple[int, str]] = {}
    try:
        for msg in iter_messages(bag):
            if until_ns is not None and msg.log_time_ns > until_ns:
                break
            decode = decoders.get(msg.topic)
            if decode is None:
                continue
            try:
                decode(msg.rawdata)
            except Exception as exc:  # noqa: BLE001  (what the middleware would drop)
                count, first = out.get(msg.topic, (0, ""))
                out[msg.topic] = (count + 1, first or undecodable_text(msg.index, exc))
    except BagReadError:
        pass  # the damage itself is the evaluation's error; what was read is counted
    return out


def node_counts(node: Any, names: Sequence[str]) -> dict[str, dict[str, int]]:
    """Sensor -> the node's worker counters (``received``: messages its callback got,
    ``encoded``, ``bad``), read while the node is still active (its workers go with it)."""
    out = {}
    for name in names:
        worker = node.sensor_worker(name)
        if worker is not None:
            out[name] = {"received": int(worker.received), "encoded": int(worker.encoded),
                         "bad": int(worker.bad)}
    return out


def live_sensor_table(sensors: Sequence[Any], played: Mapping[str, Any],
                      published: Mapping[str, int], counts: Mapping[str, Mapping[str, int]],
                      undecodable: Mapping[str, tuple[int, str]]) -> dict[str, dict[str, Any]]:
    """``EvalResult.extra["sensors"]`` of a live evaluation, keyed and shaped as offline mode's
    (topic, modality, mapped, messages, received, encoded, bad, undecodable and, where there
    is one, first_undecodable).

    Parameters
    ----------
    sensors : the node's sensors (name, modality, topic).
    played : the topics the player played (sensor topics whose type matches).
    published : topic -> messages the player published.
    counts : :func:`node_counts`.
    undecodable : :func:`undecodable_messages`.
    """
    table: dict[str, dict[str, Any]] = {}
    for s in sensors:
        node = counts.get(s.name, {})
        bad, first = undecodable.get(s.topic, (0, ""))
        entry: dict[str, Any] = {
            "topic": s.topic, "modality": s.modality, "mapped": s.topic in played,
            "messages": int(published.get(s.topic, 0)), "received": node.get("received", 0),
            "encoded": node.get("encoded", 0), "bad": node.get("bad", 0), "undecodable": bad}
        if first:
            entry["first_undecodable"] = first
        table[s.name] = entry
    return table
