#!/usr/bin/env node
// A node-opcua CLIENT that subscribes to EVENTS, and acknowledges alarms when told to: the peer
// the gateway's OPC UA alarms are tested against (node-opcua builds its own event filter,
// decodes the fields its own way, and acknowledges with its own `session.acknowledgeCondition`
// and `session.confirmCondition`, which call AcknowledgeableConditionType's Acknowledge and
// Confirm on the ConditionId when the condition has no such method of its own).
//
//   node opcua_events.js   (stdin: the plan on the first line; commands after it, if interactive)
//
// The plan, one JSON object on one line (every key but "url" optional):
//   {
//     "url": "opc.tcp://127.0.0.1:4841/protocol-brain",
//     "node": "i=2253",          the notifier to monitor (default: the Server object)
//     "ofType": "AlarmConditionType",   a where clause OfType (default: none)
//     "count": 2,                 stop after this many events (RefreshStart/End not counted)
//     "timeout": 20000,           ms to wait for them
//     "refreshAfter": 1,          call ConditionRefresh once this many events arrived
//     "user": {"username": "op", "password": "secret"},      the session's user (else anonymous)
//     "viewer": {"username": "viewer", "password": "look"},  a second session, for "as": "viewer"
//     "interactive": true         no count: run the commands of the next lines until "quit"
//   }
// Commands (interactive), one JSON object per line:
//   {"id": 1, "ack": {"conditionId": "ns=2;s=pump#anomaly", "eventId": "<hex>", "comment": "..."},
//    "as": "viewer"}                    acknowledgeCondition (on the viewer's session if "as")
//   {"id": 2, "confirm": {...the same keys as "ack"...}}   confirmCondition
//   {"id": 3, "refresh": true}          ConditionRefresh of the subscription
//   {"id": 4, "shelve": {"conditionId": "ns=2;s=pump#anomaly", "method": "TimedShelve",
//    "shelvingTime": 60000}, "as": "viewer"}   TimedShelve (ms), OneShotShelve or Unshelve:
//                                       Part 9's ShelvedStateMachineType method called on the
//                                       ConditionId (the server exposes no condition instance)
//   {"quit": true}
//
// stdout, one JSON object per line: {"subscribed": true} once the monitored item exists, then
// {"event": {EventType, SourceName, SourceNode, Message, Severity, Time, ReceiveTime,
// ConditionName, Retain, "ActiveState.Id", AckedState, "AckedState.Id", ConfirmedState,
// "ConfirmedState.Id", Comment, ClientUserId, ConditionId, EventId, SuppressedOrShelved,
// "ShelvingState.CurrentState", "ShelvingState.CurrentState.Id", "ShelvingState.UnshelveTime",
// MaxTimeShelved}} per event, {"refresh": "Good"} with the status of a ConditionRefresh
// call (refreshAfter), {"id": n, "status": "Good"} per command, {"done": true}.
// On failure: {"error": message} and exit code 1.
"use strict";

const readline = require("readline");
const {
    OPCUAClient,
    AttributeIds,
    DataType,
    MessageSecurityMode,
    MethodIds,
    SecurityPolicy,
    TimestampsToReturn,
    UserTokenType,
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
    "AckedState",
    "AckedState.Id",
    "ConfirmedState",
    "ConfirmedState.Id",
    "Comment",
    "ClientUserId",
    "ConditionId",
    "EventId",
    "SuppressedOrShelved",
    "ShelvingState.CurrentState",
    "ShelvingState.CurrentState.Id",
    "ShelvingState.UnshelveTime",
    "MaxTimeShelved",
];

function print(obj) {
    process.stdout.write(JSON.stringify(obj) + "\n");
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

function identity(user) {
    return user
        ? { type: UserTokenType.UserName, userName: user.username, password: user.password }
        : { type: UserTokenType.Anonymous };
}

// Part 9 5.8.10.3: "some Servers do not expose Condition instances in the AddressSpace.
// Therefore all Servers shall also allow Clients to call the TimedShelve Method by specifying
// ConditionId as the ObjectId"; the MethodId is then the ShelvedStateMachineType's.
async function shelve(session, { conditionId, method, shelvingTime }) {
    const inputArguments =
        method === "TimedShelve" ? [{ dataType: DataType.Double, value: shelvingTime }] : [];
    const result = await session.call({
        objectId: resolveNodeId(conditionId),
        methodId: resolveNodeId(MethodIds[`ShelvedStateMachineType_${method}`]),
        inputArguments,
    });
    return result.statusCode;
}

async function refresh(session, subscription) {
    const result = await session.call({
        objectId: "ns=0;i=2782", // ConditionType
        methodId: "ns=0;i=3875", // ConditionRefresh
        inputArguments: [{ dataType: DataType.UInt32, value: subscription.subscriptionId }],
    });
    return result.statusCode;
}

// The commands of the lines after the plan, until "quit" or the end of stdin.
async function commands(lines, sessions, subscription) {
    for (;;) {
        const { value, done } = await lines.next();
        if (done) return;
        if (!value.trim()) continue;
        const command = JSON.parse(value);
        if (command.quit) return;
        let status;
        const call = command.ack ? "acknowledgeCondition" : command.confirm ? "confirmCondition" : null;
        if (call) {
            const { conditionId, eventId, comment } = command.ack || command.confirm;
            status = await sessions[command.as || "user"][call](
                resolveNodeId(conditionId),
                Buffer.from(eventId, "hex"),
                comment
            );
        } else if (command.shelve) {
            status = await shelve(sessions[command.as || "user"], command.shelve);
        } else if (command.refresh) {
            status = await refresh(sessions.user, subscription);
        }
        print({ id: command.id, status: status ? status.name : "unknown command" });
    }
}

async function main() {
    const lines = readline.createInterface({ input: process.stdin })[Symbol.asyncIterator]();
    const plan = JSON.parse((await lines.next()).value);
    // one connection per session: asyncua's server keeps one session per connection
    const clients = [];
    async function open(user) {
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
        clients.push(client);
        return await client.createSession(identity(user));
    }
    const sessions = {};
    try {
        const session = (sessions.user = await open(plan.user));
        if (plan.viewer) sessions.viewer = await open(plan.viewer);
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
        const wanted = plan.interactive ? Infinity : plan.count || 1;
        let seen = 0;
        let refreshed = false;
        await new Promise((resolve, reject) => {
            const timer = plan.interactive
                ? undefined
                : setTimeout(
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
                        refresh(session, subscription)
                            .then((status) => print({ refresh: status.name }))
                            .catch(reject);
                    }
                    if (seen >= wanted) {
                        clearTimeout(timer);
                        resolve();
                    }
                });
                if (plan.interactive) commands(lines, sessions, subscription).then(resolve, reject);
            }).catch(reject);
        });
        await subscription.terminate();
        print({ done: true });
    } finally {
        for (const one of Object.values(sessions)) await one.close().catch(() => undefined);
        for (const client of clients) await client.disconnect();
    }
}

main().then(
    () => process.exit(0),
    (err) => {
        print({ error: String((err && err.message) || err) });
        process.exit(1);
    }
);
