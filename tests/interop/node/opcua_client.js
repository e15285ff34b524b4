#!/usr/bin/env node
// A node-opcua CLIENT: the peer the gateway's OPC UA server is tested against (we did not write
// node-opcua, so it checks our server against someone else's reading of the specification).
//
//   echo '<plan JSON>' | node opcua_client.js
//
// The plan, one JSON object on stdin (every key but "pki" optional):
//   {
//     "pki": "/tmp/x/client-pki",            client certificate store (created on first use)
//     "certificateFile": "/tmp/x/leaf.pem",  a certificate made elsewhere (a plant CA's), with
//     "privateKeyFile": "/tmp/x/key.pem",    its key (PEM) and the URI in it; default: one of
//     "applicationUri": "urn:plant:hmi-1",   the store's, self-signed
//     "certificateOnly": true,               only create the certificate, print it, exit
//     "url": "opc.tcp://127.0.0.1:4841/protocol-brain",
//     "security": {"policy": "Basic256Sha256", "mode": "SignAndEncrypt"},   default: None
//     "user": {"username": "op", "password": "secret"},                      default: anonymous
//     "browse": "ns=2;s=Plant",              node whose children to list
//     "read": ["ns=2;s=pump.temp"],          value, DataType, AccessLevel, Description, and
//                                            the HasProperty children (EngineeringUnits, EURange)
//     "probe": ["ns=2;s=nope"],              per node: the status of a Value read and of a Browse,
//                                            its AccessLevel and UserAccessLevel (unknown nodes too)
//     "subscribe": {"nodes": [...], "count": 2, "timeout": 5000, "interval": 100},
//     "write": [{"nodeId": "...", "dataType": "Double", "value": 212}],
//     "history": {"nodes": [...], "start": ISO or null, "end": ISO or null,
//                 "numValuesPerNode": 0, "returnBounds": false}   raw HistoryRead, following
//                                            continuation points until every node is done
//   }
//
// stdout, one JSON object per line, in this order as far as the plan goes:
//   {"certificate": path}  {"connected": true}  {"browse": [...]}  {"read": [...]}  {"probe": [...]}
//   {"change": {...}} per data change  {"write": [{"nodeId", "status"}]}
//   {"history": [{"nodeId", "status", "pages", "values": [dataValue...]}]}  {"done": true}
// On failure: {"error": message, "status": "BadCertificateUntrusted"?} and exit code 1.
"use strict";

const readline = require("readline");
const path = require("path");
const {
    OPCUAClient,
    OPCUACertificateManager,
    AttributeIds,
    BrowseDirection,
    DataType,
    MessageSecurityMode,
    SecurityPolicy,
    TimestampsToReturn,
    UserTokenType,
} = require("node-opcua");

function print(obj) {
    process.stdout.write(JSON.stringify(obj) + "\n");
}

async function readPlan() {
    const lines = [];
    const rl = readline.createInterface({ input: process.stdin });
    for await (const line of rl) {
        lines.push(line);
    }
    return JSON.parse(lines.join("\n"));
}

function plain(value) {
    // Variant values as JSON: Int64 arrives as [high, low], extension objects as classes.
    if (value === null || value === undefined) return null;
    if (typeof value === "bigint") return Number(value);
    if (Array.isArray(value)) return value.map(plain);
    if (value instanceof Date) return value.toISOString();
    if (typeof value === "object") {
        if (typeof value.toJSON === "function") return value.toJSON();
        const out = {};
        for (const [k, v] of Object.entries(value)) out[k] = plain(v);
        return out;
    }
    return value;
}

function dataValue(dv) {
    return {
        value: plain(dv.value.value),
        dataType: DataType[dv.value.dataType],
        status: dv.statusCode.name,
        sourceTimestamp: dv.sourceTimestamp ? dv.sourceTimestamp.toISOString() : null,
        serverTimestamp: dv.serverTimestamp ? dv.serverTimestamp.toISOString() : null,
    };
}

async function browse(session, nodeId, referenceTypeId) {
    const result = await session.browse({
        nodeId,
        browseDirection: BrowseDirection.Forward,
        referenceTypeId: referenceTypeId || "HierarchicalReferences",
        includeSubtypes: true,
        resultMask: 63,
    });
    if (result.statusCode.name !== "Good") {
        throw new Error(`browse ${nodeId}: ${result.statusCode.name}`);
    }
    return result.references.map((r) => ({
        nodeId: r.nodeId.toString(),
        browseName: r.browseName.toString(),
        displayName: r.displayName.text,
        nodeClass: r.nodeClass,
        typeDefinition: r.typeDefinition.toString(),
    }));
}

async function readNode(session, nodeId) {
    const attrs = [
        AttributeIds.Value,
        AttributeIds.DataType,
        AttributeIds.AccessLevel,
        AttributeIds.UserAccessLevel,
        AttributeIds.Description,
        AttributeIds.DisplayName,
    ];
    const dvs = await session.read(attrs.map((attributeId) => ({ nodeId, attributeId })));
    const properties = {};
    for (const prop of await browse(session, nodeId, "HasProperty")) {
        const dv = await session.read({ nodeId: prop.nodeId, attributeId: AttributeIds.Value });
        properties[prop.browseName.replace(/^\d+:/, "")] = plain(dv.value.value);
    }
    return {
        nodeId,
        ...dataValue(dvs[0]),
        dataTypeId: dvs[1].value.value ? dvs[1].value.value.toString() : null,
        accessLevel: dvs[2].value.value,
        userAccessLevel: dvs[3].value.value,
        description: dvs[4].value.value ? dvs[4].value.value.text : null,
        displayName: dvs[5].value.value ? dvs[5].value.value.text : null,
        properties,
    };
}

async function probe(session, nodeIds) {
    const out = [];
    for (const nodeId of nodeIds) {
        const attrs = [AttributeIds.Value, AttributeIds.AccessLevel, AttributeIds.UserAccessLevel];
        const dvs = await session.read(attrs.map((attributeId) => ({ nodeId, attributeId })));
        const browsed = await session.browse({ nodeId, browseDirection: BrowseDirection.Forward });
        out.push({
            nodeId,
            read: dvs[0].statusCode.name,
            browse: browsed.statusCode.name,
            accessLevel: dvs[1].value.value,
            userAccessLevel: dvs[2].value.value,
        });
    }
    return out;
}

async function subscribe(session, spec) {
    const subscription = await session.createSubscription2({
        requestedPublishingInterval: spec.interval || 100,
        requestedLifetimeCount: 600,
        requestedMaxKeepAliveCount: 10,
        maxNotificationsPerPublish: 1000,
        publishingEnabled: true,
        priority: 1,
    });
    let seen = 0;
    const wanted = (spec.count || 1) * spec.nodes.length;
    await new Promise((resolve, reject) => {
        const timer = setTimeout(
            () => reject(new Error(`only ${seen} of ${wanted} data changes`)),
            spec.timeout || 5000
        );
        for (const nodeId of spec.nodes) {
            const item = subscription.monitor(
                { nodeId, attributeId: AttributeIds.Value },
                { samplingInterval: 0, discardOldest: true, queueSize: 10 },
                TimestampsToReturn.Both
            );
            item.then((monitored) =>
                monitored.on("changed", (dv) => {
                    print({ change: { nodeId, ...dataValue(dv) } });
                    seen += 1;
                    if (seen >= wanted) {
                        clearTimeout(timer);
                        resolve();
                    }
                })
            ).catch(reject);
        }
    });
    await subscription.terminate();
}

async function write(session, writes) {
    const statuses = await session.write(
        writes.map((w) => ({
            nodeId: w.nodeId,
            attributeId: AttributeIds.Value,
            value: { value: { dataType: DataType[w.dataType], value: w.value } },
        }))
    );
    return writes.map((w, i) => ({ nodeId: w.nodeId, status: statuses[i].name }));
}

async function history(session, spec) {
    // One HistoryRead per page: the nodes that still have a continuation point are asked again.
    const out = spec.nodes.map((nodeId) => ({ nodeId, status: null, pages: 0, values: [] }));
    let left = spec.nodes.map((nodeId, i) => ({ i, nodeId, continuationPoint: undefined }));
    const when = (t) => (t ? new Date(t) : null);
    while (left.length) {
        const results = await session.readHistoryValue(
            left.map((n) => ({ nodeId: n.nodeId, continuationPoint: n.continuationPoint })),
            when(spec.start),
            when(spec.end),
            { numValuesPerNode: spec.numValuesPerNode || 0, returnBounds: !!spec.returnBounds }
        );
        const next = [];
        results.forEach((result, k) => {
            const node = out[left[k].i];
            node.status = result.statusCode.name;
            node.pages += 1;
            const values = (result.historyData && result.historyData.dataValues) || [];
            for (const dv of values) node.values.push(dataValue(dv));
            if (result.continuationPoint && result.continuationPoint.length) {
                next.push({ ...left[k], continuationPoint: result.continuationPoint });
            }
        });
        left = next;
    }
    return out;
}

function statusOf(err) {
    const text = String((err && err.message) || err);
    const match = text.match(/Bad[A-Za-z]+/);
    return match ? match[0] : null;
}

async function main() {
    const plan = await readPlan();
    const certificateManager = new OPCUACertificateManager({
        rootFolder: plan.pki,
        // the tests are about our server checking its clients; this client takes our server's
        // self-signed certificate as it comes
        automaticallyAcceptUnknownCertificate: true,
    });
    const security = plan.security || { policy: "None", mode: "None" };
    const own = plan.certificateFile
        ? {
              applicationUri: plan.applicationUri,
              certificateFile: plan.certificateFile,
              privateKeyFile: plan.privateKeyFile,
          }
        : {};
    const client = OPCUAClient.create({
        applicationName: "ProtocolBrainInteropClient",
        ...own,
        clientCertificateManager: certificateManager,
        securityMode: MessageSecurityMode[security.mode],
        securityPolicy: SecurityPolicy[security.policy],
        endpointMustExist: false,
        connectionStrategy: { maxRetry: 0, initialDelay: 100, maxDelay: 200 },
        requestedSessionTimeout: 30000,
        keepSessionAlive: false,
    });
    await certificateManager.initialize();
    if (!plan.certificateFile) await client.createDefaultCertificate();
    print({ certificate: path.resolve(client.certificateFile) });
    if (plan.certificateOnly) {
        print({ done: true });
        return;
    }
    await client.connect(plan.url);
    let session;
    try {
        const identity = plan.user
            ? { type: UserTokenType.UserName, userName: plan.user.username, password: plan.user.password }
            : { type: UserTokenType.Anonymous };
        session = await client.createSession(identity);
        print({ connected: true });
        if (plan.browse) print({ browse: await browse(session, plan.browse) });
        if (plan.read) {
            const out = [];
            for (const nodeId of plan.read) out.push(await readNode(session, nodeId));
            print({ read: out });
        }
        if (plan.probe) print({ probe: await probe(session, plan.probe) });
        if (plan.subscribe) await subscribe(session, plan.subscribe);
        if (plan.write) print({ write: await write(session, plan.write) });
        if (plan.history) print({ history: await history(session, plan.history) });
        print({ done: true });
    } finally {
        if (session) await session.close().catch(() => undefined);
        await client.disconnect();
    }
}

main().then(
    () => process.exit(0),
    (err) => {
        print({ error: String((err && err.message) || err), status: statusOf(err) });
        process.exit(1);
    }
);
