/** Copies of the default package to break on purpose. */
import { cpSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { MODEL_DIR } from './app.js';

export interface PackageCopy {
  dir: string;
  manifest: any;
  writeManifest(manifest: unknown): void;
  remove(): void;
}

export function copyPackage(): PackageCopy {
  const root = mkdtempSync(join(tmpdir(), 'chameleon-pkg-'));
  const dir = join(root, 'package');
  cpSync(MODEL_DIR, dir, { recursive: true });
  const manifest = JSON.parse(readFileSync(join(dir, 'manifest.json'), 'utf8'));
  return {
    dir,
    manifest,
    writeManifest: (m) => writeFileSync(join(dir, 'manifest.json'), JSON.stringify(m)),
    remove: () => rmSync(root, { recursive: true, force: true }),
  };
}

/** Manifest keys (files, tensors, sha256) of the adaptation parts that npm run model:adapt adds to a base-only package. */
const ADAPTATION_KEYS = [
  'hypernet', 'static_lora_a', 'static_lora_b', 'gate_centroids',
  'library_lora_a', 'library_lora_b', 'library_centroids',
  'masks_lora_a', 'masks_lora_b', 'masks_mask_a', 'masks_mask_b', 'masks_centroids',
];

/** The manifest without its adaptation parts: what npm run model:import writes (same decoder, tokenizer and embeddings). */
export function baseOnlyManifest(manifest: any): any {
  const { hypernet: _h, lora: _l, library: _lib, masks: _m, ...rest } = manifest;
  const without = (record: Record<string, unknown> | undefined) =>
    record === undefined ? undefined : Object.fromEntries(Object.entries(record).filter(([key]) => !ADAPTATION_KEYS.includes(key)));
  return { ...rest, files: without(manifest.files), tensors: without(manifest.tensors), ...(manifest.sha256 ? { sha256: without(manifest.sha256) } : {}) };
}

/** A copy of the default package made base-only: its adaptation files deleted, its manifest stripped of them. */
export function copyBaseOnlyPackage(): PackageCopy {
  const copy = copyPackage();
  const files = copy.manifest.files as Record<string, string>;
  for (const key of ADAPTATION_KEYS) if (files[key] !== undefined) rmSync(join(copy.dir, files[key]), { force: true });
  copy.manifest = baseOnlyManifest(copy.manifest);
  copy.writeManifest(copy.manifest);
  return copy;
}
