// node-redis pub/sub and keyspace notifications against a real server.
//
//   node tests/node/pubsub.mjs <socket path>
//
// Runs one scenario with RESP: 2 (node-redis keeps a subscribed connection for
// messages) and with RESP: 3 (messages are pushes; the subscribed connection
// still runs commands). tests/test_pubsub.py runs it against sessiond and
// against redis-server and compares. Prints one JSON object of observations on
// stdout; exits 1 (with {"error": ...}) if anything throws.

import { createClient } from "redis";

const socketPath = process.argv[2];
if (!socketPath) {
  console.error("usage: node pubsub.mjs <socket path>");
  process.exit(2);
}

const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

async function scenario(RESP) {
  const client = createClient({ socket: { path: socketPath }, RESP });
  const errors = [];
  client.on("error", (err) => errors.push(String(err)));
  await client.connect();
  const sub = client.duplicate();
  sub.on("error", (err) => errors.push(String(err)));
  await sub.connect();

  const messages = [];
  let finish;
  const finished = new Promise((resolve) => (finish = resolve));
  await sub.subscribe("news", (message, channel) => {
    messages.push(["message", channel, message]);
    if (message === "done") finish();
  });
  await sub.pSubscribe("__keyevent@0__:*", (message, channel) => {
    messages.push(["pmessage", channel, message]);
  });

  const out = { resp: RESP, errors };
  out.numsub = await client.pubSubNumSub(["news", "nobody"]);
  out.numpat = await client.pubSubNumPat();
  out.channels = await client.pubSubChannels("n*");
  out.config_before = await client.configGet("notify-keyspace-events");
  await client.configSet("notify-keyspace-events", "E$gx");
  out.config_after = await client.configGet("notify-keyspace-events");
  out.published = await client.publish("news", "hello");
  out.published_nowhere = await client.publish("elsewhere", "hello");

  const key = (name) => `node:${RESP}:${name}`;
  await client.set(key("k"), "v");
  await client.set(key("t"), "v", { expiration: { type: "PX", value: 100 } });
  await client.incr(key("n"));
  await client.expire(key("k"), 100);
  await client.persist(key("k"));
  await client.del([key("k"), key("missing")]);
  await sleep(400);
  out.get_expired = await client.get(key("t")); // expired by now, actively or lazily
  if (RESP === 3) {
    // RESP3: a subscribed connection may run any command.
    out.get_while_subscribed = await sub.get(key("n"));
  }
  await client.publish("news", "done");
  await Promise.race([finished, sleep(5000)]);
  out.messages = messages;

  await sub.unsubscribe();
  await sub.pUnsubscribe();
  out.numsub_after = await client.pubSubNumSub(["news"]);
  await client.configSet("notify-keyspace-events", "");
  await client.del([key("n")]);
  sub.destroy();
  client.destroy();
  return out;
}

try {
  const result = { resp2: await scenario(2), resp3: await scenario(3) };
  console.log(JSON.stringify(result));
} catch (err) {
  console.log(JSON.stringify({ error: String(err && err.stack ? err.stack : err) }));
  process.exit(1);
}
