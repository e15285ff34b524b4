// Measuring subscriber for bench/modbus_opcua.py: node-opcua (not our stack) subscribes to the
// given nodes and reports data-change notifications per second and their age (client receive
// time minus the value's SourceTimestamp, i.e. since the Modbus response arrived).
// argv[2]: a JSON file {"url", "namespace", "nodes": [...], "warmup_s", "duration_s",
// "publishing_ms"}; stdout: one JSON line.
const opcua = require("node-opcua");

async function main() {
  const input = JSON.parse(require("fs").readFileSync(process.argv[2], "utf8"));
  const client = opcua.OPCUAClient.create({ endpointMustExist: false, connectionStrategy: { maxRetry: 3 } });
  await client.connect(input.url);
  const session = await client.createSession();
  const namespaces = await session.readNamespaceArray();
  const ns = namespaces.indexOf(input.namespace);
  if (ns < 0) throw new Error(`namespace ${input.namespace} not on the server: ${namespaces}`);
  const sub = await session.createSubscription2({
    requestedPublishingInterval: input.publishing_ms,
    requestedMaxKeepAliveCount: 20,
    requestedLifetimeCount: 600,
    maxNotificationsPerPublish: 0,
    publishingEnabled: true,
    priority: 1,
  });
  let measuring = false;
  let count = 0;
  const ages = [];
  const batch = 1000;
  for (let i = 0; i < input.nodes.length; i += batch) {
    const items = input.nodes.slice(i, i + batch).map((n) => ({ nodeId: `ns=${ns};${n}`, attributeId: opcua.AttributeIds.Value }));
    const group = await sub.monitorItems(items, { samplingInterval: 0, queueSize: 10, discardOldest: true }, opcua.TimestampsToReturn.Both);
    group.on("changed", (item, dv) => {
      if (!measuring) return;
      count += 1;
      if (dv.sourceTimestamp) ages.push(Date.now() - dv.sourceTimestamp.getTime());
    });
  }
  await new Promise((r) => setTimeout(r, input.warmup_s * 1000));
  measuring = true;
  const t0 = Date.now();
  await new Promise((r) => setTimeout(r, input.duration_s * 1000));
  measuring = false;
  const wall = (Date.now() - t0) / 1000;
  ages.sort((a, b) => a - b);
  const pct = (q) => (ages.length ? ages[Math.min(ages.length - 1, Math.floor(q * ages.length))] : null);
  process.stdout.write(JSON.stringify({ updates: count, updates_per_s: count / wall, p50_ms: pct(0.5), p99_ms: pct(0.99), max_ms: pct(1) }) + "\n");
  await sub.terminate();
  await session.close();
  await client.disconnect();
}
main().catch((e) => { process.stderr.write(String(e && e.stack || e) + "\n"); process.exit(1); });
