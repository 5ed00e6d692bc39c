/**
 * Environment -> validated configuration. Every setting is described once, in SETTINGS, from which the README's
 * "Configuration" table is written; an invalid value stops the start with a message naming the variable and the problem.
 */
import { ConfigError } from './errors.js';

export type Device = 'cpu' | 'cuda';
export type LogLevel = 'fatal' | 'error' | 'warn' | 'info' | 'debug' | 'trace' | 'silent';
/** Scheduling of the inference threads: Linux's SCHED_IDLE class, or a nice value above the event loop's. */
export type EnginePriority = 'idle' | number;

export interface Config {
  /** Interface to listen on. */
  host: string;
  /** TCP port (0 picks a free one). */
  port: number;
  /** Model package folder (see docs/model-package.md). */
  modelDir: string;
  /** The model id served in /v1/models and accepted in `model`. */
  modelName: string;
  /** Most rows (prompts) in one batch. */
  maxBatchSize: number;
  /** Positions per KV-cache slot: the longest prompt + max_tokens served (0 = min(dims.context, 4096)). */
  maxModelLen: number;
  /** Most bytes the KV cache may take (0 = the memory the process may use, less the model's files and a margin: see kvCacheLimit). */
  kvCacheMaxBytes: number;
  /** Longest a batch window stays open after its first request, in ms. */
  maxWaitMs: number;
  /** Requests per cluster the k-means aims for: k = clamp(ceil(n / target), 1, maxClusters). */
  targetClusterSize: number;
  /** Most clusters (hypernetwork adapters) per batch. */
  maxClusters: number;
  /** Most requests waiting for a batch; one more is refused with 429. */
  queueSize: number;
  /** An idle engine takes a request at once instead of waiting MAX_WAIT_MS for companions. */
  idleDispatch: boolean;
  /** Cluster each window's batch prompts together with the batch prompts in flight (else the window alone). */
  clusterInFlight: boolean;
  /** Most new tokens (rows x padded width) in one prefill run; longer prompts are prefilled in chunks. */
  prefillChunkTokens: number;
  /** ONNX Runtime execution provider. */
  device: Device;
  /** ONNX Runtime intra-op threads (0 = ONNX Runtime's default). */
  threads: number;
  /** Priority of the inference thread and its ONNX Runtime threads below the event loop's (Linux). */
  engineNice: EnginePriority;
  /** Let ONNX Runtime's intra-op threads spin while waiting for work (lower latency, but they compete with the event loop for CPU). */
  ortSpinning: boolean;
  /** pino log level. */
  logLevel: LogLevel;
  /** Base seed of the per-batch k-means seeds (seed = base + batch number). */
  kmeansSeed: number;
  /** A request not finished after this many ms is answered with 504 (0 = no deadline). */
  requestTimeoutMs: number;
  /** Seconds a client is told to wait (Retry-After) when the queue is full. */
  retryAfterSeconds: number;
  /** A connection that has not sent complete request headers within this many ms is closed (408). */
  headersTimeoutMs: number;
  /** A connection that has not sent a complete request (headers and body) within this many ms is closed (408). */
  receiveTimeoutMs: number;
  /** An idle keep-alive connection is closed after this many ms. */
  keepAliveTimeoutMs: number;
  /** Longest a graceful shutdown may take before the process exits with code 1, ms. */
  shutdownTimeoutMs: number;
  /** Bearer token of the adapter admin routes (POST/DELETE /v1/adapters); empty = those routes answer 403. */
  adminToken: string;
  /** Most adapters loaded at run time (POST /v1/adapters); the package's library does not count. */
  maxAdapters: number;
}

interface Setting<K extends keyof Config> {
  key: K;
  env: string;
  default: string;
  describe: string;
  parse: (raw: string) => Config[K] | undefined;
  expect: string;
}

const LOG_LEVELS: readonly LogLevel[] = ['fatal', 'error', 'warn', 'info', 'debug', 'trace', 'silent'];

function integer(min: number, max = Number.MAX_SAFE_INTEGER) {
  return (raw: string): number | undefined => {
    if (!/^-?\d+$/.test(raw.trim())) return undefined;
    const value = Number(raw.trim());
    return Number.isSafeInteger(value) && value >= min && value <= max ? value : undefined;
  };
}

function oneOf<T extends string>(values: readonly T[]) {
  return (raw: string): T | undefined => (values as readonly string[]).includes(raw.trim()) ? raw.trim() as T : undefined;
}

function nonEmpty(raw: string): string | undefined {
  return raw.trim() === '' ? undefined : raw.trim();
}

/** The table of settings: the README's configuration table is written from it (`npm run docs:config`). */
export const SETTINGS: ReadonlyArray<Setting<keyof Config>> = [
  { key: 'host', env: 'HOST', default: '0.0.0.0', describe: 'address to listen on: one address (`127.0.0.1`, `::`, ...); a name such as `localhost` binds only its first address', parse: nonEmpty, expect: 'a host name or address' },
  { key: 'port', env: 'PORT', default: '8080', describe: 'TCP port (0 = any free port)', parse: integer(0, 65535), expect: 'an integer from 0 to 65535' },
  { key: 'modelDir', env: 'MODEL_DIR', default: 'models/default', describe: 'model package folder', parse: nonEmpty, expect: 'a folder path' },
  { key: 'modelName', env: 'MODEL_NAME', default: 'chameleon-default', describe: 'model id in /v1/models and in requests', parse: nonEmpty, expect: 'a non-empty name' },
  { key: 'maxBatchSize', env: 'MAX_BATCH_SIZE', default: '32', describe: 'most prompts in one batch, and in flight (each in-flight prompt owns a KV-cache slot: about 2 MB each for the default package)', parse: integer(1, 4096), expect: 'an integer from 1 to 4096' },
  { key: 'maxModelLen', env: 'MAX_MODEL_LEN', default: '0', describe: 'positions per KV-cache slot: the longest prompt + `max_tokens` served (0 = the package\'s `dims.context`, up to 4096); more than `dims.context` stops the start. The cache\'s size is logged at start', parse: (raw) => (raw.trim() === '0' ? 0 : integer(16, 1 << 24)(raw)), expect: '0 or an integer from 16 to 16777216' },
  { key: 'kvCacheMaxBytes', env: 'KV_CACHE_MAX_BYTES', default: '0', describe: 'most bytes the KV cache (`MAX_BATCH_SIZE` slots x `n_layer` x 2 x `n_kv_head` x `MAX_MODEL_LEN` x `head_dim` x 4) may take; a larger cache stops the start with the numbers, rather than running out of memory under load once its slots fill (0 = the memory the process may use, its cgroup limit or else the machine\'s, less twice the package\'s files and 1 GiB)', parse: integer(0), expect: 'an integer >= 0' },
  { key: 'maxWaitMs', env: 'MAX_WAIT_MS', default: '20', describe: 'batch window: longest wait after the first request, ms', parse: integer(0, 60_000), expect: 'an integer from 0 to 60000' },
  { key: 'targetClusterSize', env: 'TARGET_CLUSTER_SIZE', default: '4', describe: 'requests per cluster the k-means aims for', parse: integer(1), expect: 'an integer >= 1' },
  { key: 'maxClusters', env: 'MAX_CLUSTERS', default: '8', describe: 'most clusters (adapters) per batch', parse: integer(1, 1024), expect: 'an integer from 1 to 1024' },
  { key: 'queueSize', env: 'QUEUE_SIZE', default: '256', describe: 'most prompts waiting for a batch; more are refused with 429', parse: integer(1), expect: 'an integer >= 1' },
  { key: 'idleDispatch', env: 'IDLE_DISPATCH', default: '1', describe: 'an idle engine takes a request at once (1) instead of waiting MAX_WAIT_MS for companions (0)', parse: (raw) => (raw.trim() === '1' ? true : raw.trim() === '0' ? false : undefined), expect: '0 or 1' },
  { key: 'clusterInFlight', env: 'CLUSTER_IN_FLIGHT', default: '1', describe: 'cluster each window\'s batch prompts together with the batch prompts in flight (1) or the window alone (0)', parse: (raw) => (raw.trim() === '1' ? true : raw.trim() === '0' ? false : undefined), expect: '0 or 1' },
  { key: 'prefillChunkTokens', env: 'PREFILL_CHUNK_TOKENS', default: '64', describe: 'most prompt tokens per prefill run (longer prompts are prefilled in chunks between decode steps)', parse: integer(1, 65_536), expect: 'an integer from 1 to 65536' },
  { key: 'device', env: 'DEVICE', default: 'cpu', describe: 'execution provider: cpu or cuda (cuda falls back to cpu with a warning)', parse: oneOf(['cpu', 'cuda'] as const), expect: 'cpu or cuda' },
  { key: 'threads', env: 'THREADS', default: '0', describe: 'ONNX Runtime intra-op threads (0 = its default)', parse: integer(0, 1024), expect: 'an integer from 0 to 1024' },
  { key: 'engineNice', env: 'ENGINE_NICE', default: '5', describe: 'priority of the inference thread and its ONNX Runtime threads under the event loop (HTTP, health checks), Linux: a nice value 0-19 (0 = same priority), or `idle` = the SCHED_IDLE class (set with util-linux\'s `chrt`, nice 19 with a warning where it is missing): a waking event loop preempts inference at once. `idle` buys a steadier `/health/live` under saturation for 3-15 % of throughput (see docs/benchmarks.md)', parse: (raw) => (raw.trim() === 'idle' ? 'idle' : integer(0, 19)(raw)), expect: 'idle or an integer from 0 to 19' },
  { key: 'ortSpinning', env: 'ORT_SPINNING', default: '0', describe: 'let ONNX Runtime threads spin while idle (1) or sleep (0)', parse: (raw) => (raw.trim() === '1' ? true : raw.trim() === '0' ? false : undefined), expect: '0 or 1' },
  { key: 'logLevel', env: 'LOG_LEVEL', default: 'info', describe: 'log level (fatal, error, warn, info, debug, trace, silent)', parse: oneOf(LOG_LEVELS), expect: LOG_LEVELS.join(', ') },
  { key: 'kmeansSeed', env: 'KMEANS_SEED', default: '0', describe: 'base seed of the per-batch k-means (seed = base + batch number)', parse: integer(0, 2 ** 31 - 1), expect: 'an integer from 0 to 2147483647' },
  { key: 'requestTimeoutMs', env: 'REQUEST_TIMEOUT_MS', default: '0', describe: 'answer 504 when a request takes longer, ms (0 = no deadline)', parse: integer(0), expect: 'an integer >= 0' },
  { key: 'retryAfterSeconds', env: 'RETRY_AFTER_SECONDS', default: '1', describe: 'Retry-After sent with 429 (queue full), s', parse: integer(0, 3600), expect: 'an integer from 0 to 3600' },
  { key: 'headersTimeoutMs', env: 'HEADERS_TIMEOUT_MS', default: '10000', describe: 'close a connection whose request headers are not complete after this long (408), ms', parse: integer(100, 600_000), expect: 'an integer from 100 to 600000' },
  { key: 'receiveTimeoutMs', env: 'RECEIVE_TIMEOUT_MS', default: '30000', describe: 'close a connection whose request (headers and body) is not complete after this long (408), ms', parse: integer(100, 600_000), expect: 'an integer from 100 to 600000' },
  { key: 'keepAliveTimeoutMs', env: 'KEEP_ALIVE_TIMEOUT_MS', default: '5000', describe: 'close an idle keep-alive connection after this long, ms', parse: integer(1, 600_000), expect: 'an integer from 1 to 600000' },
  { key: 'shutdownTimeoutMs', env: 'SHUTDOWN_TIMEOUT_MS', default: '30000', describe: 'longest graceful shutdown (SIGTERM) before exiting with code 1, ms', parse: integer(100, 3_600_000), expect: 'an integer from 100 to 3600000' },
  { key: 'adminToken', env: 'ADMIN_TOKEN', default: '', describe: 'bearer token of POST/DELETE /v1/adapters (unset: those routes answer 403)', parse: (raw) => raw.trim(), expect: 'a token' },
  { key: 'maxAdapters', env: 'MAX_ADAPTERS', default: '16', describe: 'most adapters loaded at run time with POST /v1/adapters (the package\'s library does not count); one more is refused with 409', parse: integer(0, 1024), expect: 'an integer from 0 to 1024' },
];

const TABLE_START = '<!-- configuration table: written from SETTINGS in src/config.ts by npm run docs:config -->';
const TABLE_END = '<!-- end of configuration table -->';

/** The README's configuration table (Markdown), written from SETTINGS. */
export function settingsTable(): string {
  const rows = SETTINGS.map((s) => `| \`${s.env}\` | \`${s.default}\` | ${s.describe} |`);
  return ['| variable | default | meaning |', '| --- | --- | --- |', ...rows].join('\n');
}

/** `readme` with the configuration table between its two markers written from SETTINGS (`npm run docs:config`). */
export function withSettingsTable(readme: string): string {
  const start = readme.indexOf(TABLE_START);
  const end = readme.indexOf(TABLE_END);
  if (start < 0 || end < start) throw new Error(`README.md lacks the configuration table's markers (${TABLE_START} ... ${TABLE_END})`);
  return `${readme.slice(0, start + TABLE_START.length)}\n${settingsTable()}\n${readme.slice(end)}`;
}

/** Reads the configuration from `env` (process.env by default); throws ConfigError listing every bad value. */
export function loadConfig(env: NodeJS.ProcessEnv = process.env): Config {
  const config: Record<string, unknown> = {};
  const problems: string[] = [];
  for (const setting of SETTINGS) {
    const given = env[setting.env];
    const raw = given === undefined || given === '' ? setting.default : given;
    const value = setting.parse(raw);
    if (value === undefined) problems.push(`${setting.env} must be ${setting.expect} (got ${JSON.stringify(raw)})`);
    else config[setting.key] = value;
  }
  if (problems.length > 0) throw new ConfigError(`Invalid configuration: ${problems.join('; ')}`);
  return config as unknown as Config;
}

/** The defaults, with overrides (tests and tools build configs this way). */
export function configWith(overrides: Partial<Config> = {}): Config {
  return { ...loadConfig({}), ...overrides };
}
