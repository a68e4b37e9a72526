// Two matrix-js-sdk clients with the SDK's Rust crypto (the WASM build of
// matrix-sdk-crypto that npm ships) upload their keys to todeviced, Alice
// claims a one-time key of Bob's device, establishes an Olm session and sends
// him an encrypted to-device message; Bob decrypts it and answers the same
// way. The sync loop is this script's own (todeviced serves the to-device
// half of /sync only): it feeds each /sync answer to the crypto layer as the
// SDK's sync loop would (to-device events, one-time-key counts, device
// lists, then "sync completed", which sends the crypto layer's queued
// requests: /keys/upload, /keys/query, /keys/claim).
//
//   node e2ee.mjs BASE_URL ALICE_TOKEN BOB_TOKEN
//
// Prints one JSON line per step and {"done":true} at the end; exits non-zero
// on any failure.
import * as sdk from "matrix-js-sdk";
import { UserId } from "@matrix-org/matrix-sdk-crypto-wasm";

const [base, aliceToken, bobToken] = process.argv.slice(2);
const say = (o) => console.log(JSON.stringify(o));
sdk.logger?.setLevel?.("warn");

async function makeClient(userId, deviceId, accessToken) {
  const client = sdk.createClient({ baseUrl: base, userId, deviceId, accessToken });
  await client.initRustCrypto({ useIndexedDB: false });
  const crypto = client.getCrypto();
  return { client, crypto, userId, deviceId, accessToken, since: "" };
}

// One /sync, fed to the crypto layer; returns the decrypted to-device events.
async function sync(c, timeout) {
  const q = new URLSearchParams({ timeout: String(timeout) });
  if (c.since) q.set("since", c.since);
  const res = await fetch(`${base}/_matrix/client/v3/sync?${q}`, { headers: { Authorization: `Bearer ${c.accessToken}` } });
  if (!res.ok) throw new Error(`sync for ${c.userId}: ${res.status} ${await res.text()}`);
  const body = await res.json();
  const events = await c.crypto.preprocessToDeviceMessages(body.to_device?.events ?? []);
  await c.crypto.processKeyCounts(body.device_one_time_keys_count ?? {}, body.device_unused_fallback_key_types ?? []);
  await c.crypto.processDeviceLists(body.device_lists ?? {});
  c.crypto.onSyncCompleted({});
  await c.crypto.outgoingRequestsManager.doProcessOutgoingRequests();
  c.since = body.next_batch;
  return { events: events.map((e) => e.message ?? e), counts: body.device_one_time_keys_count };
}

// track makes c follow the device list of userId. A client tracks the users
// it shares encrypted rooms with; there is no room here, so each client
// starts tracking the other as the SDK does when it loads a room's members,
// and downloads their keys (/keys/query): the sender needs the recipient's
// to encrypt, the recipient the sender's to accept what it decrypts.
async function track(c, userId) {
  await c.crypto.olmMachine.updateTrackedUsers([new UserId(userId)]);
  await c.crypto.outgoingRequestsManager.doProcessOutgoingRequests();
}

// send encrypts payload for the recipient's device (claiming one of its
// one-time keys, /keys/claim, to open an Olm session) and sends it.
async function send(from, to, payload) {
  const batch = await from.crypto.encryptToDeviceMessages("m.todeviced.test", [{ userId: to.userId, deviceId: to.deviceId }], payload);
  const contentMap = new Map([[to.userId, new Map(batch.batch.map((m) => [m.deviceId, m.payload]))]]);
  await from.client.sendToDevice(batch.eventType, contentMap);
  return batch.eventType;
}

// receive syncs until a decrypted event of the test's type arrives.
async function receive(c) {
  for (let i = 0; i < 20; i++) {
    const { events } = await sync(c, 2000);
    for (const e of events) {
      if (e.type === "m.todeviced.test") return e;
    }
  }
  throw new Error(`${c.userId} received nothing`);
}

try {
  const alice = await makeClient("@alice:localhost", "ADEV", aliceToken);
  const bob = await makeClient("@bob:localhost", "BDEV", bobToken);
  // First syncs: the crypto layers upload device keys and one-time keys.
  for (const c of [alice, bob]) {
    await sync(c, 0);
    const { counts } = await sync(c, 0);
    say({ step: "uploaded", user: c.userId, one_time_keys: counts });
  }
  await track(alice, bob.userId);
  await track(bob, alice.userId);
  const type1 = await send(alice, bob, { secret: "from alice" });
  say({ step: "sent", from: alice.userId, wire_type: type1 });
  const got1 = await receive(bob);
  say({ step: "decrypted", user: bob.userId, sender: got1.sender, content: got1.content });
  const type2 = await send(bob, alice, { secret: "from bob" });
  say({ step: "sent", from: bob.userId, wire_type: type2 });
  const got2 = await receive(alice);
  say({ step: "decrypted", user: alice.userId, sender: got2.sender, content: got2.content });
  say({ done: true });
  process.exit(0);
} catch (e) {
  say({ error: String(e?.stack ?? e) });
  process.exit(1);
}
