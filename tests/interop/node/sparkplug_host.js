// A minimal Sparkplug B host built on Eclipse Tahu's JavaScript codec (sparkplug-payload) and
// the mqtt package: a peer we did not write, for tests/test_sparkplug_*.py.
//
//   node sparkplug_host.js PORT [HOST] [PRIMARY_HOST_ID]
//
// With PRIMARY_HOST_ID it is also a Primary Host Application as Sparkplug 3.0 (6.4.1) has one:
// its will is spBv1.0/STATE/ID {"online": false, "timestamp": T}, retained, QoS 1, and once
// subscribed it publishes {"online": true, "timestamp": T} there, retained, QoS 1 (the same T).
// STATE messages are printed as {"topic": ..., "type": "STATE", "host": ID, "state": {...}}.
//
// Subscribes to spBv1.0/#, and prints one JSON line per message:
//   {"topic": ..., "type": "NBIRTH", "group": ..., "node": ..., "device": ..., "payload": {...}}
// where payload is what sparkplug-payload decoded (64-bit integers as numbers, or as strings
// beyond 2^53). Prints {"ready": true} once subscribed. Reads commands from stdin, one JSON
// object per line:
//   {"cmd": "rebirth", "group": G, "node": N}                         -> NCMD Node Control/Rebirth
//   {"cmd": "dcmd", "group": G, "node": N, "device": D, "metrics": [{"name"|"alias", "type", "value"}]}
//   {"cmd": "ncmd", "group": G, "node": N, "metrics": [...]}
//   {"cmd": "raw", "topic": T, "text": S, "retain": true|false}      -> S as is, QoS 1
// and prints {"sent": CMD} after each publish.
"use strict";

const readline = require("readline");
const mqtt = require("mqtt");
const sparkplug = require("sparkplug-payload").get("spBv1.0");
const {plain, emit} = require("./sparkplug_common");

const port = Number(process.argv[2]);
const host = process.argv[3] || "127.0.0.1";
const primary = process.argv[4] || null;
const stateTopic = primary === null ? null : `spBv1.0/STATE/${primary}`;
const born = Date.now();

const options = {host, port, protocolVersion: 4, clean: true, reconnectPeriod: 200,
                 clientId: "tahu-js-host-" + process.pid};
if (stateTopic !== null) {
    options.will = {topic: stateTopic, payload: JSON.stringify({online: false, timestamp: born}),
                    qos: 1, retain: true};
}
const client = mqtt.connect(options);

client.on("connect", () => {
    client.subscribe("spBv1.0/#", {qos: 1}, (err) => {
        if (err) {
            emit({error: String(err)});
            return;
        }
        if (stateTopic === null) {
            emit({ready: true});
            return;
        }
        const online = JSON.stringify({online: true, timestamp: born});
        client.publish(stateTopic, online, {qos: 1, retain: true}, () => emit({ready: true}));
    });
});

client.on("error", (err) => emit({error: String(err)}));

client.on("message", (topic, message) => {
    const parts = topic.split("/");
    if (parts[1] === "STATE") {
        let state = null;
        try {
            state = JSON.parse(message.toString("utf8"));
        } catch (err) {
            state = {unreadable: message.toString("utf8")};
        }
        emit({topic, type: "STATE", host: parts[2], state});
        return;
    }
    const out = {topic, group: parts[1], type: parts[2], node: parts[3], device: parts[4] || null};
    try {
        const payload = sparkplug.decodePayload(message);
        for (const metric of payload.metrics || []) {
            // sparkplug-payload 1.0.3 returns an Int64 as an unsigned Long (its instanceof
            // check fails on protobufjs's Long): read it signed, as its datatype says.
            if (metric.type === "Int64" && metric.value && metric.value.__isLong__) {
                metric.value = metric.value.toSigned();
            }
        }
        out.payload = plain(payload);
    } catch (err) {
        out.error = String(err);
    }
    emit(out);
});

const rl = readline.createInterface({input: process.stdin});
rl.on("line", (line) => {
    if (!line.trim()) {
        return;
    }
    const command = JSON.parse(line);
    let topic;
    let metrics;
    if (command.cmd === "rebirth") {
        topic = `spBv1.0/${command.group}/NCMD/${command.node}`;
        metrics = [{name: "Node Control/Rebirth", type: "Boolean", value: true}];
    } else if (command.cmd === "ncmd") {
        topic = `spBv1.0/${command.group}/NCMD/${command.node}`;
        metrics = command.metrics;
    } else if (command.cmd === "raw") {
        client.publish(command.topic, command.text, {qos: 1, retain: Boolean(command.retain)},
                       () => emit({sent: command.cmd}));
        return;
    } else if (command.cmd === "dcmd") {
        topic = `spBv1.0/${command.group}/DCMD/${command.node}/${command.device}`;
        metrics = command.metrics;
    } else {
        emit({error: `unknown command ${command.cmd}`});
        return;
    }
    const payload = sparkplug.encodePayload({timestamp: Date.now(), metrics});
    client.publish(topic, Buffer.from(payload), {qos: 0}, () => emit({sent: command.cmd}));
});
rl.on("close", () => client.end(true, () => process.exit(0)));
