// What the Pusher compatibility tests share: a pusher-js client whose auth endpoint is an
// in-process server SDK (as an app's backend signs), and waiting for its events.

import PusherClient from "pusher-js";

import { within } from "../../js/test/support.js";

/**
 * A pusher-js client of the server at `addr`. `signer` (a `pusher` SDK) authorizes its
 * subscriptions, with `member` as the presence `channel_data`, and signs it in as `signinAs`.
 */
export function pusherClient(addr, { key, signer, member, signinAs }) {
  const [host, port] = addr.split(":");
  return new PusherClient(key, {
    wsHost: host,
    wsPort: Number(port),
    forceTLS: false,
    enabledTransports: ["ws"],
    cluster: "mt1",
    disableStats: true,
    channelAuthorization: {
      customHandler: ({ socketId, channelName }, callback) => {
        const data = channelName.startsWith("presence-") ? member : undefined;
        callback(null, signer.authorizeChannel(socketId, channelName, data));
      },
    },
    userAuthentication: {
      customHandler: ({ socketId }, callback) => callback(null, signer.authenticateUser(socketId, signinAs)),
    },
  });
}

/** Resolves with the data of the first `event` on `emitter`. */
export function once(emitter, event) {
  return within(event, new Promise((resolve) => emitter.bind(event, resolve)));
}

export const subscribed = (channel) => once(channel, "pusher:subscription_succeeded");
