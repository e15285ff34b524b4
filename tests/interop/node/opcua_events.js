#!/usr/bin/env node
// A node-opcua CLIENT that subscribes to EVENTS: the peer the gateway's OPC UA alarms are tested
// against (node-opcua builds its own event filter and decodes the fields its own way).
//
//   echo '<plan JSON>' | node opcua_events.js
//
// The plan, one JSON object on stdin (every key but "url" optional):
//   {
//     "url": "opc.tcp://127.0.0.1:4841/protocol-brain",
//     "node": "i=2253",          the notifier to monitor (default: the Server object)
//     "ofType": "AlarmConditionType",   a where clause OfType (default: none)
//     "count": 2,                 stop after this many events (RefreshStart/End not counted)
//     "timeout": 20000,           ms to wait for them
//     "refreshAfter": 1           call ConditionRefresh once this many events arrived
//   }
//
// stdout, one JSON object per line: {"subscribed": true} once the monitored item exists, then
// {"event": {EventType, SourceName, SourceNode, Message, Severity, Time, ReceiveTime,
// ConditionName, Retain, "ActiveState.Id", "AckedState.Id", ConditionId, EventId}} per event,
// {"refresh": "Good"} with the status of a ConditionRefresh call, {"done": true}.
// On failure: {"error": message} and exit code 1.
"use strict";

const readline = require("readline");
const {
    OPCUAClient,
    AttributeIds,
    DataType,
    MessageSecurityMode,
    SecurityPolicy,
    TimestampsToReturn,
    constructEventFilter,
    ofType,
    resolveNodeId,
} = require("node-opcua");

const FIELDS = [
    "EventType",
    "SourceName",
    "SourceNode",
    "Message",
    "Severity",
    "Time",
    "ReceiveTime",
    "ConditionName",
    "Retain",
    "ActiveState.Id",
    "AckedState.Id",
    "ConditionId",
    "EventId",
];

function print(obj) {
    process.stdout.write(JSON.stringify(obj) + "\n");
}

async function readPlan() {
    const lines = [];
    const rl = readline.createInterface({ input: process.stdin });
    for await (const line of rl) lines.push(line);
    return JSON.parse(lines.join("\n"));
}

function plain(variant) {
    const v = variant ? variant.value : null;
    if (v === null || v === undefined) return null;
    if (v instanceof Date) return v.toISOString();
    if (Buffer.isBuffer(v)) return v.toString("hex");
    if (typeof v === "object" && "text" in v) return v.text; // LocalizedText
    if (typeof v === "object" && typeof v.toString === "function") return v.toString(); // NodeId
    return v;
}

async function main() {
    const plan = await readPlan();
    const client = OPCUAClient.create({
        applicationName: "ProtocolBrainInteropEvents",
        securityMode: MessageSecurityMode.None,
        securityPolicy: SecurityPolicy.None,
        endpointMustExist: false,
        connectionStrategy: { maxRetry: 0, initialDelay: 100, maxDelay: 200 },
        requestedSessionTimeout: 30000,
        keepSessionAlive: false,
    });
    await client.connect(plan.url);
    const session = await client.createSession();
    try {
        const subscription = await session.createSubscription2({
            requestedPublishingInterval: 100,
            requestedLifetimeCount: 600,
            requestedMaxKeepAliveCount: 10,
            maxNotificationsPerPublish: 1000,
            publishingEnabled: true,
            priority: 1,
        });
        const where = plan.ofType ? ofType(resolveNodeId(plan.ofType)) : undefined;
        const filter = constructEventFilter(FIELDS, where);
        const wanted = plan.count || 1;
        let seen = 0;
        let refreshed = false;
        await new Promise((resolve, reject) => {
            const timer = setTimeout(
                () => reject(new Error(`only ${seen} of ${wanted} events`)),
                plan.timeout || 20000
            );
            const item = subscription.monitor(
                { nodeId: resolveNodeId(plan.node || "i=2253"), attributeId: AttributeIds.EventNotifier },
                { samplingInterval: 0, discardOldest: true, queueSize: 100, filter },
                TimestampsToReturn.Neither
            );
            item.then((monitored) => {
                print({ subscribed: true });
                monitored.on("changed", (fields) => {
                    const event = {};
                    FIELDS.forEach((name, i) => (event[name] = plain(fields[i])));
                    print({ event });
                    const marker = /^ns=0;i=(2787|2788)$/.test(event.EventType); // RefreshStart/End
                    if (!marker) seen += 1;
                    if (plan.refreshAfter && !refreshed && seen >= plan.refreshAfter) {
                        refreshed = true;
                        session
                            .call({
                                objectId: "ns=0;i=2782", // ConditionType
                                methodId: "ns=0;i=3875", // ConditionRefresh
                                inputArguments: [
                                    { dataType: DataType.UInt32, value: subscription.subscriptionId },
                                ],
                            })
                            .then((result) => print({ refresh: result.statusCode.name }))
                            .catch(reject);
                    }
                    if (seen >= wanted) {
                        clearTimeout(timer);
                        resolve();
                    }
                });
            }).catch(reject);
        });
        await subscription.terminate();
        print({ done: true });
    } finally {
        await session.close().catch(() => undefined);
        await client.disconnect();
    }
}

main().then(
    () => process.exit(0),
    (err) => {
        print({ error: String((err && err.message) || err) });
        process.exit(1);
    }
);
