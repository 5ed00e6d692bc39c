/**
 * Environment -> validated configuration. Every setting is declared and described once, in SETTINGS: the Config type
 * is derived from it and the README's "Configuration" table written from it. An invalid value stops the start with a
 * message naming the variable and the problem (never the value of a secret: API_KEY, ADMIN_TOKEN).
 */
import { readFileSync } from 'node:fs';
import { REQUEST_ADAPTATION_MODES, type RequestAdaptationMode } from './adaptation/modes.js';
import { ConfigError } from './errors.js';

export type Device = 'cpu' | 'cuda';
export type LogLevel = 'fatal' | 'error' | 'warn' | 'info' | 'debug' | 'trace' | 'silent';
/** Scheduling of the inference threads: Linux's SCHED_IDLE class, or a nice value above the event loop's. */
export type EnginePriority = 'idle' | number;
/** The routes besides the API that API_KEY may cover (the health probes never need it). */
export type KeyProtected = 'metrics' | 'docs';

interface Setting<K extends string, T> {
  /** Its field in Config. */
  key: K;
  env: string;
  default: string;
  describe: string;
  /** The value, or undefined when `raw` is not a valid one. */
  parse: (raw: string) => T | undefined;
  /** What a valid value is, for the message naming an invalid one. */
  expect: string;
  /** A key or token: a message about it never quotes its value. */
  secret?: true;
}

/** One entry of SETTINGS, with its key and value type kept for Config. */
function setting<const K extends string, T>(entry: Setting<K, T>): Setting<K, T> {
  return entry;
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

function flag(raw: string): boolean | undefined {
  return raw.trim() === '1' ? true : raw.trim() === '0' ? false : undefined;
}

/** A file's content or an environment value without its trailing newline (as `echo` and editors leave one). */
function withoutTrailingNewline(raw: string): string {
  return raw.replace(/\r?\n$/, '');
}

const MIN_SECRET_LENGTH = 32;
/** RFC 6750's b64token: what a Bearer credential may hold. */
const B64TOKEN = /^[A-Za-z0-9\-._~+/]+=*$/;
const SECRET_EXPECT = `empty or at least ${MIN_SECRET_LENGTH} characters of A-Z a-z 0-9 - . _ ~ + / (then = padding), e.g. \`openssl rand -base64 32\``;

/** A bearer key or token: empty (unset), or long enough not to be guessed and sendable as RFC 6750 allows. */
function secretToken(raw: string): string | undefined {
  const value = withoutTrailingNewline(raw);
  return value === '' || (value.length >= MIN_SECRET_LENGTH && B64TOKEN.test(value)) ? value : undefined;
}

const KEY_PROTECTED: readonly KeyProtected[] = ['metrics', 'docs'];

function keyProtected(raw: string): readonly KeyProtected[] | undefined {
  if (raw.trim() === 'none') return [];
  const names = raw.split(',').map((name) => name.trim());
  return names.every((name) => (KEY_PROTECTED as readonly string[]).includes(name)) ? [...new Set(names as KeyProtected[])] : undefined;
}

/** The table of settings: Config is derived from it and the README's configuration table written from it (`npm run docs:config`). */
export const SETTINGS = [
  setting({ key: 'host', env: 'HOST', default: '0.0.0.0', describe: 'address to listen on: one address (`127.0.0.1`, `::`, ...); a name such as `localhost` binds only its first address', parse: nonEmpty, expect: 'a host name or address' }),
  setting({ key: 'port', env: 'PORT', default: '8080', describe: 'TCP port (0 = any free port)', parse: integer(0, 65535), expect: 'an integer from 0 to 65535' }),
  setting({ key: 'modelDir', env: 'MODEL_DIR', default: 'models/default', describe: 'model package folder', parse: nonEmpty, expect: 'a folder path' }),
  setting({ key: 'modelName', env: 'MODEL_NAME', default: 'chameleon-default', describe: 'model id in /v1/models and in requests', parse: nonEmpty, expect: 'a non-empty name' }),
  setting({ key: 'maxBatchSize', env: 'MAX_BATCH_SIZE', default: '32', describe: 'most prompts in one batch, and in flight (each in-flight prompt owns a KV-cache slot: about 2 MB each for the default package)', parse: integer(1, 4096), expect: 'an integer from 1 to 4096' }),
  setting({ key: 'maxModelLen', env: 'MAX_MODEL_LEN', default: '0', describe: 'positions per KV-cache slot: the longest prompt + `max_tokens` served (0 = the package\'s `dims.context`, up to 4096); more than `dims.context` stops the start. The cache\'s size is logged at start', parse: (raw) => (raw.trim() === '0' ? 0 : integer(16, 1 << 24)(raw)), expect: '0 or an integer from 16 to 16777216' }),
  setting({ key: 'kvCacheMaxBytes', env: 'KV_CACHE_MAX_BYTES', default: '0', describe: 'most bytes the KV cache (`MAX_BATCH_SIZE` slots x `n_layer` x 2 x `n_kv_head` x `MAX_MODEL_LEN` x `head_dim` x 4) may take; a larger cache stops the start with the numbers, rather than running out of memory under load once its slots fill (0 = the memory the process may use, its cgroup limit or else the machine\'s, less twice the package\'s files and 1 GiB)', parse: integer(0), expect: 'an integer >= 0' }),
  setting({ key: 'maxWaitMs', env: 'MAX_WAIT_MS', default: '20', describe: 'batch window: longest wait after the first request, ms', parse: integer(0, 60_000), expect: 'an integer from 0 to 60000' }),
  setting({ key: 'targetClusterSize', env: 'TARGET_CLUSTER_SIZE', default: '4', describe: 'requests per cluster the k-means aims for', parse: integer(1), expect: 'an integer >= 1' }),
  setting({ key: 'maxClusters', env: 'MAX_CLUSTERS', default: '8', describe: 'most clusters (adapters) per batch', parse: integer(1, 1024), expect: 'an integer from 1 to 1024' }),
  setting({ key: 'queueSize', env: 'QUEUE_SIZE', default: '256', describe: 'most prompts waiting for a batch; more are refused with 429', parse: integer(1), expect: 'an integer >= 1' }),
  setting({ key: 'idleDispatch', env: 'IDLE_DISPATCH', default: '1', describe: 'an idle engine takes a request at once (1) instead of waiting MAX_WAIT_MS for companions (0)', parse: flag, expect: '0 or 1' }),
  setting({ key: 'clusterInFlight', env: 'CLUSTER_IN_FLIGHT', default: '1', describe: 'cluster each window\'s batch prompts together with the batch prompts in flight (1) or the window alone (0)', parse: flag, expect: '0 or 1' }),
  setting({ key: 'prefillChunkTokens', env: 'PREFILL_CHUNK_TOKENS', default: '64', describe: 'most prompt tokens per prefill run (longer prompts are prefilled in chunks between decode steps)', parse: integer(1, 65_536), expect: 'an integer from 1 to 65536' }),
  setting({ key: 'device', env: 'DEVICE', default: 'cpu', describe: 'execution provider: cpu or cuda (cuda falls back to cpu with a warning)', parse: oneOf<Device>(['cpu', 'cuda']), expect: 'cpu or cuda' }),
  setting({ key: 'threads', env: 'THREADS', default: '0', describe: 'ONNX Runtime intra-op threads (0 = its default)', parse: integer(0, 1024), expect: 'an integer from 0 to 1024' }),
  setting({ key: 'engineNice', env: 'ENGINE_NICE', default: '5', describe: 'priority of the inference thread and its ONNX Runtime threads under the event loop (HTTP, health checks), Linux: a nice value 0-19 (0 = same priority), or `idle` = the SCHED_IDLE class (set with util-linux\'s `chrt`, nice 19 with a warning where it is missing): a waking event loop preempts inference at once. `idle` buys a steadier `/health/live` under saturation for 3-15 % of throughput (see docs/benchmarks.md)', parse: (raw): EnginePriority | undefined => (raw.trim() === 'idle' ? 'idle' : integer(0, 19)(raw)), expect: 'idle or an integer from 0 to 19' }),
  setting({ key: 'burstYieldMs', env: 'BURST_YIELD_MS', default: '10', describe: 'each request refused with 429 while the queue is full claims the cores for the event loop this long: the inference thread waits between decoder runs until the claims have passed (at most 50 ms at a time, and no more than about a tenth of the decoding time when refusals never stop), so the rest of a burst is refused, and health checks answered, about as fast as by an idle server (see docs/robustness.md). 0 = off', parse: integer(0, 1000), expect: 'an integer from 0 to 1000' }),
  setting({ key: 'ortSpinning', env: 'ORT_SPINNING', default: '0', describe: 'let ONNX Runtime threads spin while idle (1) or sleep (0)', parse: flag, expect: '0 or 1' }),
  setting({ key: 'logLevel', env: 'LOG_LEVEL', default: 'info', describe: 'log level (fatal, error, warn, info, debug, trace, silent)', parse: oneOf(LOG_LEVELS), expect: LOG_LEVELS.join(', ') }),
  setting({ key: 'kmeansSeed', env: 'KMEANS_SEED', default: '0', describe: 'base seed of the per-batch k-means (seed = base + batch number)', parse: integer(0, 2 ** 31 - 1), expect: 'an integer from 0 to 2147483647' }),
  setting({ key: 'requestTimeoutMs', env: 'REQUEST_TIMEOUT_MS', default: '0', describe: 'answer 504 when a request takes longer, ms (0 = no deadline)', parse: integer(0), expect: 'an integer >= 0' }),
  setting({ key: 'retryAfterSeconds', env: 'RETRY_AFTER_SECONDS', default: '1', describe: 'Retry-After sent with 429 (queue full), s', parse: integer(0, 3600), expect: 'an integer from 0 to 3600' }),
  setting({ key: 'headersTimeoutMs', env: 'HEADERS_TIMEOUT_MS', default: '10000', describe: 'close a connection whose request headers are not complete after this long (408), ms', parse: integer(100, 600_000), expect: 'an integer from 100 to 600000' }),
  setting({ key: 'receiveTimeoutMs', env: 'RECEIVE_TIMEOUT_MS', default: '30000', describe: 'close a connection whose request (headers and body) is not complete after this long (408), ms', parse: integer(100, 600_000), expect: 'an integer from 100 to 600000' }),
  setting({ key: 'keepAliveTimeoutMs', env: 'KEEP_ALIVE_TIMEOUT_MS', default: '5000', describe: 'close an idle keep-alive connection after this long, ms', parse: integer(1, 600_000), expect: 'an integer from 1 to 600000' }),
  setting({ key: 'shutdownTimeoutMs', env: 'SHUTDOWN_TIMEOUT_MS', default: '30000', describe: 'longest graceful shutdown (SIGTERM) before exiting with code 1, ms', parse: integer(100, 3_600_000), expect: 'an integer from 100 to 3600000' }),
  setting({
    key: 'defaultAdaptation', env: 'DEFAULT_ADAPTATION', default: '',
    describe: 'the `adaptation` mode of a request that names none (empty = batch, or none for a base-only package); a mode the package does not serve stops the start',
    parse: (raw): RequestAdaptationMode | '' | undefined => (raw.trim() === '' ? '' : oneOf(REQUEST_ADAPTATION_MODES)(raw)),
    expect: `empty or one of ${REQUEST_ADAPTATION_MODES.join(', ')}`,
  }),
  setting({ key: 'apiKey', env: 'API_KEY', default: '', describe: 'the key every route but `/health*` needs as `Authorization: Bearer <API_KEY>` (and `/metrics`, `/docs` as `API_KEY_PROTECTS` says); `ADMIN_TOKEN` works too. Unset: no key is asked for. At least 32 characters of RFC 6750\'s b64token set (`openssl rand -base64 32`); otherwise the start stops', parse: secretToken, expect: SECRET_EXPECT, secret: true }),
  setting({ key: 'apiKeyFile', env: 'API_KEY_FILE', default: '', describe: 'a file holding `API_KEY` (a mounted secret; one trailing newline is dropped); not together with `API_KEY`', parse: (raw) => raw.trim(), expect: 'a file path' }),
  setting({ key: 'apiKeyProtects', env: 'API_KEY_PROTECTS', default: 'metrics,docs', describe: 'which of `/metrics` and `/docs` also need `API_KEY` when it is set: `metrics`, `docs`, both (comma-separated) or `none`', parse: keyProtected, expect: 'metrics, docs, metrics,docs or none' }),
  setting({ key: 'adminToken', env: 'ADMIN_TOKEN', default: '', describe: 'bearer token of POST/DELETE /v1/adapters (unset: those routes answer 403); the same rules as `API_KEY`, and not equal to it', parse: secretToken, expect: SECRET_EXPECT, secret: true }),
  setting({ key: 'adminTokenFile', env: 'ADMIN_TOKEN_FILE', default: '', describe: 'a file holding `ADMIN_TOKEN` (one trailing newline is dropped); not together with `ADMIN_TOKEN`', parse: (raw) => raw.trim(), expect: 'a file path' }),
  setting({ key: 'adapterDirs', env: 'ADAPTER_DIRS', default: '', describe: 'folders POST /v1/adapters may load adapter files and folders (`path`) from, separated by `,` or `:`; a path is checked after its links are resolved, and one outside them, missing or not a valid adapter gets the same 400 (the log says which). Empty: loading by `path` is off (403)', parse: (raw) => raw.split(/[,:]/).map((dir) => dir.trim()).filter((dir) => dir !== ''), expect: 'folders separated by , or :' }),
  setting({ key: 'maxAdapters', env: 'MAX_ADAPTERS', default: '16', describe: 'most adapters loaded at run time with POST /v1/adapters (the package\'s library does not count); one more is refused with 409', parse: integer(0, 1024), expect: 'an integer from 0 to 1024' }),
] as const;

/**
 * The validated configuration: one field per entry of SETTINGS, of the type its parser returns; what a field means is
 * its entry's `describe` (the README's configuration table).
 */
export type Config = { [S in (typeof SETTINGS)[number] as S['key']]: S extends Setting<string, infer T> ? T : never };

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
  for (const entry of SETTINGS) {
    const given = env[entry.env];
    const raw = given === undefined || given === '' ? entry.default : given;
    const value = entry.parse(raw);
    const got = entry.secret === true ? `${raw.length} characters` : JSON.stringify(raw);
    if (value === undefined) problems.push(`${entry.env} must be ${entry.expect} (got ${got})`);
    else config[entry.key] = value;
  }
  readSecretFiles(config as Partial<Config>, problems);
  if (problems.length > 0) throw new ConfigError(`Invalid configuration: ${problems.join('; ')}`);
  return config as unknown as Config;
}

/** The secrets that may come from a file instead (a mounted Kubernetes or Compose secret keeps them out of the environment). */
const SECRET_FILES = [
  { key: 'apiKey', env: 'API_KEY', file: 'apiKeyFile', fileEnv: 'API_KEY_FILE' },
  { key: 'adminToken', env: 'ADMIN_TOKEN', file: 'adminTokenFile', fileEnv: 'ADMIN_TOKEN_FILE' },
] as const;

/** Reads API_KEY_FILE and ADMIN_TOKEN_FILE into API_KEY and ADMIN_TOKEN, with the same checks; adds what is wrong to `problems`. */
function readSecretFiles(config: Partial<Config>, problems: string[]): void {
  for (const { key, env, file, fileEnv } of SECRET_FILES) {
    const path = config[file];
    if (path === undefined || path === '') continue;
    if (config[key] !== '') {
      problems.push(`set ${env} or ${fileEnv}, not both`);
      continue;
    }
    let content: string;
    try {
      content = readFileSync(path, 'utf8');
    } catch (error) {
      problems.push(`${fileEnv}: cannot read ${path} (${(error as NodeJS.ErrnoException).code ?? (error as Error).message})`);
      continue;
    }
    const value = secretToken(content);
    if (value === undefined || value === '') problems.push(`${fileEnv} must name a file holding ${SECRET_EXPECT.replace(/^empty or /, '')} (${path} holds ${content.length} characters)`);
    else config[key] = value;
  }
  if (config.apiKey !== undefined && config.apiKey !== '' && config.apiKey === config.adminToken) {
    problems.push('ADMIN_TOKEN must differ from API_KEY (every client with the key would be an admin)');
  }
}

/** The defaults, with overrides (tests and tools build configs this way). */
export function configWith(overrides: Partial<Config> = {}): Config {
  return { ...loadConfig({}), ...overrides };
}
