#!/usr/bin/env node
// A node-opcua SERVER with alarms and events (Part 9): the peer the gateway's OPC UA client
// subscribes to events of (we did not write node-opcua's conditions, ConditionRefresh or event
// filters, so it checks our client against someone else's reading of the specification).
//
//   node opcua_alarm_server.js --port P [--pki DIR] [--overheat on|off] [--severity N]
//                              [--confirm on|off]
//
// Address space (namespace 1; fixed node ids, so a restarted server has the same ones):
//   Objects/Tank                  an event source of the Server object (its events reach i=2253)
//   Objects/Tank/Level            Double, read only, changed through stdin
//   Objects/Tank/OverheatInput    Boolean: the input of the alarm below
//   Objects/Tank/Overheat         OffNormalAlarmType: active while OverheatInput is true
// --overheat on starts with the alarm active (raised before any client can subscribe: only
// ConditionRefresh shows it), at --severity (default 700). --confirm on gives the alarm the
// optional ConfirmedState and Confirm (Part 9's two-step acknowledgement).
//
// stdout: one JSON line when ready ({"ready": true, "url", "nodes"}), then one per stdin answer.
// stdin, one JSON object per line:
//   {"set": "Level", "value": 21.5}
//   {"alarm": true, "severity": 700, "message": "too hot"}   raise (false: clear) Overheat
//   {"event": "SystemEventType", "severity": 100, "message": "door open"}   a plain event of
//                                                    that standard type, from Tank, on Server
//   {"state": true}   Overheat's own state, as this server holds it: {"state": {"active",
//                     "acked", "confirmed" (null without --confirm), "retain", "comment",
//                     "eventId" (hex, of its latest event)}}
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
    nodesets,
    ConditionInfo,
} = require("node-opcua");

function parseArgs(argv) {
    const args = { port: 4840, pki: path.join(process.cwd(), "pki"), overheat: "off", severity: 700, confirm: "off" };
    for (let i = 0; i < argv.length; i += 2) {
        const key = argv[i].replace(/^--/, "");
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
    const server = new OPCUAServer({
        port: args.port,
        host: "127.0.0.1",
        hostname: "127.0.0.1",
        resourcePath: "/alarms",
        nodeset_filename: [nodesets.standard],
        serverCertificateManager: new OPCUACertificateManager({
            rootFolder: args.pki,
            automaticallyAcceptUnknownCertificate: true,
        }),
        securityPolicies: [SecurityPolicy.None],
        securityModes: [MessageSecurityMode.None],
        allowAnonymous: true,
        serverInfo: { applicationUri: "urn:protocol-brain:alarm-peer", applicationName: "alarm peer" },
        isAuditing: false,
    });
    await server.initialize();

    const addressSpace = server.engine.addressSpace;
    addressSpace.installAlarmsAndConditionsService();
    const ns = addressSpace.getOwnNamespace();
    const serverObject = addressSpace.rootFolder.objects.server;
    const tank = ns.addObject({
        organizedBy: addressSpace.rootFolder.objects,
        nodeId: "s=Tank",
        browseName: "Tank",
        eventSourceOf: serverObject,
    });
    const level = ns.addVariable({
        componentOf: tank,
        nodeId: "s=Tank.Level",
        browseName: "Level",
        dataType: "Double",
        minimumSamplingInterval: 0,
        value: new Variant({ dataType: DataType.Double, value: 10.0 }),
    });
    const flag = (name) =>
        ns.addVariable({
            componentOf: tank,
            nodeId: `s=Tank.${name}`,
            browseName: name,
            dataType: "Boolean",
            value: new Variant({ dataType: DataType.Boolean, value: false }),
        });
    const input = flag("OverheatInput");
    const normal = flag("OverheatNormal"); // the input's normal state
    const alarm = ns.instantiateOffNormalAlarm({
        browseName: "Overheat",
        nodeId: "s=Tank.Overheat",
        componentOf: tank,
        conditionSource: tank,
        inputNode: input,
        normalState: normal,
        conditionName: "Overheat",
        optionals: args.confirm === "on" ? ["ConfirmedState", "Confirm"] : [],
    });
    // The message and severity of the alarm's next state change (stdin sets them).
    let next = { severity: args.severity, message: "Tank overheat" };
    alarm.calculateConditionInfo = (stateData, isActive) =>
        new ConditionInfo({
            message: isActive ? next.message : `${next.message} cleared`,
            severity: next.severity,
            quality: StatusCodes.Good,
            retain: isActive,
        });

    function setInput(active) {
        input.setValueFromSource(new Variant({ dataType: DataType.Boolean, value: active }));
    }
    if (args.overheat === "on") {
        setInput(true);
    }

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
        try {
            if (cmd.set === "Level") {
                level.setValueFromSource(new Variant({ dataType: DataType.Double, value: cmd.value }));
                print({ set: "Level", value: cmd.value });
            } else if ("alarm" in cmd) {
                next = { severity: cmd.severity ?? next.severity, message: cmd.message ?? next.message };
                setInput(Boolean(cmd.alarm));
                print({ alarm: Boolean(cmd.alarm), active: alarm.activeState.getValue() });
            } else if (cmd.state) {
                const branch = alarm.currentBranch();
                print({
                    state: {
                        active: branch.getActiveState(),
                        acked: branch.getAckedState(),
                        confirmed: alarm.confirmedState ? branch.getConfirmedState() : null,
                        retain: branch.getRetain(),
                        comment: branch.getComment().text || "",
                        eventId: branch.getEventId().toString("hex"),
                    },
                });
            } else if (cmd.event) {
                serverObject.raiseEvent(cmd.event, {
                    sourceName: { dataType: DataType.String, value: "Tank" },
                    sourceNode: { dataType: DataType.NodeId, value: tank.nodeId },
                    message: { dataType: DataType.LocalizedText, value: { text: cmd.message || "" } },
                    severity: { dataType: DataType.UInt16, value: cmd.severity ?? 100 },
                });
                print({ event: cmd.event });
            } else {
                print({ error: `unknown command ${line}` });
            }
        } catch (err) {
            print({ error: String(err.stack || err) });
        }
    });
    rl.on("close", () => {}); // stdin closed: keep serving until killed

    await server.start();
    print({
        ready: true,
        url: server.getEndpointUrl(),
        nodes: {
            Level: level.nodeId.toString(),
            Overheat: alarm.nodeId.toString(),
            Tank: tank.nodeId.toString(),
        },
    });
    const stop = async () => {
        await server.shutdown(0);
        process.exit(0);
    };
    process.on("SIGTERM", stop);
    process.on("SIGINT", stop);
}

main().catch((err) => {
    process.stderr.write(`opcua_alarm_server.js: ${err.stack || err}\n`);
    process.exit(1);
});
