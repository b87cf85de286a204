// A downstream consumer of the poller's streams in Node.js (20 or later), with no packages:
// a minimal RESP2 client over node:net, written from the README's "Streams" section.
//
// Run: node tests/examples/consumer.mjs REDIS_URL STREAM_KEY GROUP CONSUMER [--count N]
//
// Creates GROUP (at the start of the stream, and the stream if missing), reads first what
// this consumer left pending in an earlier run, then new entries; checks each entry
// (schema infobip.push.mo.v1, id = payload.messageId, app = payload.applicationCode),
// prints one JSON line per message and acknowledges it. An entry that fails the checks is
// reported on stderr and left pending (XPENDING shows it), and so is one the handler cannot
// take (here: printing a payload nested deeper than JSON.stringify's stack); the exit status
// is then 1. JSON.parse itself reads any nesting, and a huge integer as a Number.
// Stops after --count entries, or on SIGINT/SIGTERM (what was not acknowledged stays pending).
import net from 'node:net';

const SCHEMA = 'infobip.push.mo.v1';
const FIELDS = ['id', 'app', 'received_at', 'pulled_at', 'payload', 'schema'];

class Resp {
  constructor(socket) {
    this.socket = socket;
    this.buffer = Buffer.alloc(0);
    this.waiting = [];
    socket.on('data', (chunk) => {
      this.buffer = Buffer.concat([this.buffer, chunk]);
      for (let reply; this.waiting.length && (reply = this.parse(0)); ) {
        this.buffer = this.buffer.subarray(reply.end);
        const { resolve, reject } = this.waiting.shift();
        reply.value instanceof Error ? reject(reply.value) : resolve(reply.value);
      }
    });
    const fail = (error) => this.waiting.splice(0).forEach(({ reject }) => reject(error));
    socket.on('error', fail);
    socket.on('close', () => fail(new Error('connection closed')));
  }

  static connect(url) {
    const u = new URL(url);
    if (u.protocol !== 'redis:') throw new Error(`only redis:// URLs are supported, not ${u.protocol}`);
    return new Promise((resolve, reject) => {
      const socket = net.connect(Number(u.port || 6379), u.hostname.replace(/^\[|\]$/g, ''));
      socket.once('error', reject);
      socket.once('connect', async () => {
        socket.off('error', reject);
        const client = new Resp(socket);
        try {
          if (u.password) {
            const user = decodeURIComponent(u.username || 'default');
            await client.call('AUTH', user, decodeURIComponent(u.password));
          }
          const db = u.pathname.replace(/^\//, '');
          if (db && db !== '0') await client.call('SELECT', db);
          resolve(client);
        } catch (error) {
          socket.destroy();
          reject(error);
        }
      });
    });
  }

  // One reply starting at offset: {value, end}, or null while it is incomplete.
  parse(offset) {
    const eol = this.buffer.indexOf('\r\n', offset);
    if (eol < 0) return null;
    const type = String.fromCharCode(this.buffer[offset]);
    const line = this.buffer.toString('utf8', offset + 1, eol);
    const next = eol + 2;
    if (type === '+') return { value: line, end: next };
    if (type === '-') return { value: new Error(line), end: next };
    if (type === ':') return { value: Number(line), end: next };
    if (type === '$') {
      const size = Number(line);
      if (size < 0) return { value: null, end: next };
      if (this.buffer.length < next + size + 2) return null;
      return { value: this.buffer.toString('utf8', next, next + size), end: next + size + 2 };
    }
    if (type === '*') {
      const count = Number(line);
      if (count < 0) return { value: null, end: next };
      const items = [];
      let end = next;
      for (let i = 0; i < count; i++) {
        const item = this.parse(end);
        if (!item) return null;
        items.push(item.value);
        end = item.end;
      }
      return { value: items, end };
    }
    throw new Error(`unexpected RESP type ${JSON.stringify(type)}`);
  }

  call(...args) {
    const parts = [`*${args.length}\r\n`];
    for (const arg of args.map(String)) parts.push(`$${Buffer.byteLength(arg)}\r\n${arg}\r\n`);
    return new Promise((resolve, reject) => {
      this.waiting.push({ resolve, reject });
      this.socket.write(parts.join(''));
    });
  }
}

// The reason an entry is not a valid message, or null; sets entry.message to the parsed payload.
function invalid(entry) {
  const missing = FIELDS.filter((name) => typeof entry[name] !== 'string');
  if (missing.length) return `missing field(s) ${missing.join(', ')}`;
  if (entry.schema !== SCHEMA) return `schema is ${JSON.stringify(entry.schema)}, not ${SCHEMA}`;
  try {
    entry.message = JSON.parse(entry.payload);
  } catch (error) {
    return `payload is not JSON: ${error.message}`;
  }
  const message = entry.message;
  if (message === null || typeof message !== 'object' || Array.isArray(message)) return 'payload is not a JSON object';
  if (entry.id !== message.messageId) return `id ${entry.id} is not payload.messageId`;
  if (entry.app !== message.applicationCode) return `app ${entry.app} is not payload.applicationCode`;
  return null;
}

async function main(argv) {
  const countAt = argv.indexOf('--count');
  const limit = countAt >= 0 ? Number(argv.splice(countAt, 2)[1]) : Infinity;
  const [url, stream, group, consumer] = argv;
  if (!consumer || !(limit > 0)) {
    console.error('usage: node consumer.mjs REDIS_URL STREAM_KEY GROUP CONSUMER [--count N]');
    return 2;
  }
  const redis = await Resp.connect(url);
  let stopping = false;
  const stop = () => {
    stopping = true;
    redis.socket.destroy();
  };
  process.once('SIGINT', stop);
  process.once('SIGTERM', stop);
  try {
    await redis.call('XGROUP', 'CREATE', stream, group, '0', 'MKSTREAM');
  } catch (error) {
    if (!String(error.message).startsWith('BUSYGROUP')) throw error;
  }
  let handled = 0;
  let failed = 0;
  let cursor = '0'; // this consumer's own pending entries first, then '>' (new ones)
  try {
    while (handled + failed < limit) {
      const want = Math.min(100, limit - handled - failed);
      const reply = await redis.call(
        'XREADGROUP', 'GROUP', group, consumer, 'COUNT', want, 'BLOCK', 5000, 'STREAMS', stream, cursor,
      );
      const entries = reply ? reply[0][1] : [];
      if (cursor !== '>' && entries.length === 0) cursor = '>';
      for (const [entryId, flat] of entries) {
        if (cursor !== '>') cursor = entryId;
        if (flat === null) {
          await redis.call('XACK', stream, group, entryId); // trimmed while pending: nothing to handle
          continue;
        }
        const entry = {};
        for (let i = 0; i < flat.length; i += 2) entry[flat[i]] = flat[i + 1];
        let reason = invalid(entry);
        let line;
        if (!reason) {
          const { id, app, received_at, pulled_at, message } = entry;
          try {
            line = JSON.stringify({ entry_id: entryId, id, app, received_at, pulled_at, payload: message });
          } catch (error) {
            reason = `payload cannot be handled: ${error.message}`; // JSON.stringify recurses
          }
        }
        if (reason) {
          console.error(JSON.stringify({ entry_id: entryId, error: reason.slice(0, 500) }));
          failed++;
          continue;
        }
        console.log(line);
        await redis.call('XACK', stream, group, entryId);
        handled++;
      }
    }
  } catch (error) {
    if (!stopping) throw error;
  } finally {
    redis.socket.destroy();
  }
  return failed ? 1 : 0;
}

main(process.argv.slice(2)).then(
  (status) => { process.exitCode = status; },
  (error) => { console.error(`consumer: ${error.message}`); process.exitCode = 1; },
);
