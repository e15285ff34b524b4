#!/usr/bin/env node
// A node-opcua CLIENT reading processed history (Part 13 aggregates) and the server's
// AggregateFunctions folder: node-opcua builds the ReadProcessedDetails
// (session.readAggregateValue), so the request is its reading of Part 11, not ours; this script
// sends back each continuation point until a read is done.
//
//   echo '<plan JSON>' | node opcua_history.js
//
// The plan, one JSON object on stdin:
//   {
//     "pki": "/tmp/x/client-pki",                 client certificate store
//     "url": "opc.tcp://127.0.0.1:4841/protocol-brain",   security None, anonymous
//     "folder": "i=2997",                          an AggregateFunctions folder to browse
//     "node": "ns=2;s=pump.temp",
//     "start": ISO, "end": ISO,
//     "reads": [{"aggregate": "Average", "interval": 1000}, ...]   AggregateFunction name and
//                                                  ProcessingInterval (ms), one read each;
//                 optional "config": {"useServerCapabilitiesDefaults": false,
//                 "treatUncertainAsBad": true, "percentDataBad": 50, "percentDataGood": 50,
//                 "useSlopedExtrapolation": false} (the AggregateConfiguration sent; without
//                 it node-opcua's default), and "label" (the read's key in the output)
//     "values": ["i=32639", ...]                   optional: Values to read (Read service)
//   }
//
// stdout, one JSON object per line:
//   {"functions": [browse names]}  (what the folder organizes)
//   {"values": {"i=32639": value, ...}}  (when "values" is given)
//   {"processed": {"Average": {"status", "pages",
//                              "values": [{value, code, sourceTimestamp}]}}}  (keyed by label
//                              or aggregate name)
//   {"done": true};  on failure {"error": message} and exit code 1.
"use strict";

const readline = require("readline");
const {
    OPCUAClient,
    OPCUACertificateManager,
    AggregateFunction,
    BrowseDirection,
    MessageSecurityMode,
    SecurityPolicy,
} = require("node-opcua");

function print(obj) {
    // resolved once written: a pipe takes big lines asynchronously, and exit would cut them
    return new Promise((resolve) => process.stdout.write(JSON.stringify(obj) + "\n", resolve));
}

async function readPlan() {
    const lines = [];
    for await (const line of readline.createInterface({ input: process.stdin })) lines.push(line);
    return JSON.parse(lines.join("\n"));
}

async function functions(session, plan) {
    const result = await session.browse({
        nodeId: plan.folder,
        browseDirection: BrowseDirection.Forward,
        referenceTypeId: "Organizes",
        includeSubtypes: true,
        resultMask: 63,
    });
    return result.references.map((r) => r.browseName.name);
}

async function processed(session, plan) {
    // one aggregate at a time, following the continuation points until the read is done
    const out = {};
    for (const read of plan.reads) {
        const fn = AggregateFunction[read.aggregate];
        if (fn === undefined) throw new Error(`node-opcua knows no aggregate ${read.aggregate}`);
        const got = { status: null, pages: 0, values: [] };
        let continuationPoint;
        // node-opcua's readAggregateValue takes an AggregateConfiguration after the interval
        const config = read.config === undefined ? [] : [read.config];
        do {
            const result = await session.readAggregateValue(
                { nodeId: plan.node, continuationPoint },
                new Date(plan.start),
                new Date(plan.end),
                fn,
                read.interval,
                ...config
            );
            got.status = result.statusCode.name;
            got.pages += 1;
            const values = (result.historyData && result.historyData.dataValues) || [];
            for (const dv of values) {
                got.values.push({
                    value: dv.value.value === undefined ? null : dv.value.value,
                    code: dv.statusCode.value,
                    sourceTimestamp: dv.sourceTimestamp ? dv.sourceTimestamp.toISOString() : null,
                });
            }
            continuationPoint = result.continuationPoint && result.continuationPoint.length
                ? result.continuationPoint
                : undefined;
        } while (continuationPoint);
        out[read.label || read.aggregate] = got;
    }
    return out;
}

async function main() {
    const plan = await readPlan();
    const certificateManager = new OPCUACertificateManager({
        rootFolder: plan.pki,
        automaticallyAcceptUnknownCertificate: true,
    });
    const client = OPCUAClient.create({
        applicationName: "ProtocolBrainHistoryClient",
        clientCertificateManager: certificateManager,
        securityMode: MessageSecurityMode.None,
        securityPolicy: SecurityPolicy.None,
        endpointMustExist: false,
        connectionStrategy: { maxRetry: 0, initialDelay: 100, maxDelay: 200 },
        keepSessionAlive: false,
    });
    await certificateManager.initialize();
    await client.connect(plan.url);
    let session;
    try {
        session = await client.createSession();
        await print({ functions: await functions(session, plan) });
        if (plan.values) {
            const read = await session.read(plan.values.map((nodeId) => ({ nodeId })));
            const values = {};
            plan.values.forEach((nodeId, i) => (values[nodeId] = read[i].value.value));
            await print({ values });
        }
        await print({ processed: await processed(session, plan) });
        await print({ done: true });
    } finally {
        if (session) await session.close().catch(() => undefined);
        await client.disconnect();
    }
}

main().then(
    () => process.exit(0),
    (err) => print({ error: String((err && err.message) || err) }).then(() => process.exit(1))
);
