/**
 * Process entry: configuration from the environment, the app, listen, and a graceful shutdown on SIGTERM /
 * SIGINT (stop accepting, finish the admitted requests and running batches, stop the worker).
 * A bad configuration or model package stops the start with a message naming the problem (exit code 1).
 */
import { buildApp } from './app.js';
import { loadConfig } from './config.js';
import { ConfigError, ModelPackageError } from './errors.js';

async function main(): Promise<void> {
  const config = loadConfig();
  const app = await buildApp(config);
  let closing = false;
  const shutdown = (signal: string) => {
    if (closing) return;
    closing = true;
    app.log.info({ signal }, 'shutting down');
    const force = setTimeout(() => {
      app.log.error('shutdown took longer than 30 s; exiting');
      process.exit(1);
    }, 30_000);
    force.unref();
    app.close().then(
      () => {
        app.log.info('stopped');
        process.exit(0);
      },
      (error: Error) => {
        app.log.error({ err: error }, 'shutdown failed');
        process.exit(1);
      },
    );
  };
  process.once('SIGTERM', () => shutdown('SIGTERM'));
  process.once('SIGINT', () => shutdown('SIGINT'));

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
