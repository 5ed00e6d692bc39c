/**
 * Adaptation modes without extension fields: a model id `<model>:<mode>` selects the mode (for clients and harnesses
 * that cannot add `adaptation`), and DEFAULT_ADAPTATION sets the mode of a request that names none.
 */
import assert from 'node:assert/strict';
import { after, before, describe, test } from 'node:test';
import type { FastifyInstance } from 'fastify';
import { complete, MODEL, startApp } from '../helpers/app.js';
import { copyBaseOnlyPackage } from '../helpers/package-copy.js';

const PROMPT = 'The whale rose from the sea and';
let app: FastifyInstance;

before(async () => {
  app = await startApp({ maxWaitMs: 0, defaultAdaptation: 'static' });
});
after(async () => {
  await app.close();
});

describe('adaptation modes as model ids', () => {
  test('/v1/models lists one id per served mode, each a child of the base model', async () => {
    const { data } = (await app.inject({ method: 'GET', url: '/v1/models' })).json() as { data: Array<{ id: string; parent: string | null }> };
    for (const mode of app.chameleon.service.adaptationModes) {
      const entry = data.find((m) => m.id === `${MODEL}:${mode}`);
      assert.ok(entry, `${MODEL}:${mode} is listed`);
      assert.equal(entry.parent, MODEL);
    }
  });

  test('a mode id serves what the adaptation field serves, and answers under that id', async () => {
    const [byId, byField] = await Promise.all([
      complete(app, { model: `${MODEL}:none`, prompt: PROMPT, max_tokens: 8, temperature: 0 }),
      complete(app, { prompt: PROMPT, max_tokens: 8, temperature: 0, adaptation: 'none' }),
    ]);
    assert.equal(byId.status, 200, JSON.stringify(byId.body));
    assert.equal(byId.body.chameleon.mode, 'none');
    assert.equal(byId.body.model, `${MODEL}:none`);
    assert.equal(byId.body.choices[0].text, byField.body.choices[0].text);
  });

  test('DEFAULT_ADAPTATION is the mode of a request that names none', async () => {
    const res = await complete(app, { prompt: PROMPT, max_tokens: 2 });
    assert.equal(res.status, 200, JSON.stringify(res.body));
    assert.equal(res.body.chameleon.mode, 'static');
  });

  test('a mode id with a contradicting adaptation, and an unknown mode id, are refused', async () => {
    const contradiction = await complete(app, { model: `${MODEL}:static`, prompt: PROMPT, max_tokens: 2, adaptation: 'none' });
    assert.equal(contradiction.status, 400);
    assert.equal(contradiction.body.error.param, 'adaptation');
    const unknown = await complete(app, { model: `${MODEL}:sideways`, prompt: PROMPT, max_tokens: 2 });
    assert.equal(unknown.status, 404);
    assert.equal(unknown.body.error.code, 'model_not_found');
  });

  test('a DEFAULT_ADAPTATION the package does not serve stops the start, naming what it serves', async () => {
    const copy = copyBaseOnlyPackage();
    try {
      await assert.rejects(startApp({ modelDir: copy.dir, defaultAdaptation: 'batch' }), /DEFAULT_ADAPTATION=batch, but this model package serves only none/);
    } finally {
      copy.remove();
    }
  });
});
