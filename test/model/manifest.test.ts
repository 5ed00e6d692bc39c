import assert from 'node:assert/strict';
import { copyFileSync, rmSync, truncateSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { describe, test } from 'node:test';
import { ModelPackageError } from '../../src/errors.js';
import { checkSignature, loadManifest } from '../../src/model/manifest.js';
import { ModelPackage } from '../../src/model/package.js';
import { MODEL_DIR } from '../helpers/app.js';
import { copyPackage } from '../helpers/package-copy.js';

function rejects(dir: string, pattern: RegExp): void {
  assert.throws(() => loadManifest(dir), (error: unknown) => {
    assert.ok(error instanceof ModelPackageError, String(error));
    assert.match(error.message, pattern);
    return true;
  });
}

describe('model package validation', () => {
  test('the default package is valid', () => {
    const loaded = loadManifest(MODEL_DIR);
    assert.equal(loaded.manifest.format, 'chameleon-package/3');
    const pkg = ModelPackage.open(MODEL_DIR);
    assert.equal(pkg.readTensor('embeddings').length, pkg.dims.vocab_size * pkg.dims.d_model);
  });

  test('a missing folder or manifest is named', () => {
    rejects('/nonexistent/model', /folder not found/);
    const copy = copyPackage();
    try {
      rmSync(join(copy.dir, 'manifest.json'));
      rejects(copy.dir, /manifest\.json is missing/);
      writeFileSync(join(copy.dir, 'manifest.json'), '{ not json');
      rejects(copy.dir, /manifest\.json is not valid JSON/);
    } finally {
      copy.remove();
    }
  });

  test('a manifest that breaks the format, or disagrees with itself, is refused', () => {
    const copy = copyPackage();
    try {
      copy.writeManifest({ ...copy.manifest, format: 'other/2' });
      rejects(copy.dir, /does not follow chameleon-package\/3/);
      copy.writeManifest({ ...copy.manifest, dims: { ...copy.manifest.dims, head_dim: copy.manifest.dims.head_dim + 1 } });
      rejects(copy.dir, /dims.n_head \(\d+\) x dims.head_dim \(\d+\) != dims.d_model/);
      copy.writeManifest({ ...copy.manifest, lora: { ...copy.manifest.lora, rank: copy.manifest.lora.rank + 1 } });
      rejects(copy.dir, /tensors\.static_lora_a\.shape/);
      const inputs = copy.manifest.decoder.inputs.filter((i: { name: string }) => i.name !== 'cluster_index');
      copy.writeManifest({ ...copy.manifest, decoder: { ...copy.manifest.decoder, inputs } });
      rejects(copy.dir, /decoder\.inputs lacks cluster_index/);
      copy.writeManifest({ ...copy.manifest, hypernet: { ...copy.manifest.hypernet, rank: copy.manifest.hypernet.rank + 1 } });
      rejects(copy.dir, /hypernet\.outputs lora_a has shape/);
      copy.writeManifest({ ...copy.manifest, library: { names: ['a', 'b'], rank: 4, temperature: 0.1 } });
      rejects(copy.dir, /tensors\.library_lora_a( is missing|\.shape is)/);
      const gate = copy.manifest.hypernet.gate;
      copy.writeManifest({ ...copy.manifest, hypernet: { ...copy.manifest.hypernet, gate: { ...gate, names: [...gate.names, 'extra'] } } });
      rejects(copy.dir, /tensors\.gate_centroids\.shape/);
      copy.writeManifest({ ...copy.manifest, hypernet: { ...copy.manifest.hypernet, gate: { ...gate, min_similarity: 2 } } });
      rejects(copy.dir, /hypernet.*min_similarity|\/hypernet/);
      copy.writeManifest({ ...copy.manifest, hypernet: { ...copy.manifest.hypernet, on_static: false } });
      rejects(copy.dir, /hypernet\.gate needs hypernet\.on_static/);
      const { gate: _dropped, ...ungated } = copy.manifest.hypernet;
      copy.writeManifest({ ...copy.manifest, hypernet: ungated });
      rejects(copy.dir, /gate_centroids is listed but hypernet has no gate/);
    } finally {
      copy.remove();
    }
  });

  test('files that do not match the manifest are named', () => {
    const copy = copyPackage();
    try {
      rmSync(join(copy.dir, copy.manifest.files.hypernet));
      rejects(copy.dir, /hypernet\.onnx \(manifest\.files\.hypernet\) is missing/);
      copyFileSync(join(MODEL_DIR, copy.manifest.files.hypernet), join(copy.dir, copy.manifest.files.hypernet));
      truncateSync(join(copy.dir, copy.manifest.files.embeddings), 100);
      rejects(copy.dir, /embeddings\.bin has 100 bytes/);
    } finally {
      copy.remove();
    }
  });

  test('a file whose sha256 differs from the manifest is refused', (t) => {
    const copy = copyPackage();
    try {
      if (copy.manifest.sha256?.tokenizer === undefined) return t.skip('this package lists no checksums');
      writeFileSync(join(copy.dir, copy.manifest.files.tokenizer), `${JSON.stringify({})}`);
      rejects(copy.dir, /tokenizer\.json does not match its sha256/);
    } finally {
      copy.remove();
    }
  });

  test('checkSignature compares names, dtypes and axes with what ONNX Runtime reports', () => {
    const expected = {
      inputs: [{ name: 'context', dtype: 'float32', shape: ['clusters', 8] }],
      outputs: [{ name: 'lora_a', dtype: 'float32', shape: ['clusters', 4, 8] }],
    };
    assert.deepEqual(checkSignature('h', expected, {
      inputs: [{ name: 'context', type: 'float32', shape: ['k', 8] }],
      outputs: [{ name: 'lora_a', type: 'float32', shape: ['k', 4, 8] }],
    }), []);
    const problems = checkSignature('h', expected, {
      inputs: [{ name: 'ctx', type: 'float32', shape: ['k', 8] }],
      outputs: [{ name: 'lora_a', type: 'float16', shape: [3, 4, 9] }],
    });
    assert.deepEqual(problems, [
      'h has no input named context (it has ctx)',
      'h has an input ctx that the manifest does not list',
      'h lora_a is float16, the manifest says float32',
      'h lora_a axis 0 is fixed to 3, the manifest says it varies (clusters)',
      'h lora_a axis 2 is 9, the manifest says 8',
    ]);
  });
});
