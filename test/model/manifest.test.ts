import assert from 'node:assert/strict';
import { copyFileSync, rmSync, truncateSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { describe, test } from 'node:test';
import { ModelPackageError } from '../../src/errors.js';
import { checkSignature, loadManifest } from '../../src/model/manifest.js';
import { ModelPackage } from '../../src/model/package.js';
import { MODEL_DIR } from '../helpers/app.js';
import { baseOnlyManifest, copyBaseOnlyPackage, copyPackage } from '../helpers/package-copy.js';

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
      // n_head x head_dim may differ from d_model (an explicit head_dim), but the cache's shapes must follow head_dim
      copy.writeManifest({ ...copy.manifest, dims: { ...copy.manifest.dims, head_dim: copy.manifest.dims.head_dim + 1 } });
      rejects(copy.dir, /decoder\.inputs past_key_0 has shape \[batch, 4, cache, 64\], expected \[<axis name>, 4, <axis name>, 65\]/);
      // ... and n_kv_head (grouped-query attention)
      copy.writeManifest({ ...copy.manifest, dims: { ...copy.manifest.dims, n_kv_head: 2 } });
      rejects(copy.dir, /decoder\.inputs past_key_0 has shape \[batch, 4, cache, 64\], expected \[<axis name>, 2, <axis name>, 64\]/);
      copy.writeManifest({ ...copy.manifest, dims: { ...copy.manifest.dims, n_kv_head: 3 } });
      rejects(copy.dir, /dims\.n_head \(4\) is not a multiple of dims\.n_kv_head \(3\)/);
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

  test('a base-only package (no hypernet, lora or static LoRA) is valid; a partial set of those parts is refused, naming what is missing', () => {
    const copy = copyBaseOnlyPackage();
    try {
      const pkg = ModelPackage.open(copy.dir);
      assert.equal(pkg.adaptive, null);
      assert.equal(pkg.paths.hypernet, undefined);
      const full = loadManifest(MODEL_DIR).manifest;
      copy.writeManifest({ ...copy.manifest, lora: full.lora });
      rejects(copy.dir, /it has the lora section but not the hypernet section, tensors\.static_lora_a, tensors\.static_lora_b, files\.hypernet: a package has all of its adaptation parts \(as npm run model:adapt .*\) or none \(a base-only package/);
      copy.writeManifest({ ...copy.manifest, library: full.library });
      rejects(copy.dir, /base-only .* but has a library section/);
    } finally {
      copy.remove();
    }
    const adaptive = copyPackage();
    try {
      const { static_lora_b: _dropped, ...tensors } = adaptive.manifest.tensors;
      adaptive.writeManifest({ ...adaptive.manifest, tensors });
      rejects(adaptive.dir, /it has the hypernet section, the lora section, tensors\.static_lora_a, files\.hypernet but not tensors\.static_lora_b/);
      const stripped = baseOnlyManifest(adaptive.manifest);
      adaptive.writeManifest({ ...stripped, files: { ...stripped.files, hypernet: 'hypernet.onnx' } });
      rejects(adaptive.dir, /it has files\.hypernet but not the hypernet section/);
    } finally {
      adaptive.remove();
    }
  });

  test('tokenizer extensions: an EOS list, a null BOS without add_bos, the tokenizer kind, a chat template and the architecture are accepted and checked', () => {
    const copy = copyPackage();
    try {
      const tok = copy.manifest.tokenizer;
      const extended = {
        ...copy.manifest,
        architecture: { family: 'llama', hf_architecture: 'LlamaForCausalLM', source: { path: '/somewhere', config: { hidden_size: 256 } }, dtype: 'float32', rope: { theta: 10000 }, tied_head: true },
        tokenizer: { ...tok, kind: 'byte_level', eos_token_ids: [tok.eos_token_id, 5], chat_template: '{{ messages }}', bos_token: '<|endoftext|>', special_tokens: { eos: '<|endoftext|>' } },
      };
      copy.writeManifest(extended);
      const pkg = ModelPackage.open(copy.dir);
      assert.deepEqual(pkg.tokenizer.eosIds, [tok.eos_token_id, 5]);
      assert.ok(pkg.tokenizer.isEos(5) && pkg.tokenizer.isEos(tok.eos_token_id) && !pkg.tokenizer.isEos(6));
      assert.equal(pkg.manifest.tokenizer.chat_template, '{{ messages }}');
      copy.writeManifest({ ...extended, tokenizer: { ...extended.tokenizer, eos_token_ids: [5] } });
      rejects(copy.dir, /tokenizer\.eos_token_ids \[5\] does not include tokenizer\.eos_token_id 0/);
      copy.writeManifest({ ...extended, tokenizer: { ...extended.tokenizer, eos_token_ids: [0, 1 << 20] } });
      rejects(copy.dir, /tokenizer\.eos_token_ids has 1048576, outside the vocabulary/);
      copy.writeManifest({ ...extended, tokenizer: { ...extended.tokenizer, kind: 'wordpiece' } });
      rejects(copy.dir, /\/tokenizer\/kind/);
      copy.writeManifest({ ...extended, tokenizer: { ...tok, bos_token_id: null } });
      rejects(copy.dir, /bos_token_id is null but tokenizer\.add_bos is true/);
      copy.writeManifest({ ...extended, tokenizer: { ...tok, bos_token_id: null, add_bos: false }, features: { ...copy.manifest.features, exclude_token_ids: [0] } });
      const noBos = ModelPackage.open(copy.dir).tokenizer;
      assert.equal(noBos.bosId, null);
      assert.deepEqual(noBos.encodePrompt('Hello'), noBos.encode('Hello'));
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
