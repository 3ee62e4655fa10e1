// connect-redis (express-session's Redis store) on node-redis against a real sessiond.
//
//   node tests/node/session_store.mjs <socket path>
//
// Runs the same scenario with node-redis' default protocol (RESP3 since v6), with
// RESP: 3 asked for explicitly, and with RESP: 2, each under its own key prefix.
// Prints one JSON object of observations on stdout; tests/test_frameworks.py checks
// them. Exits 1 (with {"error": ...}) if anything throws.

import { readFileSync } from "node:fs";
import http from "node:http";

import { RedisStore } from "connect-redis";
import session from "express-session";
import { createClient } from "redis";

const socketPath = process.argv[2];
if (!socketPath) {
  console.error("usage: node session_store.mjs <socket path>");
  process.exit(2);
}

const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

// A session as express-session stores it: its cookie plus the application's data.
function sess(data, maxAgeMs) {
  const cookie = { originalMaxAge: maxAgeMs ?? null, httpOnly: true, path: "/" };
  if (maxAgeMs !== undefined) cookie.expires = new Date(Date.now() + maxAgeMs).toISOString();
  return { cookie, ...data };
}

async function storeScenario(client, prefix) {
  const out = {};
  const store = new RedisStore({ client, prefix, ttl: 60 });
  const key = (sid) => prefix + sid;

  // set / get, the TTL comes from the cookie's expiry
  await store.set("a", sess({ user: "alice", cart: [1, 2, 3], name: "Zoë ✓" }, 30_000));
  const a = await store.get("a");
  out.get_a = { user: a.user, cart: a.cart, name: a.name };
  out.ttl_a = await client.ttl(key("a"));

  // no cookie expiry: the store's own ttl (60 s)
  await store.set("b", sess({ user: "bob" }));
  out.ttl_b = await client.ttl(key("b"));

  // touch extends the TTL to the cookie's new expiry
  await store.touch("a", sess({ user: "alice" }, 300_000));
  out.ttl_a_after_touch = await client.ttl(key("a"));

  // an update replaces the data
  await store.set("b", sess({ user: "bob", visits: 2 }));
  out.get_b = await store.get("b");
  delete out.get_b.cookie;

  out.get_missing = await store.get("missing");
  out.length = await store.length();
  out.ids = (await store.ids()).sort();
  out.all = (await store.all()).map((s) => ({ id: s.id, user: s.user })).sort((x, y) =>
    x.id < y.id ? -1 : 1,
  );

  await store.destroy("a");
  out.get_a_after_destroy = await store.get("a");
  out.length_after_destroy = await store.length();

  // a cookie that has already expired: connect-redis deletes instead of writing
  await store.set("b", sess({ user: "bob" }, -5_000));
  out.get_b_after_expired_set = await store.get("b");

  // a large session and many sessions (SCAN has to page: scanCount is 100)
  const big = "x".repeat(200_000);
  await store.set("big", sess({ big }, 60_000));
  out.big_roundtrip = (await store.get("big")).big === big;
  await Promise.all(
    Array.from({ length: 250 }, (_, i) => store.set(`m${i}`, sess({ i }, 60_000))),
  );
  out.length_many = await store.length();
  out.ids_many_unique = new Set(await store.ids()).size;

  await store.clear();
  out.length_after_clear = await store.length();
  out.ids_after_clear = await store.ids();

  // expiry: a session whose cookie expires in 1 s is gone soon after. Poll with
  // EXISTS, which only inspects: a GET is an access and (sliding TTL) renews it.
  await store.set("e", sess({ user: "eve" }, 1_000));
  out.get_e_before = (await store.get("e"))?.user ?? null;
  const deadline = Date.now() + 15_000;
  while (Date.now() < deadline && (await client.exists(key("e")))) await sleep(100);
  out.get_e_after_expiry = await store.get("e");
  return out;
}

// express-session's middleware on a bare node http server (no express needed).
async function middlewareScenario(client, prefix) {
  const store = new RedisStore({ client, prefix });
  const mw = session({
    store,
    secret: "test-secret",
    resave: false,
    saveUninitialized: false,
    cookie: { maxAge: 60_000 },
  });
  const server = http.createServer((req, res) => {
    mw(req, res, () => {
      const url = new URL(req.url, "http://localhost");
      if (url.pathname === "/set") req.session.value = url.searchParams.get("v");
      res.setHeader("content-type", "application/json");
      res.end(JSON.stringify({ value: req.session.value ?? null }));
    });
  });
  await new Promise((resolve) => server.listen(0, "127.0.0.1", resolve));
  const base = `http://127.0.0.1:${server.address().port}`;
  try {
    const set = await fetch(`${base}/set?v=hello`);
    const cookie = set.headers.get("set-cookie").split(";")[0];
    const mine = await (await fetch(`${base}/get`, { headers: { cookie } })).json();
    const other = await (await fetch(`${base}/get`)).json();
    const keys = [];
    for await (const batch of client.scanIterator({ MATCH: `${prefix}*`, COUNT: 100 })) {
      keys.push(...batch);
    }
    return { set: (await set.json()).value, mine: mine.value, other: other.value, keys: keys.length };
  } finally {
    server.close();
  }
}

async function runMode(name, resp) {
  const options = { socket: { path: socketPath, reconnectStrategy: false } };
  if (resp !== undefined) options.RESP = resp;
  const client = createClient(options);
  const errors = [];
  client.on("error", (err) => errors.push(String(err)));
  await client.connect();
  try {
    const info = String(await client.sendCommand(["CLIENT", "INFO"]));
    const out = {
      resp: Number(/\bresp=(\d)/.exec(info)?.[1]),
      lib_name: /\blib-name=(\S*)/.exec(info)?.[1] ?? null,
      store: await storeScenario(client, `sess:${name}:`),
      middleware: await middlewareScenario(client, `web:${name}:`),
    };
    out.errors = errors;
    return out;
  } finally {
    await client.close();
  }
}

try {
  const modes = await Promise.all([
    runMode("default", undefined),
    runMode("resp3", 3),
    runMode("resp2", 2),
  ]);
  const versions = { node: process.version };
  for (const pkg of ["redis", "connect-redis", "express-session"]) {
    const file = new URL(`./node_modules/${pkg}/package.json`, import.meta.url);
    versions[pkg] = JSON.parse(readFileSync(file, "utf8")).version;
  }
  console.log(
    JSON.stringify({ versions, default: modes[0], resp3: modes[1], resp2: modes[2] }),
  );
} catch (err) {
  console.log(JSON.stringify({ error: String(err?.stack ?? err) }));
  process.exit(1);
}
