// A real client of todeviced's sliding sync: matrix-js-sdk's SlidingSync with
// its own to-device extension (registered by SlidingSyncSdk), on an
// extension-only connection (no lists, no room subscriptions). Run by
// internal/httpapi/slidingsync_client_test.go; configured by environment:
//   HS_URL, USER_ID, DEVICE_ID, ACCESS_TOKEN  the device to sync as
//   EXPECT                                    to-device events to wait for
// It prints "WAITING <n>" after each answer and, once EXPECT events arrived
// and the next answer acknowledged them, one line
// "RESULT {events, next_batch, requests}" and exits 0. Any error exits 1.
import { ClientEvent, createClient } from "matrix-js-sdk";
import { SlidingSync, SlidingSyncEvent, SlidingSyncState } from "matrix-js-sdk/lib/sliding-sync.js";
import { SlidingSyncSdk } from "matrix-js-sdk/lib/sliding-sync-sdk.js";
import { logger } from "matrix-js-sdk/lib/logger.js";

logger.setLevel(process.env.CLIENT_LOG ? "debug" : "warn");
const env = (k) => {
  const v = process.env[k];
  if (!v) throw new Error(`${k} is not set`);
  return v;
};
const baseUrl = env("HS_URL");
const expect = Number(env("EXPECT"));

const client = createClient({
  baseUrl,
  accessToken: env("ACCESS_TOKEN"),
  userId: env("USER_ID"),
  deviceId: env("DEVICE_ID"),
});
// No lists and no room subscriptions: an extension-only connection.
const sliding = new SlidingSync(baseUrl, new Map(), {}, client, 3000);
// SlidingSyncSdk registers the SDK's extensions: to_device (and
// account_data, typing, receipts, which todeviced ignores).
new SlidingSyncSdk(sliding, client, {}, {});

const events = [];
client.on(ClientEvent.ToDeviceEvent, (ev) => {
  events.push({ sender: ev.getSender(), type: ev.getType(), content: ev.getContent() });
});

let requests = 0;
let complete = false;
const deadline = setTimeout(() => fail(new Error(`timed out with ${events.length} of ${expect} events`)), 120000);

function fail(err) {
  console.error(err);
  process.exit(1);
}

sliding.on(SlidingSyncEvent.Lifecycle, (state, resp, err) => {
  if (state !== SlidingSyncState.Complete) {
    if (err) fail(err); // todeviced answers an extension-only connection without errors
    return;
  }
  requests++;
  const nextBatch = resp.extensions?.to_device?.next_batch;
  if (complete) {
    // This answer's request carried the since that acknowledged every event.
    clearTimeout(deadline);
    console.log("RESULT " + JSON.stringify({ events, next_batch: nextBatch, requests }));
    sliding.stop();
    process.exit(0);
  }
  if (events.length >= expect) {
    complete = true;
    sliding.resend(); // one more request, at once, to acknowledge
    return;
  }
  console.log(`WAITING ${events.length}`);
});

sliding.start().catch(fail);
