/**
 * Process entry: configuration from the environment, the app, listen, and a graceful shutdown (close-with-grace)
 * on SIGTERM / SIGINT: stop listening, close idle and half-open connections, finish the admitted requests and
 * running batches, stop the worker, exit 0. An uncaught exception or unhandled rejection is logged and drains the
 * same way, then exits 1; so does a shutdown that takes longer than SHUTDOWN_TIMEOUT_MS.
 * A bad configuration or model package stops the start with a message naming the problem (exit code 1).
 */
import closeWithGrace from 'close-with-grace';
import { buildApp } from './app.js';
import { loadConfig } from './config.js';
import { ConfigError, ModelPackageError } from './errors.js';

async function main(): Promise<void> {
  const config = loadConfig();
  const app = await buildApp(config);
  closeWithGrace(
    {
      delay: config.shutdownTimeoutMs,
      logger: { error: (message: unknown) => app.log.error(message instanceof Error ? { err: message } : { detail: message }, 'shutdown failed') },
    },
    async ({ signal, err }) => {
      if (err !== undefined) app.log.fatal({ err }, `uncaught error: ${err.message}; draining, then exiting with code 1`);
      else app.log.info({ signal }, 'shutting down');
      await app.close();
      await app.connections.settled();
      app.log.info('stopped');
    },
  );

  app.chameleon.onFailure((error) => {
    app.log.fatal({ err: error }, `inference engine failed: ${error.message}; stopping`);
    process.exitCode = 1;
    void app.close().finally(() => process.exit(1));
  });
  await app.listen({ host: config.host, port: config.port });
  app.chameleon.started.then(
    () => app.log.info({ model: config.modelName, modelDir: config.modelDir, provider: app.chameleon.service.provider }, 'ready'),
    (error: Error) => {
      app.log.fatal(error.message);
      process.exitCode = 1;
      void app.close().finally(() => process.exit(1));
    },
  );
}

main().catch((error: unknown) => {
  if (error instanceof ConfigError || error instanceof ModelPackageError) {
    process.stderr.write(`chameleon-serve: ${error.message}\n`);
  } else {
    process.stderr.write(`chameleon-serve: failed to start: ${(error as Error).stack ?? String(error)}\n`);
  }
  process.exit(1);
});
