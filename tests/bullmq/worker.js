// A stock BullMQ Worker for outboxd's BullMQ-mode test: processes the jobs of
// one queue, one at a time, and appends one JSON line per processed job
// (queue, id, name, data, and the headers outboxd put in opts.outboxd) to a
// file, in processing order.
//
// usage: node worker.js <redis-url> <prefix> <queue> <out-file>
'use strict';
const fs = require('fs');
const { Worker } = require('bullmq');

const [url, prefix, queue, out] = process.argv.slice(2);
const u = new URL(url);
const connection = {
  host: u.hostname,
  port: Number(u.port || 6379),
  db: Number((u.pathname || '/0').slice(1) || 0),
  maxRetriesPerRequest: null,
};
const worker = new Worker(
  queue,
  async (job) => {
    fs.appendFileSync(
      out,
      JSON.stringify({ queue, id: job.id, name: job.name, data: job.data, outboxd: job.opts.outboxd }) + '\n',
    );
  },
  { connection, prefix, concurrency: 1 },
);
worker.on('error', (err) => console.error('worker error', err));
worker.on('ready', () => console.error('worker ready'));
process.on('SIGTERM', async () => {
  await worker.close();
  process.exit(0);
});
