// Preloaded into a server process by test/server.test.ts: an exception nobody catches, once the server is up.
setTimeout(() => {
  throw new Error('thrown on purpose');
}, Number(process.env.THROW_AFTER_MS ?? 8000)).unref();
