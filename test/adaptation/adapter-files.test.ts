/** The file loader's one-at-a-time rule, without HTTP: which loads wait and which are refused at once. */
import assert from 'node:assert/strict';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { test } from 'node:test';
import { AdapterFiles, ADAPTER_FILE_REFUSED } from '../../src/adaptation/adapter-files.js';
import { ServiceError } from '../../src/errors.js';
import { ModelPackage } from '../../src/model/package.js';
import { MODEL_DIR } from '../helpers/app.js';

const pkg = ModelPackage.open(MODEL_DIR);
const shape = { vocabSize: pkg.dims.vocab_size, dim: pkg.dims.d_model, maxRank: 64 };

test('one load reads at a time and one more waits; the rest are refused at once with 429, and later loads go on', async () => {
  const root = mkdtempSync(join(tmpdir(), 'adapter-files-'));
  try {
    writeFileSync(join(root, 'bad.safetensors'), 'not a safetensors file');
    const files = new AdapterFiles([root], 3);
    const warnings: object[] = [];
    const log = { warn: (obj: object) => warnings.push(obj) };
    const load = () => files.load(join(root, 'bad.safetensors'), pkg, shape, log).then(() => 'loaded', (error: ServiceError) => error);
    const outcomes = await Promise.all(Array.from({ length: 8 }, load));
    const codes = outcomes.map((o) => (o instanceof ServiceError ? o.code : o));
    assert.deepEqual(codes, ['invalid_adapter', 'invalid_adapter', ...Array(6).fill('adapter_busy')]);
    const busy = outcomes[2] as ServiceError;
    assert.equal(busy.status, 429);
    assert.equal(busy.retryAfterSeconds, 3);
    assert.equal((outcomes[0] as ServiceError).message, ADAPTER_FILE_REFUSED);
    assert.equal(warnings.length, 2, 'only the two loads that ran looked at the file');
    assert.equal(((await load()) as ServiceError).code, 'invalid_adapter', 'the queue is free again');
  } finally {
    rmSync(root, { recursive: true, force: true });
  }
});
