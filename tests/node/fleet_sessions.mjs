// express-session on connect-redis and node-redis, across two hosts of a fleet:
// one sessiond per host, both on one shared PostgreSQL store.
//
//   node tests/node/fleet_sessions.mjs <host A socket> <host B socket>
//
// An express-session middleware runs per host, each on its own sessiond (as two
// app servers behind a load balancer would). A session made on A is read on B
// with A's cookie, changed on B and read back on A, destroyed on A and gone on
// B. Prints one JSON object of observations (tests/test_fleet_frameworks.py
// checks them); exits 1 with {"error": ...} if anything throws.

import http from "node:http";

import { RedisStore } from "connect-redis";
import session from "express-session";
import { createClient } from "redis";

const [socketA, socketB] = process.argv.slice(2);
if (!socketA || !socketB) {
  console.error("usage: node fleet_sessions.mjs <socket A> <socket B>");
  process.exit(2);
}

async function host(socketPath) {
  const client = createClient({ socket: { path: socketPath, reconnectStrategy: false } });
  await client.connect();
  const store = new RedisStore({ client, prefix: "fleet:" });
  const mw = session({
    store,
    secret: "fleet-secret",
    resave: false,
    saveUninitialized: false,
    cookie: { maxAge: 60_000 },
  });
  const server = http.createServer((req, res) => {
    mw(req, res, () => {
      const url = new URL(req.url, "http://localhost");
      if (url.pathname === "/set") req.session.value = url.searchParams.get("v");
      const done = () => {
        res.setHeader("content-type", "application/json");
        res.end(JSON.stringify({ value: req.session?.value ?? null }));
      };
      if (url.pathname === "/logout") req.session.destroy(done);
      else done();
    });
  });
  await new Promise((resolve) => server.listen(0, "127.0.0.1", resolve));
  const base = `http://127.0.0.1:${server.address().port}`;
  return { client, store, server, base };
}

// A change on one host reaches the other within the invalidation lag: poll for
// up to a second before taking what the other host says.
async function eventually(read, want) {
  const deadline = Date.now() + 1000;
  let got = await read();
  while (got !== want && Date.now() < deadline) {
    await new Promise((resolve) => setTimeout(resolve, 10));
    got = await read();
  }
  return got;
}

async function get(h, path, cookie) {
  const res = await fetch(h.base + path, { headers: cookie ? { cookie } : {} });
  return { cookie: res.headers.get("set-cookie")?.split(";")[0], body: await res.json() };
}

const a = await host(socketA);
const b = await host(socketB);
try {
  const out = {};
  const made = await get(a, "/set?v=hello");
  const cookie = made.cookie;
  out.set_on_a = made.body.value;
  out.read_on_b = (await get(b, "/get", cookie)).body.value;
  out.changed_on_b = (await get(b, "/set?v=world", cookie)).body.value;
  out.read_on_a = await eventually(async () => (await get(a, "/get", cookie)).body.value, "world");
  const sid = decodeURIComponent(cookie.split("=")[1]).slice(2).split(".")[0];
  out.ttl_on_b = await b.client.ttl(`fleet:${sid}`);
  out.store_get_on_b = (await b.store.get(sid))?.value ?? null;
  out.logout_on_a = (await get(a, "/logout", cookie)).body.value;
  out.after_logout_on_b = await eventually(
    async () => (await get(b, "/get", cookie)).body.value,
    null,
  );
  out.exists_on_b = await b.client.exists(`fleet:${sid}`);
  console.log(JSON.stringify(out));
} catch (err) {
  console.log(JSON.stringify({ error: String(err?.stack ?? err) }));
  process.exitCode = 1;
} finally {
  for (const h of [a, b]) {
    h.server.close();
    await h.client.close();
  }
}
