// A Sparkplug B edge node built on Eclipse Tahu's JavaScript edge node client (sparkplug-client
// 3.2.4, which brings its own mqtt 4 and uses sparkplug-payload): a peer we did not write, to feed
// the Sparkplug host application of the gateway in tests/test_sparkplug_*.py.
//
//   node sparkplug_edge.js PORT GROUP NODE [HOST]
//
// Connects to mqtt://HOST:PORT (HOST defaults to 127.0.0.1) as client id tahu-edge-GROUP-NODE
// (one node id may be in two groups), version spBv1.0, no username or password. The FIRST
// stdin line gives the births, a JSON object:
//   {"node_metrics": [{"name": "Temp", "type": "Double", "value": 1.5, "alias": 1}, ...],
//    "devices": {"pump1": [{"name": "Inputs/Speed", "type": "Float", "value": 2.5, "alias": 10}]}}
// (Tahu type names: Int8..Int64, UInt8..UInt64, Float, Double, Boolean, String; "alias" is
// optional; 64-bit values as numbers, or as decimal strings beyond 2^53.) The script keeps the
// current value of every metric. On sparkplug-client's "birth" event (every new connection) it
// publishes NBIRTH with the node metrics, then one DBIRTH per device, with the current values
// (and aliases where given), and prints {"born": true, "bdSeq": N}; {"ready": true} once, after
// the first births. Lines that arrive before that wait for it.
//
// Each further stdin line is one JSON command; it prints {"sent": CMD} after each publish:
//   {"cmd": "ddata", "device": D, "metrics": [{"name"|"alias", "type", "value"}], "by_alias": B}
//        -> DDATA; a metric the births know updates the kept value ("type" may be left out for
//           those); with "by_alias": true each metric goes with its alias and without its name.
//           A metric the births do not know is sent as given (it needs a "type").
//   {"cmd": "ndata", "metrics": [...], "by_alias": B}        -> NDATA, the same rules
//   {"cmd": "null", "device": D, "name": M, "by_alias": B}   -> DDATA with M is_null (kept: null)
//   {"cmd": "ddeath", "device": D}                           -> DDEATH
//   {"cmd": "dbirth", "device": D}                           -> DBIRTH with the current values
//   {"cmd": "rebirth"}                                       -> NBIRTH, then every DBIRTH again
//   {"cmd": "stop", "death": B}  -> client.stop(), prints {"sent": "stop", "ndeath": B'}, exits 0
//        when the MQTT client has ended. sparkplug-client publishes NDEATH before its DISCONNECT
//        only with its publishDeath option, which defaults to false: by default a clean stop
//        sends NO NDEATH at all (and the broker drops the will, as a DISCONNECT asks). With
//        "death": true the script sets publishDeath first and stop() publishes NDEATH (bdSeq).
//   {"cmd": "kill"}  -> process.exit(0) at once, no DISCONNECT: the broker publishes the will,
//        NDEATH with the bdSeq metric (UInt64 0, see below), QoS 0, not retained.
// A bad command, or one given while not connected, prints {"error": ...} and publishes nothing.
// When stdin closes the script does as "stop" (no NDEATH).
//
// What the host side sends is printed as JSON lines:
//   {"event": "dcmd", "device": D, "metrics": [{"name", "alias", "type", "value"}]}
//        (values through plain(): Long as a number, or a string beyond 2^53; is_null as null)
//        then each metric that names a metric of that device (by name, or by alias through the
//        births) is applied to the kept value and echoed as DDATA, by name, with the device's
//        birth type, as a real device echoes a write: {"sent": "dcmd-echo"}. Others are only
//        printed.
//   {"event": "ncmd", "metrics": [...]}; with "Node Control/Rebirth" true (by name, or by an alias
//        the node births gave it) it publishes NBIRTH + every DBIRTH again: {"sent": "rebirth"}.
//   {"event": "connect"|"reconnect"|"close"|"offline"}, {"event": "error", "error": message}.
//
// What sparkplug-client 3.2.4 itself does (a host would notice):
//   - bdSeq is 0, always: it never increments it, neither per connection nor per process. The
//     will (NDEATH, bdSeq UInt64 0, with the payload timestamp of the moment the client was
//     created) is made once, in the constructor, and kept for every reconnection.
//   - publishNodeBirth sets seq to 0 and appends the metric {"name": "bdSeq", "type": "UInt64"}
//     (no alias) to the NBIRTH metrics. Every publish* (DBIRTH, NDATA, DDATA, DDEATH too) takes
//     the next seq, 0..255 then 0 again. It does not add "Node Control/Rebirth" to the NBIRTH:
//     give it in node_metrics if the host wants it.
//   - It sends no births on its own: it emits "birth" on every MQTT connect (after subscribing,
//     QoS 0, to spBv1.0/GROUP/NCMD/NODE/# and spBv1.0/GROUP/DCMD/NODE/#, without waiting for the
//     SUBACK) and the application publishes them; this script does, every time.
//   - It puts no timestamps anywhere (only in the NDEATH): this script puts Date.now() on every
//     payload and on every metric it sends.
//   - It passes aliases through as given and uses them for nothing itself.
//   - Everything is QoS 0, not retained; clean session, keepalive 5 s. Its "error" event comes only
//     for the first connection attempt (and then it ends the client); later errors are swallowed.
//   - sparkplug-payload 1.0.3 encodes UInt32 in long_value (Sparkplug 3.0 says int_value), and
//     negative Int8/Int16/Int32 as 32-bit two's complement in int_value (-1 -> 4294967295).
// This script also gives mqtt 4 reconnectPeriod 200 ms and queueQoSZero false, so that nothing
// published while offline is sent late, after the next NBIRTH.
"use strict";

const readline = require("readline");
const sparkplugClient = require("sparkplug-client");
const {plain, emit} = require("./sparkplug_common");

const port = Number(process.argv[2]);
const group = process.argv[3];
const node = process.argv[4];
const host = process.argv[5] || "127.0.0.1";

// One scope per metric owner: the node (key null) and each device. Each keeps its metrics in
// birth order, {name, type, value, alias}, with look-ups by name and by alias.
const scopes = new Map();

function makeScope(metrics) {
    const scope = {metrics: [], byName: new Map(), byAlias: new Map()};
    for (const given of metrics || []) {
        const metric = {name: given.name, type: given.type, value: given.value,
                        alias: given.alias === undefined ? null : given.alias};
        scope.metrics.push(metric);
        scope.byName.set(metric.name, metric);
        if (metric.alias !== null) {
            scope.byAlias.set(String(metric.alias), metric);
        }
    }
    return scope;
}

function scopeOf(device) {
    const scope = scopes.get(device === undefined ? null : device);
    if (scope === undefined) {
        throw new Error(`unknown device ${device}`);
    }
    return scope;
}

function lookup(scope, metric) {
    if (metric.name !== undefined && metric.name !== null && metric.name !== "") {
        return scope.byName.get(metric.name) || null;
    }
    if (metric.alias !== undefined && metric.alias !== null) {
        return scope.byAlias.get(String(plain(metric.alias))) || null;
    }
    return null;
}

function birthPayload(scope) {
    const now = Date.now();
    const metrics = scope.metrics.map((m) => {
        const out = {name: m.name, type: m.type, value: m.value, timestamp: now};
        if (m.alias !== null) {
            out.alias = m.alias;
        }
        return out;
    });
    return {timestamp: now, metrics};
}

// The metrics of an NDATA/DDATA command: known ones update the kept values.
function dataPayload(scope, given, byAlias) {
    const now = Date.now();
    const metrics = [];
    const updates = [];
    for (const g of given) {
        const known = lookup(scope, g);
        const type = g.type || (known && known.type);
        if (!type) {
            throw new Error(`no type for metric ${JSON.stringify(g)}`);
        }
        const value = g.value === undefined ? null : g.value;
        if (known !== null) {
            updates.push([known, value]);
        }
        const out = {type, value, timestamp: now};
        if (byAlias) {
            const alias = known !== null ? known.alias : (g.alias === undefined ? null : g.alias);
            if (alias === null) {
                throw new Error(`no alias for metric ${JSON.stringify(g)}`);
            }
            out.alias = alias;
        } else {
            const name = known !== null ? known.name : g.name;
            if (name === undefined || name === null) {
                throw new Error(`no name for metric ${JSON.stringify(g)}`);
            }
            out.name = name;
        }
        metrics.push(out);
    }
    for (const [known, value] of updates) {  // only once the whole command is good
        known.value = value;
    }
    return {timestamp: now, metrics};
}

let client = null;
let ready = false;
let stopping = false;
const pending = [];

function publishBirths() {
    client.publishNodeBirth(birthPayload(scopes.get(null)));
    for (const [device, scope] of scopes) {
        if (device !== null) {
            client.publishDeviceBirth(device, birthPayload(scope));
        }
    }
}

// sparkplug-payload 1.0.3 hands an Int64 back as an unsigned Long (its instanceof check fails on
// protobufjs's Long) and a UInt32 as a Long: read them as their datatype says.
function decodedMetric(metric) {
    let value = metric.value;
    if (value && value.__isLong__) {
        value = metric.type === "Int64" ? value.toSigned() : value.toUnsigned();
    }
    const out = {};
    if (metric.name !== undefined) {
        out.name = metric.name;
    }
    if (metric.alias !== undefined) {
        out.alias = plain(metric.alias);
    }
    out.type = metric.type;
    out.value = plain(value === undefined ? null : value);
    return out;
}

function finish() {
    let done = false;
    const exit = () => {
        if (!done) {
            done = true;
            process.exit(0);
        }
    };
    client.client.once("end", exit);
    setTimeout(exit, 2000);
}

function run(command) {
    const cmd = command.cmd;
    if (cmd === "kill") {
        process.exit(0);
    }
    if (cmd === "stop") {
        stopping = true;
        if (command.death === true) {
            client.publishDeath = true;
        }
        client.stop();
        emit({sent: "stop", ndeath: client.publishDeath === true});
        finish();
        return;
    }
    if (!client.connected) {
        emit({error: "not connected", cmd});
        return;
    }
    if (cmd === "ddata") {
        const payload = dataPayload(scopeOf(command.device), command.metrics || [],
                                    command.by_alias === true);
        client.publishDeviceData(command.device, payload);
    } else if (cmd === "ndata") {
        const payload = dataPayload(scopeOf(null), command.metrics || [], command.by_alias === true);
        client.publishNodeData(payload);
    } else if (cmd === "null") {
        const payload = dataPayload(scopeOf(command.device), [{name: command.name, value: null}],
                                    command.by_alias === true);
        client.publishDeviceData(command.device, payload);
    } else if (cmd === "ddeath") {
        scopeOf(command.device);
        client.publishDeviceDeath(command.device, {timestamp: Date.now()});
    } else if (cmd === "dbirth") {
        client.publishDeviceBirth(command.device, birthPayload(scopeOf(command.device)));
    } else if (cmd === "rebirth") {
        publishBirths();
    } else {
        emit({error: `unknown command ${cmd}`});
        return;
    }
    emit({sent: cmd});
}

function handle(line) {
    try {
        run(JSON.parse(line));
    } catch (err) {
        emit({error: String(err && err.message ? err.message : err), line});
    }
}

function start(births) {
    scopes.set(null, makeScope(births.node_metrics));
    for (const [device, metrics] of Object.entries(births.devices || {})) {
        scopes.set(device, makeScope(metrics));
    }
    client = sparkplugClient.newClient({
        serverUrl: `mqtt://${host}:${port}`,
        username: null,
        password: null,
        groupId: group,
        edgeNode: node,
        clientId: `tahu-edge-${group}-${node}`,
        version: "spBv1.0",
        mqttOptions: {reconnectPeriod: 200, queueQoSZero: false},
    });

    client.on("birth", () => {
        publishBirths();
        emit({born: true, bdSeq: plain(client.bdSeq)});
        if (!ready) {
            ready = true;
            emit({ready: true});
            while (pending.length > 0) {
                handle(pending.shift());
            }
        }
    });

    client.on("dcmd", (device, payload) => {
        const metrics = (payload.metrics || []).map(decodedMetric);
        emit({event: "dcmd", device, metrics});
        const scope = scopes.get(device);
        if (scope === undefined || device === null) {
            return;
        }
        const now = Date.now();
        const echo = [];
        for (const metric of metrics) {
            const known = lookup(scope, metric);
            if (known === null) {
                continue;
            }
            known.value = metric.value;
            echo.push({name: known.name, type: known.type, value: known.value, timestamp: now});
        }
        if (echo.length > 0 && client.connected) {
            client.publishDeviceData(device, {timestamp: now, metrics: echo});
            emit({sent: "dcmd-echo"});
        }
    });

    client.on("ncmd", (payload) => {
        const metrics = (payload.metrics || []).map(decodedMetric);
        emit({event: "ncmd", metrics});
        const scope = scopes.get(null);
        const rebirth = metrics.some((metric) => {
            const known = lookup(scope, metric);
            const name = metric.name !== undefined ? metric.name : (known && known.name);
            return name === "Node Control/Rebirth" && metric.value === true;
        });
        if (rebirth && client.connected) {
            publishBirths();
            emit({sent: "rebirth"});
        }
    });

    for (const name of ["connect", "reconnect", "close", "offline"]) {
        client.on(name, () => emit({event: name}));
    }
    client.on("error", (err) => emit({event: "error", error: String(err && err.message ? err.message : err)}));
    client.on("message", (topic, payload) => emit({event: "message", topic, payload: plain(payload)}));
}

const rl = readline.createInterface({input: process.stdin});
rl.on("line", (line) => {
    if (!line.trim()) {
        return;
    }
    if (client === null) {
        try {
            start(JSON.parse(line));
        } catch (err) {
            emit({error: `bad births line: ${err && err.message ? err.message : err}`});
            process.exit(2);
        }
        return;
    }
    if (!ready) {
        pending.push(line);
        return;
    }
    handle(line);
});
rl.on("close", () => {
    if (client === null) {
        process.exit(0);
    }
    if (!stopping) {
        stopping = true;
        client.stop();
        finish();
    }
});
