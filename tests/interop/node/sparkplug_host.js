// A minimal Sparkplug B host built on Eclipse Tahu's JavaScript codec (sparkplug-payload) and
// the mqtt package: a peer we did not write, for tests/test_sparkplug_*.py.
//
//   node sparkplug_host.js PORT [HOST]
//
// Subscribes to spBv1.0/#, and prints one JSON line per message:
//   {"topic": ..., "type": "NBIRTH", "group": ..., "node": ..., "device": ..., "payload": {...}}
// where payload is what sparkplug-payload decoded (64-bit integers as numbers, or as strings
// beyond 2^53). Prints {"ready": true} once subscribed. Reads commands from stdin, one JSON
// object per line:
//   {"cmd": "rebirth", "group": G, "node": N}                         -> NCMD Node Control/Rebirth
//   {"cmd": "dcmd", "group": G, "node": N, "device": D, "metrics": [{"name"|"alias", "type", "value"}]}
//   {"cmd": "ncmd", "group": G, "node": N, "metrics": [...]}
// and prints {"sent": CMD} after each publish.
"use strict";

const readline = require("readline");
const mqtt = require("mqtt");
const sparkplug = require("sparkplug-payload").get("spBv1.0");

const port = Number(process.argv[2]);
const host = process.argv[3] || "127.0.0.1";

function plain(value) {
    if (value !== null && typeof value === "object" && value.__isLong__ === true) {
        const text = value.toString();  // signed or unsigned, as the Long says
        const number = Number(text);
        return Number.isSafeInteger(number) ? number : text;
    }
    if (Buffer.isBuffer(value) || value instanceof Uint8Array) {
        return Buffer.from(value).toString("hex");
    }
    if (Array.isArray(value)) {
        return value.map(plain);
    }
    if (value !== null && typeof value === "object") {
        const out = {};
        for (const [k, v] of Object.entries(value)) {
            out[k] = plain(v);
        }
        return out;
    }
    if (typeof value === "number" && !Number.isFinite(value)) {
        return String(value);
    }
    return value;
}

function emit(obj) {
    process.stdout.write(JSON.stringify(obj) + "\n");
}

const client = mqtt.connect({host, port, protocolVersion: 4, clean: true, reconnectPeriod: 200,
                             clientId: "tahu-js-host-" + process.pid});

client.on("connect", () => {
    client.subscribe("spBv1.0/#", {qos: 1}, (err) => {
        if (err) {
            emit({error: String(err)});
            return;
        }
        emit({ready: true});
    });
});

client.on("error", (err) => emit({error: String(err)}));

client.on("message", (topic, message) => {
    const parts = topic.split("/");
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
