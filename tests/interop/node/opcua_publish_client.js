#!/usr/bin/env node
// A node-opcua CLIENT that lets a subscription's backlog build up, then records every Publish
// response that brings it: the peer for the server's MaxNotificationsPerPublish.
//
//   node opcua_publish_client.js      (stdin: the plan as one JSON line, later "go")
//
// The plan: {"pki": "/tmp/x/client-pki", "url": ..., "nodes": [...],
//            "maxNotificationsPerPublish": 7, "queueSize": 100, "interval": 50,
//            "expect": 1000, "timeout": 20000}
// It subscribes to the nodes, waits for each one's first value, disables publishing and prints
// {"paused": true}; the test then changes the values and writes "go". It enables publishing,
// waits for "expect" data changes more (and a few publishing intervals after, for any extra),
// and prints
//   {"responses": [{"seq", "more", "count", "available"}, ...]}   every PublishResponse
//                                       with notifications (count: notifications in it)
//   {"changes": {nodeId: [value, ...]}}                           data changes after "go"
//   {"done": true}
// On failure: {"error": message} and exit code 1.
"use strict";

const readline = require("readline");
const {
    OPCUAClient,
    OPCUACertificateManager,
    AttributeIds,
    TimestampsToReturn,
} = require("node-opcua");

function print(obj) {
    process.stdout.write(JSON.stringify(obj) + "\n");
}

const rl = readline.createInterface({ input: process.stdin });
const lines = rl[Symbol.asyncIterator]();

async function nextLine() {
    const { value, done } = await lines.next();
    if (done) throw new Error("stdin closed");
    return value;
}

function sleep(ms) {
    return new Promise((resolve) => setTimeout(resolve, ms));
}

function notificationCount(message) {
    let count = 0;
    for (const data of message.notificationData || []) {
        if (data.monitoredItems) count += data.monitoredItems.length;
        if (data.events) count += data.events.length;
    }
    return count;
}

async function main() {
    const plan = JSON.parse(await nextLine());
    const certificateManager = new OPCUACertificateManager({
        rootFolder: plan.pki,
        automaticallyAcceptUnknownCertificate: true,
    });
    const client = OPCUAClient.create({
        applicationName: "ProtocolBrainPublishClient",
        clientCertificateManager: certificateManager,
        endpointMustExist: false,
        connectionStrategy: { maxRetry: 0, initialDelay: 100, maxDelay: 200 },
        requestedSessionTimeout: 30000,
        keepSessionAlive: false,
    });
    await certificateManager.initialize();
    await client.createDefaultCertificate();
    await client.connect(plan.url);
    const session = await client.createSession();
    try {
        // every PublishResponse, as it arrives (the publish engine calls session.publish)
        const responses = [];
        let recording = false;
        const publish = session.publish.bind(session);
        session.publish = (request, callback) =>
            publish(request, (err, response) => {
                if (response && recording) {
                    const count = notificationCount(response.notificationMessage);
                    if (count > 0) {
                        responses.push({
                            seq: response.notificationMessage.sequenceNumber,
                            more: response.moreNotifications,
                            count,
                            available: response.availableSequenceNumbers || [],
                        });
                    }
                }
                callback(err, response);
            });

        const subscription = await session.createSubscription2({
            requestedPublishingInterval: plan.interval || 50,
            requestedLifetimeCount: 600,
            requestedMaxKeepAliveCount: 10,
            maxNotificationsPerPublish: plan.maxNotificationsPerPublish,
            publishingEnabled: true,
            priority: 1,
        });
        const changes = {};
        let seen = 0;
        let firsts = 0;
        let onChange = () => undefined;
        for (const nodeId of plan.nodes) {
            const monitored = await subscription.monitor(
                { nodeId, attributeId: AttributeIds.Value },
                { samplingInterval: 0, discardOldest: true, queueSize: plan.queueSize || 100 },
                TimestampsToReturn.Both
            );
            let first = true;
            monitored.on("changed", (dv) => {
                if (first) {
                    first = false;
                    firsts += 1;
                    return;
                }
                (changes[nodeId] = changes[nodeId] || []).push(dv.value.value);
                seen += 1;
                onChange();
            });
        }
        const deadline = Date.now() + (plan.timeout || 20000);
        while (firsts < plan.nodes.length) {
            if (Date.now() > deadline) throw new Error(`first values of ${firsts} items only`);
            await sleep(20);
        }
        await subscription.setPublishingMode(false);
        print({ paused: true });
        if ((await nextLine()).trim() !== "go") throw new Error("expected go");
        recording = true;
        await new Promise((resolve, reject) => {
            const timer = setTimeout(
                () => reject(new Error(`only ${seen} of ${plan.expect} data changes`)),
                Math.max(0, deadline - Date.now())
            );
            onChange = () => {
                if (seen >= plan.expect) {
                    clearTimeout(timer);
                    resolve();
                }
            };
            subscription.setPublishingMode(true).catch(reject);
        });
        await sleep(5 * (plan.interval || 50) + 200); // anything extra shows up meanwhile
        print({ responses });
        print({ changes });
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
