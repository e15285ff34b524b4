"""What a Sparkplug host application knows of the edge nodes it reads, sans-IO.

`HostTracker.receive` takes one decoded message of a group the host reads (its `codec.Topic`
and `codec.Payload`) and says what it means for the host's points: the samples to publish,
whether to ask the node for a rebirth, and what was wrong with it. The adapter
(`protocols.sparkplug.host`) does the I/O.

The rules are Sparkplug 3.0's for a host (chapter 7):

- An NBIRTH starts the node's session: its ``bdSeq``, its ``seq`` (0), its metrics (name, alias,
  datatype). Its devices must be born again (DBIRTH) before their data is read.
- NDATA, DBIRTH, DDATA and DDEATH must come with the seq after the last one (0..255,
  wrapping). A gap means messages were lost (a QoS 0 data message the broker dropped): the data
  is still read, since each metric carries its own value, and the node is asked to rebirth so
  that every value is current again.
- Data of a node or device that is not born (the host started or reconnected after the birth),
  or a metric whose alias or name no birth declared, cannot be read: dropped, and the node is
  asked to rebirth. Asks to one node are at least ``rebirth_interval`` seconds apart.
- NDEATH counts only when its bdSeq is the one of the NBIRTH in force (else it is an old
  session's will, which a broker may deliver after the new birth): then every point of the
  node and its devices is Bad. DDEATH makes the device's points Bad.

Several groups (``by_group``): one edge_node_id may be a node of two groups, two sessions
that have nothing in common. Everything kept per node (session, seq, devices, the rebirth
interval) is kept per node key, ``{group}/{node}``, and learnt names begin with the group.
Reading one group, the key is the edge_node_id and the names are as they always were.

Points: a metric is a point when it is declared (`HostPoint`: group, node, device, metric) or,
with ``learn``, by a name made of its (group,) node, device and metric (`learnt_name`), up to
``max_points`` learnt names (they come from the broker). Two metrics can make one name (a
node's ``pump1/x`` and device pump1's ``x`` are both ``E1.pump1.x``; the node E1 of group
``plant 1`` and of group ``plant_1``): the first to claim it keeps it for good, and the other
is not learnt (one point fed by two metrics would flip between their values),
counted once in ``name_collisions`` and said once in the outcome's ``notices``. Values are
taken by the datatype the birth gave (a DATA message may leave it out); a metric's ``Quality``
property (Ignition's convention: 192 good, 64 uncertain, below 64 bad) sets the sample's
quality, a null value is Bad.
Templates (Ignition's UDTs): a template definition (``is_definition``, in an NBIRTH) is not a
point; the node keeps its definitions only to give an instance's member the definition's
datatype when the birth leaves it out. A template instance is not a point either: each of its
members is, as the metric ``{metric}/{member}`` (``{metric}/{member}/{sub}`` in a nested
template), declared or learnt as any metric of that name (``E1.pump1.Pump1.Speed``), in the
member's own datatype. A DATA message carries the instance again, by the top-level metric's
name or alias, with only the members that changed, by name; a member the birth did not have is
an unknown metric. A member's quality is its own ``Quality`` property, else the instance's, and
its timestamp its own, else the instance's, else the payload's. A member whose name a metric
of the same birth has already (a metric ``Pump1/Speed`` beside a template ``Pump1`` with a
member ``Speed``) is a name collision: the first in the birth keeps it. Members are not
written: a declared ``rw`` point on one is refused by the adapter.
A historical metric (``is_historical``: what a node buffered while offline, sent after its
births) is published with its own timestamp, and followed in the same message by the metric's
current sample when that is newer, so a target that keeps the latest value (a server's
register or variable) ends on the current one, and one that keeps every sample (MQTT) gets the
history too.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Iterator, KeysView, Mapping
from dataclasses import dataclass, field, replace

from gateway.types import Quality, Sample, Value
from protocols.mqtt import codec as mqtt_codec
from protocols.sparkplug import codec
from protocols.sparkplug.codec import DataType, Metric, Payload, Template, Topic
from protocols.sparkplug.config import HostPoint

__all__ = ["REBIRTH", "HostTracker", "Outcome", "learnt_name", "quality_of", "split_key"]

REBIRTH = "Node Control/Rebirth"
BDSEQ = "bdSeq"
#: metrics that are commands to the node or device, not readings: never learnt
_CONTROL = ("Node Control/", "Device Control/")
_NOT_NAME = re.compile(r"[^A-Za-z0-9_\-]")
#: nodes remembered for the rebirth interval while not born (their ids come from the broker)
_MAX_ASKED = 10_000

#: where a metric comes from: (node key, device or None, metric name); the node key is the
#: edge_node_id, or ``{group}/{node}`` when the host reads several groups (`split_key`)
Source = tuple[str, str | None, str]


def split_key(key: str) -> tuple[str | None, str]:
    """A node key's group (None in a tracker of one group) and edge_node_id: no id holds a
    ``/``, so the key cannot be read two ways."""
    group, _, node = key.rpartition("/")
    return group or None, node


def learnt_name(node: str, device: str | None, metric: str, group: str | None = None) -> str:
    """The point name of a learnt metric: ``{node}.{device}.{metric}`` (``{node}.{metric}``
    for a node's own; ``{group}.`` before it when the host reads several groups), a ``/`` of
    the metric's folders a ``.``, other characters that a point name cannot hold ``_``."""
    parts = [
        *([group] if group is not None else []),
        node,
        *([device] if device is not None else []),
        *metric.split("/"),
    ]
    name = ".".join(_NOT_NAME.sub("_", part) or "_" for part in parts)
    return name if name[0] != "-" else f"_{name}"


def quality_of(metric: Metric) -> Quality:
    """A metric's quality: Bad when null, else by its ``Quality`` property (192 and above
    good, 64 to 191 uncertain, below 64 bad), good without one."""
    if metric.is_null or metric.value is None:
        return Quality.BAD
    prop = metric.properties.get("Quality")
    code = prop.value if prop is not None else None
    if not isinstance(code, int) or isinstance(code, bool):
        return Quality.GOOD
    if code >= codec.QUALITY_GOOD:
        return Quality.GOOD
    return Quality.UNCERTAIN if code >= codec.QUALITY_UNCERTAIN else Quality.BAD


@dataclass(frozen=True, slots=True)
class Outcome:
    """What one message means: samples to publish, whether to ask its node for a rebirth,
    a line saying what was wrong with it (None when nothing was), and lines worth saying
    once each (a learnt name refused), which the rate limit of ``problem`` must not eat."""

    samples: tuple[Sample, ...] = ()
    rebirth: bool = False
    problem: str | None = None
    notices: tuple[str, ...] = ()


@dataclass(slots=True)
class _Metric:
    name: str  # a template member's: its path, ``Pump1/Speed``
    datatype: DataType | None
    point: str | None  # the point it feeds; None: not a point
    declared: HostPoint | None
    current: Sample | None = None  # the latest sample that was not historical
    members: dict[str, _Metric] | None = None  # a template instance's, by member name
    member: bool = False  # a member of a template instance

    def leaves(self) -> Iterator[_Metric]:
        """The metric itself, or a template's members that are not templates, all levels."""
        if self.members is None:
            yield self
            return
        for member in self.members.values():
            yield from member.leaves()


#: a sample with the metric that made it and whether it is historical
_Made = tuple[_Metric, Sample, bool]


@dataclass(slots=True)
class _Holder:
    """The metrics a birth declared: a node's own, or one device's."""

    by_name: dict[str, _Metric] = field(default_factory=dict)
    by_alias: dict[int, _Metric] = field(default_factory=dict)
    by_path: dict[str, _Metric] = field(default_factory=dict)  # template members, all levels
    online: bool = True

    def find(self, metric: Metric) -> _Metric | None:
        if metric.alias is not None and metric.alias in self.by_alias:
            return self.by_alias[metric.alias]
        return self.by_name.get(metric.name) if metric.name is not None else None


@dataclass(slots=True)
class _Node:
    bd_seq: int | None
    seq: int | None  # the last seq received
    own: _Holder
    devices: dict[str, _Holder] = field(default_factory=dict)
    online: bool = True
    definitions: dict[str, Template] = field(default_factory=dict)  # the NBIRTH's templates


class HostTracker:
    """The host's picture of the edge nodes it reads. Sans-IO; times are ``time.time()``.

    Nodes are known by a key: the edge_node_id when the host reads one group (the adapter
    gives it that group's messages only), ``{group}/{node}`` with ``by_group`` (it reads
    several), where learnt names begin with the group and declared points name theirs."""

    def __init__(
        self,
        points: Iterable[HostPoint] = (),
        *,
        learn: bool = True,
        max_points: int = 10_000,
        rebirth_interval: float = 5.0,
        by_group: bool = False,
    ) -> None:
        self.by_group = by_group
        self.declared = {(self.key_of(p), p.device, p.metric): p for p in points}
        self.by_point = {p.name: p for p in self.declared.values()}
        self.learn = learn
        self.max_points = max_points
        self.rebirth_interval = rebirth_interval
        self.nodes: dict[str, _Node] = {}  # by node key
        # each learnt point name (at most max_points) and the metric that claimed it first,
        # kept across lost brokers
        self.owners: dict[str, Source] = {}
        self._collided: set[Source] = set()  # metrics refused their name, said once each
        self._said: set[Source] = set()  # template members refused, declared templates: said
        self._asked: dict[str, float] = {}  # node key -> when it was last asked to rebirth
        # counters
        self.seq_gaps = 0
        self.unborn = 0  # data of a node or device not born: dropped
        self.unknown_metrics = 0  # a metric no birth declared: dropped
        self.stale_deaths = 0  # NDEATH of an older session: ignored
        self.type_errors = 0  # a value that does not fit its declared point's type
        self.over_limit = 0  # learnt names refused past max_points
        self.name_collisions = 0  # metrics not learnt: their name is another metric's

    @property
    def learnt(self) -> KeysView[str]:
        """The learnt point names."""
        return self.owners.keys()

    def key(self, where: Topic) -> str:
        """The key of the node of a message."""
        return f"{where.group}/{where.node}" if self.by_group else where.node

    def key_of(self, point: HostPoint) -> str:
        """The key of a declared point's node (the config requires its group with several)."""
        if not self.by_group:
            return point.node
        if point.group is None:
            raise ValueError(f"declared point {point.name!r} has no group (several are read)")
        return f"{point.group}/{point.node}"

    # --- messages ---------------------------------------------------------------------------

    def datatype(self, where: Topic) -> codec.DatatypeLookup:
        """The `codec.decode_payload` lookup for a message on ``where``: the birth's datatype
        of a metric a DATA message sends without one."""

        def lookup(
            name: str | None, alias: int | None, members: tuple[str, ...] = (), /
        ) -> DataType | None:
            holder = self._holder(where)
            found = holder.find(Metric(name, alias)) if holder is not None else None
            for member in members:  # a template's member, by its path below the metric
                if found is None or found.members is None:
                    return None
                found = found.members.get(member)
            return found.datatype if found is not None else None

        return lookup

    def _holder(self, where: Topic) -> _Holder | None:
        node = self.nodes.get(self.key(where))
        if node is None:
            return None
        return node.own if where.device is None else node.devices.get(where.device)

    def receive(self, where: Topic, payload: Payload, now: float) -> Outcome:
        """What the message ``payload`` on ``where`` (of a group this tracker reads) means;
        a rebirth it asks for is to the node `key` (``where``)."""
        kind = where.message_type
        if kind == "NBIRTH":
            return self._nbirth(where, payload, now)
        if kind == "NDEATH":
            return self._ndeath(where, payload, now)
        if kind in ("NCMD", "DCMD"):
            return Outcome()  # commands (ours, or another host's) are not readings
        key = self.key(where)
        node = self.nodes.get(key)
        if node is None or not node.online:
            self.unborn += 1
            return self._ask(key, now, f"{kind} of edge node {key}, not born")
        gap = self._gap(node, payload)
        if kind == "DBIRTH":
            outcome = self._dbirth(node, where, payload, now)
        elif kind == "DDEATH":
            outcome = self._ddeath(node, where, now)
        else:  # NDATA, DDATA
            outcome = self._data(node, where, payload, now)
        if gap is None:
            return outcome
        asked = self._ask(key, now, gap)
        return replace(outcome, rebirth=asked.rebirth, problem=outcome.problem or gap)

    def _gap(self, node: _Node, payload: Payload) -> str | None:
        """Why the seq of ``payload`` is not the next one of its node's, None if it is."""
        seq, last = payload.seq, node.seq
        if seq is None:
            return None
        node.seq = seq
        if last is None or seq == codec.next_seq(last):
            return None
        self.seq_gaps += 1
        return f"seq {seq} after {last}: messages lost"

    def _ask(self, key: str, now: float, problem: str) -> Outcome:
        """Drop a message that cannot be read, and ask its node for a rebirth unless it was
        asked less than ``rebirth_interval`` ago."""
        last = self._asked.get(key, -math.inf)
        if now - last < self.rebirth_interval:
            return Outcome(problem=problem)
        if len(self._asked) >= _MAX_ASKED:
            self._asked.clear()
        self._asked[key] = now
        return Outcome(rebirth=True, problem=problem)

    def _nbirth(self, where: Topic, payload: Payload, now: float) -> Outcome:
        bd_seq = next(
            (m.value for m in payload.metrics if m.name == BDSEQ and isinstance(m.value, int)),
            None,
        )
        key = self.key(where)
        old = self.nodes.get(key)
        node = _Node(bd_seq, payload.seq, _Holder())
        if old is not None:  # devices are read again once born again: their points kept
            node.devices = old.devices
            for device in node.devices.values():
                device.online = False
        self.nodes[key] = node
        self._asked.pop(key, None)
        return self._declare(node.own, node, where, payload, now)

    def _dbirth(self, node: _Node, where: Topic, payload: Payload, now: float) -> Outcome:
        assert where.device is not None
        holder = node.devices[where.device] = _Holder()
        return self._declare(holder, node, where, payload, now)

    def _declare(
        self, holder: _Holder, node: _Node, where: Topic, payload: Payload, now: float
    ) -> Outcome:
        """A birth's metrics into ``holder``: the samples of those that are points."""
        made: list[_Made] = []
        notices: list[str] = []
        taken: dict[str, bool] = {}  # the birth's metric names and member paths: a member's?
        for m in payload.metrics if where.device is None else ():  # NBIRTH: its definitions,
            if m.name is not None and m.template is not None and m.template.is_definition:
                node.definitions[m.name] = m.template  # before or after their instances
        for metric in payload.metrics:
            if metric.name is None:
                continue  # a birth names every metric; a nameless one cannot be a point
            if metric.template is not None and metric.template.is_definition:
                continue  # a definition is not a point
            source = (self.key(where), where.device, metric.name)
            known = self._known(source, metric, node.definitions, taken, notices, holder)
            holder.by_name[metric.name] = known
            if metric.alias is not None:
                holder.by_alias[metric.alias] = known
            made.extend(self._samples(known, metric, payload.timestamp, now, []))
        return Outcome(tuple(s for _, s, _ in made), notices=tuple(notices))

    def _known(
        self,
        source: Source,
        metric: Metric,
        definitions: Mapping[str, Template],
        taken: dict[str, bool],
        notices: list[str],
        holder: _Holder,
        member: bool = False,
    ) -> _Metric:
        """What a birth's metric (or a template's member, ``member``, named by its path in
        ``source``) is: a point, not one, or a template instance with its members."""
        node, device, path = source
        template = metric.template
        if template is not None or metric.datatype is DataType.TEMPLATE:
            if not member and self.declared.get(source) is not None:
                line = f"{_source(source)} is a template: its members are the points"
                self._say_once(source, notices, f"{line} ({path}/...), not the declared one")
            members: dict[str, _Metric] = {}
            definition = _definition(definitions, template)
            for sub in template.metrics if template is not None else ():
                name = sub.name
                if name is None or name in members:
                    continue
                if sub.datatype is None and definition is not None:
                    typed = next((m for m in definition.metrics if m.name == name), None)
                    if typed is not None and typed.datatype is not None:
                        sub = replace(sub, datatype=typed.datatype)
                inner = (node, device, f"{path}/{name}")
                child = self._known(inner, sub, definitions, taken, notices, holder, True)
                members[name] = holder.by_path[child.name] = child
            return _Metric(path, DataType.TEMPLATE, None, None, members=members, member=member)
        point: str | None = None
        if path in taken and (member or taken[path]):
            if source not in self._said:
                self.name_collisions += 1
            line = f"{_source(source)} is not learnt: a metric or template member before it"
            self._say_once(source, notices, f"{line} in the birth has that name")
        else:
            declared = self.declared.get(source)
            point = declared.name if declared is not None else self._learn(source, notices)
        taken.setdefault(path, member)
        declared = self.declared.get(source) if point is not None else None
        return _Metric(path, metric.datatype, point, declared, member=member)

    def _say_once(self, source: Source, notices: list[str], line: str) -> None:
        if source in self._said:
            return
        if len(self._said) < self.max_points:  # the sources come from the broker
            self._said.add(source)
        notices.append(line)

    def _learn(self, source: Source, notices: list[str]) -> str | None:
        """The learnt point name of the metric ``source``, None when it is not a point; a
        line into ``notices`` the first time its name is found to be another metric's."""
        key, device, metric = source
        if not self.learn or metric == BDSEQ or metric.startswith(_CONTROL):
            return None
        group, node = split_key(key)
        name = learnt_name(node, device, metric, group)
        declared = self.by_point.get(name)
        if declared is not None:  # a declared point's name is its metric's from the start
            owner: Source | None = (self.key_of(declared), declared.device, declared.metric)
        else:
            owner = self.owners.get(name)
        if owner is not None and owner != source:
            self._collide(source, owner, name, notices)
            return None
        if owner is None:
            if len(self.owners) >= self.max_points:
                self.over_limit += 1
                return None
            self.owners[name] = source
        return name

    def _collide(self, source: Source, owner: Source, name: str, notices: list[str]) -> None:
        """``source`` is refused ``name``, which ``owner`` holds: counted and said once per
        source (a node births again at every connection and rebirth)."""
        if source in self._collided:
            return
        if len(self._collided) < self.max_points:  # the sources come from the broker
            self._collided.add(source)
        self.name_collisions += 1
        how = "the declared point" if name in self.by_point else "the learnt point"
        notices.append(
            f"{_source(source)} is not learnt: its name {name} is {how} of {_source(owner)}"
            " (declare it as a point under another name to read it)"
        )

    def _data(self, node: _Node, where: Topic, payload: Payload, now: float) -> Outcome:
        holder = self._holder(where)
        if holder is None or not holder.online:
            self.unborn += 1
            key = self.key(where)
            what = f"{where.message_type} of device {key}/{where.device}"
            return self._ask(key, now, f"{what}, not born")
        made: list[_Made] = []
        unknown: list[str] = []
        for metric in payload.metrics:
            known = holder.find(metric)
            if known is None:
                unknown.append(metric.name or f"alias {metric.alias}")
                continue
            made.extend(self._samples(known, metric, payload.timestamp, now, unknown))
        samples = [sample for _, sample, _ in made]
        past = {sample.point: known for known, sample, historical in made if historical}
        for point, known in past.items():
            last = max((s.source_ts for s in samples if s.point == point), default=0.0)
            if known.current is not None and known.current.source_ts > last:
                samples.append(known.current)  # the target ends on the current value
        if not unknown:
            return Outcome(tuple(samples))
        self.unknown_metrics += len(unknown)
        problem = f"{where.message_type} metric not in the birth: {unknown[0]}"
        asked = self._ask(self.key(where), now, problem)
        return Outcome(tuple(samples), asked.rebirth, asked.problem)

    def _samples(
        self,
        known: _Metric,
        metric: Metric,
        stamp: int | None,
        now: float,
        unknown: list[str],
        within: Metric | None = None,
    ) -> list[_Made]:
        """The samples of ``metric`` (``known`` as its birth declared it): one, or one per
        member given of a template instance; members the birth did not have into ``unknown``.
        ``stamp`` is the timestamp of what holds it (the payload's, or its template's) and
        ``within`` the template instance it is a member of."""
        if within is not None:  # a member: the instance's quality and history unless its own
            inherited = {k: v for k, v in within.properties.items() if k == "Quality"}
            metric = replace(
                metric,
                properties={**inherited, **metric.properties},
                is_historical=metric.is_historical or within.is_historical,
            )
        if metric.timestamp is not None:
            stamp = metric.timestamp
        if known.members is None:
            sample = self._sample(known, metric, stamp, now)
            return [] if sample is None else [(known, sample, metric.is_historical)]
        made: list[_Made] = []
        if metric.is_null:  # a null instance: every member is null
            for leaf in known.leaves():
                sample = self._sample(leaf, metric, stamp, now)
                if sample is not None:
                    made.append((leaf, sample, metric.is_historical))
            return made
        for member in metric.template.metrics if metric.template is not None else ():
            sub = known.members.get(member.name) if member.name is not None else None
            if sub is None:
                unknown.append(f"{known.name}/{member.name or '?'}")
                continue
            made.extend(self._samples(sub, member, stamp, now, unknown, metric))
        return made

    def _sample(
        self, known: _Metric, metric: Metric, stamp: int | None, now: float
    ) -> Sample | None:
        if known.point is None:
            return None
        ts = stamp / 1000 if stamp is not None else now
        quality = quality_of(metric)
        value: Value = None if quality is Quality.BAD else metric.value
        reason = "null value" if metric.is_null or metric.value is None else None
        if reason is None and quality is Quality.BAD:
            reason = "bad quality at the edge node"
        declared = known.declared
        if declared is not None and value is not None:
            try:
                value = mqtt_codec.convert(value, declared.type)
            except ValueError as exc:
                self.type_errors += 1
                value, quality, reason = None, Quality.BAD, f"not a {declared.type}: {exc}"
        unit = declared.unit if declared is not None else None
        sample = Sample(known.point, value, quality, ts, now, unit, reason)
        if not metric.is_historical:
            known.current = sample
        return sample

    def _ddeath(self, node: _Node, where: Topic, now: float) -> Outcome:
        assert where.device is not None
        holder = node.devices.get(where.device)
        if holder is None:
            return Outcome()
        holder.online = False
        return Outcome(tuple(_lost(holder, now, "device offline (DDEATH)")))

    def _ndeath(self, where: Topic, payload: Payload, now: float) -> Outcome:
        node = self.nodes.get(self.key(where))
        if node is None or not node.online:
            return Outcome()
        bd_seq = next((m.value for m in payload.metrics if m.name == BDSEQ), None)
        if node.bd_seq is not None and bd_seq is not None and bd_seq != node.bd_seq:
            self.stale_deaths += 1
            return Outcome(problem=f"NDEATH bdSeq {bd_seq} of an older session (now {node.bd_seq})")
        node.online = False
        samples = list(_lost(node.own, now, "edge node offline (NDEATH)"))
        for device in node.devices.values():
            if device.online:
                device.online = False
                samples.extend(_lost(device, now, "edge node offline (NDEATH)"))
        return Outcome(tuple(samples))

    # --- the adapter's questions ------------------------------------------------------------

    def forget(self) -> list[str]:
        """The broker connection is gone: no session can be followed across it. The keys of
        the nodes that were online, to ask for a rebirth once connected again."""
        online = [name for name, node in self.nodes.items() if node.online]
        self.nodes.clear()
        self._asked.clear()
        return online

    def where(self, point: str) -> tuple[HostPoint, _Metric | None, bool]:
        """A declared point's metric: the declaration, what the birth in force said of it
        (None before one), and whether its node (and device) is online; KeyError if
        ``point`` is not declared."""
        declared = self.by_point[point]
        node = self.nodes.get(self.key_of(declared))
        if node is None or not node.online:
            return declared, None, False
        holder = node.own if declared.device is None else node.devices.get(declared.device)
        if holder is None:
            return declared, None, False
        known = holder.by_name.get(declared.metric) or holder.by_path.get(declared.metric)
        return declared, known, holder.online

    def online(self) -> dict[str, str]:
        """Each node seen in this connection, by key (``{group}/{node}`` with several
        groups): online or offline."""
        return {name: "online" if n.online else "offline" for name, n in self.nodes.items()}

    def counts(self) -> dict[str, int]:
        """The nodes and devices seen in this connection, online and not, as numbers (the
        status' ``nodes`` is texts, which /metrics leaves out). A device is online while it
        and its node are."""
        nodes = self.nodes.values()
        online = [n for n in nodes if n.online]
        devices = sum(len(n.devices) for n in nodes)
        devices_online = sum(1 for n in online for d in n.devices.values() if d.online)
        return {
            "nodes_online": len(online),
            "nodes_offline": len(self.nodes) - len(online),
            "devices_online": devices_online,
            "devices_offline": devices - devices_online,
        }


def _definition(definitions: Mapping[str, Template], instance: Template | None) -> Template | None:
    """The definition of a template instance: the NBIRTH metric its ``template_ref`` names
    (Tahu's and Ignition's examples name it ``_types_/{ref}``)."""
    ref = instance.template_ref if instance is not None else None
    if not ref:
        return None
    return definitions.get(ref) or definitions.get(f"_types_/{ref}")


def _source(source: Source) -> str:
    node, device, metric = source
    return f"{node if device is None else f'{node}/{device}'} metric {metric!r}"


def _lost(holder: _Holder, now: float, reason: str) -> Iterable[Sample]:
    for known in (leaf for top in holder.by_name.values() for leaf in top.leaves()):
        if known.point is not None:
            unit = known.declared.unit if known.declared is not None else None
            known.current = Sample(known.point, None, Quality.BAD, now, now, unit, reason)
            yield known.current
