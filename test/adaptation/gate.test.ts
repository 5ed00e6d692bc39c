/**
 * The context gate through HTTP on the real default package: a prompt unlike every training domain gets the static
 * LoRA alone (bit for bit what `adaptation: "static"` gives), a prompt from a training domain keeps its generated
 * update, and the response says which happened.
 */
import assert from 'node:assert/strict';
import { after, before, describe, test } from 'node:test';
import type { FastifyInstance } from 'fastify';
import { ContextGate } from '../../src/adaptation/gate.js';
import { ModelPackage } from '../../src/model/package.js';
import { complete, MODEL_DIR, startApp } from '../helpers/app.js';
import { SEA } from '../helpers/prompts.js';

const TOKEN = 'gate-admin-token';
const pkg = ModelPackage.open(MODEL_DIR);
const gate = ContextGate.fromPackage(pkg);
/** Letter salad: nothing like the speeches, the novel, the e-mails or the licences the package adapted to. */
const UNFAMILIAR = 'zxqv jjkw pfft qqq zzz xxy wvvw kkj';
const UNFAMILIAR_TOO = 'qqzx vvkw jjpf zzzt xxq wwkk pfzz';
/** A licence's warranty clause and a whaling scene: well inside two training domains. */
const FAMILIAR = ['THE SOFTWARE IS PROVIDED "AS IS", WITHOUT WARRANTY OF ANY KIND, EXPRESS OR IMPLIED', SEA[7]];
let app: FastifyInstance;

before(async () => {
  // each request is served alone, so its cluster is itself and its context is its own feature
  app = await startApp({ adminToken: TOKEN, maxWaitMs: 0, idleDispatch: true, clusterInFlight: false });
});
after(async () => {
  await app.close();
});

async function scored(prompt: string, adaptation: string): Promise<{ logprobs: number[]; chameleon: any }> {
  const res = await complete(app, { prompt, max_tokens: 0, echo: true, logprobs: 0, adaptation });
  assert.equal(res.status, 200, JSON.stringify(res.body));
  return { logprobs: res.body.choices[0].logprobs.token_logprobs.slice(1), chameleon: res.body.chameleon };
}

function similarity(prompt: string): Promise<number> {
  return scored(prompt, 'request').then((r) => r.chameleon.context_similarity);
}

describe('context gate', () => {
  test('the default package ships a gate: a threshold and one centroid per training domain', () => {
    assert.ok(gate !== null);
    const spec = pkg.manifest.hypernet!.gate!;
    assert.deepEqual(spec.names, pkg.manifest.library?.names, 'one centroid per domain the package adapted to');
    assert.ok(spec.min_similarity > 0 && spec.min_similarity < 1);
    const centroids = pkg.readTensor('gate_centroids');
    const first = centroids.slice(0, pkg.dims.d_model);
    assert.ok(Math.abs(gate.similarity(first) - 1) < 1e-5, 'a centroid is as similar as can be to itself');
  });

  test('an unfamiliar prompt gets the static LoRA alone, in request and in batch mode', async () => {
    const threshold = pkg.manifest.hypernet!.gate!.min_similarity;
    const fixed = await scored(UNFAMILIAR, 'static');
    for (const mode of ['request', 'batch']) {
      const adapted = await scored(UNFAMILIAR, mode);
      assert.equal(adapted.chameleon.gated, true, `${mode}: similarity ${adapted.chameleon.context_similarity} vs ${threshold}`);
      assert.ok(adapted.chameleon.context_similarity < threshold);
      assert.deepEqual(adapted.logprobs, fixed.logprobs, `${mode}: exactly the static LoRA's logprobs`);
    }
    assert.equal(fixed.chameleon.context_similarity, null, 'static mode forms no context');
    assert.equal(fixed.chameleon.gated, false);
    const metrics = (await app.inject({ method: 'GET', url: '/metrics' })).body;
    assert.match(metrics, /chameleon_hypernet_prompts_total\{outcome="gated"\} [1-9]/);
  });

  test('a prompt from a training domain keeps its generated update', async () => {
    for (const prompt of FAMILIAR) {
      const adapted = await scored(prompt, 'request');
      assert.equal(adapted.chameleon.gated, false, `similarity ${adapted.chameleon.context_similarity}`);
      assert.ok(adapted.chameleon.context_similarity >= pkg.manifest.hypernet!.gate!.min_similarity);
      const fixed = await scored(prompt, 'static');
      assert.notDeepEqual(adapted.logprobs, fixed.logprobs, 'the hypernetwork changed the output');
    }
  });

  test('the prompts of one batch cluster share its context, its similarity and its fate', async () => {
    const threshold = pkg.manifest.hypernet!.gate!.min_similarity;
    const familiar = await complete(app, { prompt: [SEA[3], SEA[7]], max_tokens: 1, adaptation: 'batch' });
    const unfamiliar = await complete(app, { prompt: [UNFAMILIAR, UNFAMILIAR_TOO], max_tokens: 1, adaptation: 'batch' });
    for (const [res, gated] of [[familiar, false], [unfamiliar, true]] as const) {
      assert.equal(res.status, 200, JSON.stringify(res.body));
      const info = res.body.chameleon;
      assert.equal(info.cluster_size, 2, 'two prompts, one cluster');
      assert.equal(info.context_similarities.length, 2);
      assert.equal(info.context_similarities[0], info.context_similarities[1]);
      assert.equal(info.gated, gated, `similarity ${info.context_similarity} vs ${threshold}`);
      assert.deepEqual(info.gated_choices, [gated, gated]);
    }
    // request mode: each prompt its own context, each choice its own similarity and fate
    const mixed = await complete(app, { prompt: [UNFAMILIAR, SEA[7]], max_tokens: 1, adaptation: 'request' });
    const { context_similarities: sims, gated_choices: fates } = mixed.body.chameleon;
    assert.deepEqual(fates, sims.map((s: number) => s < threshold));
    assert.deepEqual(fates, [true, false]);
  });

  test('an admitted context\'s generated update weighs n / (n + prior_tokens), n its prompt tokens (a cluster\'s together)', async () => {
    const prior = pkg.manifest.hypernet!.gate!.prior_tokens ?? 0;
    assert.ok(prior > 0, 'the default package shrinks the updates of contexts made from few tokens');
    const tokens = (text: string) => pkg.tokenizer.encode(text).length;
    const alone = await complete(app, { prompt: SEA[7], max_tokens: 1, adaptation: 'request' });
    const n = tokens(SEA[7]);
    assert.ok(Math.abs(alone.body.chameleon.dynamic_weight - n / (n + prior)) < 1e-9, `request mode: ${n} tokens`);
    const pair = await complete(app, { prompt: [SEA[3], SEA[7]], max_tokens: 1, adaptation: 'batch' });
    const both = tokens(SEA[3]) + tokens(SEA[7]);
    assert.equal(pair.body.chameleon.cluster_size, 2);
    for (const w of pair.body.chameleon.dynamic_weights) assert.ok(Math.abs(w - both / (both + prior)) < 1e-9, `one cluster of ${both} tokens`);
    const gated = await complete(app, { prompt: UNFAMILIAR, max_tokens: 1, adaptation: 'request' });
    assert.equal(gated.body.chameleon.dynamic_weight, 0, 'a gated context gets none of its update');
    const fixed = await complete(app, { prompt: SEA[7], max_tokens: 1, adaptation: 'static' });
    assert.equal(fixed.body.chameleon.dynamic_weight, null, 'static mode generates no update');
  });

  test('an adapter made from unfamiliar examples is the static LoRA, and says so', async () => {
    const auth = { authorization: `Bearer ${TOKEN}` };
    const made = await app.inject({ method: 'POST', url: '/v1/adapters', headers: auth, payload: { name: 'markup', examples: [UNFAMILIAR] } });
    assert.equal(made.statusCode, 201, made.body);
    assert.equal(made.json().gated, true);
    assert.equal(made.json().rank, pkg.manifest.lora!.rank, 'the static LoRA\'s own rank');
    assert.equal(made.json().context_similarity, await similarity(UNFAMILIAR));
    const served = await complete(app, { model: 'markup', prompt: SEA[2], max_tokens: 0, echo: true, logprobs: 0 });
    const fixed = await scored(SEA[2], 'static');
    assert.deepEqual(served.body.choices[0].logprobs.token_logprobs.slice(1), fixed.logprobs);
    const familiar = await app.inject({ method: 'POST', url: '/v1/adapters', headers: auth, payload: { name: 'whaling', examples: [SEA[3], SEA[7]] } });
    assert.equal(familiar.json().gated, false);
    const exampleTokens = pkg.tokenizer.encode(SEA[3]).length + pkg.tokenizer.encode(SEA[7]).length;
    const prior = pkg.manifest.hypernet!.gate!.prior_tokens ?? 0;
    assert.ok(Math.abs(familiar.json().dynamic_weight - exampleTokens / (exampleTokens + prior)) < 1e-6, 'weighed by the examples\' tokens together');
    assert.equal(familiar.json().rank, pkg.manifest.hypernet!.rank);
  });
});
