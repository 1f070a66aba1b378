import { jetstream, jetstreamManager } from '@nats-io/jetstream';
import { connect, headers, type NatsConnection } from '@nats-io/transport-node';
import { afterAll, describe } from 'vitest';

import type { Transport } from '../src/messaging/index.js';
import { createNatsTransport } from '../src/messaging/nats-transport.js';
import { messagingContract, unique } from './support/messaging-contract.js';

const SERVER = '127.0.0.1:4222';
let nc: NatsConnection | undefined;

afterAll(async () => {
  await nc?.close();
});

describe('messaging over NATS JetStream', () => {
  messagingContract(async () => {
    nc = await connect({ servers: SERVER, timeout: 5000 });
    // A stream and subject space of this run's own, deleted afterwards.
    const stream = unique('RK_TEST_');
    const subjectPrefix = unique('rktest');
    return {
      transport: (): Transport => createNatsTransport({ servers: SERVER, stream, subjectPrefix }),
      duplicate: async (message) => {
        // Past JetStream's Nats-Msg-Id window: the same message stored again, as after a redelivery.
        const h = headers();
        for (const [name, value] of Object.entries(message.headers)) h.set(name, value);
        h.set('replikit-key', message.key);
        h.set('replikit-message-id', message.id);
        await jetstream(nc!).publish(
          `${subjectPrefix}.${message.topic}`,
          JSON.stringify(message.payload),
          {
            headers: h,
          },
        );
      },
      cleanup: async () => {
        const jsm = await jetstreamManager(nc!);
        await jsm.streams.delete(stream).catch(() => undefined);
      },
    };
  });
});
