#!/usr/bin/env node
// A node-opcua SERVER: the peer the gateway's OPC UA client is tested against (we did not write
// node-opcua, so it checks our client against someone else's reading of the specification).
//
//   node opcua_server.js --port P [--variables N] [--period MS] [--security on|off]
//                        [--pki DIR] [--counter-start K] [--users user:password,...]
//
// Address space (namespace 1, "urn:protocol-brain:test-peer"; node ids are fixed strings, so a
// restarted server on the same port has the same ids):
//   Objects/Plant/Boiler/Temp      Double, read only, changed only through stdin
//   Objects/Plant/Boiler/Counter   UInt32, read only, +1 every period (starts at --counter-start)
//   Objects/Plant/Boiler/Setpoint  Double, writable
//   Objects/Plant/Boiler/Level     Int16, writable, refuses values outside 0..100 (BadOutOfRange)
//   Objects/Plant/Boiler/Enabled   Boolean, writable
//   Objects/Plant/Boiler/Label     String, writable
//   Objects/Plant/Vars/v0..vN-1    Double, read only, all change every period (value = tick + i/1000)
//
// stdout: one JSON line when ready ({"ready": true, "url", "certificate", "nodes", "vars"}),
// then one line per client write ({"written": name, "value": v}) and one per stdin answer.
// stdin, one JSON object per line:
//   {"set": "Temp", "value": 21.5, "ts": 1600000000000, "status": "UncertainLastUsableValue"}
//   {"get": "Counter"}   -> {"name": "Counter", "value": 12}
//   {"sessions": true}   -> {"sessions": 1, "channels": 1}   (open sessions, secure channels)
// --security on offers only Basic256Sha256 SignAndEncrypt (client certificates are accepted
// automatically: the tests are about our client checking the server, not the other way round).
"use strict";

const path = require("path");
const readline = require("readline");
const {
    OPCUAServer,
    OPCUACertificateManager,
    Variant,
    DataType,
    StatusCodes,
    SecurityPolicy,
    MessageSecurityMode,
} = require("node-opcua");

function parseArgs(argv) {
    const args = {
        port: 4840,
        variables: 0,
        period: 1000,
        security: "off",
        pki: path.join(process.cwd(), "pki"),
        counterStart: 0,
        users: "",
    };
    for (let i = 0; i < argv.length; i += 2) {
        const key = argv[i].replace(/^--/, "").replace(/-([a-z])/g, (_, c) => c.toUpperCase());
        if (!(key in args)) {
            throw new Error(`unknown option ${argv[i]}`);
        }
        args[key] = typeof args[key] === "number" ? Number(argv[i + 1]) : argv[i + 1];
    }
    return args;
}

function print(obj) {
    process.stdout.write(JSON.stringify(obj) + "\n");
}

async function main() {
    const args = parseArgs(process.argv.slice(2));
    const secure = args.security === "on";
    const users = new Map(
        args.users
            .split(",")
            .filter(Boolean)
            .map((pair) => pair.split(":"))
    );
    const certificateManager = new OPCUACertificateManager({
        rootFolder: args.pki,
        automaticallyAcceptUnknownCertificate: true,
    });
    const server = new OPCUAServer({
        port: args.port,
        host: "127.0.0.1",
        hostname: "127.0.0.1",
        resourcePath: "/peer",
        serverCertificateManager: certificateManager,
        securityPolicies: secure ? [SecurityPolicy.Basic256Sha256] : [SecurityPolicy.None],
        securityModes: secure ? [MessageSecurityMode.SignAndEncrypt] : [MessageSecurityMode.None],
        allowAnonymous: users.size === 0,
        userManager: { isValidUser: (name, password) => users.get(name) === password },
        serverInfo: { applicationUri: "urn:protocol-brain:test-peer", applicationName: "test peer" },
        serverCapabilities: {
            maxSessions: 20,
            maxMonitoredItemsPerSubscription: 50000,
            maxMonitoredItems: 100000,
            operationLimits: { maxMonitoredItemsPerCall: 20000, maxNodesPerRead: 20000 },
        },
        maxConnectionsPerEndpoint: 20,
        isAuditing: false,
    });
    await server.initialize();

    const addressSpace = server.engine.addressSpace;
    const ns = addressSpace.getOwnNamespace();
    const plant = ns.addFolder(addressSpace.rootFolder.objects, {
        nodeId: "s=Plant",
        browseName: "Plant",
    });
    const boiler = ns.addObject({ organizedBy: plant, nodeId: "s=Plant.Boiler", browseName: "Boiler" });
    const named = {};
    const nodes = {};

    // Read-only variables change only through setValueFromSource and report every change at
    // once; writable ones are bound to get/set so that client writes can be checked and
    // reported (node-opcua samples those every 50 ms).
    function addVar(name, dataType, initial, writable, check) {
        const state = { value: initial };
        const options = {
            componentOf: boiler,
            nodeId: `s=Plant.Boiler.${name}`,
            browseName: name,
            dataType,
            accessLevel: writable ? "CurrentRead | CurrentWrite" : "CurrentRead",
            userAccessLevel: writable ? "CurrentRead | CurrentWrite" : "CurrentRead",
            minimumSamplingInterval: writable ? 50 : 0,
            value: new Variant({ dataType: DataType[dataType], value: initial }),
        };
        if (writable) {
            options.value = {
                get: () => new Variant({ dataType: DataType[dataType], value: state.value }),
                set: (variant) => {
                    if (check && !check(variant.value)) {
                        return StatusCodes.BadOutOfRange;
                    }
                    state.value = variant.value;
                    print({ written: name, value: variant.value });
                    return StatusCodes.Good;
                },
            };
        }
        const v = ns.addVariable(options);
        named[name] = { variable: v, dataType, state: writable ? state : undefined };
        nodes[name] = v.nodeId.toString();
        return v;
    }

    addVar("Temp", "Double", 20.0, false);
    const counter = addVar("Counter", "UInt32", args.counterStart, false);
    addVar("Setpoint", "Double", 50.0, true);
    addVar("Level", "Int16", 10, true, (x) => x >= 0 && x <= 100);
    addVar("Enabled", "Boolean", false, true);
    addVar("Label", "String", "boiler one", true);

    const varsFolder = ns.addFolder(plant, { nodeId: "s=Plant.Vars", browseName: "Vars" });
    const vars = [];
    for (let i = 0; i < args.variables; i++) {
        const v = ns.addVariable({
            organizedBy: varsFolder,
            nodeId: `s=v${i}`,
            browseName: `v${i}`,
            dataType: "Double",
            accessLevel: "CurrentRead",
            userAccessLevel: "CurrentRead",
            minimumSamplingInterval: 0,
            value: new Variant({ dataType: DataType.Double, value: i / 1000 }),
        });
        vars.push(v);
        named[`v${i}`] = { variable: v, dataType: "Double" };
    }

    let count = args.counterStart;
    let tick = 0;
    setInterval(() => {
        tick += 1;
        count += 1;
        const now = new Date();
        counter.setValueFromSource(new Variant({ dataType: DataType.UInt32, value: count }), StatusCodes.Good, now);
        for (let i = 0; i < vars.length; i++) {
            vars[i].setValueFromSource(
                new Variant({ dataType: DataType.Double, value: tick + i / 1000 }),
                StatusCodes.Good,
                now
            );
        }
    }, args.period);

    const rl = readline.createInterface({ input: process.stdin });
    rl.on("line", (line) => {
        if (!line.trim()) {
            return;
        }
        let cmd;
        try {
            cmd = JSON.parse(line);
        } catch (err) {
            print({ error: `not JSON: ${line}` });
            return;
        }
        if (cmd.sessions) {
            print({ sessions: server.currentSessionCount, channels: server.currentChannelCount });
            return;
        }
        const name = cmd.set || cmd.get;
        const entry = named[name];
        if (!entry) {
            print({ error: `no variable ${name}` });
            return;
        }
        if (cmd.get) {
            const dv = entry.variable.readValue();
            print({ name, value: dv.value.value });
            return;
        }
        if (entry.state) {
            entry.state.value = cmd.value;
        } else {
            const status = cmd.status ? StatusCodes[cmd.status] : StatusCodes.Good;
            const ts = cmd.ts !== undefined ? new Date(cmd.ts) : new Date();
            entry.variable.setValueFromSource(
                new Variant({ dataType: DataType[entry.dataType], value: cmd.value }),
                status,
                ts
            );
        }
        print({ name, set: cmd.value });
    });
    rl.on("close", () => {}); // stdin closed: keep serving until killed

    await server.start();
    const endpoint = server.getEndpointUrl();
    print({
        ready: true,
        url: endpoint,
        certificate: server.certificateFile,
        namespace: "urn:protocol-brain:test-peer",
        nodes,
        vars: { count: args.variables, pattern: "ns=1;s=v{i}" },
    });

    const stop = async () => {
        await server.shutdown(0);
        process.exit(0);
    };
    process.on("SIGTERM", stop);
    process.on("SIGINT", stop);
}

main().catch((err) => {
    process.stderr.write(`opcua_server.js: ${err.stack || err}\n`);
    process.exit(1);
});
